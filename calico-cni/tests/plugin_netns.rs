//! calico-cni end to end: the real binaries (calico-cni delegating to calico-ipam or Debian's
//! host-local) run inside a throwaway node netns, with pods in throwaway netns beside it.

mod common;

use common::{Netns, Node, addr, seed_pools, text, tiny_pools};
use serde_json::{Value, json};
use sha1::{Digest, Sha1};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Calico's host veth rule, computed here independently of the plugin.
fn expected_host_veth(namespace: &str, pod: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{pod}"));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("cali{}", &hex[..11])
}

fn error_code(out: &std::process::Output) -> u64 {
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not a CNI error ({e}): {}", text(out)));
    v["code"].as_u64().expect("code")
}

#[test]
fn two_dual_stack_pods_reach_each_other_and_the_node() {
    let node = Node::new();
    node.apply_pools(&seed_pools());
    let conf = node.netconf("1.0.0");
    let (p1, p2) = (Netns::new("cpod"), Netns::new("cpod"));
    let r1 = node.add("c1", &p1, Some(("default", "web-1")), &conf);
    let r2 = node.add("c2", &p2, Some(("default", "web-2")), &conf);

    for (r, pod) in [(&r1, "web-1"), (&r2, "web-2")] {
        assert_eq!(
            r["interfaces"][0]["name"],
            expected_host_veth("default", pod),
            "{r}"
        );
        assert_eq!(r["ips"].as_array().map(Vec::len), Some(2), "{r}");
        assert!(
            r["ips"][0]["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("10.244.") && a.ends_with("/32")),
            "{r}"
        );
        assert!(
            r["ips"][1]["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("fd00:10:244:") && a.ends_with("/128")),
            "{r}"
        );
    }
    let mut links = node.cali_links();
    links.sort();
    let mut want = vec![
        expected_host_veth("default", "web-1"),
        expected_host_veth("default", "web-2"),
    ];
    want.sort();
    assert_eq!(links, want);

    // IPv6 right away: fe80::1 and the pod addresses are added without DAD, nothing to wait for.
    for (from, to) in [(&p1, &r2), (&p2, &r1)] {
        assert!(
            from.ping(&addr(to, 0)),
            "{} -> {} (IPv4)",
            from.name,
            addr(to, 0)
        );
        assert!(
            from.ping(&addr(to, 1)),
            "{} -> {} (IPv6)",
            from.name,
            addr(to, 1)
        );
    }
    for r in [&r1, &r2] {
        assert!(node.ns.ping(&addr(r, 0)), "node -> {}", addr(r, 0));
        assert!(node.ns.ping(&addr(r, 1)), "node -> {}", addr(r, 1));
    }

    // The pod sees what calico.md §1.12 describes (with fe80::1 as the IPv6 gateway).
    let routes4 = p1.ip(&["route"]);
    assert!(
        routes4.contains("default via 169.254.1.1 dev eth0"),
        "{routes4}"
    );
    assert!(
        routes4.contains("169.254.1.1 dev eth0 scope link"),
        "{routes4}"
    );
    let routes6 = p1.ip(&["-6", "route"]);
    assert!(
        routes6.contains("default via fe80::1 dev eth0"),
        "{routes6}"
    );
    let host = node.routes();
    assert!(
        host.contains(&format!(
            "{} dev {} scope link",
            addr(&r1, 0),
            expected_host_veth("default", "web-1")
        )),
        "{host}"
    );
    assert!(
        host.contains(&format!(
            "{} dev {}",
            addr(&r1, 1),
            expected_host_veth("default", "web-1")
        )),
        "{host}"
    );

    for (id, pod, name) in [("c1", &p1, "web-1"), ("c2", &p2, "web-2")] {
        let out = node.cni("DEL", id, &pod.path(), Some(("default", name)), &conf);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert!(node.cali_links().is_empty(), "{:?}", node.cali_links());
    assert!(!node.routes().contains("cali"), "{}", node.routes());
    assert_eq!(node.ipam_in_use(), 0);
    assert!(node.ipam_consistent());
}

#[test]
fn results_match_golden_files_for_every_version() {
    for version in VERSIONS {
        let node = Node::new();
        node.apply_pools(&tiny_pools());
        let pod = Netns::new("gpod");
        let r = node.add(
            "g1",
            &pod,
            Some(("default", "web-0")),
            &node.netconf(version),
        );
        let mut got = r.clone();
        let mac = got["interfaces"][1]["mac"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert_eq!(mac.len(), 17, "pod MAC: {r}");
        got["interfaces"][1]["mac"] = json!("@MAC@");
        assert_eq!(got["interfaces"][1]["sandbox"], pod.path());
        got["interfaces"][1]["sandbox"] = json!("@NETNS@");
        let path = format!(
            "{}/../testdata/results/cni/dualstack.{version}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let want: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("golden"))
            .expect("golden json");
        assert_eq!(got, want, "{version}");
        assert!(
            pod.ip(&["link", "show", "eth0"]).contains(&mac),
            "{version}: MAC in result is the pod's"
        );
    }
}

#[test]
fn ipv4_only_and_ipv6_only() {
    let node = Node::new();
    node.apply_pools(&tiny_pools());
    let mut v4 = node.netconf("1.0.0");
    v4["ipam"]["assign_ipv6"] = json!("false");
    let mut v6 = node.netconf("1.0.0");
    v6["ipam"]["assign_ipv4"] = json!(false);
    v6["ipam"]["assign_ipv6"] = json!(true);
    let (p4, p6) = (Netns::new("v4pod"), Netns::new("v6pod"));
    let r4 = node.add("only4", &p4, Some(("default", "only4")), &v4);
    let r6 = node.add("only6", &p6, Some(("default", "only6")), &v6);
    assert_eq!(
        r4["ips"],
        json!([{"interface": 1, "address": "10.99.0.0/32", "gateway": "169.254.1.1"}])
    );
    assert_eq!(
        r4["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}])
    );
    assert_eq!(
        r6["ips"],
        json!([{"interface": 1, "address": "fd00:99::/128", "gateway": "fe80::1"}])
    );
    assert_eq!(r6["routes"], json!([{"dst": "::/0", "gw": "fe80::1"}]));
    assert!(node.ns.ping("10.99.0.0"));
    assert!(node.ns.ping("fd00:99::"));
    assert!(
        !p6.ip(&["route"]).contains("default"),
        "no IPv4 default route in a v6-only pod"
    );
    assert!(
        !p4.ip(&["-6", "route"]).contains("default"),
        "no IPv6 default route in a v4-only pod"
    );
}

#[test]
fn host_local_works_as_the_ipam() {
    let node = Node::new();
    let mut conf = node.netconf("1.0.0");
    conf["ipam"] = json!({
        "type": "host-local",
        "dataDir": node.dir.path().join("host-local"),
        "ranges": [[{"subnet": "10.98.0.0/24"}], [{"subnet": "fd00:98::/64"}]]
    });
    let (p1, p2) = (Netns::new("hlpod"), Netns::new("hlpod"));
    let r1 = node.add("h1", &p1, Some(("default", "hl-1")), &conf);
    let r2 = node.add("h2", &p2, Some(("default", "hl-2")), &conf);
    assert_eq!(r1["ips"][0]["address"], "10.98.0.2/32", "{r1}");
    assert_eq!(r1["ips"][1]["address"], "fd00:98::2/128", "{r1}");
    assert!(p1.ping(&addr(&r2, 0)) && p1.ping(&addr(&r2, 1)));
    assert!(node.ns.ping(&addr(&r1, 0)) && node.ns.ping(&addr(&r1, 1)));
    for (id, p, name) in [("h1", &p1, "hl-1"), ("h2", &p2, "hl-2")] {
        let out = node.cni("DEL", id, &p.path(), Some(("default", name)), &conf);
        assert!(out.status.success(), "{}", text(&out));
    }
    let left: Vec<_> = std::fs::read_dir(node.dir.path().join("host-local/k8s-pod-network"))
        .expect("host-local dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains('.') || n.contains(':'))
        .filter(|n| !n.starts_with("last_reserved_ip"))
        .collect();
    assert!(left.is_empty(), "host-local still holds {left:?}");
}

/// Bounded wait for the kernel's asynchronous netns cleanup (not a timing assertion: the limit
/// only stops a hung test).
fn wait_for_no_cali_links(node: &Node) {
    for _ in 0..100 {
        if node.cali_links().is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// After a failed ADD: no address allocated, no host veth, no host route.
fn assert_nothing_left(node: &Node) {
    assert_eq!(node.ipam_in_use(), 0, "an address is still allocated");
    assert!(node.ipam_consistent());
    assert!(
        node.cali_links().is_empty(),
        "left behind: {:?}",
        node.cali_links()
    );
    let routes = node.routes();
    assert!(!routes.contains("cali"), "left behind: {routes}");
}

#[test]
fn add_into_a_pod_that_already_has_the_interface_rolls_back() {
    let node = Node::new();
    node.apply_pools(&seed_pools());
    let pod = Netns::new("dup");
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let out = node.cni(
        "ADD",
        "dup1",
        &pod.path(),
        Some(("default", "dup")),
        &node.netconf("1.0.0"),
    );
    assert!(!out.status.success());
    assert_eq!(error_code(&out), 104, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("eth0"),
        "{}",
        text(&out)
    );
    assert_nothing_left(&node);
    assert!(
        pod.links().contains(&"eth0".to_string()),
        "the pod's own eth0 is untouched"
    );
}

#[test]
fn add_with_a_missing_netns_fails_cleanly() {
    let node = Node::new();
    node.apply_pools(&seed_pools());
    let out = node.cni(
        "ADD",
        "gone1",
        "/var/run/netns/does-not-exist-42",
        None,
        &node.netconf("1.0.0"),
    );
    assert!(!out.status.success());
    assert_eq!(error_code(&out), 103, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("does-not-exist-42"));
    assert_nothing_left(&node);
}

#[test]
fn ipam_failure_leaves_nothing() {
    let node = Node::new();
    node.apply_pools(&seed_pools());
    let pod = Netns::new("ipf");
    // Unknown pool: calico-ipam refuses (code 7) and the plugin passes its error through.
    let mut conf = node.netconf("1.0.0");
    conf["ipam"]["ipv4_pools"] = json!(["no-such-pool"]);
    let out = node.cni("ADD", "ipf1", &pod.path(), Some(("default", "ipf")), &conf);
    assert_eq!(error_code(&out), 7, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no-such-pool"));
    // An IPAM plugin that does not exist.
    let mut conf = node.netconf("1.0.0");
    conf["ipam"]["type"] = json!("no-such-ipam");
    let out = node.cni("ADD", "ipf2", &pod.path(), Some(("default", "ipf")), &conf);
    assert_eq!(error_code(&out), 7, "{}", text(&out));
    assert_nothing_left(&node);
    assert_eq!(pod.links(), vec!["lo".to_string()]);
}

#[test]
fn del_twice_and_del_after_the_netns_is_gone() {
    let node = Node::new();
    node.apply_pools(&seed_pools());
    let conf = node.netconf("0.4.0");
    let pod = Netns::new("del");
    node.add("d1", &pod, Some(("default", "del-1")), &conf);
    for _ in 0..2 {
        let out = node.cni("DEL", "d1", &pod.path(), Some(("default", "del-1")), &conf);
        assert!(out.status.success(), "{}", text(&out));
        assert!(out.stdout.is_empty());
    }
    assert_nothing_left(&node);

    let pod2 = Netns::new("del");
    node.add("d2", &pod2, Some(("default", "del-2")), &conf);
    let path = pod2.path();
    drop(pod2); // the runtime deleted the sandbox first
    let out = node.cni("DEL", "d2", &path, Some(("default", "del-2")), &conf);
    assert!(out.status.success(), "{}", text(&out));
    let out = node.cni("DEL", "d2", "", Some(("default", "del-2")), &conf);
    assert!(
        out.status.success(),
        "DEL without CNI_NETNS: {}",
        text(&out)
    );
    // The kernel destroys a deleted netns (and the veth end in it, and so its host peer) in a
    // workqueue, a little after `ip netns del` returns; DEL leaves a host veth whose peer is
    // still alive alone (it could be a newer sandbox's). Give the kernel its moment.
    wait_for_no_cali_links(&node);
    assert_nothing_left(&node);
}

#[test]
fn check_passes_on_a_healthy_pod_and_fails_after_a_route_is_removed() {
    let node = Node::new();
    node.apply_pools(&seed_pools());
    let pod = Netns::new("chk");
    let mut conf = node.netconf("1.0.0");
    let result = node.add("k1", &pod, Some(("default", "chk")), &conf);
    conf["prevResult"] = result;
    let out = node.cni("CHECK", "k1", &pod.path(), Some(("default", "chk")), &conf);
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty());

    pod.ip(&["route", "del", "default"]);
    let out = node.cni("CHECK", "k1", &pod.path(), Some(("default", "chk")), &conf);
    assert!(!out.status.success());
    assert_eq!(error_code(&out), 107, "{}", text(&out));
    let msg = String::from_utf8_lossy(&out.stdout);
    assert!(
        msg.contains("169.254.1.1"),
        "the message should name the missing route: {msg}"
    );

    let mut no_prev = node.netconf("1.0.0");
    no_prev.as_object_mut().map(|o| o.remove("prevResult"));
    let out = node.cni(
        "CHECK",
        "k1",
        &pod.path(),
        Some(("default", "chk")),
        &no_prev,
    );
    assert_eq!(error_code(&out), 7, "{}", text(&out));
}

#[test]
fn version_status_and_gc_pass_through() {
    let node = Node::new();
    node.apply_pools(&tiny_pools());
    let out = node.cni("VERSION", "", "", None, &json!({"cniVersion": "1.0.0"}));
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["supportedVersions"], json!(VERSIONS));

    let conf = node.netconf("1.1.0");
    let pod = Netns::new("gc");
    node.add("gc1", &pod, Some(("default", "gc")), &conf);
    let out = node.cni("STATUS", "", "", None, &conf);
    assert!(out.status.success(), "{}", text(&out));
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    let out = node.cni("GC", "", "", None, &gc);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        node.ipam_in_use(),
        0,
        "GC released the attachment that is not valid"
    );
}

#[test]
fn a_repeated_add_for_a_live_pod_is_refused_without_touching_its_addresses() {
    let node = Node::new();
    node.apply_pools(&seed_pools());
    let conf = node.netconf("1.0.0");
    let pod = Netns::new("again");
    let first = node.add("a1", &pod, Some(("default", "again")), &conf);
    let out = node.cni("ADD", "a1", &pod.path(), Some(("default", "again")), &conf);
    assert_eq!(error_code(&out), 104, "{}", text(&out));
    // The live attachment still holds its addresses and still answers.
    assert_eq!(node.ipam_in_use(), 2);
    assert!(node.ns.ping(&addr(&first, 0)) && node.ns.ping(&addr(&first, 1)));
    let out = node.cni("DEL", "a1", &pod.path(), Some(("default", "again")), &conf);
    assert!(out.status.success(), "{}", text(&out));
    assert_nothing_left(&node);
}
