//! Scenarios of Calico's own suite (`cni-plugin/tests/calico_cni_k8s_test.go`, v3.31.7) that
//! calico-cni must pass, reproduced with the real binaries in a throwaway node netns against the
//! real kube-apiserver of scripts/kube-testenv: the configuration and `CNI_ARGS` exactly as
//! Calico's test utilities send them, and Calico's behaviour asserted on the result, in the
//! pod netns and through the API. The spec each test stands for is named on it.
//!
//! Two things differ from Calico's runs, on purpose and only to keep the host clean: the IPAM
//! lock (and with it the node cache) lives in the test's directory instead of /var/run/calico,
//! and host-local keeps its allocations in the test's directory instead of /var/lib/cni.

mod common;
#[path = "../../calico-ipam/tests/kube_env/mod.rs"]
mod kube_env;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::kube::{Forwarder, listen_in, namespace_yaml, pod_yaml, server_port};
use common::{Netns, Node, text};
use kube_env::{KubeEnv, PoolGuard, node_yaml, shared, unique};
use serde_json::{Value, json};
use sha1::{Digest, Sha1};

/// `json.Marshal` of Calico's Go `types.NetConf` as its tests build it (name `calico-uts`,
/// calico-ipam, policy k8s, kubeconfig, nodename): every unset field is written, as `null`,
/// `""` or `0`. Generated from Calico v3.31.7's types; NODE, KUBECONFIG and LOCK are filled in.
const GO_MARSHALLED_NETCONF: &str = r#"{"cniVersion":"1.0.0","name":"calico-uts","type":"calico","mode":"","vxlan_mac_prefix":"","vxlan_vni":0,"ipam":{"Name":"","type":"calico-ipam","subnet":"","assign_ipv4":null,"assign_ipv6":null},"args":{"org.apache.mesos":{"network_info":{"name":"","labels":{}}}},"mtu":0,"num_queues":0,"nodename":"NODE","nodename_file":"","ipam_lock_file":"LOCK","nodename_file_optional":true,"datastore_type":"kubernetes","etcd_endpoints":"http://127.0.0.1:2379","etcd_discovery_srv":"","log_level":"debug","log_file_path":"","log_file_max_size":0,"log_file_max_age":0,"log_file_max_count":0,"policy":{"type":"k8s","k8s_api_root":"","k8s_auth_token":"","k8s_client_certificate":"","k8s_client_key":"","k8s_certificate_authority":""},"kubernetes":{"k8s_api_root":"","kubeconfig":"KUBECONFIG","node_name":""},"feature_control":{"ip_addrs_no_ipam":false,"floating_ips":false},"etcd_scheme":"","etcd_key_file":"","etcd_cert_file":"","etcd_ca_cert_file":"","container_settings":{"allow_ip_forwarding":false},"windows_disable_default_deny_all_policy":false,"RuntimeConfig":{"DNS":{}},"readiness_gates":null,"etcd_authority":"","hostname":""}"#;

fn go_netconf(node: &Node, node_name: &str, kube: &KubeEnv) -> Value {
    let text = GO_MARSHALLED_NETCONF
        .replace("NODE", node_name)
        .replace("KUBECONFIG", &kube.cni.display().to_string())
        .replace(
            "LOCK",
            &node.dir.path().join("ipam.lock").display().to_string(),
        );
    serde_json::from_str(&text).expect("netconf")
}

/// Calico's test utilities' `CNI_ARGS` (no `IgnoreUnknown`), plus `;IP=<ip>` when asked.
fn calico_args(namespace: &str, pod: &str, ip: Option<&str>) -> String {
    let mut args = format!(
        "K8S_POD_NAME={pod};K8S_POD_NAMESPACE={namespace};K8S_POD_INFRA_CONTAINER_ID=whatever"
    );
    if let Some(ip) = ip {
        args.push_str(&format!(";IP={ip}"));
    }
    args
}

/// A Kubernetes cluster view of one simulated node: the node netns reaching the apiserver.
struct Cluster {
    kube: KubeEnv,
    node: Node,
    _fwd: Forwarder,
    /// The Kubernetes Node's name.
    name: String,
    u: String,
}

impl Cluster {
    fn new(node_spec: &str) -> Cluster {
        let kube = KubeEnv::get();
        let node = Node::new();
        let fwd = Forwarder::new(&node.ns, server_port(&kube.server));
        let u = unique();
        let name = format!("compat-node-{u}");
        let mut yaml = node_yaml(&name, &[("calico-rs-test", &format!("compat{u}"))]);
        if !node_spec.is_empty() {
            yaml = yaml.replace("---\n", &format!("spec: {node_spec}\n---\n"));
        }
        kube.apply(&yaml);
        Cluster {
            kube,
            node,
            _fwd: fwd,
            name,
            u,
        }
    }

    fn add(&self, cid: &str, pod: &Netns, args: &str, conf: &Value) -> Output {
        self.node.cni_with_args("ADD", cid, &pod.path(), args, conf)
    }

