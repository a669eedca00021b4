//! calico-ipam with Calico v3.32's `projectcalico.org/v3` CRDs (tech preview, calico#10447):
//! the API server has Calico's v3 CRDs and not `crd.projectcalico.org/v1`, so the group is found
//! by discovery (or given by `calico_api_group` / `--calico-api-group`). ADD, CHECK, DEL, the
//! operator CLI (`pool apply`, `get ippool`, `ipam check`, `show`), the objects as Calico v3.32
//! writes them, and the discovery's cost.
//!
//! scripts/test.sh starts that apiserver (`scripts/kube-testenv` with
//! `KUBE_TESTENV_CRDS=../shared/calico/v3.32.1/calico-v3-crds.yaml`) and names it in
//! `KUBE_TESTENV_V3_DIR`; without it, or with other CRDs there, these tests fail.

mod common;
mod kube_env;

use std::process::{Command, Output};

use common::run::run_with_stdin;
use common::{BIN, added_cidrs, cni, text};
use ipnet::IpNet;
use kube_env::{KubeEnv, PoolGuard, V3, exclusive, node_yaml, unique};
use serde_json::{Value, json};

fn cli(kube: &KubeEnv, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("CNI_COMMAND")
        .env_remove("CALICO_API_GROUP")
        .env("DATASTORE_TYPE", "kubernetes")
        .env("KUBECONFIG", &kube.admin)
        .envs(env.iter().copied())
        .output()
        .expect("run calico-ipam")
}

fn conf(kube: &KubeEnv, node: &str, dir: &std::path::Path, group: Option<&str>) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "calico",
        "datastore_type": "kubernetes",
        "kubernetes": {"kubeconfig": kube.cni},
        "nodename": node,
        "ipam_lock_file": dir.join("ipam.lock"),
        "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"}
    });
    if let Some(g) = group {
        c["calico_api_group"] = json!(g);
    }
    c
}

fn verb(command: &str, conf: &Value, cid: &str) -> Output {
    cni(
        command,
        cid,
        &[(
            "CNI_ARGS",
            &format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={cid}"),
        )],
        conf.to_string().as_bytes(),
    )
}

/// Deletes the paths when dropped, also when the test fails.
struct Cleanup<'a>(&'a KubeEnv, Vec<String>);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for p in &self.1 {
            self.0.delete(p);
        }
    }
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// The fields of an object Calico v3.32 writes in the v3 group, beside what the API server adds
/// (`uid`, `resourceVersion`, `creationTimestamp`, `generation`, `managedFields`): Calico sends
/// the v3 object as it is, so there is no `projectcalico.org/metadata` annotation.
fn assert_calico_v3_metadata(obj: &Value, labels: Option<&Value>) {
    assert_eq!(obj["apiVersion"], "projectcalico.org/v3", "{obj}");
    let m = &obj["metadata"];
    assert!(m.get("annotations").is_none(), "no annotation in v3: {m}");
    match labels {
        Some(l) => assert_eq!(&m["labels"], l, "{m}"),
        None => assert!(m.get("labels").is_none(), "{m}"),
    }
}

