//! calico-ipam as a CNI plugin, run as a process: golden results per spec version, repeated ADD,
//! DEL, CHECK, GC, STATUS and VERSION on the embedded local datastore.

mod common;

use common::{Store, cni, text, tiny_pools};
use serde_json::{Value, json};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn golden(version: &str) -> Value {
    let path = format!(
        "{}/../testdata/results/ipam/dualstack.{version}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect("golden file"))
        .expect("golden json")
}

fn in_use(store: &Store) -> u64 {
    store.show()["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .map(|p| p["inUse"].as_u64().expect("inUse"))
        .sum()
}

#[test]
fn add_matches_golden_result_for_every_version() {
    for version in VERSIONS {
        let store = Store::new();
        store.apply_pools(&tiny_pools());
        let conf = store.netconf(version, "node-a").to_string();
        let out = cni("ADD", "c1", &[], conf.as_bytes());
        assert!(out.status.success(), "{version}: {}", text(&out));
        let got: Value = serde_json::from_slice(&out.stdout).expect("result json");
        assert_eq!(got, golden(version), "{version}");
        assert_eq!(in_use(&store), 2);
    }
}

#[test]
fn repeated_add_returns_the_same_addresses_and_del_is_idempotent() {
    let store = Store::new();
    store.apply_pools(&tiny_pools());
    let conf = store.netconf("1.0.0", "node-a").to_string();
    let first = cni("ADD", "c1", &[], conf.as_bytes());
    let second = cni("ADD", "c1", &[], conf.as_bytes());
    assert!(
        first.status.success() && second.status.success(),
        "{}",
        text(&second)
    );
    assert_eq!(
        first.stdout, second.stdout,
        "a repeated ADD must not allocate more"
    );
    assert_eq!(in_use(&store), 2);

    let other = cni("ADD", "c2", &[], conf.as_bytes());
    let other: Value = serde_json::from_slice(&other.stdout).expect("json");
    assert_eq!(other["ips"][0]["address"], "10.99.0.1/26");
    assert_eq!(other["ips"][1]["address"], "fd00:99::1/122");

    for _ in 0..2 {
        let del = cni("DEL", "c1", &[], conf.as_bytes());
        assert!(del.status.success(), "{}", text(&del));
        assert!(del.stdout.is_empty());
    }
    assert_eq!(in_use(&store), 2, "c2 still holds its two addresses");
    let never_added = cni("DEL", "never", &[("CNI_NETNS", "")], conf.as_bytes());
    assert!(never_added.status.success(), "{}", text(&never_added));
}

#[test]
fn del_releases_the_legacy_pod_handle_too() {
    let store = Store::new();
    store.apply_pools(&tiny_pools());
    // An allocation made under Calico's old `<namespace>.<pod>` handle (CLI-free: an ADD whose
    // network name makes the handle equal to it).
    let mut legacy = store.netconf("1.0.0", "node-a");
    legacy["name"] = json!("default");
    let out = cni("ADD", "web-0", &[], legacy.to_string().as_bytes());
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(in_use(&store), 2);
    let conf = store.netconf("1.0.0", "node-a").to_string();
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0";
    let del = cni("DEL", "c9", &[("CNI_ARGS", args)], conf.as_bytes());
    assert!(del.status.success(), "{}", text(&del));
    assert_eq!(in_use(&store), 0);
}

#[test]
fn check_passes_while_allocated_and_fails_after_del() {
    let store = Store::new();
    store.apply_pools(&tiny_pools());
    let conf = store.netconf("1.0.0", "node-a").to_string();
    assert!(cni("ADD", "c1", &[], conf.as_bytes()).status.success());
    let ok = cni("CHECK", "c1", &[], conf.as_bytes());
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(cni("DEL", "c1", &[], conf.as_bytes()).status.success());
    let gone = cni("CHECK", "c1", &[], conf.as_bytes());
    assert!(!gone.status.success());
    let err: Value = serde_json::from_slice(&gone.stdout).expect("error json");
    assert_eq!(err["code"], 107);
}

#[test]
fn gc_releases_attachments_not_in_the_valid_list() {
    let store = Store::new();
    store.apply_pools(&tiny_pools());
    let conf = store.netconf("1.1.0", "node-a");
    for id in ["keep", "drop1", "drop2"] {
        assert!(
            cni("ADD", id, &[], conf.to_string().as_bytes())
                .status
                .success()
        );
    }
    assert_eq!(in_use(&store), 6);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let out = cni(
        "GC",
        "",
        &[
            ("CNI_CONTAINERID", ""),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", ""),
        ],
        gc.to_string().as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(in_use(&store), 2);
    let out = cni("CHECK", "keep", &[], conf.to_string().as_bytes());
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn status_and_version() {
    let store = Store::new();
    store.apply_pools(&tiny_pools());
    let conf = store.netconf("1.1.0", "node-a").to_string();
    let out = cni(
        "STATUS",
        "",
        &[
            ("CNI_CONTAINERID", ""),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", ""),
        ],
        conf.as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out));

    let mut broken = store.netconf("1.1.0", "node-a");
    broken["datastore_path"] = json!("/proc/version/not-a-dir");
    let out = cni(
        "STATUS",
        "",
        &[
            ("CNI_CONTAINERID", ""),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", ""),
        ],
        broken.to_string().as_bytes(),
    );
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stdout).expect("error json");
    assert_eq!(err["code"], 50, "{err}");

    let out = cni("VERSION", "", &[], br#"{"cniVersion":"1.0.0"}"#);
    let v: Value = serde_json::from_slice(&out.stdout).expect("version json");
    assert_eq!(v["supportedVersions"], json!(VERSIONS));
}

#[test]
fn show_ip_names_the_holder_until_it_is_released() {
    let store = Store::new();
    store.apply_pools(&tiny_pools());
    let conf = store.netconf("1.0.0", "node-a").to_string();
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0";
    let out = cni("ADD", "c7", &[("CNI_ARGS", args)], conf.as_bytes());
    assert!(out.status.success(), "{}", text(&out));

    let out = store.cli(&["show", "--ip", "10.99.0.0", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["inUse"], true);
    assert_eq!(v["handle"], "k8s-pod-network.c7");
    assert_eq!(v["block"], "10.99.0.0/26");
    assert_eq!(v["affinity"], "host:node-a");
    assert_eq!(v["attributes"]["pod"], "cart-0");
    assert_eq!(v["attributes"]["namespace"], "shop");
    assert_eq!(v["attributes"]["node"], "node-a");
    let table = store.cli(&["show", "--ip", "fd00:99::"]);
    assert!(
        String::from_utf8_lossy(&table.stdout)
            .starts_with("IP fd00:99:: is in use\nHandle ID: k8s-pod-network.c7\n"),
        "{}",
        text(&table)
    );

    assert!(
        cni("DEL", "c7", &[("CNI_ARGS", args)], conf.as_bytes())
            .status
            .success()
    );
    let out = store.cli(&["show", "--ip", "10.99.0.0"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is not assigned"),
        "{}",
        text(&out)
    );
    let outside = store.cli(&["show", "--ip", "192.0.2.1"]);
    assert!(!outside.status.success());
    assert!(
        String::from_utf8_lossy(&outside.stderr).contains("not in a configured pool"),
        "{}",
        text(&outside)
    );
}

fn pool_yaml(name: &str, cidr: &str, disabled: bool) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: {name}}}\n\
         spec: {{cidr: '{cidr}', blockSize: 26, disabled: {disabled}}}\n"
    )
}

fn v4_of(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", text(out));
    let r: Value = serde_json::from_slice(&out.stdout).expect("result");
    r["ips"][0]["address"]
        .as_str()
        .expect("address")
        .to_string()
}

/// Issue 15, item 5 on the local store: the next ADD never allocates from a pool disabled or
/// deleted just before, not even from the node's block of it that has room, and not even when
/// it repeats the ADD of a container holding an address from it.
#[test]
fn a_disabled_or_deleted_pool_is_never_used_by_the_next_add() {
    let store = Store::new();
    store.apply_pools(&pool_yaml("a", "10.60.0.0/24", false));
    let mut conf = store.netconf("1.0.0", "node-a");
    conf["ipam"]["assign_ipv6"] = json!("false");
    let conf = conf.to_string();
    assert!(v4_of(&cni("ADD", "c1", &[], conf.as_bytes())).starts_with("10.60.0."));

    store.apply_pools(&format!(
        "{}---\n{}",
        pool_yaml("a", "10.60.0.0/24", true),
        pool_yaml("b", "10.61.0.0/24", false)
    ));
    assert!(v4_of(&cni("ADD", "c1", &[], conf.as_bytes())).starts_with("10.61.0."));

    // b holds c1's address: deleting it needs it disabled first (as Calico advises).
    let out = store.cli(&["pool", "delete", "b"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let disable = r#"{"spec":{"disabled":true}}"#;
    let out = store.cli(&["patch", "ippool", "b", "-p", disable]);
    assert!(out.status.success(), "{}", text(&out));
    let out = store.cli(&["pool", "delete", "b"]);
    assert!(out.status.success(), "{}", text(&out));
    store.apply_pools(&pool_yaml("c", "10.62.0.0/24", false));
    assert!(v4_of(&cni("ADD", "c2", &[], conf.as_bytes())).starts_with("10.62.0."));
    assert!(v4_of(&cni("ADD", "c1", &[], conf.as_bytes())).starts_with("10.62.0."));
    // c1 holds one address in a, one in the deleted b (under no pool now) and one in c.
    assert_eq!(in_use(&store), 3, "{}", store.show());
    for c in ["c1", "c2"] {
        assert!(cni("DEL", c, &[], conf.as_bytes()).status.success());
    }
    assert_eq!(in_use(&store), 0);
    // Handles and blocks agree: b's block holds nothing for a handle that is gone.
    let out = store.cli(&["check"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Calico v3.33 (calico#13301): an address requested with `IP=` in `CNI_ARGS` (how calico-cni
/// passes a pod's `cni.projectcalico.org/ipAddrs`) is a workload address, so a pool whose
/// `allowedUses` leaves out Workload (a pool for tunnel addresses) refuses it, with code 102 as
/// any requested address that cannot be had, and nothing is written; the same address in a
/// pool that allows workloads is handed out.
#[test]
fn a_requested_address_in_a_pool_not_for_workloads_is_refused() {
    let store = Store::new();
    store.apply_pools(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: tunnels}\n\
         spec: {cidr: '10.70.0.0/24', blockSize: 26, allowedUses: [Tunnel]}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pods}\n\
         spec: {cidr: '10.71.0.0/24', blockSize: 26, allowedUses: [Workload]}\n",
    );
    let mut conf = store.netconf("1.0.0", "node-a");
    conf["ipam"]["assign_ipv6"] = json!("false");
    let conf = conf.to_string();
    let before = store.snapshot();
    let out = cni(
        "ADD",
        "c1",
        &[("CNI_ARGS", "IP=10.70.0.5")],
        conf.as_bytes(),
    );
    assert!(!out.status.success(), "{}", text(&out));
    let e: Value = serde_json::from_slice(&out.stdout).expect("a CNI error");
    assert_eq!(e["code"], 102, "{e}");
    assert_eq!(
        e["msg"],
        "IP address 10.70.0.5 is in IP pool \"tunnels\", which is not allowed for use \"Workload\" \
         (allowedUses: [Tunnel])"
    );
    assert_eq!(in_use(&store), 0);
    // Nothing was written: no block, affinity or handle (the store's files are as they were).
    assert_eq!(
        store.snapshot().keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );

    let out = cni(
        "ADD",
        "c2",
        &[("CNI_ARGS", "IP=10.71.0.5")],
        conf.as_bytes(),
    );
    assert_eq!(v4_of(&out), "10.71.0.5/32");
    assert_eq!(in_use(&store), 1);
    assert!(cni("DEL", "c2", &[], conf.as_bytes()).status.success());
    assert_eq!(in_use(&store), 0);
}
