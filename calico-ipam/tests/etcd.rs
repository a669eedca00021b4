//! calico-ipam with `datastore_type: etcdv3` against the three-member TLS etcd cluster of
//! scripts/etcd-testenv (ETCD_TESTENV_DIR): dual-stack ADDs from four simulated nodes racing
//! (each ADD its own process, each node its own host lock), no address handed out twice,
//! `check` clean, every DEL freeing what its ADD took; the etcd settings from the netconf and
//! from the environment; the CLI in etcdv3 mode.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use common::{BIN, cni, text};
use ipnet::IpNet;
use serde_json::{Value, json};

/// Dual-stack ADDs in all (a quarter per node) and processes at once.
const PODS: usize = 200;
const PARALLEL: usize = 8;
const NODES: usize = 4;

fn testenv_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("ETCD_TESTENV_DIR").unwrap_or_else(|| {
        panic!(
            "ETCD_TESTENV_DIR is not set: these tests need a real etcd cluster \
             (scripts/test.sh starts one; or scripts/etcd-testenv up DIR)"
        )
    }))
}

/// The cluster's client settings (`DIR/env`: ETCD_ENDPOINTS, ETCD_*_FILE).
fn etcd_env() -> Vec<(String, String)> {
    let path = testenv_dir().join("env");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| {
            matches!(
                *k,
                "ETCD_ENDPOINTS" | "ETCD_CA_CERT_FILE" | "ETCD_CERT_FILE" | "ETCD_KEY_FILE"
            )
        })
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn etcd_var(name: &str) -> String {
    etcd_env()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{name} missing"))
}

fn etcdctl(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/etcd-testenv");
    let out = Command::new(script)
        .arg("etcdctl")
        .arg(testenv_dir())
        .args(args)
        .output()
        .expect("run etcdctl");
    assert!(out.status.success(), "etcdctl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `calico-ipam ARGS` in etcdv3 mode, the cluster named by the environment only.
fn cli(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("CNI_COMMAND")
        .env("DATASTORE_TYPE", "etcdv3");
    for (k, v) in etcd_env() {
        cmd.env(k, v);
    }
    cmd.output().expect("run calico-ipam")
}

/// A node's netconf: its name, its own host lock; the etcd settings in the netconf, except
/// for node 0, which takes them from the environment (as Calico's plugin does).
fn netconf(dir: &std::path::Path, node: usize) -> Value {
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "calico",
        "datastore_type": "etcdv3",
        "ipam_lock_file": dir.join(format!("node-{node}/ipam.lock")),
        "nodename": format!("etcd-node-{node}"),
        "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"}
    });
    if node != 0 {
        conf["etcd_endpoints"] = etcd_var("ETCD_ENDPOINTS").into();
        conf["etcd_ca_cert_file"] = etcd_var("ETCD_CA_CERT_FILE").into();
        conf["etcd_cert_file"] = etcd_var("ETCD_CERT_FILE").into();
        conf["etcd_key_file"] = etcd_var("ETCD_KEY_FILE").into();
    }
    conf
}

/// The plugin's environment for `node` (node 0 finds the cluster here).
fn plugin_env(node: usize) -> Vec<(String, String)> {
    if node == 0 { etcd_env() } else { Vec::new() }
}