    fn del(&self, cid: &str, pod: &Netns, args: &str, conf: &Value) {
        let out = self.node.cni_with_args("DEL", cid, &pod.path(), args, conf);
        assert!(out.status.success(), "DEL {cid}: {}", text(&out));
    }

    fn annotations(&self, namespace: &str, pod: &str) -> Value {
        self.kube
            .get_json(&format!("/api/v1/namespaces/{namespace}/pods/{pod}"))
            .expect("pod")["metadata"]["annotations"]
            .clone()
    }

    /// Nothing of the attachment is left: no link in the pod netns, no cali link on the node.
    fn assert_nothing_left(&self, pod: &Netns) {
        let links: Vec<String> = pod.links().into_iter().filter(|l| l != "lo").collect();
        assert!(links.is_empty(), "left in the pod netns: {links:?}");
        assert!(
            self.node.cali_links().is_empty(),
            "left on the node: {:?}",
            self.node.cali_links()
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kube.delete(&format!("/api/v1/nodes/{}", self.name));
    }
}

fn ok(out: &Output) -> Value {
    assert!(out.status.success(), "expected success: {}", text(out));
    serde_json::from_slice(&out.stdout).expect("result JSON")
}

fn err(out: &Output) -> Value {
    assert!(!out.status.success(), "expected failure: {}", text(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not a CNI error ({e}): {}", text(out)))
}

/// The pod's global addresses of one family (`-4`/`-6`), as `addr/prefix`.
fn global_addresses(pod: &Netns, family: &str) -> Vec<String> {
    pod.ip(&[family, "-o", "addr", "show", "scope", "global"])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

fn in_net(addr: &str, net: &str) -> bool {
    let a: ipnet::IpNet = addr.parse().expect("address");
    let n: ipnet::IpNet = net.parse().expect("net");
    n.contains(&a.addr())
}

/// Calico's result shape: every address /32 or /128 on interface 1, the pod's `eth0` with a MAC
/// and its sandbox; the host veth first.
fn assert_calico_result(r: &Value, pod: &Netns, count: usize) {
    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), count, "{r}");
    let interfaces = r["interfaces"].as_array().expect("interfaces");
    assert_eq!(interfaces.len(), 2, "{r}");
    for ip in ips {
        let i = ip["interface"].as_u64().expect("interface index") as usize;
        assert_eq!(interfaces[i]["name"], "eth0", "{r}");
        assert!(
            interfaces[i]["mac"].as_str().is_some_and(|m| !m.is_empty()),
            "{r}"
        );
        assert_eq!(interfaces[i]["sandbox"], pod.path().as_str(), "{r}");
        let a = ip["address"].as_str().expect("address");
        assert!(a.ends_with("/32") || a.ends_with("/128"), "{r}");
    }
}

/// k8s spec 3461 "When CNI ADD success, return all interfaces should allocate IPv4 only" and
/// 3514 "...should allocate IPv4 and IPv6 addresses and handle dual stack": the netconf is
/// Calico's Go type marshalled as is, so `assign_ipv4`, `assign_ipv6` and `readiness_gates` are
/// `null` and every unset string is `""` — all of which mean "not set".
#[test]
fn calicos_marshalled_netconf_with_nulls_networks_ipv4_only_and_dual_stack_pods() {
    let _g = shared();
    let c = Cluster::new("");
    let u = &c.u;
    let (v4_pool, v6_pool) = ("50.80.0.0/16", "fd80:50::/96");
    c.kube.purge_ipam(&[v4_pool, v6_pool]);
    let _pools = PoolGuard {
        kube: &c.kube,
        names: vec![format!("t-compat-v4-{u}"), format!("t-compat-v6-{u}")],
    };
    let ns = format!("compat-{u}");
    c.kube.apply(&format!(
        "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {{name: t-compat-v4-{u}}}\n\
         spec: {{cidr: '{v4_pool}', nodeSelector: \"calico-rs-test == 'nobody'\"}}\n---\n\
         apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {{name: t-compat-v6-{u}}}\n\
         spec: {{cidr: '{v6_pool}', nodeSelector: \"calico-rs-test == 'nobody'\"}}\n---\n\
         {}{}{}",
        namespace_yaml(&ns, &[]),
        pod_yaml(
            &ns,
            "test-pod-v4",
            &c.name,
            &[("cni.projectcalico.org/ipv4pools", "[\"50.80.0.0/16\"]")]
        ),
        pod_yaml(
            &ns,
            "test-pod-ds",
            &c.name,
            &[
                ("cni.projectcalico.org/ipv4pools", "[\"50.80.0.0/16\"]"),
                ("cni.projectcalico.org/ipv6pools", "[\"fd80:50::/96\"]"),
            ]
        ),
    ));
    let conf = go_netconf(&c.node, &c.name, &c.kube);
    assert_eq!(conf["ipam"]["assign_ipv4"], Value::Null);
    assert_eq!(conf["readiness_gates"], Value::Null);

    // IPv4 only: assign_ipv4 null means "true", assign_ipv6 null means "false".
    let pod = Netns::new("cmpv4");
    let cid = format!("v4{u}");
    let args = calico_args(&ns, "test-pod-v4", None);
    let r = ok(&c.add(&cid, &pod, &args, &conf));
    assert_calico_result(&r, &pod, 1);
    let v4 = r["ips"][0]["address"]
        .as_str()
        .expect("address")
        .to_string();
    assert!(in_net(&v4, v4_pool), "{r}");
    assert_eq!(global_addresses(&pod, "-4"), [v4.as_str()]);
    assert!(global_addresses(&pod, "-6").is_empty());
    assert_eq!(
        c.annotations(&ns, "test-pod-v4")["cni.projectcalico.org/podIPs"],
        v4.as_str()
    );
    c.del(&cid, &pod, &args, &conf);
    c.assert_nothing_left(&pod);
    assert!(
        c.kube
            .get_json(&format!(
                "/apis/crd.projectcalico.org/v1/ipamhandles/calico-uts.{cid}"
            ))
            .is_none(),
        "the handle must be released"
    );

    // Dual stack: the same bytes with assign_ipv6 "true", as Calico's test sets it.
    let mut conf = conf;
    conf["ipam"]["assign_ipv6"] = json!("true");
    let pod = Netns::new("cmpds");
    let cid = format!("ds{u}");
    let args = calico_args(&ns, "test-pod-ds", None);
    let r = ok(&c.add(&cid, &pod, &args, &conf));
    assert_calico_result(&r, &pod, 2);
    let (v4, v6) = (
        r["ips"][0]["address"].as_str().expect("v4").to_string(),
        r["ips"][1]["address"].as_str().expect("v6").to_string(),
    );
    assert!(in_net(&v4, v4_pool) && in_net(&v6, v6_pool), "{r}");
    assert_eq!(global_addresses(&pod, "-4"), [v4]);
    assert_eq!(global_addresses(&pod, "-6"), [v6]);
    c.del(&cid, &pod, &args, &conf);
    c.assert_nothing_left(&pod);
}

/// Calico's host veth rule, computed here independently of the plugin.
fn expected_host_veth(namespace: &str, pod: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{pod}"));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("cali{}", &hex[..11])
}

/// What host-local holds in `data_dir` for network `net` (its allocation files).
fn host_local_holds(data_dir: &std::path::Path, net: &str) -> Vec<String> {
    std::fs::read_dir(data_dir.join(net))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains('.') || n.contains(':'))
                .filter(|n| !n.starts_with("last_reserved_ip"))
                .collect()
        })
        .unwrap_or_default()
}

