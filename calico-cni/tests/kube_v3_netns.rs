//! calico-cni with Calico v3.32's `projectcalico.org/v3` CRDs (tech preview, calico#10447): the
//! whole plugin (calico-cni execing calico-ipam) in a throwaway node netns against an apiserver
//! that has Calico's v3 CRDs and no `crd.projectcalico.org/v1`, once finding the group by
//! discovery and once told by `calico_api_group`. ADD gives the pod both addresses (pool
//! annotations by name resolved among the v3 pools), CHECK passes, the IPAM objects are
//! `projectcalico.org/v3` ones and nothing asks the v1 group, DEL frees everything, and a v3
//! ClusterInformation with `datastoreReady: false` stops the ADD with Calico's error.
//!
//! scripts/test.sh starts that apiserver (`scripts/kube-testenv` with
//! `KUBE_TESTENV_CRDS=../shared/calico/v3.32.1/calico-v3-crds.yaml`) and names it in
//! `KUBE_TESTENV_V3_DIR`; without it, or with other CRDs there, these tests fail.

mod common;
#[path = "../../calico-ipam/tests/kube_env/mod.rs"]
mod kube_env;

use common::kube::{Forwarder, namespace_yaml, pod_yaml, server_port};
use common::{Netns, Node, text};
use kube_env::{IpamLeftoversOnFailure, KubeEnv, PoolGuard, V3, exclusive, node_yaml, unique};
use serde_json::{Value, json};

/// A Kubernetes-datastore netconf for `node` (Kubernetes Node `name`), with `group` as its
/// `calico_api_group` (`None`: discovery).
fn conf(node: &Node, name: &str, kube: &KubeEnv, group: Option<&str>) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "calico",
        "datastore_type": "kubernetes",
        "kubernetes": {"kubeconfig": kube.cni, "cache_ttl_seconds": 10},
        "policy": {"type": "k8s"},
        "nodename": name,
        "mtu": 1500,
        "ipam_lock_file": node.dir.path().join("ipam.lock"),
        "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"},
    });
    if let Some(g) = group {
        c["calico_api_group"] = json!(g);
    }
    c
}

fn addr_of(result: &Value, i: usize) -> String {
    result["ips"][i]["address"]
        .as_str()
        .expect("address")
        .to_string()
}

fn pod_annotations(kube: &KubeEnv, ns: &str, pod: &str) -> Value {
    kube.get_json(&format!("/api/v1/namespaces/{ns}/pods/{pod}"))
        .expect("pod")["metadata"]["annotations"]
        .clone()
}

/// What is left in a pod netns besides `lo`.
fn pod_links(pod: &Netns) -> Vec<String> {
    pod.links().into_iter().filter(|l| l != "lo").collect()
}

/// The object of `list` named `name`.
fn named(list: &[Value], name: &str) -> Option<Value> {
    list.iter().find(|o| o["metadata"]["name"] == name).cloned()
}

/// Whether a request is the one by which a process that finds the group itself first tries
/// v1: a GET of its IPAMConfig, or calico-ipam's LIST of IPPools before it takes the host lock,
/// answered 404 for the path (v1 is not served here), after which it asks which groups exist
/// (`GET /apis`).
fn is_v1_probe(r: &str) -> bool {
    (r.starts_with("get /apis/crd.projectcalico.org/v1/ipamconfigs/default ")
        || r.starts_with("list /apis/crd.projectcalico.org/v1/ippools?"))
        && r.ends_with(" 404")
}

/// The requests of calico-cni and calico-ipam that went to the v1 group, but for those probes.
fn v1_requests(reqs: &[String]) -> Vec<&String> {
    reqs.iter()
        .filter(|r| r.contains("crd.projectcalico.org") && !is_v1_probe(r))
        .collect()
}

/// Each v1 probe is followed by a discovery, and only processes that discover probe.
fn assert_probes_discover(reqs: &[String], discovering: bool) {
    let probes = reqs.iter().filter(|r| is_v1_probe(r)).count();
    let discoveries = reqs.iter().filter(|r| r.starts_with("get /apis ")).count();
    if discovering {
        assert_eq!(probes, discoveries, "{}", reqs.join("\n  "));
    } else {
        assert_eq!((probes, discoveries), (0, 0), "{}", reqs.join("\n  "));
    }
}

