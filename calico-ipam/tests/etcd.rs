//! calico-ipam with `datastore_type: etcdv3` against the three-member TLS etcd cluster of
//! scripts/etcd-testenv (ETCD_TESTENV_DIR): 1,000 dual-stack ADDs from four simulated nodes
//! racing (each ADD its own process, each node its own host lock) while one member is killed
//! with SIGKILL and later the leader: the ADDs go on through the others, no address is lost
//! or handed out twice, an ADD that failed (code 11) leaves nothing its DEL does not free,
//! `check` is clean, every DEL frees what its ADD took; with a majority down an ADD fails with
//! code 11 and writes nothing; the etcd settings from the netconf and from the environment;
//! the CLI in etcdv3 mode.

mod common;
#[path = "../../libipam/tests/etcd_env/mod.rs"]
mod etcd_env;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BIN, cni, distinct_addresses, fan_out, fan_out_until, text};
use etcd_env::{Members, client_env, exclusive, leader, var, wait_for, wipe};
use ipnet::IpNet;
use libipam::datastore::etcd::keys;
use serde_json::{Value, json};

/// Dual-stack ADDs in all (a quarter per node) and processes at once.
const PODS: usize = 1000;
const PARALLEL: usize = 8;
const NODES: usize = 4;

fn etcd_var(name: &str) -> String {
    var(name)
}