#[test]
fn a_dual_stack_pod_in_the_v3_group_as_calico_v3_32_writes_it() {
    let kube = KubeEnv::v3();
    let _x = exclusive();
    let u = unique();
    let tag = format!("v3{u}");
    let (p4, p6) = (format!("t-v3-{u}-v4"), format!("t-v3-{u}-v6"));
    let _pools = PoolGuard {
        kube: &kube,
        names: vec![p4.clone(), p6.clone()],
    };
    kube.purge_ipam(&["10.93.0.0/24", "fd00:93::/112"]);
    // The CLI writes the pools into projectcalico.org/v3 (found by discovery).
    let pools = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        pools.path(),
        format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: {p4}}}\n\
             spec: {{cidr: 10.93.0.0/24, blockSize: 28, nodeSelector: \"calico-rs-test == '{tag}'\"}}\n\
             ---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: {p6}}}\n\
             spec: {{cidr: 'fd00:93::/112', blockSize: 124, nodeSelector: \"calico-rs-test == '{tag}'\"}}\n"
        ),
    )
    .expect("write");
    let out = cli(
        &kube,
        &["apply", "-f", pools.path().to_str().expect("utf8")],
        &[],
    );
    assert!(out.status.success(), "apply: {}", text(&out));
    let pool = kube
        .get_json(&format!("{V3}/ippools/{p4}"))
        .expect("the pool is a projectcalico.org/v3 IPPool");
    assert_calico_v3_metadata(&pool, None);
    assert_eq!(pool["spec"]["cidr"], "10.93.0.0/24");
    let out = cli(&kube, &["get", "ippool"], &[]);
    assert!(
        out.status.success() && text(&out).contains(&p6),
        "get ippool: {}",
        text(&out)
    );

    let node = format!("v3node-{u}");
    kube.apply(&node_yaml(&node, &[("calico-rs-test", &tag)]));
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = conf(&kube, &node, dir.path(), None);
    let cid = format!("v3pod{u}");

    // The first ADD asks the API server once which group to use, after its read of v1's
    // IPPools found no such kind (`404 page not found`); the node cache keeps the answer,
    // so the next ADD does not ask again.
    let mark = kube.audit_mark();
    let ips = added_cidrs(&verb("ADD", &conf, &cid));
    assert_eq!(ips.len(), 2, "{ips:?}");
    let reqs = kube.requests_since(mark, "calico-ipam/");
    let discovery = |r: &[String]| r.iter().filter(|l| l.starts_with("get /apis ")).count();
    assert_eq!(
        discovery(&reqs),
        1,
        "one discovery:\n  {}",
        reqs.join("\n  ")
    );
    let v1: Vec<&String> = reqs
        .iter()
        .filter(|l| l.contains("/apis/crd.projectcalico.org"))
        .collect();
    // The one v1 request that finds the kind not served is the IPPool LIST made before the
    // host lock is taken (`read_pools_ahead`), or else the IPAMConfig read.
    assert!(
        v1.len() == 1
            && (v1[0].starts_with("get /apis/crd.projectcalico.org/v1/ipamconfigs/default")
                || v1[0].starts_with("list /apis/crd.projectcalico.org/v1/ippools"))
            && v1[0].ends_with(" 404"),
        "nothing asked of the v1 group but its IPPools or its IPAMConfig:\n  {}",
        reqs.join("\n  ")
    );
    let mark = kube.audit_mark();
    let cid2 = format!("v3pod{u}b");
    added_cidrs(&verb("ADD", &conf, &cid2));
    let reqs = kube.requests_since(mark, "calico-ipam/");
    assert_eq!(
        discovery(&reqs),
        0,
        "the node cache knows the group:\n  {}",
        reqs.join("\n  ")
    );
    // As in v1: LIST ippools, POST the handle, PUT each family's block.
    assert!(
        reqs.len() <= 4,
        "steady-state dual-stack ADD in v3: {} requests:\n  {}",
        reqs.len(),
        reqs.join("\n  ")
    );

    // The objects, as Calico v3.32 writes them in the v3 group.
    let handle = format!("k8s-pod-network.{cid}");
    let h = kube
        .get_json(&format!("{V3}/ipamhandles/{}", handle.to_lowercase()))
        .expect("handle");
    assert_calico_v3_metadata(&h, None);
    assert_eq!(keys(&h["spec"]), ["block", "deleted", "handleID"]);
    assert_eq!(h["spec"]["handleID"], handle.as_str());
    assert_eq!(h["spec"]["deleted"], false);
    for ip in &ips {
        let block = h["spec"]["block"]
            .as_object()
            .expect("block")
            .keys()
            .map(|c| c.parse::<IpNet>().expect("cidr"))
            .find(|b| b.contains(&ip.addr()))
            .expect("the handle names the address's block");
        let name = libipam::names::cidr_to_name(&block);
        let b = kube
            .get_json(&format!("{V3}/ipamblocks/{name}"))
            .expect("block");
        assert_calico_v3_metadata(&b, None);
        // v3.IPAMBlockSpec: `affinityClaimTime` is kept by the v3 schema.
        assert_eq!(
            keys(&b["spec"]),
            [
                "affinity",
                "affinityClaimTime",
                "allocations",
                "attributes",
                "cidr",
                "deleted",
                "sequenceNumber",
                "sequenceNumberForAllocation",
                "strictAffinity",
                "unallocated"
            ],
            "{b}"
        );
        assert_eq!(b["spec"]["affinity"], format!("host:{node}").as_str());
        let aff_name = libipam::names::affinity_name(&node, &block);
        let a = kube
            .get_json(&format!("{V3}/blockaffinities/{aff_name}"))
            .expect("affinity");
        let version = if block.addr().is_ipv4() { "4" } else { "6" };
        assert_calico_v3_metadata(
            &a,
            Some(&json!({
                "projectcalico.org/affinity-type": "host",
                "projectcalico.org/hostname-hash": libipam::names::hostname_hash(&node),
                "projectcalico.org/ip-version": version,
            })),
        );
        // v3.BlockAffinitySpec: `deleted` is a boolean (a string in v1).
        assert_eq!(
            a["spec"],
            json!({"state": "confirmed", "node": node, "type": "host",
                   "cidr": block.to_string(), "deleted": false}),
        );
    }

    // CHECK, `ipam check` and `show` read the v3 group too.
    let out = verb("CHECK", &conf, &cid);
    assert!(out.status.success(), "CHECK: {}", text(&out));
    let report = tempfile::NamedTempFile::new().expect("tmp");
    let out = cli(
        &kube,
        &["ipam", "check", "-o", report.path().to_str().expect("utf8")],
        &[],
    );
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "ipam check: {}",
        text(&out)
    );
    let r: Value = serde_json::from_slice(&std::fs::read(report.path()).expect("report"))
        .expect("report json");
    assert!(r.get("inconsistencies").is_none(), "{r}");
    for ip in &ips {
        assert!(
            r["allocations"][ip.addr().to_string()].is_array(),
            "the report lists {ip}: {r}"
        );
    }

    // DEL frees both, and the handle is gone.
    for c in [&cid, &cid2] {
        let out = verb("DEL", &conf, c);
        assert!(out.status.success(), "DEL: {}", text(&out));
    }
    assert!(
        kube.get_json(&format!("{V3}/ipamhandles/{}", handle.to_lowercase()))
            .is_none()
    );
    for b in kube.calico("ipamblocks") {
        if b["spec"]["affinity"] == format!("host:{node}").as_str() {
            assert!(
                b["spec"]["allocations"]
                    .as_array()
                    .expect("allocations")
                    .iter()
                    .all(Value::is_null),
                "freed: {b}"
            );
        }
    }
}

