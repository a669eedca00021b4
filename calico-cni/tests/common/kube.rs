//! Helpers of the Kubernetes-datastore netns tests.
//!
//! The apiserver listens on the host's loopback, which a node netns cannot reach; a
//! [`Forwarder`] listens on the same port on the node netns' loopback (its socket is bound
//! inside that netns, its connections go out from the test's own netns), so the kubeconfig
//! works unchanged. Nothing is added to the host's network.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::CloneFlags;

use super::Netns;

/// Forwards `127.0.0.1:port` inside a netns to `127.0.0.1:port` of the test's netns.
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A listening socket on `127.0.0.1:port` (0: any free port) inside `netns`.
pub fn listen_in(netns: &Netns, port: u16) -> TcpListener {
    let path = netns.path();
    // setns on a throwaway thread: the socket stays in the netns after the thread exits.
    std::thread::spawn(move || {
        let ns = File::open(&path).expect("open netns");
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
        TcpListener::bind(("127.0.0.1", port)).expect("bind in the netns")
    })
    .join()
    .expect("bind thread")
}

impl Forwarder {
    pub fn new(netns: &Netns, port: u16) -> Forwarder {
        let listener = listen_in(netns, port);
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((down, _)) => {
                        let _ = down.set_nonblocking(false);
                        if let Ok(up) = TcpStream::connect(("127.0.0.1", port)) {
                            pipe(down, up);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => return,
                }
            }
        });
        Forwarder {
            stop,
            thread: Some(thread),
        }
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (a2, b2) = (a.try_clone().expect("clone"), b.try_clone().expect("clone"));
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    };
    copy(a, b2);
    copy(b, a2);
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The port of an `https://127.0.0.1:PORT` server URL.
pub fn server_port(server: &str) -> u16 {
    server
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port in server URL")
}

/// A Pod on `node` with annotations (no kubelet runs it).
pub fn pod_yaml(ns: &str, name: &str, node: &str, annotations: &[(&str, &str)]) -> String {
    let ann: String = annotations
        .iter()
        .map(|(k, v)| format!("    {k}: '{v}'\n"))
        .collect();
    let ann = if ann.is_empty() {
        String::new()
    } else {
        format!("  annotations:\n{ann}")
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n{ann}\
         spec:\n  nodeName: {node}\n  containers: [{{name: c, image: pause}}]\n---\n"
    )
}

/// A Namespace with annotations.
pub fn namespace_yaml(name: &str, annotations: &[(&str, &str)]) -> String {
    let ann: String = annotations
        .iter()
        .map(|(k, v)| format!("    {k}: '{v}'\n"))
        .collect();
    let ann = if ann.is_empty() {
        String::new()
    } else {
        format!("  annotations:\n{ann}")
    };
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n{ann}---\n")
}
