//! Throwaway namespaces and the real binaries, for the whole-plugin tests.
//!
//! Every test builds a "node" netns that plays the host (an uplink veth whose peer stays inside,
//! an address, default routes, forwarding on) and pod netns beside it, runs `calico-cni` with
//! `ip netns exec NODE`, and removes all of it on drop, also when the test fails. Nothing here
//! touches the real host's interfaces, routes or sysctls. Without root this fails loudly.

#![allow(dead_code)]

pub mod kube;
#[path = "../../../calico-ipam/tests/common/run.rs"]
pub mod run;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{Value, json};

pub const CNI: &str = env!("CARGO_BIN_EXE_calico-cni");

/// calico-ipam is built by the workspace next to calico-cni (scripts/test.sh builds all bins first).
pub fn ipam_bin() -> PathBuf {
    let p = Path::new(CNI).with_file_name("calico-ipam");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the calico-cni tests",
        p.display()
    );
    p
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short unique suffix for names (netns names and pod names of parallel tests must differ).
pub fn unique(tag: &str) -> String {
    format!(
        "{tag}{}x{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(out.status.success(), "{args:?} failed: {}", text(&out));
    out
}

pub fn sh_ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn require_root() {
    let uid = Command::new("id").arg("-u").output().expect("id");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "these tests create network namespaces: run them as root (scripts/test.sh)"
    );
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        require_root();
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// `ip -n NAME ARGS...` output as text.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&sh(&all).stdout).into_owned()
    }

    /// Run a command inside.
    pub fn exec_ok(&self, args: &[&str]) -> bool {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        sh_ok(&all)
    }

    pub fn ping(&self, addr: &str) -> bool {
        let family = if addr.contains(':') { "-6" } else { "-4" };
        self.exec_ok(&["ping", family, "-c1", "-W2", addr])
    }

    /// Names of the links in this namespace.
    pub fn links(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A node netns with an uplink (addresses, default routes, forwarding), a CNI_PATH directory
/// holding our plugins and Debian's host-local, and a local IPAM datastore.
pub struct Node {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
}

impl Node {
    pub fn new() -> Node {
        let ns = Netns::new("cnode");
        let n = ns.name.clone();
        for args in [
            vec![
                "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1",
            ],
            vec!["link", "set", "uplink0", "up"],
            vec!["link", "set", "uplink1", "up"],
            vec!["addr", "add", "192.0.2.10/24", "dev", "uplink0"],
            vec!["addr", "add", "2001:db8::10/64", "dev", "uplink0", "nodad"],
            vec![
                "route",
                "add",
                "default",
                "via",
                "192.0.2.1",
                "dev",
                "uplink0",
            ],
            vec![
                "-6",
                "route",
                "add",
                "default",
                "via",
                "2001:db8::1",
                "dev",
                "uplink0",
            ],
        ] {
            ns.ip(&args);
        }
        sh(&[
            "ip",
            "netns",
            "exec",
            &n,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        std::os::unix::fs::symlink(CNI, bin.join("calico")).expect("link calico");
        std::os::unix::fs::symlink(ipam_bin(), bin.join("calico-ipam")).expect("link calico-ipam");
        std::os::unix::fs::symlink("/usr/lib/cni/host-local", bin.join("host-local"))
            .expect("link host-local");
        Node { ns, dir }
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// `calico-ipam ARGS` (the CLI) on this node's store.
    pub fn ipam_cli(&self, args: &[&str]) -> Output {
        Command::new(ipam_bin())
            .args(args)
            .env_remove("CNI_COMMAND")
            .env("DATASTORE_TYPE", "local")
            .env("DATASTORE_PATH", self.store())
            .output()
            .expect("calico-ipam")
    }

    pub fn apply_pools(&self, yaml: &str) {
        let f = self.dir.path().join("pools.yaml");
        std::fs::write(&f, yaml).expect("pools");
        let out = self.ipam_cli(&["pool", "apply", "-f", f.to_str().expect("utf8")]);
        assert!(out.status.success(), "{}", text(&out));
    }

    /// Addresses in use over all pools, and whether `check` is clean.
    pub fn ipam_in_use(&self) -> u64 {
        let out = self.ipam_cli(&["show", "-o", "json"]);
        assert!(out.status.success(), "{}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        v["pools"]
            .as_array()
            .expect("pools")
            .iter()
            .map(|p| p["inUse"].as_u64().unwrap_or(0))
            .sum()
    }

    pub fn ipam_consistent(&self) -> bool {
        self.ipam_cli(&["check"]).status.success()
    }

    /// A calico netconf (calico-ipam on this node's local store).
    pub fn netconf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "k8s-pod-network",
            "type": "calico",
            "datastore_type": "local",
            "datastore_path": self.store(),
            "ipam_lock_file": self.dir.path().join("ipam.lock"),
            "nodename": "node-a",
            "mtu": 1500,
            "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"}
        })
    }

    /// Run `calico-cni` inside the node netns, as a runtime would.
    pub fn cni(
        &self,
        command: &str,
        container: &str,
        netns: &str,
        k8s_pod: Option<(&str, &str)>,
        conf: &Value,
    ) -> Output {
        let args = match k8s_pod {
            Some((ns, pod)) => format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}"),
            None => String::new(),
        };
        self.cni_with_args(command, container, netns, &args, conf)
    }

    /// [`Node::cni`] with `CNI_ARGS` exactly as given.
    pub fn cni_with_args(
        &self,
        command: &str,
        container: &str,
        netns: &str,
        args: &str,
        conf: &Value,
    ) -> Output {
        self.cni_via(&[], Stdio::piped(), command, container, netns, args, conf)
    }

    /// [`Node::cni_with_args`] with the plugin started through `wrapper` (a command that ends
    /// by running its arguments, e.g. `unshare -m ...`) inside the node netns, and its stdout
    /// sent to `stdout`.
    #[allow(clippy::too_many_arguments)]
    pub fn cni_via(
        &self,
        wrapper: &[&str],
        stdout: Stdio,
        command: &str,
        container: &str,
        netns: &str,
        args: &str,
        conf: &Value,
    ) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.name])
            .args(wrapper)
            .arg(CNI)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", self.dir.path().join("bin"))
            .env("CNI_ARGS", args)
            .stdout(stdout)
            .stderr(Stdio::piped());
        run::wait_within(run::spawn_with_stdin(&mut cmd, conf.to_string().as_bytes()))
    }

    /// ADD that must succeed; returns the result.
    pub fn add(
        &self,
        container: &str,
        pod: &Netns,
        k8s_pod: Option<(&str, &str)>,
        conf: &Value,
    ) -> Value {
        let out = self.cni("ADD", container, &pod.path(), k8s_pod, conf);
        assert!(out.status.success(), "ADD {container}: {}", text(&out));
        serde_json::from_slice(&out.stdout).expect("result json")
    }

    /// Names of the node's cali* links.
    pub fn cali_links(&self) -> Vec<String> {
        self.ns
            .links()
            .into_iter()
            .filter(|l| l.starts_with("cali"))
            .collect()
    }

    /// The node's routes (both families) as text.
    pub fn routes(&self) -> String {
        format!("{}{}", self.ns.ip(&["route"]), self.ns.ip(&["-6", "route"]))
    }
}

/// A pool file of testdata/pools.
pub fn pools(file: &str) -> String {
    let path = format!("{}/../testdata/pools/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The seed document's two pools.
pub fn seed_pools() -> String {
    pools("seed-pools.yaml")
}

/// Pools with one block per family, so the first addresses are predictable.
pub fn tiny_pools() -> String {
    pools("tiny-pools.yaml")
}

/// The address part of the result's ips[i].
pub fn addr(result: &Value, i: usize) -> String {
    let a = result["ips"][i]["address"].as_str().expect("address");
    a.split('/').next().expect("addr").to_string()
}
