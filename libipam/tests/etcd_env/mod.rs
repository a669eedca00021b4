//! The three-member etcd cluster the etcdv3-datastore tests run against, shared by every etcd
//! test binary (libipam's `etcd_store.rs`, calico-ipam's `etcd.rs` through `#[path]`).
//!
//! scripts/test.sh starts it (`scripts/etcd-testenv up DIR`) and passes DIR in
//! `ETCD_TESTENV_DIR`; without it these tests fail, they do not skip. Objects are read and
//! written with etcdctl (`scripts/etcd-testenv etcdctl`), so assertions do not depend on the
//! code under test.
//!
//! **One test at a time.** The tests wipe `/calico/` and some kill members, so each holds
//! [`exclusive`], a `flock` on `DIR/tests.lock`: it serialises the tests of one binary (each
//! lock is its own open file) and of several binaries run at once. A test that kills members
//! holds a [`Members`] guard, which starts every killed member again and waits until all three
//! are healthy, also when the test panics, so the next test finds the whole cluster.

#![allow(dead_code)]

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn testenv_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("ETCD_TESTENV_DIR").unwrap_or_else(|| {
        panic!(
            "ETCD_TESTENV_DIR is not set: these tests need a real etcd cluster \
             (scripts/test.sh starts one; or scripts/etcd-testenv up DIR)"
        )
    }))
}

/// `DIR/env` as pairs.
pub fn testenv() -> Vec<(String, String)> {
    let path = testenv_dir().join("env");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// One variable of `DIR/env`.
pub fn var(name: &str) -> String {
    testenv()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{name} missing from the etcd-testenv env file"))
}

/// Calico's client variables for the cluster: ETCD_ENDPOINTS, ETCD_CA_CERT_FILE,
/// ETCD_CERT_FILE, ETCD_KEY_FILE.
pub fn client_env() -> Vec<(String, String)> {
    testenv()
        .into_iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "ETCD_ENDPOINTS" | "ETCD_CA_CERT_FILE" | "ETCD_CERT_FILE" | "ETCD_KEY_FILE"
            )
        })
        .collect()
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/etcd-testenv")
}

/// `scripts/etcd-testenv COMMAND DIR ARGS...`.
pub fn testenv_cmd(command: &str, args: &[&str]) -> Output {
    Command::new(script())
        .arg(command)
        .arg(testenv_dir())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run scripts/etcd-testenv {command}: {e}"))
}

fn checked(command: &str, args: &[&str]) -> String {
    let out = testenv_cmd(command, args);
    assert!(
        out.status.success(),
        "etcd-testenv {command} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// etcdctl (v3) against the cluster, as the test client; stdout.
pub fn etcdctl(args: &[&str]) -> String {
    checked("etcdctl", args)
}

/// Removes everything Calico keeps in etcd.
pub fn wipe() {
    etcdctl(&["del", "--prefix", "/calico/"]);
}

/// The values under `prefix`, one a line (Calico's values are one-line JSON).
pub fn values(prefix: &str) -> Vec<String> {
    etcdctl(&["get", "--prefix", "--print-value-only", prefix])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The keys under `prefix`.
pub fn keys(prefix: &str) -> Vec<String> {
    etcdctl(&["get", "--prefix", "--keys-only", prefix])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// This test's turn at the cluster; held until dropped.
pub struct Turn(File);

/// Waits for this test's turn: no other etcd test, in this process or another, runs meanwhile.
pub fn exclusive() -> Turn {
    let path = testenv_dir().join("tests.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    Turn(file)
}

/// The member that leads now (0, 1 or 2).
pub fn leader() -> usize {
    checked("leader", &[])
        .trim()
        .parse()
        .expect("etcd-testenv leader prints a member number")
}

/// Waits until every member is healthy (a linearizable read through each answers).
pub fn wait_healthy() {
    checked("wait", &[]);
}

/// Members killed by a test, started again (and waited for) when this is dropped.
pub struct Members {
    killed: Vec<usize>,
}

impl Members {
    /// Holds nothing yet: only what [`Members::kill`] kills is restarted.
    pub fn new() -> Members {
        Members { killed: Vec::new() }
    }

    /// `kill -9` of member `n`: returns once the process is gone.
    pub fn kill(&mut self, n: usize) {
        checked("kill", &[&n.to_string(), "KILL"]);
        self.killed.push(n);
    }

    /// Starts member `n` again on its data, and waits until the whole cluster is healthy.
    pub fn start(&mut self, n: usize) {
        checked("start", &[&n.to_string()]);
        self.killed.retain(|&m| m != n);
        wait_healthy();
    }

    /// Starts every member killed so far; waits until the cluster is healthy.
    pub fn restore(&mut self) {
        for n in std::mem::take(&mut self.killed) {
            checked("start", &[&n.to_string()]);
        }
        wait_healthy();
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        if self.killed.is_empty() {
            return;
        }
        // Also after a failed assertion: the next test needs all three members.
        for n in std::mem::take(&mut self.killed) {
            let out = testenv_cmd("start", &[&n.to_string()]);
            if !out.status.success() {
                eprintln!(
                    "etcd-testenv start {n}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let out = testenv_cmd("wait", &[]);
        if !out.status.success() {
            eprintln!(
                "etcd-testenv wait: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
