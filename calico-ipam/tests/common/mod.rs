//! Running the real `calico-ipam` binary: as a CNI plugin (env + stdin) and as the CLI.

#![allow(dead_code)]

pub mod run;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_calico-ipam");

/// A throwaway local datastore with its own lock file.
pub struct Store {
    pub dir: tempfile::TempDir,
}

impl Store {
    pub fn new() -> Store {
        Store {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn lock(&self) -> PathBuf {
        self.dir.path().join("ipam.lock")
    }

    /// `calico-ipam ARGS` against this store.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env_remove("CNI_COMMAND")
            .env("DATASTORE_TYPE", "local")
            .env("DATASTORE_PATH", self.path())
            .output()
            .expect("run calico-ipam")
    }

    /// Apply pools from a YAML string; panics on failure.
    pub fn apply_pools(&self, yaml: &str) {
        let file = self
            .dir
            .path()
            .join(format!("pools-{}.yaml", rand_suffix()));
        std::fs::write(&file, yaml).expect("write pools");
        let out = self.cli(&["pool", "apply", "-f", file.to_str().expect("utf8")]);
        assert!(out.status.success(), "pool apply failed: {}", text(&out));
    }

    /// A dual-stack netconf for this store.
    pub fn netconf(&self, version: &str, node: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "k8s-pod-network",
            "type": "calico",
            "datastore_type": "local",
            "datastore_path": self.path(),
            "ipam_lock_file": self.lock(),
            "nodename": node,
            "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"}
        })
    }

    /// The `show -o json` document.
    pub fn show(&self) -> Value {
        let out = self.cli(&["show", "-o", "json", "--show-blocks"]);
        assert!(out.status.success(), "show failed: {}", text(&out));
        serde_json::from_slice(&out.stdout).expect("show json")
    }

    /// Every file of the store and its bytes (to prove a failed call changed nothing).
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        walk(&self.path(), &mut files);
        files
    }
}

fn walk(dir: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, files);
        } else {
            files.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Run the plugin with `command`, the container id, extra env and stdin.
pub fn cni(command: &str, container_id: &str, env: &[(&str, &str)], stdin: &[u8]) -> Output {
    cni_in(Path::new("/"), command, container_id, env, stdin)
}

/// [`cni`] with `cwd` as the working directory.
pub fn cni_in(
    cwd: &Path,
    command: &str,
    container_id: &str,
    env: &[(&str, &str)],
    stdin: &[u8],
) -> Output {
    run::run_with_stdin(&mut cni_command(cwd, command, container_id, env), stdin)
}

/// The plugin's command line for [`cni_in`], not yet run (to spawn it and wait later).
pub fn cni_command(cwd: &Path, command: &str, container_id: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(cwd);
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", live_netns())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin");
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    cmd
}

/// A network namespace path that exists while the test runs (the test's own): calico-ipam
/// records it in the local store, and `ipam check` counts an allocation as in use while it
/// exists.
pub fn live_netns() -> String {
    format!("/proc/{}/ns/net", std::process::id())
}

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The addresses of a successful ADD's result, with their prefixes as the result gives them.
pub fn added_cidrs(out: &Output) -> Vec<ipnet::IpNet> {
    assert!(out.status.success(), "ADD failed: {}", text(out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("result");
    v["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|i| {
            i["address"]
                .as_str()
                .expect("address")
                .parse()
                .expect("cidr")
        })
        .collect()
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

/// Runs `f(i)` for every `i` in 0..n on `parallel` worker threads, each running one call at
/// a time (a call typically spawns one plugin process): the results, in completion order.
pub fn fan_out<T: Send + 'static>(
    n: usize,
    parallel: usize,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    fan_out_until(n, n, parallel, || true, f)
}

/// [`fan_out`] of at least `min` and at most `max` calls: past `min`, no call starts once
/// `done()` holds (a race that must outlast what another thread does meanwhile).
pub fn fan_out_until<T: Send + 'static>(
    min: usize,
    max: usize,
    parallel: usize,
    done: impl Fn() -> bool + Send + Sync + 'static,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let (f, done) = (Arc::new(f), Arc::new(done));
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::with_capacity(min)));
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let (f, done, next, results) = (f.clone(), done.clone(), next.clone(), results.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= max || (i >= min && done()) {
                        return;
                    }
                    let r = f(i);
                    results.lock().expect("results").push(r);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    std::mem::take(&mut *results.lock().expect("results"))
}

/// The addresses of successful ADD results (`(i, output)`, all of which must have
/// succeeded with `per_add` addresses each), checked to lie in `pools` and to be handed out
/// once: the addresses of each ADD by `i`.
pub fn distinct_addresses(
    adds: &[(usize, Output)],
    per_add: usize,
    pools: &[ipnet::IpNet],
) -> BTreeMap<usize, Vec<std::net::IpAddr>> {
    let mut seen = std::collections::HashSet::new();
    let mut by_add = BTreeMap::new();
    for (i, out) in adds {
        assert!(out.status.success(), "ADD {i}: {}", text(out));
        let result: Value = serde_json::from_slice(&out.stdout).expect("result");
        let ips = result["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), per_add, "ADD {i}: {result}");
        let mut mine = Vec::new();
        for ip in ips {
            let net: ipnet::IpNet = ip["address"]
                .as_str()
                .expect("address")
                .parse()
                .expect("cidr");
            let addr = net.addr();
            assert!(
                pools.iter().any(|p| p.contains(&addr)),
                "{addr} outside the pools"
            );
            assert!(seen.insert(addr), "{addr} handed out twice");
            mine.push(addr);
        }
        by_add.insert(*i, mine);
    }
    by_add
}