#[test]
fn an_explicit_group_is_used_without_discovery_and_a_wrong_one_is_refused() {
    let kube = KubeEnv::v3();
    let _x = exclusive();
    let u = unique();
    let tag = format!("v3e{u}");
    let p4 = format!("t-v3e-{u}-v4");
    let _pools = PoolGuard {
        kube: &kube,
        names: vec![p4.clone()],
    };
    kube.purge_ipam(&["10.94.0.0/24"]);
    kube.apply(&format!(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: {p4}}}\n\
         spec: {{cidr: 10.94.0.0/24, blockSize: 28, nodeSelector: \"calico-rs-test == '{tag}'\"}}\n"
    ));
    let node = format!("v3enode-{u}");
    kube.apply(&node_yaml(&node, &[("calico-rs-test", &tag)]));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = conf(&kube, &node, dir.path(), Some("projectcalico.org/v3"));
    c["ipam"]["assign_ipv6"] = json!("false");
    let mark = kube.audit_mark();
    let cid = format!("v3e{u}");
    assert_eq!(added_cidrs(&verb("ADD", &c, &cid)).len(), 1);
    let reqs = kube.requests_since(mark, "calico-ipam/");
    assert!(
        !reqs.iter().any(|l| l.starts_with("get /apis ")),
        "calico_api_group given: no discovery:\n  {}",
        reqs.join("\n  ")
    );
    assert!(verb("DEL", &c, &cid).status.success());

    // The v1 group named on a server that only has v3: the ADD fails and writes nothing.
    let v1 = conf(
        &kube,
        &node,
        tempfile::tempdir().expect("tempdir").path(),
        Some("crd.projectcalico.org/v1"),
    );
    let before = kube.calico("ipamhandles").len();
    let out = verb("ADD", &v1, &format!("v3x{u}"));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("crd.projectcalico.org"),
        "the error names the group: {}",
        text(&out)
    );
    assert_eq!(kube.calico("ipamhandles").len(), before);

    // A value that names no Calico group is refused before anything is asked (code 7).
    let mut bad = c.clone();
    bad["calico_api_group"] = json!("projectcalico.org/v1");
    let out = verb("ADD", &bad, &format!("v3y{u}"));
    let err: Value = serde_json::from_slice(&out.stdout).expect("CNI error");
    assert_eq!(err["code"], 7, "{err}");

    // The CLI: --calico-api-group and CALICO_API_GROUP, checked the same way.
    let out = cli(
        &kube,
        &[
            "--calico-api-group",
            "projectcalico.org/v3",
            "get",
            "ippool",
        ],
        &[],
    );
    assert!(
        out.status.success() && text(&out).contains(&p4),
        "{}",
        text(&out)
    );
    let out = cli(
        &kube,
        &["get", "ippool"],
        &[("CALICO_API_GROUP", "nonsense")],
    );
    assert_eq!(out.status.code(), Some(2), "usage error: {}", text(&out));
}