/// k8s spec 219 "using host-local IPAM successfully networks the namespace": the runtime's
/// `CNI_ARGS` carry `K8S_POD_NAME=...` without `IgnoreUnknown`, which host-local refuses on its
/// own (shown first); calico-cni puts `IgnoreUnknown=1` in front before delegating, as Calico does.
#[test]
fn host_local_gets_ignore_unknown_and_networks_the_pod() {
    let _g = shared();
    let c = Cluster::new("");
    let u = &c.u;
    let ns = format!("compat-hl-{u}");
    c.kube.apply(&format!(
        "{}{}",
        namespace_yaml(&ns, &[]),
        pod_yaml(&ns, "test-pod-1", &c.name, &[])
    ));
    let data_dir = c.node.dir.path().join("host-local");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "net1",
        "type": "calico",
        "etcd_endpoints": "http://127.0.0.1:2379",
        "datastore_type": "kubernetes",
        "ipam": {"type": "host-local", "subnet": "10.0.0.0/8", "dataDir": data_dir},
        "kubernetes": {"kubeconfig": c.kube.cni},
        "policy": {"type": "k8s"},
        "nodename_file_optional": true,
        "log_level": "debug",
        "nodename": c.name,
        "ipam_lock_file": c.node.dir.path().join("ipam.lock"),
    });
    let args = calico_args(&ns, "test-pod-1", None);

    // The control: host-local alone refuses these arguments.
    let direct = common::run::run_with_stdin(
        Command::new("/usr/lib/cni/host-local")
            .env_clear()
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", "direct")
            .env("CNI_NETNS", "/proc/self/ns/net")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .env("CNI_ARGS", &args),
        conf.to_string().as_bytes(),
    );
    assert!(
        String::from_utf8_lossy(&direct.stdout).contains("unknown args"),
        "host-local must refuse pod arguments without IgnoreUnknown: {}",
        text(&direct)
    );

    let pod = Netns::new("cmphl");
    let cid = format!("hl{u}");
    let r = ok(&c.add(&cid, &pod, &args, &conf));
    assert_calico_result(&r, &pod, 1);
    let ip = r["ips"][0]["address"]
        .as_str()
        .expect("address")
        .to_string();
    assert!(in_net(&ip, "10.0.0.0/8") && ip.ends_with("/32"), "{r}");
    let veth = expected_host_veth(&ns, "test-pod-1");
    assert_eq!(r["interfaces"][0]["name"], veth.as_str(), "{r}");
    assert_eq!(global_addresses(&pod, "-4"), [ip.as_str()]);
    let routes = pod.ip(&["-4", "route"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0")
            && routes.contains("169.254.1.1 dev eth0 scope link"),
        "{routes}"
    );
    let host_routes = c.node.ns.ip(&["-4", "route", "show", "dev", &veth]);
    let bare = ip.trim_end_matches("/32");
    assert!(
        host_routes.contains(&format!("{bare} scope link")),
        "{host_routes}"
    );
    let link = c.node.ns.ip(&["link", "show", &veth]);
    assert!(link.contains("mtu 1500") && link.contains(",UP"), "{link}");
    for (sysctl, want) in [
        (format!("net/ipv4/conf/{veth}/proxy_arp"), "1"),
        (format!("net/ipv4/neigh/{veth}/proxy_delay"), "0"),
        (format!("net/ipv4/conf/{veth}/forwarding"), "1"),
    ] {
        let out = Command::new("ip")
            .args(["netns", "exec", &c.node.ns.name, "cat"])
            .arg(format!("/proc/sys/{sysctl}"))
            .output()
            .expect("cat");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want,
            "{sysctl}"
        );
    }
    assert_eq!(
        c.annotations(&ns, "test-pod-1")["cni.projectcalico.org/podIP"],
        ip.as_str()
    );
    assert_eq!(host_local_holds(&data_dir, "net1").len(), 1);

    c.del(&cid, &pod, &args, &conf);
    c.assert_nothing_left(&pod);
    assert!(
        host_local_holds(&data_dir, "net1").is_empty(),
        "host-local still holds {:?}",
        host_local_holds(&data_dir, "net1")
    );
}

