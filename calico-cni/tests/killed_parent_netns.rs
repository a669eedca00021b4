//! A runtime that times out an ADD kills calico-cni with SIGKILL. Its calico-ipam child must
//! not outlive it and finish the allocation: nobody would use those addresses, and the
//! runtime's DEL for the attachment may already have run. The same holds for calico-ipam's
//! code run in calico-cni's own process (in-process IPAM).
//!
//! Deterministic: the test holds the host-wide IPAM lock, so calico-ipam stops at it; the
//! test waits until calico-ipam (the child, or calico-cni itself in-process) holds the lock
//! file open (it can get no further), kills calico-cni, and then waits for every process of
//! the attachment to be gone before releasing the lock. Had calico-ipam survived, it would
//! be blocked for good (the test fails, naming it) or, once the lock is released, allocate
//! (the store would show it).

mod common;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::run::spawn_with_stdin;
use common::{CNI, Netns, Node, tiny_pools, unique};

/// How long a condition may take before the test gives up (a hang guard, not a speed check).
const GIVE_UP: Duration = Duration::from_secs(60);

/// Poll `cond` until it holds; panic with `what` if it never does.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < GIVE_UP, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Live (not zombie) processes whose environment holds `CNI_CONTAINERID=<id>`, with their
/// command names.
fn processes_of(container_id: &str) -> Vec<(u32, String)> {
    let needle = format!("CNI_CONTAINERID={container_id}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if !environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ...": the state follows the last ')'.
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
        if matches!(state, Some(Some('Z' | 'X')) | None) {
            continue;
        }
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        found.push((pid, comm.trim().to_string()));
    }
    found
}

/// Whether process `pid` has `path` open.
fn has_open(pid: u32, path: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
}

/// Kills whatever is left of the attachment's processes if the test fails midway.
struct Reap(String);

impl Drop for Reap {
    fn drop(&mut self) {
        for (pid, _) in processes_of(&self.0) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

fn spawn_add(node: &Node, container: &str, pod: &Netns, lock: &Path, in_process: bool) -> Child {
    let mut conf = node.netconf("1.0.0");
    conf["ipam_lock_file"] = serde_json::json!(lock);
    conf["ipam_in_process"] = serde_json::json!(in_process);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.ns.name, CNI])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", node.dir.path().join("bin"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    spawn_with_stdin(&mut cmd, conf.to_string().as_bytes())
}

#[test]
fn killing_calico_cni_stops_its_ipam_child_before_it_allocates() {
    killed_while_ipam_waits_for_the_lock(false);
}

#[test]
fn killing_calico_cni_stops_its_in_process_ipam_before_it_allocates() {
    killed_while_ipam_waits_for_the_lock(true);
}

fn killed_while_ipam_waits_for_the_lock(in_process: bool) {
    let node = Node::new();
    node.apply_pools(&tiny_pools());
    let pod = Netns::new("cpod");
    let container = unique("killed");
    let _reap = Reap(container.clone());

    // Hold the host-wide IPAM lock: calico-ipam will wait for it.
    let lock_path: PathBuf = node.dir.path().join("ipam.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .expect("lock file");
    lock.lock().expect("take the IPAM lock");

    let mut cni = spawn_add(&node, &container, &pod, &lock_path, in_process);
    // The process that takes the lock: calico-ipam, or calico-cni itself.
    let holder = if in_process {
        "calico-cni"
    } else {
        "calico-ipam"
    };
    let mut ipam_pid = None;
    wait_for("calico-ipam to reach the host lock", || {
        ipam_pid = processes_of(&container)
            .into_iter()
            .find(|(pid, comm)| comm == holder && has_open(*pid, &lock_path))
            .map(|(pid, _)| pid);
        ipam_pid.is_some()
    });
    let ipam_pid = ipam_pid.expect("calico-ipam");
    if in_process {
        assert_eq!(ipam_pid, cni.id(), "the lock is held by another process");
        assert!(
            !processes_of(&container)
                .iter()
                .any(|(_, comm)| comm == "calico-ipam"),
            "a calico-ipam process runs: {:?}",
            processes_of(&container)
        );
    }

    // The runtime's timeout: SIGKILL to calico-cni, nothing else.
    cni.kill().expect("SIGKILL calico-cni");
    cni.wait().expect("reap calico-cni");

    wait_for(
        &format!("calico-ipam (pid {ipam_pid}) to die with calico-cni"),
        || processes_of(&container).is_empty(),
    );
    drop::<File>(lock);

    assert_eq!(node.ipam_in_use(), 0, "an address was allocated");
    let handles: Vec<_> = std::fs::read_dir(node.store().join("handles"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        handles.iter().all(|h| h.to_string_lossy().starts_with('.')),
        "handles left: {handles:?}"
    );
    assert!(node.ipam_consistent(), "IPAM check after the kill");
    assert!(node.cali_links().is_empty(), "{:?}", node.cali_links());

    // The node is still usable: the next ADD gets the pool's first addresses.
    let r = node.add("after-kill", &pod, None, &node.netconf("1.0.0"));
    assert_eq!(common::addr(&r, 0), "10.99.0.0", "{r}");
}