/// The IPAM configuration and reservations come from the v3 group: `apply -f` writes an
/// `IPAMConfiguration` as Calico v3.32 does (`ipamconfigurations/default`, no annotation), and
/// an `IPReservation` of `projectcalico.org/v3` keeps its addresses from the next ADD.
#[test]
fn configuration_and_reservations_are_read_from_the_v3_group() {
    let kube = KubeEnv::v3();
    let _x = exclusive();
    let u = unique();
    let tag = format!("v3c{u}");
    let p4 = format!("t-v3c-{u}-v4");
    let resv = format!("t-v3c-{u}");
    let _pools = PoolGuard {
        kube: &kube,
        names: vec![p4.clone()],
    };
    kube.purge_ipam(&["10.95.0.0/28"]);
    let _cleanup = Cleanup(
        &kube,
        vec![
            format!("{V3}/ipreservations/{resv}"),
            format!("{V3}/ipamconfigurations/default"),
        ],
    );
    let config = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        config.path(),
        "apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {name: default}\n\
         spec: {strictAffinity: true, autoAllocateBlocks: true, maxBlocksPerHost: 7}\n",
    )
    .expect("write");
    let out = cli(
        &kube,
        &["apply", "-f", config.path().to_str().expect("utf8")],
        &[],
    );
    assert!(out.status.success(), "apply: {}", text(&out));
    let stored = kube
        .get_json(&format!("{V3}/ipamconfigurations/default"))
        .expect("IPAMConfiguration default");
    assert_eq!(stored["kind"], "IPAMConfiguration");
    assert_calico_v3_metadata(&stored, None);
    assert_eq!(
        stored["spec"],
        json!({"strictAffinity": true, "autoAllocateBlocks": true, "maxBlocksPerHost": 7})
    );

    kube.apply(&format!(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: {p4}}}\n\
         spec: {{cidr: 10.95.0.0/28, blockSize: 28, nodeSelector: \"calico-rs-test == '{tag}'\"}}\n\
         ---\napiVersion: projectcalico.org/v3\nkind: IPReservation\nmetadata: {{name: {resv}}}\n\
         spec: {{reservedCIDRs: [10.95.0.0/29]}}\n"
    ));
    let node = format!("v3cnode-{u}");
    kube.apply(&node_yaml(&node, &[("calico-rs-test", &tag)]));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = conf(&kube, &node, dir.path(), None);
    c["ipam"]["assign_ipv6"] = json!("false");
    let cid = format!("v3c{u}");
    let ips = added_cidrs(&verb("ADD", &c, &cid));
    let reserved: IpNet = "10.95.0.0/29".parse().expect("cidr");
    assert!(
        ips.iter().all(|ip| !reserved.contains(&ip.addr())),
        "the v3 reservation is honoured: {ips:?}"
    );
    assert!(verb("DEL", &c, &cid).status.success());
}

/// calico-cni reads ClusterInformation from the v3 group: `calico -t` passes while
/// `datastoreReady` is true there and fails with Calico's message once it is false.
#[test]
fn calico_cni_reads_cluster_information_in_the_v3_group() {
    let kube = KubeEnv::v3();
    let _x = exclusive();
    let calico = std::path::Path::new(BIN).with_file_name("calico-cni");
    assert!(
        calico.exists(),
        "{} is missing: build the workspace's binaries first (cargo build --workspace --bins)",
        calico.display()
    );
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "calico",
        "datastore_type": "kubernetes",
        "ipam": {"type": "calico-ipam"},
        "kubernetes": {"kubeconfig": kube.cni},
        "nodename": "v3-probe",
    })
    .to_string();
    let probe = || {
        run_with_stdin(
            Command::new(&calico)
                .arg("-t")
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            conf.as_bytes(),
        )
    };
    let out = probe();
    assert!(out.status.success(), "{}", text(&out));
    let path = format!("{V3}/clusterinformations/default");
    let ci = kube.get_json(&path).expect("ClusterInformation");
    let set_ready = |ready: bool| {
        let mut v = ci.clone();
        v["spec"]["datastoreReady"] = json!(ready);
        v["metadata"] = json!({"name": "default"});
        kube.apply(&v.to_string());
    };
    set_ready(false);
    let out = probe();
    set_ready(true);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("Calico is currently not ready to process requests"),
        "{}",
        text(&out)
    );
}