/// host-local `usePodCidr`, old style (`ipam.subnet`), with the Node's single `spec.podCIDR`:
/// k8s spec 923 "Using host-local IPAM with one PodCIDR (old-style inline subnet): request an
/// IP then release it, and then request it again".
#[test]
fn host_local_use_pod_cidr_takes_the_nodes_pod_cidr() {
    let _g = shared();
    let c = Cluster::new("{podCIDR: 10.0.0.0/24}");
    let u = &c.u;
    let ns = format!("compat-pc-{u}");
    c.kube.apply(&format!(
        "{}{}{}",
        namespace_yaml(&ns, &[]),
        pod_yaml(&ns, "test-pod", &c.name, &[]),
        pod_yaml(&ns, "run2", &c.name, &[])
    ));
    let data_dir = c.node.dir.path().join("host-local");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "net6",
        "nodename_file_optional": true,
        "type": "calico",
        "etcd_endpoints": "http://127.0.0.1:2379",
        "datastore_type": "kubernetes",
        "ipam": {"type": "host-local", "subnet": "usePodCidr", "dataDir": data_dir},
        "kubernetes": {"kubeconfig": c.kube.cni},
        "policy": {"type": "k8s"},
        "log_level": "debug",
        "nodename": c.name,
        "ipam_lock_file": c.node.dir.path().join("ipam.lock"),
    });
    // Twice the same address: the DEL in between must have released it in host-local.
    for (round, pod_name) in ["test-pod", "run2"].into_iter().enumerate() {
        let pod = Netns::new("cmppc");
        let cid = format!("pc{round}{u}");
        let args = calico_args(&ns, pod_name, Some("10.0.0.42"));
        let r = ok(&c.add(&cid, &pod, &args, &conf));
        assert_eq!(r["ips"][0]["address"], "10.0.0.42/32", "{r}");
        assert_eq!(global_addresses(&pod, "-4"), ["10.0.0.42/32"]);
        let routes = pod.ip(&["-4", "route"]);
        assert!(
            routes.contains("default via 169.254.1.1 dev eth0") && !routes.contains("10."),
            "{routes}"
        );
        c.del(&cid, &pod, &args, &conf);
        c.assert_nothing_left(&pod);
        assert!(host_local_holds(&data_dir, "net6").is_empty());
    }
}

