//! The real kube-apiserver the Kubernetes-datastore tests run against.
//!
//! scripts/test.sh starts one (`scripts/kube-testenv up DIR`) for the whole run and passes
//! DIR in `KUBE_TESTENV_DIR`; every kube test binary shares it. Without it these tests fail:
//! a datastore that was never exercised must not look like a pass. Objects are read and
//! written as admin through the launcher's own `get`/`apply`/`delete` commands, so the
//! assertions do not depend on the code under test.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::Value;

/// Where Calico v3.32's `projectcalico.org/v3` objects are served.
pub const V3: &str = "/apis/projectcalico.org/v3";

/// A running test apiserver.
pub struct KubeEnv {
    pub dir: PathBuf,
    bin: PathBuf,
    /// The admin kubeconfig (system:masters).
    pub admin: PathBuf,
    /// The kubeconfig of the `calico-cni` user, bound to calico-cni/manifests/rbac.yaml.
    pub cni: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    pub audit_log: PathBuf,
    /// Where Calico's objects are: `/apis/crd.projectcalico.org/v1`, or
    /// `/apis/projectcalico.org/v3` when only Calico v3.32's v3 CRDs are installed.
    pub api: String,
}

/// Tests that change cluster-wide state (IPAMConfig, pools every node selects, the audit log
/// window they count) take this exclusively; the others share it.
static CLUSTER: RwLock<()> = RwLock::new(());

pub fn shared() -> RwLockReadGuard<'static, ()> {
    CLUSTER.read().unwrap_or_else(|p| p.into_inner())
}

pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    CLUSTER.write().unwrap_or_else(|p| p.into_inner())
}

impl KubeEnv {
    /// The apiserver named by `KUBE_TESTENV_DIR`. Panics (fails the test) without one.
    pub fn get() -> KubeEnv {
        KubeEnv::named_by("KUBE_TESTENV_DIR")
    }

    /// The apiserver with only Calico's v3 CRDs, named by `KUBE_TESTENV_V3_DIR` (scripts/test.sh
    /// starts it beside the one of `KUBE_TESTENV_DIR`).
    pub fn v3() -> KubeEnv {
        let kube = KubeEnv::named_by("KUBE_TESTENV_V3_DIR");
        assert_eq!(
            kube.api, V3,
            "KUBE_TESTENV_V3_DIR must name an apiserver with Calico's projectcalico.org/v3 CRDs \
             only (KUBE_TESTENV_CRDS=../shared/calico/v3.32.1/calico-v3-crds.yaml \
             scripts/kube-testenv up DIR)"
        );
        kube
    }