/// Discovery, with calico-ipam exec'd as Calico runs it: each process finds the group itself.
#[test]
fn dual_stack_pods_in_the_v3_group_found_by_discovery() {
    pods_in_the_v3_group(None, false, 96);
}

/// `calico_api_group`, with calico-ipam's code run in calico-cni's process (the default).
#[test]
fn dual_stack_pods_in_the_v3_group_named_by_calico_api_group() {
    pods_in_the_v3_group(Some("projectcalico.org/v3"), true, 97);
}

/// ADD (plain, pool annotation by name, ipAddrs), CHECK and DEL of pods on the v3 server;
/// `net` makes the pools' CIDRs (10.NET.0.0/24, fd00:NET::/112 and the alternative
/// 10.NET.1.0/24) distinct per case.
fn pods_in_the_v3_group(group: Option<&str>, ipam_in_process: bool, net: u8) {
    let kube = KubeEnv::v3();
    let _x = exclusive();
    let u = unique();
    let tag = format!("cniv3{u}");
    let node = Node::new();
    let _fwd = Forwarder::new(&node.ns, server_port(&kube.server));
    let name = format!("cni-v3-{u}");
    let (v4, v6, alt) = (
        format!("10.{net}.0.0/24"),
        format!("fd00:{net}::/112"),
        format!("10.{net}.1.0/24"),
    );
    kube.purge_ipam(&[&v4, &v6, &alt]);
    let (cid_web, cid_chosen, cid_fixed) = (
        format!("v3web{u}"),
        format!("v3chosen{u}"),
        format!("v3fixed{u}"),
    );
    let _leftovers = IpamLeftoversOnFailure {
        kube: &kube,
        handles: [&cid_web, &cid_chosen, &cid_fixed]
            .map(|c| format!("k8s-pod-network.{c}"))
            .to_vec(),
        cidrs: vec![v4.clone(), v6.clone(), alt.clone()],
    };
    let (p4, p6, palt) = (
        format!("t-cniv3-{u}-v4"),
        format!("t-cniv3-{u}-v6"),
        format!("t-cniv3-{u}-alt"),
    );
    let _pools = PoolGuard {
        kube: &kube,
        names: vec![p4.clone(), p6.clone(), palt.clone()],
    };
    let ns = format!("v3-{u}");
    let sel = format!("calico-rs-test == '{tag}'");
    let pool = |name: &str, cidr: &str, size: u8, sel: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: {name}}}\n\
             spec: {{cidr: '{cidr}', blockSize: {size}, nodeSelector: \"{sel}\"}}\n---\n"
        )
    };
    kube.apply(&format!(
        "{}{}{}{}{}{}{}{}",
        node_yaml(&name, &[("calico-rs-test", &tag)]),
        pool(&p4, &v4, 26, &sel),
        pool(&p6, &v6, 122, &sel),
        // Selects no node: only a pod that names it gets its addresses.
        pool(&palt, &alt, 26, "calico-rs-test == 'nobody'"),
        namespace_yaml(&ns, &[]),
        pod_yaml(&ns, "web", &name, &[]),
        pod_yaml(
            &ns,
            "chosen",
            &name,
            &[("cni.projectcalico.org/ipv4pools", &format!("[\"{palt}\"]"))]
        ),
        pod_yaml(
            &ns,
            "fixed",
            &name,
            &[(
                "cni.projectcalico.org/ipAddrs",
                &format!("[\"10.{net}.0.77\", \"fd00:{net}::77\"]")
            )]
        ),
    ));
    let mut conf = conf(&node, &name, &kube, group);
    conf["ipam_in_process"] = json!(ipam_in_process);
    let mark = kube.audit_mark();

    // A plain pod: both addresses, published on the pod, reachable from the node.
    let web = Netns::new("kv3web");
    let r = node.add(&cid_web, &web, Some((&ns, "web")), &conf);
    let (a4, a6) = (addr_of(&r, 0), addr_of(&r, 1));
    assert!(
        a4.starts_with(&format!("10.{net}.0.")) && a4.ends_with("/32"),
        "{r}"
    );
    assert!(
        a6.starts_with(&format!("fd00:{net}::")) && a6.ends_with("/128"),
        "{r}"
    );
    let a = pod_annotations(&kube, &ns, "web");
    assert_eq!(
        a["cni.projectcalico.org/podIPs"],
        format!("{a4},{a6}"),
        "{a}"
    );
    let host = |a: &str| a.split('/').next().expect("addr").to_string();
    assert!(node.ns.ping(&host(&a4)) && node.ns.ping(&host(&a6)));

    // A pool annotation by name: the v3 pool of that name, though it selects no node.
    let chosen = Netns::new("kv3ch");
    let r_web = r;
    let r = node.add(&cid_chosen, &chosen, Some((&ns, "chosen")), &conf);
    assert!(addr_of(&r, 0).starts_with(&format!("10.{net}.1.")), "{r}");
    assert!(addr_of(&r, 1).starts_with(&format!("fd00:{net}::")), "{r}");

    // ipAddrs: exactly these addresses, from the v3 pools that hold them.
    let fixed = Netns::new("kv3fx");
    let r = node.add(&cid_fixed, &fixed, Some((&ns, "fixed")), &conf);
    assert_eq!(addr_of(&r, 0), format!("10.{net}.0.77/32"), "{r}");
    assert_eq!(addr_of(&r, 1), format!("fd00:{net}::77/128"), "{r}");

    // CHECK of the first pod against its ADD result.
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = r_web;
    let out = node.cni(
        "CHECK",
        &cid_web,
        &web.path(),
        Some((&ns, "web")),
        &with_prev,
    );
    assert!(out.status.success(), "CHECK: {}", text(&out));

    // The IPAM objects are projectcalico.org/v3 ones; nothing was asked of the v1 group but,
    // by a process finding the group, its IPAMConfig (404: not served), and with
    // calico_api_group given nothing asked which groups exist.
    let reqs = kube.requests_since(mark, "calico-");
    assert!(
        v1_requests(&reqs).is_empty(),
        "requests to the v1 group:\n  {}",
        reqs.join("\n  ")
    );
    let discoveries = reqs.iter().filter(|r| r.starts_with("get /apis ")).count();
    assert_probes_discover(&reqs, group.is_none());
    if group.is_none() {
        assert!(discoveries >= 1, "{}", reqs.join("\n  "));
    }
    // One LIST each (a launcher call costs ~0.25 s): the handles name the blocks, the blocks
    // are the node's, their affinities confirmed.
    let (handles, blocks, affinities) = (
        kube.calico("ipamhandles"),
        kube.calico("ipamblocks"),
        kube.calico("blockaffinities"),
    );
    let mut used = std::collections::BTreeSet::new();
    for cid in [&cid_web, &cid_chosen, &cid_fixed] {
        let handle = format!("k8s-pod-network.{cid}");
        let h = named(&handles, &handle)
            .unwrap_or_else(|| panic!("no IPAMHandle {handle} in projectcalico.org/v3"));
        assert_eq!(h["apiVersion"], "projectcalico.org/v3", "{h}");
        let in_blocks = h["spec"]["block"].as_object().expect("blocks");
        assert_eq!(in_blocks.len(), 2, "{h}");
        for cidr in in_blocks.keys() {
            let block: ipnet::IpNet = cidr.parse().expect("cidr");
            let block_name = libipam::names::cidr_to_name(&block);
            let b = named(&blocks, &block_name)
                .unwrap_or_else(|| panic!("no IPAMBlock {block} in projectcalico.org/v3"));
            assert_eq!(b["apiVersion"], "projectcalico.org/v3", "{b}");
            assert_eq!(b["spec"]["affinity"], format!("host:{name}").as_str());
            let aff = libipam::names::affinity_name(&name, &block);
            let a = named(&affinities, &aff)
                .unwrap_or_else(|| panic!("no BlockAffinity {aff} in projectcalico.org/v3"));
            assert_eq!(a["apiVersion"], "projectcalico.org/v3", "{a}");
            assert_eq!(a["spec"]["state"], "confirmed", "{a}");
            used.insert(block_name);
        }
    }

    // DEL: interfaces and routes gone, annotations cleared, every address and handle freed.
    for (cid, pod, pod_name) in [
        (&cid_web, &web, "web"),
        (&cid_chosen, &chosen, "chosen"),
        (&cid_fixed, &fixed, "fixed"),
    ] {
        let out = node.cni("DEL", cid, &pod.path(), Some((&ns, pod_name)), &conf);
        assert!(out.status.success(), "DEL {pod_name}: {}", text(&out));
        assert!(
            pod_links(pod).is_empty(),
            "{pod_name}: {:?}",
            pod_links(pod)
        );
    }
    assert!(node.cali_links().is_empty(), "{:?}", node.cali_links());
    for p in kube.list(&format!("/api/v1/namespaces/{ns}/pods")) {
        let a = &p["metadata"]["annotations"];
        assert_eq!(a["cni.projectcalico.org/podIPs"], "", "{p}");
    }
    let handles = kube.calico("ipamhandles");
    for cid in [&cid_web, &cid_chosen, &cid_fixed] {
        assert!(
            named(&handles, &format!("k8s-pod-network.{cid}")).is_none(),
            "{cid}: handle left"
        );
    }
    let blocks = kube.calico("ipamblocks");
    for block in &used {
        let b = named(&blocks, block).unwrap_or_else(|| panic!("IPAMBlock {block} gone"));
        assert!(
            b["spec"]["allocations"]
                .as_array()
                .expect("allocations")
                .iter()
                .all(Value::is_null),
            "freed: {b}"
        );
    }
    let reqs = kube.requests_since(mark, "calico-");
    assert!(
        v1_requests(&reqs).is_empty(),
        "requests to the v1 group:\n  {}",
        reqs.join("\n  ")
    );
    assert_probes_discover(&reqs, group.is_none());
}