/// host-local `usePodCidr` and `usePodCidrIPv6` in `ranges`, with the Node's dual-stack
/// `spec.podCIDRs`: k8s spec 1034 "Using host-local IPAM with two PodCIDRs (new-style with
/// IPv4 and IPv6 both using usePodCidr, no routes)"; then Calico's errors for a Node without
/// pod CIDRs and for `usePodCidrIPv6` on an IPv4-only Node, each leaving nothing behind.
#[test]
fn host_local_use_pod_cidr_ranges_take_the_nodes_dual_stack_pod_cidrs() {
    let _g = shared();
    let c = Cluster::new("{podCIDRs: [10.10.0.0/24, 'dead:beef::/96']}");
    let u = &c.u;
    let ns = format!("compat-pcs-{u}");
    c.kube.apply(&format!(
        "{}{}",
        namespace_yaml(&ns, &[]),
        pod_yaml(&ns, "test-pod", &c.name, &[])
    ));
    let data_dir = c.node.dir.path().join("host-local");
    let conf_for = |node: &str| {
        json!({
            "cniVersion": "0.3.1",
            "name": "net6",
            "nodename_file_optional": true,
            "type": "calico",
            "datastore_type": "kubernetes",
            "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [
                [{"subnet": "usePodCidr"}],
                [{"subnet": "usePodCidrIPv6"}]
            ]},
            "kubernetes": {"kubeconfig": c.kube.cni},
            "policy": {"type": "k8s"},
            "nodename": node,
            "ipam_lock_file": c.node.dir.path().join("ipam.lock"),
        })
    };
    let conf = conf_for(&c.name);
    let pod = Netns::new("cmppcs");
    let cid = format!("pcs{u}");
    let args = calico_args(&ns, "test-pod", Some("10.10.0.42"));
    let r = ok(&c.add(&cid, &pod, &args, &conf));
    assert_eq!(r["ips"][0]["address"], "10.10.0.42/32", "{r}");
    let v6 = r["ips"][1]["address"].as_str().expect("v6").to_string();
    assert!(in_net(&v6, "dead:beef::/96") && v6.ends_with("/128"), "{r}");
    assert_eq!(global_addresses(&pod, "-4"), ["10.10.0.42/32"]);
    assert_eq!(global_addresses(&pod, "-6"), [v6]);
    // DEL needs no API server: the pseudo-subnets become placeholders host-local can parse.
    c.del(&cid, &pod, &args, &conf);
    c.assert_nothing_left(&pod);
    assert!(host_local_holds(&data_dir, "net6").is_empty());

    // A Node without pod CIDRs, and an IPv4-only Node asked for usePodCidrIPv6.
    let bare = format!("compat-bare-{u}");
    let v4_only = format!("compat-v4only-{u}");
    c.kube.apply(&format!(
        "{}{}",
        node_yaml(&bare, &[("calico-rs-test", "nobody")]),
        node_yaml(&v4_only, &[("calico-rs-test", "nobody")])
            .replace("---\n", "spec: {podCIDR: 10.11.0.0/24}\n---\n")
    ));
    for (node, code, msg) in [
        (&bare, 11, format!("no podCidr for node {bare}")),
        (
            &v4_only,
            7,
            "usePodCidrIPv6 found but there is no IPv6 CIDR configured".to_string(),
        ),
    ] {
        let pod = Netns::new("cmppce");
        let e = err(&c.add(&format!("pce{u}"), &pod, &args, &conf_for(node)));
        assert_eq!(
            (e["code"].as_u64(), e["msg"].as_str()),
            (Some(code), Some(msg.as_str())),
            "{e}"
        );
        c.assert_nothing_left(&pod);
        assert!(host_local_holds(&data_dir, "net6").is_empty());
    }
    for node in [&bare, &v4_only] {
        c.kube.delete(&format!("/api/v1/nodes/{node}"));
    }
}

/// An HTTP endpoint in the node netns answering with `statuses` in turn (the last one for every
/// later request), counting the requests: a readiness gate under the test's control.
struct Gate {
    url: String,
    hits: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Gate {
    fn new(node: &Node, statuses: &[u16]) -> Gate {
        let listener: TcpListener = listen_in(&node.ns, 0);
        let url = format!(
            "http://127.0.0.1:{}/readiness",
            listener.local_addr().expect("addr").port()
        );
        listener.set_nonblocking(true).expect("nonblocking");
        let (hits, stop) = (
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (h, st, statuses) = (hits.clone(), stop.clone(), statuses.to_vec());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let n = h.fetch_add(1, Ordering::SeqCst) as usize;
                let status = statuses[n.min(statuses.len() - 1)];
                let mut reader = BufReader::new(conn);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|r| r > 2) {
                    line.clear();
                }
                let _ = write!(
                    reader.get_mut(),
                    "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOk"
                );
            }
        });
        Gate {
            url,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn hits(&self) -> u32 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The netconf of k8s specs 3145 and 3212 ("net10", calico-ipam, policy k8s) with `gates`.
fn gated_netconf(c: &Cluster, gates: Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "net10",
        "type": "calico",
        "etcd_endpoints": "http://127.0.0.1:2379",
        "datastore_type": "kubernetes",
        "nodename_file_optional": true,
        "log_level": "info",
        "readiness_gates": gates,
        "ipam": {"type": "calico-ipam"},
        "kubernetes": {"kubeconfig": c.kube.cni},
        "policy": {"type": "k8s"},
        "nodename": c.name,
        "ipam_lock_file": c.node.dir.path().join("ipam.lock"),
    })
}

/// A pool for this cluster's node only, and a namespace with pod `test-pod`.
fn gated_setup<'a>(c: &'a Cluster, cidr: &str) -> (PoolGuard<'a>, String) {
    let u = &c.u;
    c.kube.purge_ipam(&[cidr]);
    let pool = format!("t-compat-gate-{u}");
    let ns = format!("compat-gate-{u}");
    c.kube.apply(&format!(
        "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {{name: {pool}}}\n\
         spec: {{cidr: '{cidr}', nodeSelector: \"calico-rs-test == 'compat{u}'\"}}\n---\n{}{}",
        namespace_yaml(&ns, &[]),
        pod_yaml(&ns, "test-pod", &c.name, &[])
    ));
    (
        PoolGuard {
            kube: &c.kube,
            names: vec![pool],
        },
        ns,
    )
}

