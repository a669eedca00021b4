//! calico-cni with `datastore_type: kubernetes`: the real binaries in a throwaway node netns,
//! talking to the real kube-apiserver of scripts/kube-testenv as the calico-cni user. The
//! pod's annotations are read (pool and address choices) and written (podIP, podIPs,
//! containerID) through the API and checked there; an unreachable server, a failed annotation
//! write and a not-ready datastore leave nothing behind. The node netns reaches the apiserver
//! through `common::kube::Forwarder`.

mod common;
#[path = "../../calico-ipam/tests/kube_env/mod.rs"]
mod kube_env;

use std::process::Output;

use common::kube::{Forwarder, namespace_yaml, pod_yaml, server_port};
use common::{Netns, Node, text};
use kube_env::{IpamLeftoversOnFailure, KubeEnv, PoolGuard, exclusive, node_yaml, unique};
use serde_json::{Value, json};

/// A Kubernetes-datastore netconf for `node` (Kubernetes Node `name`).
fn conf(node: &Node, name: &str, kubeconfig: &std::path::Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "calico",
        "datastore_type": "kubernetes",
        "kubernetes": {"kubeconfig": kubeconfig, "cache_ttl_seconds": 10},
        "policy": {"type": "k8s"},
        "nodename": name,
        "mtu": 1500,
        "ipam_lock_file": node.dir.path().join("ipam.lock"),
        "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"},
    })
}

fn pod_annotations(kube: &KubeEnv, ns: &str, pod: &str) -> Value {
    kube.get_json(&format!("/api/v1/namespaces/{ns}/pods/{pod}"))
        .expect("pod")["metadata"]["annotations"]
        .clone()
}