/// ClusterInformation `default` of `projectcalico.org/v3` with `datastoreReady: false` stops ADD
/// (and DEL) with Calico's error before anything is made.
#[test]
fn a_v3_cluster_information_that_is_not_ready_refuses_add_and_del() {
    let kube = KubeEnv::v3();
    let _x = exclusive();
    let u = unique();
    let node = Node::new();
    let _fwd = Forwarder::new(&node.ns, server_port(&kube.server));
    let path = format!("{V3}/clusterinformations/default");
    let ci = kube.get_json(&path).expect("ClusterInformation");
    let set_ready = |ready: bool| {
        let mut v = ci.clone();
        v["spec"]["datastoreReady"] = json!(ready);
        v["metadata"] = json!({"name": "default"});
        kube.apply(&v.to_string());
    };
    let pod = Netns::new("kv3nr");
    let cid = format!("v3nr{u}");
    let mut outs = Vec::new();
    set_ready(false);
    for group in [None, Some("projectcalico.org/v3")] {
        let c = conf(&node, "v3-not-ready", &kube, group);
        for command in ["ADD", "DEL"] {
            let out = node.cni(command, &cid, &pod.path(), Some(("default", "nr")), &c);
            outs.push((format!("{command} {group:?}"), out));
        }
    }
    set_ready(true);
    for (what, out) in outs {
        assert!(!out.status.success(), "{what}: {}", text(&out));
        let e: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{what}: not a CNI error ({e}): {}", text(&out)));
        assert_eq!(e["code"], 11, "{what}: {e}");
        assert!(
            e["details"].as_str().is_some_and(|d| {
                d.contains("Calico is currently not ready to process requests")
                    && d.contains("datastoreReady false")
            }),
            "{what}: {e}"
        );
    }
    assert!(pod_links(&pod).is_empty(), "{:?}", pod_links(&pod));
    assert!(node.cali_links().is_empty(), "{:?}", node.cali_links());
    assert!(
        kube.get_json(&format!("{V3}/ipamhandles/k8s-pod-network.{cid}"))
            .is_none(),
        "a handle was made"
    );
}
