//! The operator CLI as a process on a local store: calicoctl's spellings and output formats,
//! --version and per-command help, exit codes, strict YAML, pool deletion rules and split.

mod common;

use std::process::Output;

use common::{Store, added_cidrs, cni, seed_pools, text, tiny_pools};
use serde_json::Value;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Run, expect `code`, return stdout.
fn expect(store: &Store, args: &[&str], code: i32) -> String {
    let out = store.cli(args);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out));
    stdout(&out)
}

fn write(store: &Store, name: &str, body: &str) -> String {
    let path = store.dir.path().join(name);
    std::fs::write(&path, body).expect("write");
    path.to_str().expect("utf8").to_string()
}

fn add(store: &Store, cid: &str, pod: &str) {
    let conf = store.netconf("1.0.0", "node-a").to_string();
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}");
    let out = cni("ADD", cid, &[("CNI_ARGS", &args)], conf.as_bytes());
    assert!(out.status.success(), "ADD {cid}: {}", text(&out));
}

#[test]
fn version_names_the_git_commit() {
    let store = Store::new();
    for flag in ["--version", "-v", "version"] {
        let out = expect(&store, &[flag], 0);
        let mut lines = out.lines();
        let v = lines.next().unwrap_or_default();
        let id = lines.next().and_then(|l| l.strip_prefix("build "));
        assert!(
            id.is_some_and(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())),
            "{flag}: the build identity: {out}"
        );
        assert_eq!(lines.next(), None, "{flag}: {out}");
        let commit = v
            .strip_prefix(&format!("calico-ipam {} (git ", env!("CARGO_PKG_VERSION")))
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{flag}: {v}"));
        // The build script's fallback is "unknown"; in this checkout git knows the commit.
        let head = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("git");
        if head.status.success() {
            assert_eq!(commit, String::from_utf8_lossy(&head.stdout).trim());
        } else {
            assert_eq!(commit, "unknown");
        }
    }
}