/// The ADD failed before anything was made: no link, no handle, no published address.
fn assert_refused_cleanly(c: &Cluster, pod: &Netns, cid: &str, ns: &str) {
    c.assert_nothing_left(pod);
    assert!(
        c.kube
            .get_json(&format!(
                "/apis/crd.projectcalico.org/v1/ipamhandles/net10.{cid}"
            ))
            .is_none(),
        "nothing may be allocated"
    );
    let a = c.annotations(ns, "test-pod");
    assert!(a.get("cni.projectcalico.org/podIP").is_none(), "{a}");
}

/// k8s spec 3145 "using bogus readiness_gates should fail container creation": the spec's
/// `readiness_gates` is a bare string, not a list. Then the other ways a gate fails: a
/// malformed URL (Calico's `invalid URL set for ReadinessGates:...`), and a gate that never
/// becomes ready (asked at once and every 5 s, given up after 30 s). Each ADD fails before
/// anything is allocated or created.
#[test]
fn bogus_readiness_gates_fail_the_add_and_leave_nothing() {
    let _g = shared();
    let c = Cluster::new("");
    let (_pool, ns) = gated_setup(&c, "10.166.0.0/24");
    let args = calico_args(&ns, "test-pod", None);
    let pod = Netns::new("cmpgb");
    let cid = format!("gate{}", c.u);

    let conf = gated_netconf(&c, json!("http://localhost:9099/invalid_x12vx"));
    let e = err(&c.add(&cid, &pod, &args, &conf));
    assert_eq!(e["code"], 7, "{e}");
    assert!(
        e["details"]
            .as_str()
            .is_some_and(|d| d.contains("readiness_gates must be a list of URLs")),
        "{e}"
    );
    assert_refused_cleanly(&c, &pod, &cid, &ns);
    // Calico's spec then runs DEL with the same configuration; it fails the same way.
    let out = c.node.cni_with_args("DEL", &cid, &pod.path(), &args, &conf);
    assert_eq!(err(&out)["code"], 7);

    let conf = gated_netconf(&c, json!(["localhost:9099/readiness"]));
    let e = err(&c.add(&cid, &pod, &args, &conf));
    assert_eq!(e["code"], 7, "{e}");
    assert!(
        e["details"]
            .as_str()
            .is_some_and(|d| d
                .starts_with("invalid URL set for ReadinessGates:localhost:9099/readiness Error:")),
        "{e}"
    );
    assert_refused_cleanly(&c, &pod, &cid, &ns);

    let gate = Gate::new(&c.node, &[503]);
    let conf = gated_netconf(&c, json!([gate.url]));
    let e = err(&c.add(&cid, &pod, &args, &conf));
    assert_eq!(e["code"], 11, "{e}");
    assert_eq!(
        e["msg"],
        format!(
            "readiness gate {} did not become ready within 30s",
            gate.url
        ),
        "{e}"
    );
    assert_eq!(
        e["details"], "endpoint is not ready, response code returned:503",
        "{e}"
    );
    assert!(gate.hits() >= 2, "asked again after the first refusal");
    assert_refused_cleanly(&c, &pod, &cid, &ns);
}

/// k8s spec 3212 "using valid readiness_gates should successfully create container": the gate
/// answers 503 once, then 200; ADD waits for it and goes ahead.
#[test]
fn valid_readiness_gates_let_the_add_through() {
    let _g = shared();
    let c = Cluster::new("");
    let (_pool, ns) = gated_setup(&c, "10.167.0.0/24");
    let gate = Gate::new(&c.node, &[503, 200]);
    let conf = gated_netconf(&c, json!([gate.url]));
    let args = calico_args(&ns, "test-pod", None);
    let pod = Netns::new("cmpgv");
    let cid = format!("gatev{}", c.u);
    let r = ok(&c.add(&cid, &pod, &args, &conf));
    assert_eq!(gate.hits(), 2, "one refusal, then ready");
    assert_calico_result(&r, &pod, 1);
    let ip = r["ips"][0]["address"].as_str().expect("address");
    assert!(in_net(ip, "10.167.0.0/24"), "{r}");
    c.del(&cid, &pod, &args, &conf);
    c.assert_nothing_left(&pod);
}

/// The netconf of Calico's annotation specs (`calico-uts`, calico-ipam, policy k8s) with
/// `feature_control` as given.
fn featured_netconf(c: &Cluster, features: Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "calico-uts",
        "type": "calico",
        "datastore_type": "kubernetes",
        "kubernetes": {"kubeconfig": c.kube.cni},
        "policy": {"type": "k8s"},
        "nodename_file_optional": true,
        "log_level": "debug",
        "feature_control": features,
        "nodename": c.name,
        "ipam_lock_file": c.node.dir.path().join("ipam.lock"),
        "ipam": {"type": "calico-ipam"},
    })
}