    /// The apiserver whose directory the environment variable `var` names.
    pub fn named_by(var: &str) -> KubeEnv {
        let Some(dir) = std::env::var_os(var) else {
            panic!(
                "{var} is not set: the Kubernetes-datastore tests need a real \
                 kube-apiserver. Run scripts/test.sh, or `scripts/kube-testenv up DIR` and \
                 {var}=DIR cargo test"
            );
        };
        let dir = PathBuf::from(dir);
        let env = std::fs::read_to_string(dir.join("env"))
            .unwrap_or_else(|e| panic!("{}/env: {e} (is the testenv up?)", dir.display()));
        let var = |k: &str| -> String {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} missing from {}/env", dir.display()))
                .to_string()
        };
        let kube = KubeEnv {
            bin: PathBuf::from(var("KUBE_TESTENV_BIN")),
            admin: dir.join("kubeconfig"),
            cni: dir.join("kubeconfig-cni"),
            server: var("KUBE_TESTENV_SERVER"),
            audit_log: dir.join("audit.log"),
            dir,
            api: "/apis/crd.projectcalico.org/v1".to_owned(),
        };
        assert!(
            kube.raw(&["get", "/readyz"]).0,
            "the apiserver at {} is not ready",
            kube.server
        );
        let mut kube = kube;
        if kube.get_json("/apis/crd.projectcalico.org/v1").is_none() {
            assert!(
                kube.get_json("/apis/projectcalico.org/v3").is_some(),
                "neither crd.projectcalico.org/v1 nor projectcalico.org/v3 is installed"
            );
            kube.api = "/apis/projectcalico.org/v3".to_owned();
        }
        kube
    }

    fn raw(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(&self.bin)
            .args(&args[..1])
            .arg("--kubeconfig")
            .arg(&self.admin)
            .args(&args[1..])
            .output()
            .expect("run the kube-testenv launcher");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Create or update objects from YAML or JSON (as admin).
    pub fn apply(&self, yaml: &str) {
        let mut child = Command::new(&self.bin)
            .args(["apply", "--kubeconfig"])
            .arg(&self.admin)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the kube-testenv launcher");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("apply");
        assert!(
            out.status.success(),
            "apply failed: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// GET a path as JSON; `None` on 404.
    pub fn get_json(&self, path: &str) -> Option<Value> {
        let out = Command::new(&self.bin)
            .args(["get", "--kubeconfig"])
            .arg(&self.admin)
            .arg(path)
            .output()
            .expect("run the kube-testenv launcher");
        match out.status.code() {
            Some(0) => Some(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "GET {path}: not JSON ({e}): {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            })),
            Some(2) => None,
            _ => panic!("GET {path}: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }

    /// The items of a list path.
    pub fn list(&self, path: &str) -> Vec<Value> {
        self.get_json(path)
            .and_then(|v| v["items"].as_array().cloned())
            .unwrap_or_default()
    }

    /// A Calico CRD list (`ipamblocks`, `blockaffinities`, ...).
    pub fn calico(&self, plural: &str) -> Vec<Value> {
        self.list(&format!("{}/{plural}", self.api))
    }

    /// DELETE a path (as admin); missing is fine.
    pub fn delete(&self, path: &str) {
        let (ok, _, err) = self.raw(&["delete", path, "--ignore-not-found"]);
        assert!(ok, "DELETE {path}: {err}");
    }

    /// Deletes the IPAM blocks and affinities inside `cidrs` (leftovers of an earlier run on
    /// the same apiserver), so a test starts from unclaimed pools.
    pub fn purge_ipam(&self, cidrs: &[&str]) {
        let nets: Vec<ipnet::IpNet> = cidrs.iter().map(|c| c.parse().expect("cidr")).collect();
        for plural in ["ipamblocks", "blockaffinities"] {
            for obj in self.calico(plural) {
                let inside = obj["spec"]["cidr"]
                    .as_str()
                    .and_then(|c| c.parse::<ipnet::IpNet>().ok())
                    .is_some_and(|c| nets.iter().any(|n| n.contains(&c)));
                if let (true, Some(name)) = (inside, obj["metadata"]["name"].as_str()) {
                    self.delete(&format!("{}/{plural}/{name}", self.api));
                }
            }
        }
    }

    /// Number of lines in the audit log (to count requests made after this point).
    pub fn audit_mark(&self) -> usize {
        std::fs::read_to_string(&self.audit_log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Completed requests since `mark` whose user agent starts with `agent`, as
    /// `VERB URI CODE` lines.
    pub fn requests_since(&self, mark: usize, agent: &str) -> Vec<String> {
        let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        text.lines()
            .skip(mark)
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| {
                e["stage"] == "ResponseComplete"
                    && e["userAgent"]
                        .as_str()
                        .is_some_and(|a| a.starts_with(agent))
            })
            .map(|e| {
                format!(
                    "{} {} {}",
                    e["verb"].as_str().unwrap_or(""),
                    e["requestURI"].as_str().unwrap_or(""),
                    e["responseStatus"]["code"]
                )
            })
            .collect()
    }

    /// A copy of the calico-cni kubeconfig pointing at another server (unreachable tests).
    pub fn kubeconfig_for_server(&self, server: &str, dir: &Path) -> PathBuf {
        let text = std::fs::read_to_string(&self.cni).expect("kubeconfig-cni");
        let path = dir.join("kubeconfig-elsewhere");
        std::fs::write(&path, text.replace(&self.server, server)).expect("write kubeconfig");
        path
    }
}

/// Deletes the named IPPools when dropped, also when the test fails.
pub struct PoolGuard<'a> {
    pub kube: &'a KubeEnv,
    pub names: Vec<String>,
}

impl Drop for PoolGuard<'_> {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = self.kube.raw(&[
                "delete",
                &format!("{}/ippools/{n}", self.kube.api),
                "--ignore-not-found",
            ]);
        }
    }
}

/// When a test fails midway, deletes the IPAM state it may have left (its handles, the blocks
/// and affinities inside its pools): tests that run `ipam check` on the same apiserver
/// afterwards would otherwise fail for it too. A passing test frees everything itself, and
/// asserts that it did.
pub struct IpamLeftoversOnFailure<'a> {
    pub kube: &'a KubeEnv,
    pub handles: Vec<String>,
    pub cidrs: Vec<String>,
}

impl Drop for IpamLeftoversOnFailure<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // A second panic while unwinding would abort the test binary: contain it.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for h in &self.handles {
                self.kube
                    .delete(&format!("{}/ipamhandles/{h}", self.kube.api));
            }
            let cidrs: Vec<&str> = self.cidrs.iter().map(String::as_str).collect();
            self.kube.purge_ipam(&cidrs);
        }));
    }
}

/// Node objects with labels (no kubelet runs; they only carry labels for nodeSelectors).
pub fn node_yaml(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: String = labels
        .iter()
        .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
        .collect();
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n{labels}---\n")
}

/// A Pod on `node` with annotations (no kubelet runs it; it only says which addresses a live
/// pod holds, as Calico's `cni.projectcalico.org/podIPs` annotation does).
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

/// A short suffix unique to this test process and call.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}