fn error(out: &Output) -> Value {
    assert!(!out.status.success(), "expected failure: {}", text(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not a CNI error ({e}): {}", text(out)))
}

fn addr_of(result: &Value, i: usize) -> String {
    result["ips"][i]["address"]
        .as_str()
        .expect("address")
        .to_string()
}

/// What is left in a pod netns besides `lo`.
fn pod_links(pod: &Netns) -> Vec<String> {
    pod.links().into_iter().filter(|l| l != "lo").collect()
}

#[test]
fn dual_stack_pods_in_the_kubernetes_datastore() {
    let kube = KubeEnv::get();
    let _x = exclusive();
    let u = unique();
    let tag = format!("cni{u}");
    let node = Node::new();
    let _fwd = Forwarder::new(&node.ns, server_port(&kube.server));
    let name = format!("cni-node-{u}");
    kube.purge_ipam(&[
        "10.91.0.0/24",
        "10.92.0.0/24",
        "fd00:91::/112",
        "fd00:92::/112",
    ]);
    let _pools = PoolGuard {
        kube: &kube,
        names: ["t-cni-v4", "t-cni-v6", "t-cni-alt-v4", "t-cni-alt-v6"]
            .map(String::from)
            .to_vec(),
    };
    let _leftovers = IpamLeftoversOnFailure {
        kube: &kube,
        handles: ["web", "second", "chosen", "fixed"]
            .map(|c| format!("k8s-pod-network.{c}{u}"))
            .to_vec(),
        cidrs: [
            "10.91.0.0/24",
            "10.92.0.0/24",
            "fd00:91::/112",
            "fd00:92::/112",
        ]
        .map(String::from)
        .to_vec(),
    };
    let sel = format!("calico-rs-test == '{tag}'");
    kube.apply(&format!(
        "{node}\
         apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {{name: t-cni-v4}}\n\
         spec: {{cidr: 10.91.0.0/24, blockSize: 26, nodeSelector: \"{sel}\"}}\n---\n\
         apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {{name: t-cni-v6}}\n\
         spec: {{cidr: 'fd00:91::/112', blockSize: 122, nodeSelector: \"{sel}\"}}\n---\n\
         apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {{name: t-cni-alt-v4}}\n\
         spec: {{cidr: 10.92.0.0/24, blockSize: 26, nodeSelector: \"calico-rs-test == 'nobody'\"}}\n---\n\
         apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {{name: t-cni-alt-v6}}\n\
         spec: {{cidr: 'fd00:92::/112', blockSize: 122, nodeSelector: \"calico-rs-test == 'nobody'\"}}\n---\n\
         {plain_ns}{annotated_ns}\
         {p1}{p2}{p3}{p4}",
        node = node_yaml(&name, &[("calico-rs-test", &tag)]),
        plain_ns = namespace_yaml(&format!("plain-{u}"), &[]),
        // Namespace asks for the alternative pools; the pod overrides IPv4 only.
        annotated_ns = namespace_yaml(
            &format!("annotated-{u}"),
            &[
                ("cni.projectcalico.org/ipv4pools", "[\"t-cni-v4\"]"),
                ("cni.projectcalico.org/ipv6pools", "[\"t-cni-alt-v6\"]"),
            ]
        ),
        p1 = pod_yaml(&format!("plain-{u}"), "web", &name, &[]),
        p2 = pod_yaml(
            &format!("annotated-{u}"),
            "chosen",
            &name,
            &[("cni.projectcalico.org/ipv4pools", "[\"10.92.0.0/24\"]")]
        ),
        p3 = pod_yaml(
            &format!("plain-{u}"),
            "fixed",
            &name,
            &[("cni.projectcalico.org/ipAddrs", "[\"10.91.0.77\", \"fd00:91::77\"]")]
        ),
        p4 = pod_yaml(&format!("plain-{u}"), "second", &name, &[]),
    ));
    let conf = conf(&node, &name, &kube.cni);
    let plain = format!("plain-{u}");
    let annotated = format!("annotated-{u}");

    // A plain pod: addresses from the pools selecting the node, published on the pod.
    let web = Netns::new("kweb");
    let cid_web = format!("web{u}");
    let mark = kube.audit_mark();
    let r = node.add(&cid_web, &web, Some((&plain, "web")), &conf);
    let reqs = kube.requests_since(mark, "calico-");
    eprintln!(
        "first dual-stack ADD on the node through calico-cni: {} requests\n  {}",
        reqs.len(),
        reqs.join("\n  ")
    );
    // The API group is found by the one read of IPAMConfig (v1 serves it), which the IPAM's
    // own connection in the same process then uses: no discovery, no second read.
    assert!(
        !reqs.iter().any(|r| r.starts_with("get /apis "))
            && reqs
                .iter()
                .filter(|r| r.contains("/ipamconfigs/default"))
                .count()
                == 1,
        "{}",
        reqs.join("\n  ")
    );
    let (v4, v6) = (addr_of(&r, 0), addr_of(&r, 1));
    assert!(v4.starts_with("10.91.0.") && v4.ends_with("/32"), "{r}");
    assert!(v6.starts_with("fd00:91::") && v6.ends_with("/128"), "{r}");
    let a = pod_annotations(&kube, &plain, "web");
    assert_eq!(a["cni.projectcalico.org/podIP"], v4.as_str(), "{a}");
    assert_eq!(
        a["cni.projectcalico.org/podIPs"],
        format!("{v4},{v6}"),
        "{a}"
    );
    assert_eq!(a["cni.projectcalico.org/containerID"], cid_web.as_str());
    let host = |a: &str| a.split('/').next().expect("addr").to_string();
    assert!(node.ns.ping(&host(&v4)) && node.ns.ping(&host(&v6)));
    let h = kube
        .get_json(&format!(
            "/apis/crd.projectcalico.org/v1/ipamhandles/k8s-pod-network.{cid_web}"
        ))
        .expect("handle");
    assert_eq!(h["spec"]["block"].as_object().map(|m| m.len()), Some(2));

    // Steady state: a second plain pod costs at most 6 API requests in all (GET pod, LIST
    // ippools, POST handle, PUT both blocks, PATCH pod status).
    let second = Netns::new("ksec");
    let cid_second = format!("second{u}");
    let mark = kube.audit_mark();
    node.add(&cid_second, &second, Some((&plain, "second")), &conf);
    let reqs = kube.requests_since(mark, "calico-");
    eprintln!(
        "steady-state dual-stack ADD through calico-cni: {} requests\n  {}",
        reqs.len(),
        reqs.join("\n  ")
    );
    assert!(reqs.len() <= 6, "{}", reqs.join("\n"));

    // Pool annotations: the pod's ipv4pools wins over the namespace's, the namespace's
    // ipv6pools applies (both pools select no node: requested pools bypass nodeSelector).
    let chosen = Netns::new("kchosen");
    let cid_chosen = format!("chosen{u}");
    let r = node.add(&cid_chosen, &chosen, Some((&annotated, "chosen")), &conf);
    assert!(addr_of(&r, 0).starts_with("10.92.0."), "{r}");
    assert!(addr_of(&r, 1).starts_with("fd00:92::"), "{r}");

    // ipAddrs: exactly these addresses, through calico-ipam's IP= argument.
    let fixed = Netns::new("kfixed");
    let cid_fixed = format!("fixed{u}");
    let r = node.add(&cid_fixed, &fixed, Some((&plain, "fixed")), &conf);
    assert_eq!(addr_of(&r, 0), "10.91.0.77/32", "{r}");
    assert_eq!(addr_of(&r, 1), "fd00:91::77/128", "{r}");
    let a = pod_annotations(&kube, &plain, "fixed");
    assert_eq!(
        a["cni.projectcalico.org/podIPs"],
        "10.91.0.77/32,fd00:91::77/128"
    );

    // A DEL for a stale sandbox of the pod leaves the live one's annotations alone.
    let out = node.cni("DEL", "stale-sandbox", "", Some((&plain, "web")), &conf);
    assert!(out.status.success(), "{}", text(&out));
    let a = pod_annotations(&kube, &plain, "web");
    assert_eq!(a["cni.projectcalico.org/podIP"], v4.as_str(), "{a}");

    // DEL clears podIP/podIPs (containerID stays), removes the interfaces, releases.
    for (cid, pod, ns, name) in [
        (&cid_web, &web, &plain, "web"),
        (&cid_second, &second, &plain, "second"),
        (&cid_chosen, &chosen, &annotated, "chosen"),
        (&cid_fixed, &fixed, &plain, "fixed"),
    ] {
        let mark = kube.audit_mark();
        let out = node.cni("DEL", cid, &pod.path(), Some((ns, name)), &conf);
        assert!(out.status.success(), "DEL {name}: {}", text(&out));
        if name == "second" {
            let reqs = kube.requests_since(mark, "calico-");
            eprintln!(
                "steady-state dual-stack DEL through calico-cni: {} requests\n  {}",
                reqs.len(),
                reqs.join("\n  ")
            );
            // PATCH pod/status (a JSON patch whose `test` checks the containerID, so no GET
            // of the pod first), PUT both blocks, DELETE the handle.
            assert!(
                reqs.len() <= 4 && !reqs.iter().any(|r| r.starts_with("get /api/v1/namespaces")),
                "steady-state dual-stack DEL: {} requests:\n  {}",
                reqs.len(),
                reqs.join("\n  ")
            );
        }
        let a = pod_annotations(&kube, ns, name);
        assert_eq!(a["cni.projectcalico.org/podIP"], "", "{name}: {a}");
        assert_eq!(a["cni.projectcalico.org/podIPs"], "", "{name}: {a}");
        assert_eq!(a["cni.projectcalico.org/containerID"], cid.as_str());
        assert!(pod_links(pod).is_empty(), "{name}: {:?}", pod_links(pod));
        assert!(
            kube.get_json(&format!(
                "/apis/crd.projectcalico.org/v1/ipamhandles/k8s-pod-network.{cid}"
            ))
            .is_none(),
            "{name}: handle left"
        );
    }
    assert!(node.cali_links().is_empty(), "{:?}", node.cali_links());
}

/// Issue 10 item 8: a pool annotation of the wrong family (a CIDR, or the name of a pool of
/// the other family) is reported naming the annotation and where it is, not calico-ipam's
/// `ipam.ipv4_pools`; code 7, nothing allocated or made.
#[test]
fn a_pool_annotation_of_the_wrong_family_names_the_annotation() {
    let kube = KubeEnv::get();
    let _x = exclusive();
    let u = unique();
    let tag = format!("cniwf{u}");
    let node = Node::new();
    let _fwd = Forwarder::new(&node.ns, server_port(&kube.server));
    let name = format!("cni-wf-{u}");
    kube.purge_ipam(&["10.94.0.0/24", "fd00:94::/112"]);
    let _pools = PoolGuard {
        kube: &kube,
        names: vec!["t-cniwf-v4".into(), "t-cniwf-v6".into()],
    };
    let _leftovers = IpamLeftoversOnFailure {
        kube: &kube,
        handles: ["cidr", "named", "fromns"]
            .map(|p| format!("k8s-pod-network.wf{p}{u}"))
            .to_vec(),
        cidrs: vec!["10.94.0.0/24".into(), "fd00:94::/112".into()],
    };
    let (pods_ns, annotated_ns) = (format!("wf-{u}"), format!("wf6-{u}"));
    let sel = format!("calico-rs-test == '{tag}'");
    kube.apply(&format!(
        "{node}\
         apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {{name: t-cniwf-v4}}\n\
         spec: {{cidr: 10.94.0.0/24, nodeSelector: \"{sel}\"}}\n---\n\
         apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {{name: t-cniwf-v6}}\n\
         spec: {{cidr: 'fd00:94::/112', nodeSelector: \"{sel}\"}}\n---\n\
         {plain}{annotated}{p1}{p2}{p3}",
        node = node_yaml(&name, &[("calico-rs-test", &tag)]),
        plain = namespace_yaml(&pods_ns, &[]),
        annotated = namespace_yaml(
            &annotated_ns,
            &[("cni.projectcalico.org/ipv6pools", "[\"10.94.0.0/24\"]")]
        ),
        p1 = pod_yaml(
            &pods_ns,
            "cidr",
            &name,
            &[("cni.projectcalico.org/ipv4pools", "[\"fd00:94::/112\"]")]
        ),
        p2 = pod_yaml(
            &pods_ns,
            "named",
            &name,
            &[("cni.projectcalico.org/ipv4pools", "[\"t-cniwf-v6\"]")]
        ),
        p3 = pod_yaml(&annotated_ns, "fromns", &name, &[]),
    ));
    let conf = conf(&node, &name, &kube.cni);
    let pod = Netns::new("kwf");
    for (ns, pod_name, says) in [
        (
            &pods_ns,
            "cidr",
            "the pod's cni.projectcalico.org/ipv4pools annotation lists fd00:94::/112, an IPv6 \
             CIDR: it takes IPv4 pools (names or CIDRs) only",
        ),
        (
            &pods_ns,
            "named",
            "the pod's cni.projectcalico.org/ipv4pools annotation (ipam.ipv4_pools) contains \
             fd00:94::/112 which is an IPv6 pool",
        ),
        (
            &annotated_ns,
            "fromns",
            "the namespace's cni.projectcalico.org/ipv6pools annotation lists 10.94.0.0/24, an \
             IPv4 CIDR: it takes IPv6 pools (names or CIDRs) only",
        ),
    ] {
        let cid = format!("wf{pod_name}{u}");
        let out = node.cni("ADD", &cid, &pod.path(), Some((ns, pod_name)), &conf);
        let e = error(&out);
        assert_eq!(e["code"], 7, "{pod_name}: {e}");
        let said = format!(
            "{} {}",
            e["msg"].as_str().unwrap_or_default(),
            e["details"].as_str().unwrap_or_default()
        );
        assert!(said.contains(says), "{pod_name}: {e}");
        assert!(pod_links(&pod).is_empty(), "{:?}", pod_links(&pod));
        assert!(node.cali_links().is_empty(), "{:?}", node.cali_links());
        assert!(
            kube.get_json(&format!(
                "/apis/crd.projectcalico.org/v1/ipamhandles/k8s-pod-network.{cid}"
            ))
            .is_none(),
            "{pod_name}: a handle was made"
        );
    }
}

#[test]
fn unreachable_api_server_is_code_11_and_leaves_the_pod_netns_empty() {
    let kube = KubeEnv::get();
    let _x = exclusive();
    let node = Node::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let server = format!("https://127.0.0.1:{port}");
    let kubeconfig = kube.kubeconfig_for_server(&server, node.dir.path());
    let conf = conf(&node, "nowhere", &kubeconfig);
    let pod = Netns::new("kdown");
    let out = node.cni(
        "ADD",
        "down1",
        &pod.path(),
        Some(("default", "down")),
        &conf,
    );
    let e = error(&out);
    assert_eq!(e["code"], 11, "{e}");
    assert!(
        e["details"].as_str().is_some_and(|d| d.contains(&server)),
        "must name {server}: {e}"
    );
    assert!(pod_links(&pod).is_empty(), "{:?}", pod_links(&pod));
    assert!(node.cali_links().is_empty());
    let out = node.cni(
        "DEL",
        "down1",
        &pod.path(),
        Some(("default", "down")),
        &conf,
    );
    assert_eq!(error(&out)["code"], 11);
}

#[test]
fn failed_annotation_write_rolls_everything_back() {
    let kube = KubeEnv::get();
    let _x = exclusive();
    let u = unique();
    let tag = format!("cnirb{u}");
    let node = Node::new();
    let _fwd = Forwarder::new(&node.ns, server_port(&kube.server));
    let name = format!("cni-rb-{u}");
    kube.purge_ipam(&["10.93.0.0/24", "fd00:93::/112"]);
    let _pools = PoolGuard {
        kube: &kube,
        names: vec!["t-cnirb-v4".into(), "t-cnirb-v6".into()],
    };
    let _leftovers = IpamLeftoversOnFailure {
        kube: &kube,
        handles: vec![format!("k8s-pod-network.rb{u}")],
        cidrs: vec!["10.93.0.0/24".into(), "fd00:93::/112".into()],
    };
    let sel = format!("calico-rs-test == '{tag}'");
    kube.apply(&format!(
        "{}apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {{name: t-cnirb-v4}}\n\
         spec: {{cidr: 10.93.0.0/24, nodeSelector: \"{sel}\"}}\n---\n\
         apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {{name: t-cnirb-v6}}\n\
         spec: {{cidr: 'fd00:93::/112', nodeSelector: \"{sel}\"}}\n",
        node_yaml(&name, &[("calico-rs-test", &tag)])
    ));
    // Without policy k8s nothing reads the pod first, so its absence shows only when the
    // addresses are published: after IPAM and the dataplane, which must both be undone.
    let mut c = conf(&node, &name, &kube.cni);
    c["policy"] = json!({});
    let pod = Netns::new("krb");
    let cid = format!("rb{u}");
    let out = node.cni(
        "ADD",
        &cid,
        &pod.path(),
        Some(("default", "no-such-pod")),
        &c,
    );
    let e = error(&out);
    assert!(
        e["details"]
            .as_str()
            .is_some_and(|d| d.contains("no-such-pod")),
        "{e}"
    );
    assert!(pod_links(&pod).is_empty(), "{:?}", pod_links(&pod));
    assert!(node.cali_links().is_empty(), "{:?}", node.cali_links());
    assert!(
        kube.get_json(&format!(
            "/apis/crd.projectcalico.org/v1/ipamhandles/k8s-pod-network.{cid}"
        ))
        .is_none(),
        "addresses released"
    );
}

#[test]
fn datastore_not_ready_refuses_add_and_del() {
    let kube = KubeEnv::get();
    let _x = exclusive();
    let node = Node::new();
    let _fwd = Forwarder::new(&node.ns, server_port(&kube.server));
    let ci = kube
        .get_json("/apis/crd.projectcalico.org/v1/clusterinformations/default")
        .expect("ClusterInformation");
    let set_ready = |ready: bool| {
        let mut v = ci.clone();
        v["spec"]["datastoreReady"] = json!(ready);
        v["metadata"] = json!({"name": "default"});
        kube.apply(&v.to_string());
    };
    set_ready(false);
    let conf = conf(&node, "not-ready", &kube.cni);
    let pod = Netns::new("knr");
    let add = node.cni("ADD", "nr1", &pod.path(), Some(("default", "nr")), &conf);
    let del = node.cni("DEL", "nr1", &pod.path(), Some(("default", "nr")), &conf);
    set_ready(true);
    for out in [add, del] {
        let e = error(&out);
        assert!(
            e["details"]
                .as_str()
                .is_some_and(|d| d.contains("not ready") && d.contains("datastoreReady false")),
            "{e}"
        );
    }
    assert!(pod_links(&pod).is_empty());
}

/// `calico -t CONF-ON-STDIN`, run on the host as Calico's installer runs it.
fn calico_t(stdin: &str) -> Output {
    common::run::run_with_stdin(
        std::process::Command::new(common::CNI)
            .arg("-t")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        stdin.as_bytes(),
    )
}

/// The failure `calico -t` prints: Calico's CNI error, code 100.
fn calico_t_failure(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    let e: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not a CNI error ({e}): {}", text(out)));
    assert_eq!(e["code"], 100, "{e}");
    assert_eq!(e["msg"], "data store connection failed", "{e}");
    e["details"].as_str().expect("details").to_string()
}

/// Issue 15, item 9 (k8s spec "testConnection tests" 3245): `calico -t` with Calico's netconf
/// (host-local IPAM, etcd_endpoints, nodename_file_optional, null fields) exits 0 and prints
/// nothing when the datastore is ready; a not-ready datastore, an unreachable API server and
/// a bad configuration exit 1 with Calico's error; the local datastore passes when it opens.
#[test]
fn calico_t_tests_the_datastore_connection() {
    let kube = KubeEnv::get();
    let _x = exclusive();
    let spec_conf = |kubeconfig: &std::path::Path| {
        json!({
            "cniVersion": "1.0.0",
            "name": "net1",
            "type": "calico",
            "etcd_endpoints": "http://127.0.0.1:2379",
            "datastore_type": "kubernetes",
            "ipam": {"type": "host-local", "subnet": "10.0.0.0/8"},
            "kubernetes": {"kubeconfig": kubeconfig},
            "policy": {"type": "k8s"},
            "nodename_file_optional": true,
            "log_level": "debug",
            "nodename": "t-node",
            "mtu": null,
        })
        .to_string()
    };
    let out = calico_t(&spec_conf(&kube.cni));
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));

    let ci = kube
        .get_json("/apis/crd.projectcalico.org/v1/clusterinformations/default")
        .expect("ClusterInformation");
    let set_ready = |ready: bool| {
        let mut v = ci.clone();
        v["spec"]["datastoreReady"] = json!(ready);
        v["metadata"] = json!({"name": "default"});
        kube.apply(&v.to_string());
    };
    set_ready(false);
    let not_ready = calico_t(&spec_conf(&kube.cni));
    set_ready(true);
    assert_eq!(
        calico_t_failure(&not_ready),
        "Calico is currently not ready to process requests"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let elsewhere = kube.kubeconfig_for_server("https://127.0.0.1:1", dir.path());
    let details = calico_t_failure(&calico_t(&spec_conf(&elsewhere)));
    assert!(
        details.starts_with("error getting ClusterInformation: ")
            && details.contains("https://127.0.0.1:1"),
        "{details}"
    );

    let details = calico_t_failure(&calico_t("{not json"));
    assert!(details.starts_with("failed to load netconf: "), "{details}");

    let local = json!({
        "cniVersion": "1.0.0", "name": "net1", "type": "calico",
        "datastore_type": "local", "datastore_path": dir.path().join("store"),
        "ipam": {"type": "calico-ipam"},
    });
    let out = calico_t(&local.to_string());
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
}