/// Run `f(i)` for 0..n with PARALLEL worker threads, each spawning one process at a time.
fn fan_out<T: Send + 'static>(n: usize, f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let f = Arc::new(f);
    let next = Arc::new(Mutex::new(0usize));
    let results = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..PARALLEL)
        .map(|_| {
            let (f, next, results) = (f.clone(), next.clone(), results.clone());
            std::thread::spawn(move || {
                loop {
                    let i = {
                        let mut c = next.lock().expect("counter");
                        if *c >= n {
                            return;
                        }
                        *c += 1;
                        *c - 1
                    };
                    let r = f(i);
                    results.lock().expect("results").push(r);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    Arc::try_unwrap(results)
        .map_err(|_| "results still shared")
        .expect("results")
        .into_inner()
        .expect("results")
}

fn run_plugin(dir: &std::path::Path, command: &str, i: usize) -> Output {
    let node = i % NODES;
    let conf = netconf(dir, node).to_string();
    let env = plugin_env(node);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    cni(command, &format!("etcdpod{i}"), &env, conf.as_bytes())
}

const POOLS: &str = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: etcd-v4}
spec: {cidr: 10.66.0.0/20, blockSize: 28}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: etcd-v6}
spec: {cidr: 'fd00:66::/112', blockSize: 124}
";

#[test]
fn four_nodes_racing_adds_then_dels() {
    etcdctl(&["del", "--prefix", "/calico/"]);
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let file = dir.path().join("pools.yaml");
    std::fs::write(&file, POOLS).expect("pools");
    let out = cli(&["apply", "-f", file.to_str().expect("utf8")]);
    assert!(out.status.success(), "apply: {}", text(&out));
    // The pools are at Calico's keys.
    assert!(
        etcdctl(&[
            "get",
            "--keys-only",
            "--prefix",
            "/calico/resources/v3/projectcalico.org/ippools/"
        ])
        .contains("/calico/resources/v3/projectcalico.org/ippools/etcd-v4")
    );

    let d = dir.clone();
    let adds = fan_out(PODS, move |i| (i, run_plugin(d.path(), "ADD", i)));
    let pools: [IpNet; 2] = [
        "10.66.0.0/20".parse().expect("v4"),
        "fd00:66::/112".parse().expect("v6"),
    ];
    let mut seen = HashSet::new();
    for (i, out) in &adds {
        assert!(out.status.success(), "ADD etcdpod{i}: {}", text(out));
        let result: Value = serde_json::from_slice(&out.stdout).expect("result");
        let ips = result["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 2, "etcdpod{i}: {result}");
        for ip in ips {
            let net: IpNet = ip["address"]
                .as_str()
                .expect("address")
                .parse()
                .expect("cidr");
            let addr: IpAddr = net.addr();
            assert!(
                pools.iter().any(|p| p.contains(&addr)),
                "{addr} outside the pools"
            );
            assert!(seen.insert(addr), "{addr} handed out twice");
        }
    }
    assert_eq!(seen.len(), 2 * PODS);
    // Each node claimed blocks of its own: the affinities are at Calico's keys, per node.
    for node in 0..NODES {
        let keys = etcdctl(&[
            "get",
            "--keys-only",
            "--prefix",
            &format!("/calico/ipam/v2/host/etcd-node-{node}/"),
        ]);
        assert!(
            keys.contains("/ipv4/block/") && keys.contains("/ipv6/block/"),
            "{node}: {keys}"
        );
    }
    let check = cli(&["ipam", "check"]);
    assert!(
        check.status.success(),
        "check after the ADDs: {}",
        text(&check)
    );
    let show = cli(&["show", "-o", "json"]);
    assert!(show.status.success(), "show: {}", text(&show));
    let show: Value = serde_json::from_slice(&show.stdout).expect("show json");
    let in_use: u64 = show["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .map(|p| p["inUse"].as_u64().expect("n"))
        .sum();
    assert_eq!(in_use, 2 * PODS as u64);

    let d = dir.clone();
    let dels = fan_out(PODS, move |i| (i, run_plugin(d.path(), "DEL", i)));
    for (i, out) in &dels {
        assert!(out.status.success(), "DEL etcdpod{i}: {}", text(out));
    }
    let check = cli(&["ipam", "check"]);
    assert!(
        check.status.success(),
        "check after the DELs: {}",
        text(&check)
    );
    let show: Value = serde_json::from_slice(&cli(&["show", "-o", "json"]).stdout).expect("show");
    for pool in show["pools"].as_array().expect("pools") {
        assert_eq!(pool["inUse"], 0, "{pool}");
    }
    assert_eq!(
        etcdctl(&["get", "--keys-only", "--prefix", "/calico/ipam/v2/handle/"]).trim(),
        "",
        "every handle deleted"
    );
    etcdctl(&["del", "--prefix", "/calico/"]);
}

/// Without endpoints, etcdv3 is refused with what to set; with an unreachable cluster, the
/// ADD fails with code 11 (try again later).
#[test]
fn missing_or_unreachable_etcd_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut conf = netconf(dir.path(), 1);
    conf.as_object_mut()
        .expect("object")
        .remove("etcd_endpoints");
    let out = cni("ADD", "etcdnone", &[], conf.to_string().as_bytes());
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stdout).expect("error json");
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("etcd_endpoints")
            || err["details"]
                .as_str()
                .unwrap_or_default()
                .contains("etcd_endpoints"),
        "{err}"
    );

    conf["etcd_endpoints"] = "https://127.0.0.1:1".into();
    let out = cni("ADD", "etcddown", &[], conf.to_string().as_bytes());
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stdout).expect("error json");
    assert_eq!(err["code"], 11, "{err}");
}