/// A pool for this cluster's node only, a namespace and the pods given as (name, annotations).
fn annotated_setup<'a>(
    c: &'a Cluster,
    cidr: &str,
    pods: &[(&str, &[(&str, &str)])],
) -> (PoolGuard<'a>, String) {
    let u = &c.u;
    c.kube.purge_ipam(&[cidr]);
    let pool = format!("t-compat-ann-{u}");
    let ns = format!("compat-ann-{u}");
    let mut yaml = format!(
        "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {{name: {pool}}}\n\
         spec: {{cidr: '{cidr}', nodeSelector: \"calico-rs-test == 'compat{u}'\"}}\n---\n{}",
        namespace_yaml(&ns, &[])
    );
    for (name, annotations) in pods {
        yaml.push_str(&pod_yaml(&ns, name, &c.name, annotations));
    }
    c.kube.apply(&yaml);
    (
        PoolGuard {
            kube: &c.kube,
            names: vec![pool],
        },
        ns,
    )
}

fn handle_exists(c: &Cluster, handle: &str) -> bool {
    c.kube
        .get_json(&format!(
            "/apis/crd.projectcalico.org/v1/ipamhandles/{handle}"
        ))
        .is_some()
}

/// k8s spec 1805 "using ipAddrsNoIpam annotation ... should successfully assign the annotated IP
/// address", "should fail if ipAddrsNoIpam is not enabled" and "should return an error if
/// multiple addresses are requested": with `feature_control.ip_addrs_no_ipam` the pod gets
/// exactly the annotated address and IPAM holds nothing for it.
#[test]
fn ip_addrs_no_ipam_bypasses_ipam_when_enabled() {
    let _g = shared();
    let c = Cluster::new("");
    let (_pool, ns) = annotated_setup(
        &c,
        "10.168.0.0/24",
        &[
            (
                "given",
                &[("cni.projectcalico.org/ipAddrsNoIpam", "[\"10.168.0.1\"]")],
            ),
            (
                "two",
                &[(
                    "cni.projectcalico.org/ipAddrsNoIpam",
                    "[\"10.168.0.1\", \"10.168.0.2\"]",
                )],
            ),
        ],
    );
    let on = featured_netconf(&c, json!({"ip_addrs_no_ipam": true, "floating_ips": false}));
    let off = featured_netconf(
        &c,
        json!({"ip_addrs_no_ipam": false, "floating_ips": false}),
    );
    let pod = Netns::new("cmpni");
    let cid = format!("noipam{}", c.u);
    let args = calico_args(&ns, "given", None);

    let e = err(&c.add(&cid, &pod, &args, &off));
    assert_eq!(
        (e["code"].as_u64(), e["details"].as_str()),
        (
            Some(7),
            Some("requested feature is not enabled: ip_addrs_no_ipam")
        ),
        "{e}"
    );
    c.assert_nothing_left(&pod);

    let two = calico_args(&ns, "two", None);
    let e = err(&c.add(&cid, &pod, &two, &on));
    assert_eq!(
        e["details"],
        "cannot have more than one IPv4 address for \"cni.projectcalico.org/ipAddrsNoIpam\" annotation",
        "{e}"
    );
    c.assert_nothing_left(&pod);

    let r = ok(&c.add(&cid, &pod, &args, &on));
    assert_calico_result(&r, &pod, 1);
    assert_eq!(r["ips"][0]["address"], "10.168.0.1/32", "{r}");
    assert_eq!(global_addresses(&pod, "-4"), ["10.168.0.1/32"]);
    assert_eq!(
        c.annotations(&ns, "given")["cni.projectcalico.org/podIPs"],
        "10.168.0.1/32"
    );
    assert!(
        !handle_exists(&c, &format!("calico-uts.{cid}")),
        "IPAM must not be asked"
    );
    c.del(&cid, &pod, &args, &on);
    c.assert_nothing_left(&pod);
}

/// k8s spec 1723 "using floatingIPs annotation to assign a DNAT": with
/// `feature_control.floating_ips` the ADD goes ahead (Felix reads the floating IPs from the
/// pod); without it the ADD fails with Calico's error and nothing is allocated.
#[test]
fn floating_ips_need_the_feature() {
    let _g = shared();
    let c = Cluster::new("");
    let (_pool, ns) = annotated_setup(
        &c,
        "10.169.0.0/24",
        &[(
            "floating",
            &[("cni.projectcalico.org/floatingIPs", "[\"1.1.1.1\"]")],
        )],
    );
    let on = featured_netconf(&c, json!({"ip_addrs_no_ipam": false, "floating_ips": true}));
    let off = featured_netconf(
        &c,
        json!({"ip_addrs_no_ipam": false, "floating_ips": false}),
    );
    let pod = Netns::new("cmpfl");
    let cid = format!("float{}", c.u);
    let args = calico_args(&ns, "floating", None);

    let e = err(&c.add(&cid, &pod, &args, &off));
    assert_eq!(
        e["details"], "requested feature is not enabled: floating_ips",
        "{e}"
    );
    c.assert_nothing_left(&pod);
    assert!(!handle_exists(&c, &format!("calico-uts.{cid}")));

    let r = ok(&c.add(&cid, &pod, &args, &on));
    assert_calico_result(&r, &pod, 1);
    assert!(in_net(
        r["ips"][0]["address"].as_str().expect("ip"),
        "10.169.0.0/24"
    ));
    c.del(&cid, &pod, &args, &on);
    c.assert_nothing_left(&pod);
}