#[test]
fn help_is_per_command_and_documents_exit_codes() {
    let store = Store::new();
    let global = expect(&store, &["--help"], 0);
    assert!(global.contains("exit codes:"), "{global}");
    assert!(
        global.contains("3  `ipam check` found problems"),
        "{global}"
    );
    let pool = expect(&store, &["pool", "--help"], 0);
    assert!(pool.starts_with("usage: calico-ipam pool apply"), "{pool}");
    assert_ne!(pool, global);
    let check = expect(&store, &["ipam", "check", "--help"], 0);
    assert!(
        check.starts_with("usage: calico-ipam ipam check"),
        "{check}"
    );
    assert_eq!(expect(&store, &["check", "-h"], 0), check);
    assert_eq!(expect(&store, &["help", "ipam", "check"], 0), check);
    let get = expect(&store, &["get", "ippool", "--help"], 0);
    assert!(get.starts_with("usage: calico-ipam get ippool"), "{get}");

    // Usage errors: exit 2 and a pointer to the command's help.
    let out = store.cli(&["ipam", "show", "--bogus"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("unknown flag --bogus\nRun `calico-ipam ipam show --help`"),
        "{}",
        text(&out)
    );
    assert_eq!(store.cli(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(store.cli(&["get", "nodes"]).status.code(), Some(2));
    assert_eq!(store.cli(&["ipam", "release"]).status.code(), Some(2));
}

#[test]
fn configure_needs_a_flag_and_follows_calicos_rules() {
    let store = Store::new();
    store.apply_pools(&tiny_pools());
    let out = store.cli(&["ipam", "configure"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!stdout(&out).contains("Successfully"), "{}", text(&out));
    assert!(
        stderr(&out).contains("at least one configuration option must be specified"),
        "{}",
        text(&out)
    );
    let out = store.cli(&["ipam", "configure", "--max-blocks-per-host=4"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("requires strictAffinity true"),
        "{}",
        text(&out)
    );
    let ok = expect(
        &store,
        &[
            "ipam",
            "configure",
            "--strictaffinity=true",
            "--max-blocks-per-host",
            "4",
        ],
        0,
    );
    assert_eq!(
        ok,
        "Successfully set StrictAffinity to: true\nSuccessfully set MaxBlocksPerHost to: 4\n"
    );
    let table = expect(&store, &["ipam", "show", "--show-configuration"], 0);
    assert_eq!(
        table,
        "+--------------------+-------+\n\
         |      PROPERTY      | VALUE |\n\
         +--------------------+-------+\n\
         | StrictAffinity     | true  |\n\
         | AutoAllocateBlocks | true  |\n\
         | MaxBlocksPerHost   |     4 |\n\
         +--------------------+-------+\n"
    );
    let json: Value = serde_json::from_str(&expect(
        &store,
        &["show", "--show-configuration", "-o", "json"],
        0,
    ))
    .expect("json");
    assert_eq!(json["configuration"]["maxBlocksPerHost"], 4);
    assert_eq!(json["configuration"]["strictAffinity"], true);
}

#[test]
fn show_prints_calicoctls_table() {
    let store = Store::new();
    store.apply_pools(&tiny_pools());
    // 3 of the tiny /26's 64 addresses: 4.6875% rounds to 5%, not 4%.
    for i in 0..3 {
        add(&store, &format!("c{i}"), &format!("p{i}"));
    }
    store.apply_pools(&seed_pools());
    let table = expect(&store, &["ipam", "show"], 0);
    assert_eq!(
        table,
        "+----------+------------------+------------+------------+-------------------+\n\
         | GROUPING |       CIDR       | IPS TOTAL  | IPS IN USE |     IPS FREE      |\n\
         +----------+------------------+------------+------------+-------------------+\n\
         | IP Pool  | 10.244.0.0/16    |      65536 | 0 (0%)     | 65536 (100%)      |\n\
         | IP Pool  | fd00:10:244::/48 | 1.2089e+24 | 0 (0%)     | 1.2089e+24 (100%) |\n\
         | IP Pool  | 10.99.0.0/26     |         64 | 3 (5%)     | 61 (95%)          |\n\
         | IP Pool  | fd00:99::/122    |         64 | 3 (5%)     | 61 (95%)          |\n\
         +----------+------------------+------------+------------+-------------------+\n",
    );
    let blocks = expect(&store, &["show", "--show-blocks"], 0);
    assert!(
        blocks.contains(
            "| Block    | 10.99.0.0/26     |         64 | 3 (5%)     | 61 (95%)          |"
        ),
        "{blocks}"
    );
    // The -o json document keeps exact counts (strings past 2^64).
    let json: Value =
        serde_json::from_str(&expect(&store, &["show", "-o", "json"], 0)).expect("json");
    let v6 = &json["pools"][1];
    assert_eq!(v6["total"], "1208925819614629174706176");
    let who = expect(&store, &["ipam", "show", "--ip", "10.99.0.1"], 0);
    assert!(
        who.starts_with(&format!(
            "IP 10.99.0.1 is in use\nHandle ID: k8s-pod-network.c1\nActive Owner Attributes:\n  namespace: default\n  netns: {}\n  node: node-a\n  pod: p1\n",
            common::live_netns()
        )),
        "{who}"
    );
    let free = expect(&store, &["ipam", "show", "--ip", "10.99.0.9"], 0);
    assert_eq!(free, "10.99.0.9 is not assigned\n");
    let yaml = expect(&store, &["show", "-o", "yaml"], 0);
    assert!(yaml.contains("cidr: 10.99.0.0/26"), "{yaml}");
}

#[test]
fn show_borrowed_lists_addresses_from_another_nodes_block() {
    let store = Store::new();
    store.apply_pools(&tiny_pools());
    add(&store, "a0", "a0");
    // node-b has no block of its own left (one block per family): it borrows node-a's.
    let mut conf = store.netconf("1.0.0", "node-b");
    conf["ipam"]["assign_ipv6"] = "false".into();
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=b0";
    let out = cni(
        "ADD",
        "b0",
        &[("CNI_ARGS", args)],
        conf.to_string().as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let table = expect(&store, &["ipam", "show", "--show-borrowed"], 0);
    assert!(
        table.contains(
            "| 10.99.0.1 | node-b         | 10.99.0.0/26 | node-a      | pod  | shop/b0      |"
        ),
        "{table}"
    );
}

#[test]
fn get_apply_and_delete_ippool_as_calicoctl() {
    let store = Store::new();
    let seed = write(&store, "seed.yaml", &seed_pools());
    assert_eq!(
        expect(&store, &["apply", "-f", &seed], 0),
        "Successfully applied 2 'IPPool' resource(s)\n"
    );
    assert_eq!(
        expect(&store, &["get", "ippool"], 0),
        "NAME        CIDR               SELECTOR\n\
         ipv4-pool   10.244.0.0/16      all()\n\
         ipv6-pool   fd00:10:244::/48   all()\n\n"
    );
    let wide = expect(&store, &["get", "ippools", "-o", "wide"], 0);
    assert!(
        wide.starts_with("NAME        CIDR               NAT    IPIPMODE   VXLANMODE     DISABLED   DISABLEBGPEXPORT   SELECTOR   ASSIGNMENTMODE\n"),
        "{wide}"
    );
    // The older spelling lists the same.
    assert_eq!(expect(&store, &["pool", "list", "-o", "wide"], 0), wide);
    let one: Value = serde_json::from_str(&expect(
        &store,
        &["get", "ippool", "ipv6-pool", "-o", "json"],
        0,
    ))
    .expect("json");
    assert_eq!(one["kind"], "IPPool");
    assert_eq!(one["spec"]["blockSize"], 122);
    let list: Value =
        serde_json::from_str(&expect(&store, &["get", "ippool", "-o", "json"], 0)).expect("json");
    assert_eq!(list["kind"], "IPPoolList");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
    // get -o yaml | apply -f - round-trips.
    let yaml = expect(&store, &["get", "ippool", "ipv4-pool", "-o", "yaml"], 0);
    let again = write(&store, "again.yaml", &yaml);
    expect(&store, &["apply", "-f", &again], 0);
    let out = store.cli(&["get", "ippool", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("resource does not exist: IPPool(nope)"));

    assert_eq!(
        expect(&store, &["delete", "ippool", "ipv6-pool"], 0),
        "Successfully deleted 1 'IPPool' resource(s)\n"
    );
    expect(&store, &["pool", "delete", "ipv4-pool"], 0);
    assert_eq!(
        expect(&store, &["get", "ippool"], 0),
        "NAME   CIDR   SELECTOR\n\n"
    );
    let out = store.cli(&["delete", "ippool", "ipv4-pool"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn apply_rejects_typos_naming_the_field_and_writes_nothing() {
    let store = Store::new();
    store.apply_pools(&tiny_pools());
    let before = store.snapshot();
    for (typo, want) in [
        (
            "blocksize: 28",
            "unknown field blocksize, did you mean blockSize?",
        ),
        (
            "natOutgoin: true",
            "unknown field natOutgoin, did you mean natOutgoing?",
        ),
        (
            "nodeselector: all()",
            "unknown field nodeselector, did you mean nodeSelector?",
        ),
    ] {
        let file = write(
            &store,
            "typo.yaml",
            &format!(
                "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: typo}}\nspec:\n  cidr: 10.50.0.0/16\n  {typo}\n"
            ),
        );
        let out = store.cli(&["apply", "-f", &file]);
        assert_eq!(out.status.code(), Some(1), "{typo}: {}", text(&out));
        assert!(stderr(&out).contains(want), "{typo}: {}", text(&out));
        assert!(stderr(&out).contains("IPPool typo: spec"), "{}", text(&out));
        assert!(!stdout(&out).contains("Successfully"), "{}", text(&out));
    }
    // A typo in the second document: the first is not written either.
    let file = write(
        &store,
        "two.yaml",
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: good}\nspec: {cidr: 10.51.0.0/16}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {name: default}\nspec: {strictAfinity: true}\n",
    );
    let out = store.cli(&["pool", "apply", "-f", &file]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("document 2")
            && stderr(&out).contains("did you mean strictAffinity?"),
        "{}",
        text(&out)
    );
    assert_eq!(store.snapshot(), before, "nothing may be written");

    // The IPAM configuration applies as a resource too.
    let file = write(
        &store,
        "cfg.yaml",
        "apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {name: default}\nspec: {strictAffinity: true, maxBlocksPerHost: 2}\n",
    );
    assert_eq!(
        expect(&store, &["apply", "-f", &file], 0),
        "Successfully applied 1 'IPAMConfiguration' resource(s)\n"
    );
    let json: Value = serde_json::from_str(&expect(
        &store,
        &["show", "--show-configuration", "-o", "json"],
        0,
    ))
    .expect("json");
    assert_eq!(json["configuration"]["maxBlocksPerHost"], 2);
}

#[test]
fn delete_refuses_a_pool_in_use_until_it_is_disabled() {
    let store = Store::new();
    store.apply_pools(&tiny_pools());
    add(&store, "c0", "p0");
    let out = store.cli(&["delete", "ippool", "tiny-v4"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("IPPool tiny-v4 (10.99.0.0/26) still has 1 address(es) in use"),
        "{err}"
    );
    assert!(
        err.contains(r#"calico-ipam patch ippool tiny-v4 -p '{"spec":{"disabled":true}}'"#),
        "{err}"
    );
    assert!(expect(&store, &["get", "ippool"], 0).contains("tiny-v4"));

    // Following the advice works; the address stays allocated (its block outlives the pool).
    assert_eq!(
        expect(
            &store,
            &[
                "patch",
                "ippool",
                "tiny-v4",
                "-p",
                r#"{"spec":{"disabled":true}}"#
            ],
            0
        ),
        "Successfully patched 1 'IPPool' resource\n"
    );
    assert!(expect(&store, &["get", "ippool", "-o", "wide"], 0).contains("true       false"));
    expect(&store, &["delete", "ippool", "tiny-v4"], 0);
    let blocks = expect(&store, &["show", "--show-blocks"], 0);
    let orphan = blocks
        .lines()
        .find(|l| l.starts_with("| Block    | 10.99.0.0/26 "))
        .unwrap_or_else(|| panic!("the block outlives its pool: {blocks}"));
    assert!(orphan.contains("| 1 (2%) "), "{blocks}");
    // A pool with nothing in use goes without being disabled.
    let conf = store.netconf("1.0.0", "node-a").to_string();
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p0";
    assert!(
        cni("DEL", "c0", &[("CNI_ARGS", args)], conf.as_bytes())
            .status
            .success()
    );
    expect(&store, &["delete", "ippool", "tiny-v6"], 0);
}

#[test]
fn split_replaces_a_pool_by_equal_halves() {
    let store = Store::new();
    store.apply_pools(&seed_pools());
    let out = expect(&store, &["ipam", "split", "2", "--name", "ipv4-pool"], 0);
    assert_eq!(
        out,
        "IP Pool ipv4-pool was successfully split into 2 smaller pools.\n\
         Created split-ipv4-pool-0 with CIDR 10.244.0.0/17.\n\
         Created split-ipv4-pool-1 with CIDR 10.244.128.0/17.\n\
         Please refer to the documentation for final steps.\n"
    );
    let list = expect(&store, &["get", "ippool", "-o", "wide"], 0);
    assert!(!list.contains("ipv4-pool   "), "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("split-ipv4-pool-1   10.244.128.0/17 ") && l.contains(" true ")),
        "{list}"
    );
    let out = store.cli(&["ipam", "split", "3", "--cidr=fd00:10:244::/48"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a valid power of 2: 3"),
        "{}",
        text(&out)
    );
}

/// A real network namespace (`ip netns add`), deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let name = format!("{name}-{}", std::process::id());
        let out = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip (the local check test needs root and iproute2)");
        assert!(out.status.success(), "ip netns add {name}: {}", text(&out));
        Netns(name)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    fn delete(&self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.0])
            .output();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

fn add_in(store: &Store, cid: &str, pod: &str, netns: &str, extra_args: &str) -> Vec<String> {
    let conf = store.netconf("1.0.0", "node-a").to_string();
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}{extra_args}");
    let out = cni(
        "ADD",
        cid,
        &[("CNI_ARGS", &args), ("CNI_NETNS", netns)],
        conf.as_bytes(),
    );
    added_cidrs(&out)
        .iter()
        .map(|c| c.addr().to_string())
        .collect()
}

/// The local datastore has no pod list: an allocation is in use while the network namespace
/// recorded at ADD exists. A pod whose namespace is gone without a DEL is leaked: check exits 3
/// and names it, and release --from-report frees exactly its addresses, only while they are
/// still the allocations the report saw.
#[test]
fn local_check_finds_addresses_of_vanished_netns_and_release_frees_exactly_them() {
    let store = Store::new();
    store.apply_pools(&tiny_pools());
    let (live, vanished, reused) = (
        Netns::new("ops-live"),
        Netns::new("ops-vanished"),
        Netns::new("ops-reused"),
    );
    let live_ips = add_in(&store, "live", "live", &live.path(), "");
    let gone_ips = add_in(&store, "gone", "gone", &vanished.path(), "");
    let other_ips = add_in(&store, "other", "other", &reused.path(), "");
    assert_eq!(
        expect(&store, &["ipam", "check"], 0).lines().last(),
        Some("Check complete; found 0 problems.")
    );

    vanished.delete();
    reused.delete();
    let report = store.dir.path().join("report.json");
    let report = report.to_str().expect("utf8");
    let out = store.cli(&["ipam", "check", "--show-problem-ips", "-o", report]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let printed = stdout(&out);
    for ip in gone_ips.iter().chain(&other_ips) {
        assert!(
            printed.contains(&format!("  {ip} leaked; attrs Main:k8s-pod-network.")),
            "{printed}"
        );
    }
    for ip in &live_ips {
        assert!(!printed.contains(&format!("  {ip} leaked")), "{printed}");
    }
    assert!(
        printed.contains("Check complete; found 4 problems."),
        "{printed}"
    );
    assert!(
        printed.contains("record the network namespace of their ADD"),
        "{printed}"
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(report).expect("report")).expect("json");
    assert_eq!(doc["datastoreType"], "local");
    assert_eq!(doc["allocations"][&gone_ips[0]][0]["inUse"], false);
    assert_eq!(doc["allocations"][&gone_ips[0]][0]["pod"], "gone");
    assert_eq!(doc["allocations"][&live_ips[0]][0]["inUse"], true);
    assert_eq!(
        doc["allocations"][&live_ips[0]][0]["owners"],
        serde_json::json!(["Workload(default/live)"])
    );

    // "other" is cleaned up properly after the report, and its IPv4 address goes to a new pod
    // (same address, new handle and sequence number): release must leave that one alone.
    let conf = store.netconf("1.0.0", "node-a").to_string();
    let del = cni(
        "DEL",
        "other",
        &[(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=other",
        )],
        conf.as_bytes(),
    );
    assert!(del.status.success(), "{}", text(&del));
    let mut conf4 = store.netconf("1.0.0", "node-a");
    conf4["ipam"]["assign_ipv6"] = "false".into();
    let new_ns = Netns::new("ops-new");
    let out = cni(
        "ADD",
        "new",
        &[
            (
                "CNI_ARGS",
                &format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=new;IP={}",
                    other_ips[0]
                ),
            ),
            ("CNI_NETNS", &new_ns.path()),
        ],
        conf4.to_string().as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out));

    let out = store.cli(&["ipam", "release", "--from-report", report]);
    assert!(out.status.success(), "{}", text(&out));
    let released = stdout(&out);
    assert!(
        released.contains("Releasing 4 old IPs...\nReleased 2 IPs successfully"),
        "{released}"
    );
    assert!(
        released.contains("2 addresses marked as leaked in the report had already been cleaned up"),
        "{released}"
    );
    assert!(
        !released.contains("unlock"),
        "the local store has no lock: {released}"
    );

    // Exactly the vanished pod's addresses were freed; the live pod and the new one keep theirs.
    for ip in &gone_ips {
        assert_eq!(
            expect(&store, &["ipam", "show", "--ip", ip], 0),
            format!("{ip} is not assigned\n")
        );
    }
    for (ip, holder) in [
        (&live_ips[0], "live"),
        (&live_ips[1], "live"),
        (&other_ips[0], "new"),
    ] {
        let who = expect(&store, &["ipam", "show", "--ip", ip], 0);
        assert!(who.contains(&format!("  pod: {holder}\n")), "{ip}: {who}");
    }
    assert_eq!(
        expect(&store, &["ipam", "check"], 0).lines().last(),
        Some("Check complete; found 0 problems.")
    );
}

#[test]
fn release_refuses_a_report_of_another_cluster() {
    let store = Store::new();
    store.apply_pools(&tiny_pools());
    let path = write(
        &store,
        "foreign.json",
        r#"{"version":"calico-ipam 0.1.0","clusterGUID":"0123abcd","datastoreLocked":true,"clusterInformationRevision":"7","clusterType":"k8s,kdd","allocations":{}}"#,
    );
    let out = store.cli(&["ipam", "release", "--from-report", &path, "--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("mismatched cluster GUID"),
        "{}",
        text(&out)
    );
}