/// `calico-ipam ARGS` in etcdv3 mode, the cluster named by the environment only.
fn cli(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("CNI_COMMAND")
        .env("DATASTORE_TYPE", "etcdv3");
    for (k, v) in client_env() {
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
    if node == 0 { client_env() } else { Vec::new() }
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

/// What one ADD of the race did, and when.
struct Add {
    i: usize,
    out: Output,
}

/// The race's progress as the controller sees it: (start, succeeded) of each finished ADD.
type Progress = Arc<Mutex<Vec<(Instant, bool)>>>;

fn successes_since(progress: &Progress, t: Instant) -> usize {
    progress
        .lock()
        .expect("progress")
        .iter()
        .filter(|(start, ok)| *ok && *start >= t)
        .count()
}

/// A node's netconf and the environment its plugin runs with.
type NodeSetup = (String, Vec<(String, String)>);

/// The netconf of each node and the environment its plugin runs with.
fn node_setups(dir: &std::path::Path) -> Arc<Vec<NodeSetup>> {
    Arc::new(
        (0..NODES)
            .map(|node| (netconf(dir, node).to_string(), plugin_env(node)))
            .collect(),
    )
}

fn run_on(setups: &[NodeSetup], command: &str, id: &str, node: usize) -> Output {
    let (conf, env) = &setups[node];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    cni(command, id, &env, conf.as_bytes())
}

/// The CNI error code of a failed plugin run.
fn error_code(out: &Output) -> Option<u64> {
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|e| e["code"].as_u64())
}

/// Every block in etcd, read with etcdctl and decoded as Calico's.
fn blocks() -> Vec<libipam::model::IpamBlock> {
    etcd_env::values(keys::BLOCK_PREFIX)
        .iter()
        .map(|v| keys::decode_block(v.as_bytes()).unwrap_or_else(|e| panic!("block {v}: {e}")))
        .collect()
}

/// Who holds each allocated address: address -> handle ID.
fn holders() -> BTreeMap<IpAddr, String> {
    let mut held = BTreeMap::new();
    for b in blocks() {
        for (handle, _) in b.handle_counts() {
            for ip in b.ips_for_handle(&handle) {
                assert!(held.insert(ip, handle.clone()).is_none(), "{ip} twice");
            }
        }
    }
    held
}

fn handle_id(container: &str) -> String {
    format!("k8s-pod-network.{container}")
}

fn in_use() -> u64 {
    let show = cli(&["show", "-o", "json"]);
    assert!(show.status.success(), "show: {}", text(&show));
    let show: Value = serde_json::from_slice(&show.stdout).expect("show json");
    show["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .map(|p| p["inUse"].as_u64().expect("n"))
        .sum()
}

/// `ipam check` finds nothing; its report says which datastore it read.
fn assert_check_clean(when: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("report.json");
    let check = cli(&["ipam", "check", "-o", report.to_str().expect("utf8")]);
    assert!(check.status.success(), "check {when}: {}", text(&check));
    let report: Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("report json");
    assert_eq!(report["datastoreType"], "etcdv3", "{report}");
}

fn apply_pools(dir: &std::path::Path) {
    let file = dir.join("pools.yaml");
    std::fs::write(&file, POOLS).expect("pools");
    let out = cli(&["apply", "-f", file.to_str().expect("utf8")]);
    assert!(out.status.success(), "apply: {}", text(&out));
}

/// Successful ADDs that started after a kill, before the member is started again: proof that
/// ADDs go on through the other members.
const WHILE_DOWN: usize = 100;

/// At least 1,000 dual-stack ADDs from four nodes racing, on until the kills below are
/// through. After 150 have succeeded a follower is killed (SIGKILL); once 100 ADDs started
/// after the kill have succeeded it is started again and, the cluster healthy, the leader is
/// killed; after 100 more it is started again. An ADD may fail only with code 11 (its member
/// died under it, or no leader was elected yet; a write whose answer was lost is never
/// resent); its DEL, as a runtime sends it, frees whatever it wrote. Then: no address twice,
/// every successful ADD's addresses held by its handle in etcd and nothing else held, `check`
/// clean; the DELs free everything.
#[test]
fn a_thousand_adds_go_on_while_a_member_and_then_the_leader_are_killed() {
    let _turn = exclusive();
    wipe();
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    apply_pools(dir.path());
    // The pools are at Calico's keys.
    assert!(
        etcd_env::keys("/calico/resources/v3/projectcalico.org/ippools/")
            .contains(&"/calico/resources/v3/projectcalico.org/ippools/etcd-v4".to_owned())
    );
    let setups = node_setups(dir.path());

    let progress: Progress = Arc::new(Mutex::new(Vec::new()));
    let finished = Arc::new(AtomicBool::new(false));
    let controller_done = Arc::new(AtomicBool::new(false));
    let controller = {
        let (progress, finished, controller_done) =
            (progress.clone(), finished.clone(), controller_done.clone());
        std::thread::spawn(move || {
            let mut members = Members::new();
            let limit = Duration::from_secs(120);
            let race_on = |what: &str, cond: &mut dyn FnMut() -> bool| {
                wait_for(what, limit, || {
                    assert!(
                        !finished.load(Ordering::Relaxed),
                        "the race ended before {what}"
                    );
                    cond()
                })
            };
            let t0 = Instant::now();
            race_on("150 ADDs succeeded", &mut || {
                successes_since(&progress, t0) >= 150
            });
            let follower = (leader() + 1) % 3;
            let t1 = Instant::now();
            members.kill(follower);
            race_on("ADDs succeeded with a follower down", &mut || {
                successes_since(&progress, t1) >= WHILE_DOWN
            });
            members.start(follower);
            let old_leader = leader();
            let t2 = Instant::now();
            members.kill(old_leader);
            race_on("ADDs succeeded with the leader down", &mut || {
                successes_since(&progress, t2) >= WHILE_DOWN
            });
            members.start(old_leader);
            controller_done.store(true, Ordering::Relaxed);
            (follower, old_leader)
        })
    };

    let (s, p) = (setups.clone(), progress.clone());
    // At least PODS ADDs, and on until the controller is through its phases (a phase whose
    // ADDs fail fast, as during an election, must not end the race first), at most 3 * PODS.
    let phases_over = {
        let c = controller_done.clone();
        move || c.load(Ordering::Relaxed)
    };
    let adds = fan_out_until(PODS, 3 * PODS, PARALLEL, phases_over, move |i| {
        let start = Instant::now();
        let out = run_on(&s, "ADD", &format!("etcdpod{i}"), i % NODES);
        p.lock()
            .expect("progress")
            .push((start, out.status.success()));
        Add { i, out }
    });
    finished.store(true, Ordering::Relaxed);
    let (follower, old_leader) = controller
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    etcd_env::wait_healthy();

    // Failed ADDs: code 11 only; their DELs (a runtime's answer to a failed ADD) free
    // whatever they wrote.
    let (ok, failed): (Vec<_>, Vec<_>) = adds.into_iter().partition(|a| a.out.status.success());
    for a in &failed {
        assert_eq!(
            error_code(&a.out),
            Some(11),
            "ADD etcdpod{} failed otherwise: {}",
            a.i,
            text(&a.out)
        );
    }
    eprintln!(
        "{} ADDs succeeded, {} failed with code 11 (member {follower} killed, then the leader {old_leader})",
        ok.len(),
        failed.len()
    );
    for a in &failed {
        let id = format!("etcdpod{}", a.i);
        let out = run_on(&setups, "DEL", &id, a.i % NODES);
        assert!(out.status.success(), "DEL {id}: {}", text(&out));
        assert!(
            !holders().values().any(|h| *h == handle_id(&id)),
            "{id}: an address still held after its DEL"
        );
        assert!(
            etcd_env::keys(&keys::handle_key(&handle_id(&id))).is_empty(),
            "{id}: handle left after its DEL"
        );
    }

    // Nothing lost, nothing twice: each successful ADD's addresses are held by its handle,
    // and nothing else is held.
    let pools: [IpNet; 2] = [
        "10.66.0.0/20".parse().expect("v4"),
        "fd00:66::/112".parse().expect("v6"),
    ];
    let results: Vec<(usize, Output)> = ok.into_iter().map(|a| (a.i, a.out)).collect();
    let given = distinct_addresses(&results, 2, &pools);
    let held = holders();
    for (i, addrs) in &given {
        for a in addrs {
            assert_eq!(
                held.get(a),
                Some(&handle_id(&format!("etcdpod{i}"))),
                "{a} of etcdpod{i}"
            );
        }
    }
    assert_eq!(
        held.len(),
        2 * given.len(),
        "addresses held by no successful ADD"
    );
    // Each node claimed blocks of its own: the affinities are at Calico's keys, per node.
    for node in 0..NODES {
        let keys = etcd_env::keys(&format!("/calico/ipam/v2/host/etcd-node-{node}/")).join("\n");
        assert!(
            keys.contains("/ipv4/block/") && keys.contains("/ipv6/block/"),
            "{node}: {keys}"
        );
    }
    assert_check_clean("after the ADDs");
    assert_eq!(in_use(), 2 * given.len() as u64);

    let s = setups.clone();
    let done: BTreeSet<usize> = given.keys().copied().collect();
    let todo: Arc<Vec<usize>> = Arc::new(done.into_iter().collect());
    let t = todo.clone();
    let dels = fan_out(todo.len(), PARALLEL, move |k| {
        let i = t[k];
        (i, run_on(&s, "DEL", &format!("etcdpod{i}"), i % NODES))
    });
    for (i, out) in &dels {
        assert!(out.status.success(), "DEL etcdpod{i}: {}", text(out));
    }
    assert_check_clean("after the DELs");
    assert_eq!(in_use(), 0);
    assert!(holders().is_empty(), "every address free");
    assert_eq!(
        etcd_env::keys(keys::HANDLE_PREFIX),
        Vec::<String>::new(),
        "every handle deleted"
    );
    wipe();
}

/// With two of the three members down an ADD fails with code 11 (try again later) and
/// writes nothing: once they are back there is no handle and no address of it, `check` is
/// clean, and the same ADD succeeds.
#[test]
fn with_the_majority_down_an_add_fails_with_code_11_and_leaves_nothing() {
    let _turn = exclusive();
    wipe();
    let dir = tempfile::tempdir().expect("tempdir");
    apply_pools(dir.path());
    let setups = node_setups(dir.path());
    // A block of node 1 exists already, so the ADD's first write would be an allocation.
    let out = run_on(&setups, "ADD", "etcdbefore", 1);
    assert!(out.status.success(), "ADD before: {}", text(&out));

    let mut members = Members::new();
    let l = leader();
    members.kill(l);
    members.kill((l + 1) % 3);
    let start = Instant::now();
    let out = run_on(&setups, "ADD", "etcdmajority", 1);
    let took = start.elapsed();
    assert!(
        !out.status.success(),
        "ADD with the majority down: {}",
        text(&out)
    );
    assert_eq!(error_code(&out), Some(11), "{}", text(&out));
    assert!(took < Duration::from_secs(60), "the ADD took {took:?}");
    members.restore();

    let id = handle_id("etcdmajority");
    assert!(
        etcd_env::keys(&keys::handle_key(&id)).is_empty(),
        "a handle written"
    );
    let held = holders();
    assert!(
        !held.values().any(|h| *h == id),
        "an address held: {held:?}"
    );
    assert_eq!(held.len(), 2, "only etcdbefore's addresses: {held:?}");
    assert_check_clean("after the refused ADD");
    for id in ["etcdmajority", "etcdbefore"] {
        let out = run_on(&setups, "ADD", id, 1);
        assert!(out.status.success(), "ADD {id}: {}", text(&out));
        let out = run_on(&setups, "DEL", id, 1);
        assert!(out.status.success(), "DEL {id}: {}", text(&out));
    }
    assert!(holders().is_empty());
    wipe();
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