/// k8s spec 3344 "using hwAddr annotations to assign a fixed MAC address to a container veth":
/// the pod's interface gets the annotated MAC; an invalid one fails the ADD, leaving nothing.
#[test]
fn hw_addr_annotation_sets_the_pod_mac() {
    let _g = shared();
    let c = Cluster::new("");
    let u = &c.u;
    let ns = format!("compat-mac-{u}");
    c.kube.apply(&format!(
        "{}{}{}",
        namespace_yaml(&ns, &[]),
        pod_yaml(
            &ns,
            "fixed-mac",
            &c.name,
            &[("cni.projectcalico.org/hwAddr", "ca:fe:ca:fe:ca:fe")]
        ),
        pod_yaml(
            &ns,
            "bad-mac",
            &c.name,
            &[("cni.projectcalico.org/hwAddr", "invalid MAC address")]
        )
    ));
    let data_dir = c.node.dir.path().join("host-local");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "net1",
        "type": "calico",
        "datastore_type": "kubernetes",
        "ipam": {"type": "host-local", "subnet": "10.0.0.0/8", "dataDir": data_dir},
        "kubernetes": {"kubeconfig": c.kube.cni},
        "policy": {"type": "k8s"},
        "nodename_file_optional": true,
        "nodename": c.name,
        "ipam_lock_file": c.node.dir.path().join("ipam.lock"),
    });
    let pod = Netns::new("cmpmac");
    let cid = format!("mac{u}");

    let bad = calico_args(&ns, "bad-mac", None);
    let e = err(&c.add(&cid, &pod, &bad, &conf));
    assert_eq!(e["code"], 7, "{e}");
    assert!(
        e["details"].as_str().is_some_and(|d| d.starts_with(
            "failed to parse MAC address invalid MAC address provided via cni.projectcalico.org/hwAddr"
        )),
        "{e}"
    );
    c.assert_nothing_left(&pod);
    assert!(host_local_holds(&data_dir, "net1").is_empty());

    let args = calico_args(&ns, "fixed-mac", None);
    let r = ok(&c.add(&cid, &pod, &args, &conf));
    assert_eq!(r["interfaces"][1]["mac"], "ca:fe:ca:fe:ca:fe", "{r}");
    let link = pod.ip(&["link", "show", "eth0"]);
    assert!(link.contains("link/ether ca:fe:ca:fe:ca:fe"), "{link}");
    c.del(&cid, &pod, &args, &conf);
    c.assert_nothing_left(&pod);
    assert!(host_local_holds(&data_dir, "net1").is_empty());
}

/// k8s spec 1641 "using source IP spoofing annotation should look at the source spoofing
/// disabling annotation": a pod with valid `allowedSourcePrefixes` is networked (Felix reads
/// them from the pod); a malformed prefix fails the ADD with Calico's error, leaving nothing.
#[test]
fn allowed_source_prefixes_are_checked() {
    let _g = shared();
    let c = Cluster::new("");
    let (_pool, ns) = annotated_setup(
        &c,
        "10.170.0.0/24",
        &[
            (
                "spoofer",
                &[(
                    "cni.projectcalico.org/allowedSourcePrefixes",
                    "[\"8.8.8.8/32\",\"1.1.1.0/24\"]",
                )],
            ),
            (
                "bad-prefix",
                &[(
                    "cni.projectcalico.org/allowedSourcePrefixes",
                    "[\"1.1.1.0\"]",
                )],
            ),
        ],
    );
    let conf = featured_netconf(&c, Value::Null);
    let pod = Netns::new("cmpsp");
    let cid = format!("spoof{}", c.u);

    let bad = calico_args(&ns, "bad-prefix", None);
    let e = err(&c.add(&cid, &pod, &bad, &conf));
    assert_eq!(e["code"], 7, "{e}");
    assert!(
        e["details"]
            .as_str()
            .is_some_and(|d| d.starts_with("failed to parse '1.1.1.0' as a CIDR")),
        "{e}"
    );
    c.assert_nothing_left(&pod);
    assert!(!handle_exists(&c, &format!("calico-uts.{cid}")));

    let args = calico_args(&ns, "spoofer", None);
    let r = ok(&c.add(&cid, &pod, &args, &conf));
    assert_calico_result(&r, &pod, 1);
    c.del(&cid, &pod, &args, &conf);
    c.assert_nothing_left(&pod);
}
