//! The dataplane against a real kernel, in throwaway namespaces only.
//!
//! Every test builds a "node" namespace that plays the host: an uplink veth pair
//! (both ends inside the node) with 192.0.2.1/24 and 2001:db8::1/64, default routes
//! via .2 / ::2 and forwarding on. The dataplane code runs on a thread that has
//! entered the node namespace, so the real host's interfaces, routes and sysctls are
//! never touched. Pods are separate namespaces. Everything is deleted on drop, also
//! when a test fails.
//!
//! Needs root, `ip` (iproute2) and `ping` (iputils-ping). Without them the tests fail;
//! they never skip.

use std::fs::File;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use calico_cni::dataplane::{self, Applied, DataplaneError, Plan, host_veth_name};
use nix::sched::{CloneFlags, setns};

// ---------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------

/// `ip netns add` bind-mounts /run/netns onto itself the first time; two of those
/// at once would stack mounts. Serialise namespace creation and deletion.
static NETNS_LOCK: Mutex<()> = Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "dataplane_netns tests need root (they create network namespaces); run them as root"
    );
}

/// A named network namespace, deleted on drop.
struct Netns {
    name: String,
    deleted: bool,
}

impl Netns {
    fn new(kind: &str) -> Self {
        require_root();
        let name = format!(
            "dp{kind}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let _guard = NETNS_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        run("ip", &["netns", "add", &name]);
        Self {
            name,
            deleted: false,
        }
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> <args>`; panics on failure.
    fn ip(&self, args: &str) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend(args.split_whitespace());
        run("ip", &full)
    }

    /// `ip netns exec <ns> <args>`, returning whether it succeeded.
    fn exec_ok(&self, args: &str) -> bool {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend(args.split_whitespace());
        Command::new("ip")
            .args(&full)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip {full:?}: {e}"))
            .status
            .success()
    }

    fn read_sysctl(&self, path: &str) -> String {
        let mut full = vec!["netns", "exec", &self.name, "cat"];
        full.push(path);
        run("ip", &full).trim().to_owned()
    }

    /// Interface names, sorted.
    fn links(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .ip("-o link show")
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .collect();
        names.sort();
        names
    }

    fn delete(&mut self) {
        if !self.deleted {
            let _guard = NETNS_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
            self.deleted = true;
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Runs a command, panicking with its stderr on failure; returns stdout.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The fake host.
struct Node {
    ns: Netns,
}

const NODE_LINKS: [&str; 3] = ["lo", "up0", "up1"];

impl Node {
    fn new() -> Self {
        let ns = Netns::new("node");
        ns.ip("link add up0 type veth peer name up1");
        ns.ip("link set lo up");
        ns.ip("link set up0 up");
        ns.ip("link set up1 up");
        ns.ip("addr add 192.0.2.1/24 dev up0");
        ns.ip("addr add 2001:db8::1/64 dev up0 nodad");
        ns.ip("route add default via 192.0.2.2 dev up0");
        ns.ip("-6 route add default via 2001:db8::2 dev up0");
        run_in(&ns.path(), || {
            for (path, value) in [
                ("/proc/sys/net/ipv4/ip_forward", "1"),
                ("/proc/sys/net/ipv6/conf/all/forwarding", "1"),
            ] {
                std::fs::write(path, value).unwrap_or_else(|e| panic!("{path}: {e}"));
            }
        });
        Self { ns }
    }

    /// Runs a dataplane future on a fresh thread inside the node namespace, with a
    /// `current_thread` runtime, as the plugin does on a real host.
    fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        run_in(&self.ns.path(), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
            rt.block_on(f())
        })
    }

    fn setup(&self, plan: &Plan) -> Result<Applied, DataplaneError> {
        let plan = plan.clone();
        self.run(move || async move { dataplane::setup(&plan).await })
    }

    fn check(&self, plan: &Plan) -> Result<(), DataplaneError> {
        let plan = plan.clone();
        self.run(move || async move { dataplane::check(&plan).await })
    }

    fn teardown(
        &self,
        netns: Option<PathBuf>,
        pod: &str,
        host: &str,
    ) -> Result<(), DataplaneError> {
        let (pod, host) = (pod.to_owned(), host.to_owned());
        self.run(move || async move { dataplane::teardown(netns.as_deref(), &pod, &host).await })
    }

    fn assert_pristine(&self) {
        assert_eq!(
            self.ns.links(),
            NODE_LINKS,
            "node namespace has extra links"
        );
    }

    fn ping(&self, addr: &str) {
        assert!(
            self.ns.exec_ok(&format!("ping -c1 -W1 {addr}")),
            "node cannot ping {addr}"
        );
    }
}

/// Runs `f` on a new thread inside the namespace at `path`.
fn run_in<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let ns = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        setns(&ns, CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn plan(pod: &Netns, name: &str, ipv4: Option<&str>, ipv6: Option<&str>) -> Plan {
    Plan {
        netns: pod.path(),
        host_ifname: host_veth_name("cali", "default", name),
        pod_ifname: "eth0".into(),
        mtu: None,
        ipv4: ipv4.map(|a| a.parse::<Ipv4Addr>().unwrap_or_else(|e| panic!("{a}: {e}"))),
        ipv6: ipv6.map(|a| a.parse::<Ipv6Addr>().unwrap_or_else(|e| panic!("{a}: {e}"))),
        allow_ip_forwarding: false,
        pod_mac: None,
    }
}

fn pod_ping(pod: &Netns, addr: &str) {
    assert!(
        pod.exec_ok(&format!("ping -c1 -W1 {addr}")),
        "{} cannot ping {addr}",
        pod.name
    );
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

#[test]
fn dual_stack_pods_reach_each_other_and_the_node() {
    let node = Node::new();
    let pod1 = Netns::new("pod");
    let pod2 = Netns::new("pod");
    let p1 = Plan {
        mtu: Some(1400),
        ..plan(
            &pod1,
            "nginx-7c5ddbdf54-x2v9k",
            Some("10.65.0.1"),
            Some("fd00:65::1"),
        )
    };
    let p2 = plan(&pod2, "nginx", Some("10.65.0.2"), Some("fd00:65::2"));

    let a1 = node
        .setup(&p1)
        .unwrap_or_else(|e| panic!("setup pod1: {e}"));
    let a2 = node
        .setup(&p2)
        .unwrap_or_else(|e| panic!("setup pod2: {e}"));
    assert_ne!(a1.pod_mac, a2.pod_mac);
    assert_eq!(a1.host_ifname, "cali8805ac045c1");
    assert_eq!(a1.host_mac, "ee:ee:ee:ee:ee:ee");
    assert_eq!(a1.pod_ifname, "eth0");

    // IPv6 too, straight away: no DAD anywhere on the path.
    pod_ping(&pod1, "10.65.0.2");
    pod_ping(&pod1, "fd00:65::2");
    pod_ping(&pod2, "10.65.0.1");
    pod_ping(&pod2, "fd00:65::1");
    node.ping("10.65.0.1");
    node.ping("fd00:65::1");
    node.ping("10.65.0.2");
    node.ping("fd00:65::2");

    node.check(&p1)
        .unwrap_or_else(|e| panic!("check pod1: {e}"));
    node.check(&p2)
        .unwrap_or_else(|e| panic!("check pod2: {e}"));

    // Pod side, as calico.md §1.12 (gateway fe80::1 instead of the host LL).
    let link = pod1.ip("-d link show eth0");
    assert!(link.contains("mtu 1400"), "{link}");
    assert!(
        link.contains(&format!("link/ether {}", a1.pod_mac)),
        "{link}"
    );
    let addr = pod1.ip("addr show eth0");
    assert!(
        addr.contains("inet 10.65.0.1/32 scope global eth0"),
        "{addr}"
    );
    assert!(
        addr.contains("inet6 fd00:65::1/128 scope global nodad"),
        "{addr}"
    );
    assert!(!addr.contains("tentative"), "{addr}");
    let routes4 = pod1.ip("route show");
    assert_eq!(
        routes4.lines().collect::<Vec<_>>(),
        [
            "default via 169.254.1.1 dev eth0 ",
            "169.254.1.1 dev eth0 scope link "
        ],
        "{routes4}"
    );
    let routes6 = pod1.ip("-6 route show");
    assert!(
        routes6.contains("default via fe80::1 dev eth0 metric 1024"),
        "{routes6}"
    );
    for (path, want) in [
        ("/proc/sys/net/ipv6/conf/eth0/accept_dad", "0"),
        ("/proc/sys/net/ipv6/conf/all/disable_ipv6", "0"),
        ("/proc/sys/net/ipv6/conf/default/disable_ipv6", "0"),
        ("/proc/sys/net/ipv6/conf/lo/disable_ipv6", "0"),
        ("/proc/sys/net/ipv4/ip_forward", "0"),
        ("/proc/sys/net/ipv6/conf/all/forwarding", "0"),
    ] {
        assert_eq!(pod1.read_sysctl(path), want, "pod {path}");
    }

    // Host side.
    let host = node.ns.ip("-d addr show cali8805ac045c1");
    assert!(host.contains("link/ether ee:ee:ee:ee:ee:ee"), "{host}");
    assert!(host.contains("mtu 1400"), "{host}");
    assert!(host.contains("inet6 fe80::1/64 scope link nodad"), "{host}");
    assert!(
        !host.contains("inet "),
        "host veth must have no IPv4 address: {host}"
    );
    let hroutes = node.ns.ip("route show dev cali8805ac045c1");
    assert_eq!(hroutes.trim(), "10.65.0.1 scope link", "{hroutes}");
    let hroutes6 = node.ns.ip("-6 route show fd00:65::1");
    assert!(
        hroutes6.contains("fd00:65::1 dev cali8805ac045c1 metric 1024"),
        "{hroutes6}"
    );
    let c = "cali8805ac045c1";
    for (path, want) in [
        (format!("/proc/sys/net/ipv4/conf/{c}/route_localnet"), "1"),
        (format!("/proc/sys/net/ipv4/neigh/{c}/proxy_delay"), "0"),
        (format!("/proc/sys/net/ipv4/conf/{c}/proxy_arp"), "1"),
        (format!("/proc/sys/net/ipv4/conf/{c}/forwarding"), "1"),
        (format!("/proc/sys/net/ipv6/conf/{c}/accept_dad"), "0"),
        (format!("/proc/sys/net/ipv6/conf/{c}/disable_ipv6"), "0"),
        (format!("/proc/sys/net/ipv6/conf/{c}/proxy_ndp"), "1"),
        (format!("/proc/sys/net/ipv6/conf/{c}/forwarding"), "1"),
        (format!("/proc/sys/net/ipv6/conf/{c}/accept_ra"), "0"),
    ] {
        assert_eq!(node.ns.read_sysctl(&path), want, "host {path}");
    }

    eprintln!("--- pod1: ip -d addr\n{}", pod1.ip("-d addr"));
    eprintln!("--- pod1: ip route\n{routes4}--- pod1: ip -6 route\n{routes6}");
    eprintln!("--- node: ip -d addr show {c}\n{host}");
    eprintln!("--- node: ip route\n{}", node.ns.ip("route"));
    eprintln!("--- node: ip -6 route\n{}", node.ns.ip("-6 route"));
}

#[test]
fn ipv4_only_pod() {
    let node = Node::new();
    let pod = Netns::new("pod");
    let p = plan(&pod, "v4only", Some("10.65.1.1"), None);
    node.setup(&p).unwrap_or_else(|e| panic!("setup: {e}"));
    node.ping("10.65.1.1");
    pod_ping(&pod, "192.0.2.1");
    node.check(&p).unwrap_or_else(|e| panic!("check: {e}"));
    let addr = pod.ip("addr show eth0");
    assert!(!addr.contains("inet6 fd"), "{addr}");
    assert!(!pod.ip("-6 route show").contains("default"));
    assert!(
        !node
            .ns
            .ip(&format!("addr show {}", p.host_ifname))
            .contains("fe80::1/64")
    );
}

#[test]
fn ipv6_only_pod() {
    let node = Node::new();
    let pod = Netns::new("pod");
    let p = plan(&pod, "v6only", None, Some("fd00:65:1::1"));
    node.setup(&p).unwrap_or_else(|e| panic!("setup: {e}"));
    node.ping("fd00:65:1::1");
    pod_ping(&pod, "2001:db8::1");
    node.check(&p).unwrap_or_else(|e| panic!("check: {e}"));
    assert!(pod.ip("-4 route show").trim().is_empty());
    assert!(!pod.ip("addr show eth0").contains("inet "));
}

#[test]
fn existing_pod_interface_is_refused_untouched() {
    let node = Node::new();
    let pod = Netns::new("pod");
    pod.ip("link add eth0 type veth peer name peer0");
    let p = plan(&pod, "exists", Some("10.65.2.1"), Some("fd00:65:2::1"));
    match node.setup(&p) {
        Err(DataplaneError::InterfaceExists { name, netns }) => {
            assert_eq!(name, "eth0");
            assert_eq!(netns, pod.path());
        }
        other => panic!("expected InterfaceExists, got {other:?}"),
    }
    node.assert_pristine();
    assert_eq!(pod.links(), ["eth0", "lo", "peer0"]);
}

#[test]
fn stale_host_veth_is_replaced() {
    let node = Node::new();
    let pod = Netns::new("pod");
    let p = plan(&pod, "stale", Some("10.65.3.1"), Some("fd00:65:3::1"));
    node.ns.ip(&format!(
        "link add {} type veth peer name stale0",
        p.host_ifname
    ));
    node.setup(&p).unwrap_or_else(|e| panic!("setup: {e}"));
    let mut want = vec![
        p.host_ifname.clone(),
        "lo".into(),
        "up0".into(),
        "up1".into(),
    ];
    want.sort();
    assert_eq!(node.ns.links(), want);
    node.ping("10.65.3.1");
    node.ping("fd00:65:3::1");
}

#[test]
fn missing_netns_fails_and_leaves_nothing() {
    let node = Node::new();
    let pod = Netns::new("pod");
    let gone = Path::new("/run/netns/dp-never-created-netns");
    let p = Plan {
        netns: gone.to_owned(),
        ..plan(&pod, "missing", Some("10.65.4.1"), Some("fd00:65:4::1"))
    };
    let err = node
        .setup(&p)
        .expect_err("setup in a missing netns must fail");
    assert!(err.is_netns_missing(), "{err}");
    assert!(err.to_string().contains("dp-never-created-netns"), "{err}");
    node.assert_pristine();

    // A file that is not a namespace (what an unmounted /run/netns entry looks like).
    let file = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("tempfile: {e}"));
    let p = Plan {
        netns: file.path().to_owned(),
        ..p
    };
    let err = node.setup(&p).expect_err("setup in a non-netns must fail");
    assert!(matches!(err, DataplaneError::NotNetns { .. }), "{err}");
    assert!(err.is_netns_missing());
    node.assert_pristine();
    // DEL treats both as gone.
    node.teardown(Some(p.netns.clone()), "eth0", &p.host_ifname)
        .unwrap_or_else(|e| panic!("teardown: {e}"));
    node.teardown(Some(gone.to_owned()), "eth0", &p.host_ifname)
        .unwrap_or_else(|e| panic!("teardown: {e}"));
}

#[test]
fn teardown_twice_is_ok() {
    let node = Node::new();
    let pod = Netns::new("pod");
    let p = plan(&pod, "twice", Some("10.65.5.1"), Some("fd00:65:5::1"));
    node.setup(&p).unwrap_or_else(|e| panic!("setup: {e}"));
    for round in 0..2 {
        node.teardown(Some(pod.path()), "eth0", &p.host_ifname)
            .unwrap_or_else(|e| panic!("teardown #{round}: {e}"));
        node.assert_pristine();
        assert_eq!(pod.links(), ["lo"]);
    }
    assert!(!node.ns.ip("route").contains("10.65.5.1"));
    assert!(!node.ns.ip("-6 route").contains("fd00:65:5::1"));
    // Netns never given (CNI_NETNS empty).
    node.teardown(None, "eth0", &p.host_ifname)
        .unwrap_or_else(|e| panic!("teardown without netns: {e}"));
}

#[test]
fn teardown_after_pod_netns_deleted_is_ok() {
    let node = Node::new();
    let mut pod = Netns::new("pod");
    let p = plan(&pod, "deleted", Some("10.65.6.1"), Some("fd00:65:6::1"));
    node.setup(&p).unwrap_or_else(|e| panic!("setup: {e}"));
    pod.delete();
    node.teardown(Some(pod.path()), "eth0", &p.host_ifname)
        .unwrap_or_else(|e| panic!("teardown: {e}"));
    // The kernel destroys a namespace's veths asynchronously after its last
    // reference goes; give it a moment (test-side wait only).
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.ns.links() != NODE_LINKS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    node.assert_pristine();
    node.teardown(Some(pod.path()), "eth0", &p.host_ifname)
        .unwrap_or_else(|e| panic!("second teardown: {e}"));
}

#[test]
fn teardown_removes_leftover_host_veth_without_peer_elsewhere() {
    let node = Node::new();
    let pod = Netns::new("pod");
    let p = plan(&pod, "leftover", Some("10.65.7.1"), None);
    // A host link of that name whose peer is not in another namespace.
    node.ns.ip(&format!(
        "link add {} type veth peer name left0",
        p.host_ifname
    ));
    node.teardown(None, "eth0", &p.host_ifname)
        .unwrap_or_else(|e| panic!("teardown: {e}"));
    node.assert_pristine();
}

#[test]
fn teardown_keeps_a_host_veth_whose_peer_lives_in_another_pod() {
    let node = Node::new();
    let old = Netns::new("pod");
    let new = Netns::new("pod");
    let p_new = plan(&new, "restarted", Some("10.65.8.1"), None);
    node.setup(&p_new).unwrap_or_else(|e| panic!("setup: {e}"));
    // A late DEL for an old sandbox of the same pod: its netns has no eth0.
    node.teardown(Some(old.path()), "eth0", &p_new.host_ifname)
        .unwrap_or_else(|e| panic!("teardown: {e}"));
    node.check(&p_new)
        .unwrap_or_else(|e| panic!("the new sandbox was damaged: {e}"));
    node.ping("10.65.8.1");
}

#[test]
fn check_reports_a_missing_default_route() {
    let node = Node::new();
    let pod = Netns::new("pod");
    let p = plan(&pod, "check", Some("10.65.9.1"), Some("fd00:65:9::1"));
    node.setup(&p).unwrap_or_else(|e| panic!("setup: {e}"));
    node.check(&p)
        .unwrap_or_else(|e| panic!("check on a healthy pod: {e}"));
    pod.ip("route del default");
    let err = node
        .check(&p)
        .expect_err("check must notice the missing route");
    let text = err.to_string();
    assert!(matches!(err, DataplaneError::CheckFailed { .. }), "{text}");
    assert!(
        text.contains("default route via 169.254.1.1 dev eth0 missing"),
        "{text}"
    );
    assert!(text.contains(&pod.path().display().to_string()), "{text}");
    assert!(
        !text.contains("fe80::1"),
        "only the removed route is reported: {text}"
    );
}

#[test]
fn route_to_another_interface_is_a_conflict_and_rolls_back() {
    let node = Node::new();
    let pod = Netns::new("pod");
    node.ns.ip("route add 10.65.10.1/32 dev up1");
    let p = plan(&pod, "conflict", Some("10.65.10.1"), Some("fd00:65:10::1"));
    let err = node
        .setup(&p)
        .expect_err("setup must refuse the conflicting route");
    let text = err.to_string();
    assert!(
        matches!(err, DataplaneError::RouteConflict { .. }),
        "{text}"
    );
    assert!(
        text.contains("10.65.10.1/32") && text.contains("up1"),
        "{text}"
    );
    node.assert_pristine();
    assert_eq!(pod.links(), ["lo"]);

    node.ns.ip("-6 route add fd00:65:10::1/128 dev up1");
    let p = plan(&pod, "conflict", None, Some("fd00:65:10::1"));
    let err = node
        .setup(&p)
        .expect_err("setup must refuse the conflicting route");
    let text = err.to_string();
    assert!(
        matches!(err, DataplaneError::RouteConflict { .. }),
        "{text}"
    );
    assert!(
        text.contains("fd00:65:10::1/128") && text.contains("up1"),
        "{text}"
    );
    node.assert_pristine();
}

/// Setup and teardown of one pod, 50 times in a row: every round succeeds and nothing is left.
/// (Speed is measured by scripts/bench-cni.sh, not asserted here.)
#[test]
fn fifty_setup_teardown_rounds_leave_nothing() {
    const ROUNDS: usize = 50;
    let node = Node::new();
    let pod = Netns::new("pod");
    let p = plan(&pod, "rounds", Some("10.65.11.1"), Some("fd00:65:11::1"));
    node.run(move || async move {
        for round in 0..ROUNDS {
            dataplane::setup(&p)
                .await
                .unwrap_or_else(|e| panic!("setup, round {round}: {e}"));
            dataplane::teardown(Some(&p.netns), &p.pod_ifname, &p.host_ifname)
                .await
                .unwrap_or_else(|e| panic!("teardown, round {round}: {e}"));
        }
    });
    node.assert_pristine();
    assert_eq!(pod.links(), ["lo"]);
}
