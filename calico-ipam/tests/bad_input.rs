//! Bad input: each case gets the right CNI code and a message a person can act on, exits
//! non-zero, and leaves every file of the datastore exactly as it was.

mod common;

use common::{Store, cni, text};
use serde_json::{Value, json};

struct Case {
    name: &'static str,
    command: &'static str,
    env: Vec<(&'static str, &'static str)>,
    stdin: String,
    code: u64,
    says: &'static str,
}

const POOLS: &str = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: v4}
spec: {cidr: 10.99.0.0/24, blockSize: 26}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: v6}
spec: {cidr: 'fd00:99::/120', blockSize: 122}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: full}
spec: {cidr: 10.98.0.0/31, blockSize: 31}
";

fn with(base: &Value, edit: impl FnOnce(&mut Value)) -> String {
    let mut v = base.clone();
    edit(&mut v);
    v.to_string()
}

fn cases(store: &Store) -> Vec<Case> {
    let base = store.netconf("1.0.0", "node-a");
    let ok = base.to_string();
    let case =
        |name, command, env: Vec<(&'static str, &'static str)>, stdin: String, code, says| Case {
            name,
            command,
            env,
            stdin,
            code,
            says,
        };
    vec![
        case(
            "broken JSON",
            "ADD",
            vec![],
            r#"{"cniVersion":"1.0.0","name":"#.into(),
            6,
            "decode",
        ),
        case(
            "not JSON at all",
            "ADD",
            vec![],
            "hello".into(),
            6,
            "decode",
        ),
        // Issue 10 item 8: a wrong type names the field's path, not only a line and column.
        case(
            "mtu of the wrong type",
            "ADD",
            vec![],
            with(&base, |v| v["mtu"] = json!("1500")),
            7,
            "mtu: invalid type: a string, expected u32 at line 1",
        ),
        case(
            "a pool list entry of the wrong type",
            "ADD",
            vec![],
            with(&base, |v| v["ipam"]["ipv4_pools"] = json!(["v4", 7])),
            7,
            "ipam.ipv4_pools[1]: invalid type: integer `7`, expected a string",
        ),
        case(
            "the ipam section as an array",
            "ADD",
            vec![],
            with(&base, |v| {
                v["ipam"] = json!(["calico-ipam", "true", "true"])
            }),
            7,
            "ipam: invalid type: sequence, expected a JSON object",
        ),
        // Read field by field, this array is a netconf for this store (it was, and was
        // allocated a pair): anything but an object is a decoding failure.
        case(
            "the netconf as a JSON array",
            "ADD",
            vec![],
            json!([
                "1.0.0",
                "k8s-pod-network",
                "calico",
                "local",
                store.path(),
                "node-a"
            ])
            .to_string(),
            6,
            "the network configuration must be a JSON object: invalid type: sequence, expected a JSON object",
        ),
        case(
            "the netconf as a JSON string",
            "DEL",
            vec![],
            json!(ok).to_string(),
            6,
            "the network configuration must be a JSON object: invalid type: a string",
        ),
        case(
            "unknown cniVersion",
            "ADD",
            vec![],
            with(&base, |v| v["cniVersion"] = json!("9.9.9")),
            1,
            "plugin supports",
        ),
        case(
            "missing cniVersion",
            "ADD",
            vec![],
            with(&base, |v| {
                v.as_object_mut().map(|o| o.remove("cniVersion"));
            }),
            1,
            "(missing)",
        ),
        case(
            "legacy 0.2.0 version",
            "ADD",
            vec![],
            with(&base, |v| v["cniVersion"] = json!("0.2.0")),
            1,
            "0.2.0",
        ),
        case(
            "missing CNI_CONTAINERID",
            "ADD",
            vec![("CNI_CONTAINERID", "")],
            ok.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        case(
            "missing CNI_IFNAME",
            "ADD",
            vec![("CNI_IFNAME", "")],
            ok.clone(),
            4,
            "CNI_IFNAME",
        ),
        case(
            "missing CNI_PATH",
            "ADD",
            vec![("CNI_PATH", "")],
            ok.clone(),
            4,
            "CNI_PATH",
        ),
        case(
            "missing CNI_NETNS on ADD",
            "ADD",
            vec![("CNI_NETNS", "")],
            ok.clone(),
            4,
            "CNI_NETNS",
        ),
        case("unknown CNI_COMMAND", "FROB", vec![], ok.clone(), 4, "FROB"),
        case(
            "bad container id",
            "ADD",
            vec![("CNI_CONTAINERID", "-oops")],
            ok.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        case(
            "malformed CNI_ARGS",
            "ADD",
            vec![("CNI_ARGS", "K8S_POD_NAME")],
            ok.clone(),
            4,
            "KEY=VALUE",
        ),
        case(
            "IPv6 CIDR in ipv4_pools",
            "ADD",
            vec![],
            with(&base, |v| {
                v["ipam"]["ipv4_pools"] = json!(["fd00:99::/120"])
            }),
            7,
            "ipv6_pools",
        ),
        case(
            "IPv4 CIDR in ipv6_pools",
            "ADD",
            vec![],
            with(&base, |v| v["ipam"]["ipv6_pools"] = json!(["10.99.0.0/24"])),
            7,
            "ipv4_pools",
        ),
        case(
            "bad CIDR",
            "ADD",
            vec![],
            with(&base, |v| v["ipam"]["ipv4_pools"] = json!(["10.99.0.0/33"])),
            7,
            "10.99.0.0/33",
        ),
        case(
            "unknown pool name",
            "ADD",
            vec![],
            with(&base, |v| v["ipam"]["ipv4_pools"] = json!(["no-such-pool"])),
            7,
            "no-such-pool",
        ),
        case(
            "CIDR that is no pool",
            "ADD",
            vec![],
            with(&base, |v| v["ipam"]["ipv4_pools"] = json!(["10.77.0.0/16"])),
            7,
            "10.77.0.0/16",
        ),
        case(
            "exhausted pool",
            "ADD",
            vec![],
            with(&base, |v| {
                v["ipam"]["ipv4_pools"] = json!(["full"]);
                v["ipam"]["assign_ipv6"] = json!(false);
            }),
            101,
            "10.98.0.0/31",
        ),
        case(
            "assign_ipv6 not a boolean",
            "ADD",
            vec![],
            with(&base, |v| v["ipam"]["assign_ipv6"] = json!("yes")),
            7,
            "\"yes\"",
        ),
        case(
            "assign_ipv4 a number",
            "ADD",
            vec![],
            with(&base, |v| v["ipam"]["assign_ipv4"] = json!(5)),
            7,
            "assign_ipv4",
        ),
        case(
            "nothing to assign",
            "ADD",
            vec![],
            with(&base, |v| {
                v["ipam"]["assign_ipv4"] = json!("false");
                v["ipam"]["assign_ipv6"] = json!("false");
            }),
            7,
            "both false",
        ),
        case(
            "unknown datastore type",
            "ADD",
            vec![],
            with(&base, |v| v["datastore_type"] = json!("etcd")),
            7,
            "\"etcd\" is not supported",
        ),
        case(
            "CHECK on a 0.3.1 config",
            "CHECK",
            vec![],
            with(&base, |v| v["cniVersion"] = json!("0.3.1")),
            1,
            "CHECK",
        ),
        case(
            "STATUS on a 1.0.0 config",
            "STATUS",
            vec![],
            ok.clone(),
            1,
            "STATUS",
        ),
        case(
            "IP= not an address",
            "ADD",
            vec![("CNI_ARGS", "IP=10.99.0.300")],
            ok.clone(),
            4,
            "10.99.0.300",
        ),
        case(
            "IP= outside every pool",
            "ADD",
            vec![("CNI_ARGS", "IP=10.50.0.5")],
            with(&base, |v| v["ipam"]["assign_ipv6"] = json!(false)),
            102,
            "10.50.0.5",
        ),
        case(
            "IP= already taken",
            "ADD",
            vec![("CNI_ARGS", "IP=10.98.0.0")],
            with(&base, |v| v["ipam"]["assign_ipv6"] = json!(false)),
            102,
            "10.98.0.0",
        ),
        case(
            "empty datastore_path",
            "ADD",
            vec![],
            with(&base, |v| v["datastore_path"] = json!("")),
            7,
            "datastore_path is empty",
        ),
        case(
            "relative datastore_path",
            "ADD",
            vec![],
            with(&base, |v| v["datastore_path"] = json!("store")),
            7,
            "datastore_path \"store\" is not an absolute path",
        ),
        case(
            "relative datastore_path on DEL",
            "DEL",
            vec![],
            with(&base, |v| v["datastore_path"] = json!("./store")),
            7,
            "datastore_path \"./store\" is not an absolute path",
        ),
        case(
            "relative ipam_lock_file",
            "ADD",
            vec![],
            with(&base, |v| v["ipam_lock_file"] = json!("ipam.lock")),
            7,
            "ipam_lock_file \"ipam.lock\" is not an absolute path",
        ),
        case(
            "relative etcd_cert_file",
            "ADD",
            vec![],
            with(&base, |v| {
                v["datastore_type"] = json!("etcdv3");
                v["etcd_endpoints"] = json!("https://127.0.0.1:1");
                v["etcd_cert_file"] = json!("etcd-cert");
            }),
            7,
            "etcd_cert_file \"etcd-cert\" is not an absolute path",
        ),
        case(
            "relative ETCD_KEY_FILE from the environment",
            "ADD",
            vec![("ETCD_KEY_FILE", "etcd-key")],
            with(&base, |v| {
                v["datastore_type"] = json!("etcdv3");
                v["etcd_endpoints"] = json!("https://127.0.0.1:1");
            }),
            7,
            "ETCD_KEY_FILE \"etcd-key\" is not an absolute path",
        ),
        case(
            "missing network name",
            "ADD",
            vec![],
            with(&base, |v| {
                v.as_object_mut().map(|o| o.remove("name"));
            }),
            7,
            "missing network name",
        ),
        case(
            "network name with a space",
            "ADD",
            vec![],
            with(&base, |v| v["name"] = json!("pod network")),
            7,
            "invalid characters in network name \"pod network\"",
        ),
        case(
            "network name of 500 KB",
            "ADD",
            vec![],
            with(&base, |v| v["name"] = json!("n".repeat(500_000))),
            7,
            "is 500000 bytes long; the limit is 100",
        ),
        case(
            "network name of 101 bytes",
            "DEL",
            vec![],
            with(&base, |v| v["name"] = json!("n".repeat(101))),
            7,
            "is 101 bytes long; the limit is 100",
        ),
        case(
            "CNI_CONTAINERID of 129 bytes",
            "ADD",
            vec![("CNI_CONTAINERID", leak("c".repeat(129)))],
            ok.clone(),
            4,
            "is 129 bytes long; the limit is 128",
        ),
        case(
            "CNI_ARGS of 8 KiB",
            "ADD",
            vec![(
                "CNI_ARGS",
                leak(format!("K8S_POD_UID={}", "u".repeat(8192))),
            )],
            ok.clone(),
            4,
            "CNI_ARGS is 8204 bytes long; the limit is 4096",
        ),
        case(
            "K8S_POD_NAME longer than Kubernetes allows",
            "ADD",
            vec![(
                "CNI_ARGS",
                leak(format!(
                    "K8S_POD_NAMESPACE=ns;K8S_POD_NAME={}",
                    "p".repeat(254)
                )),
            )],
            ok.clone(),
            4,
            "is 254 bytes long; Kubernetes allows at most 253",
        ),
    ]
}

/// A 50 MB netconf: refused after reading 1 MiB of it, naming the limit (it once took 5.3 s
/// and 1.9 GB just to read cniVersion).
#[test]
fn a_netconf_over_1_mib_is_refused_unread() {
    let store = Store::new();
    store.apply_pools(&common::tiny_pools());
    let before = store.snapshot();
    let conf = store.netconf("1.0.0", "node-a");
    let big = padded(&conf, 50 << 20);
    for command in ["ADD", "DEL", "VERSION"] {
        let out = cni(command, "big1", &[], &big);
        assert_eq!(out.status.code(), Some(1), "{command}: {}", text(&out));
        let err: Value = serde_json::from_slice(&out.stdout).expect("CNI error");
        assert_eq!(err["code"], 7, "{command}: {err}");
        assert!(
            err["details"]
                .as_str()
                .is_some_and(|d| d.contains("larger than 1048576 bytes (1 MiB)")),
            "{err}"
        );
        assert_eq!(store.snapshot(), before, "{command}: the datastore changed");
    }
    // Just under the bound is read and decoded as usual.
    let out = cni("ADD", "big2", &[], &padded(&conf, 1_000_000));
    assert!(out.status.success(), "{}", text(&out));
}

/// Run by a calico-cni that has since died (its pid is no longer our parent): nothing is
/// allocated.
#[test]
fn an_add_whose_calico_cni_is_gone_allocates_nothing() {
    let store = Store::new();
    store.apply_pools(&common::tiny_pools());
    let before = store.snapshot();
    let conf = store.netconf("1.0.0", "node-a").to_string();
    // Pid 1 is not the parent of a process this test starts.
    let out = cni(
        "ADD",
        "orphan1",
        &[("CALICO_CNI_PID", "1")],
        conf.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err: Value = serde_json::from_slice(&out.stdout).expect("CNI error");
    assert_eq!(err["code"], 11, "{err}");
    assert!(
        err["details"].as_str().is_some_and(
            |d| d.contains("calico-cni (pid 1)") && d.contains("nothing was allocated")
        ),
        "{err}"
    );
    assert_eq!(store.snapshot(), before, "the datastore changed");
    // Run by its real parent it allocates.
    let me = std::process::id().to_string();
    let out = cni(
        "ADD",
        "orphan1",
        &[("CALICO_CNI_PID", &me)],
        conf.as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out));
}

/// A `'static` string for the case table.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[test]
fn every_bad_input_is_refused_with_its_code_and_changes_nothing() {
    let store = Store::new();
    store.apply_pools(POOLS);
    // Fill the tiny `full` pool (2 addresses) so the exhausted case has something to hit.
    let mut fill = store.netconf("1.0.0", "node-a");
    fill["ipam"]["ipv4_pools"] = json!(["full"]);
    fill["ipam"]["assign_ipv6"] = json!(false);
    for id in ["filler1", "filler2"] {
        let out = cni("ADD", id, &[], fill.to_string().as_bytes());
        assert!(out.status.success(), "{}", text(&out));
    }
    let cases = cases(&store);
    assert!(cases.len() >= 20);
    for case in cases {
        let before = store.snapshot();
        let out = cni(case.command, "bad1", &case.env, case.stdin.as_bytes());
        assert!(
            !out.status.success(),
            "{}: succeeded: {}",
            case.name,
            text(&out)
        );
        let err: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: stdout is not a CNI error ({e}): {}",
                case.name,
                text(&out)
            )
        });
        assert_eq!(err["code"], case.code, "{}: {err}", case.name);
        let said = format!(
            "{} {}",
            err["msg"].as_str().unwrap_or(""),
            err["details"].as_str().unwrap_or("")
        );
        assert!(
            said.contains(case.says),
            "{}: message {said:?} should mention {:?}",
            case.name,
            case.says
        );
        assert!(err["cniVersion"].is_string(), "{}: {err}", case.name);
        assert_eq!(
            store.snapshot(),
            before,
            "{}: the datastore changed",
            case.name
        );
    }
}

/// A selector with a non-ASCII character (it used to abort the process mid-character).
const BAD_SELECTOR: &str = "abé == 'x'";

#[test]
fn pool_apply_refuses_an_unparsable_selector_and_changes_nothing() {
    let store = Store::new();
    store.apply_pools(&common::tiny_pools());
    let before = store.snapshot();
    let file = store.dir.path().join("bad-selector.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: zone-x}}\n\
             spec: {{cidr: 10.50.0.0/24, nodeSelector: \"{BAD_SELECTOR}\"}}\n"
        ),
    )
    .expect("write");
    let out = store.cli(&["pool", "apply", "-f", file.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("IPPool zone-x")
            && stderr.contains("nodeSelector: invalid selector \"abé == 'x'\"")
            && stderr.contains("at position 2"),
        "{stderr}"
    );
    assert_eq!(store.snapshot(), before, "nothing may be written");
}

/// A pool whose selector cannot be parsed, written straight into the store (as a hand edit or
/// a write through the API would): it matches no node and is reported, and every other pool
/// keeps working.
#[test]
fn a_stored_pool_with_a_bad_selector_is_ignored_reported_and_harms_no_other() {
    let store = Store::new();
    store.apply_pools(&common::tiny_pools());
    let bad = json!({"revision": "1.1", "value": {"name": "aa-bad", "spec": {
        "cidr": "10.50.0.0/24", "blockSize": 26, "nodeSelector": BAD_SELECTOR}}});
    std::fs::write(store.path().join("pools/aa-bad.json"), bad.to_string()).expect("write");

    let out = cni(
        "ADD",
        "good1",
        &[],
        store.netconf("1.0.0", "node-a").to_string().as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let result: Value = serde_json::from_slice(&out.stdout).expect("result");
    assert_eq!(result["ips"][0]["address"], "10.99.0.0/26", "{result}");
    assert_eq!(result["ips"][1]["address"], "fd00:99::/122", "{result}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("IPPool aa-bad is ignored") && stderr.contains("nodeSelector"),
        "the bad pool must be logged: {stderr}"
    );

    let show = store.cli(&["show", "-o", "json"]);
    assert!(show.status.success(), "show: {}", text(&show));
    assert!(
        String::from_utf8_lossy(&show.stderr).contains("IPPool aa-bad"),
        "{}",
        text(&show)
    );

    let check = store.cli(&["check"]);
    // 3: check found problems (see `calico-ipam --help`).
    assert_eq!(check.status.code(), Some(3), "{}", text(&check));
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        report.contains("Check complete; found 1 problems.")
            && report.contains("IPPool aa-bad: nodeSelector: invalid selector"),
        "{report}"
    );
}

/// Relative and empty paths are refused before anything is created: nothing may appear in the
/// runtime's working directory (`/` under containerd).
#[test]
fn relative_paths_create_nothing_in_the_working_directory() {
    let store = Store::new();
    store.apply_pools(&common::tiny_pools());
    let cwd = tempfile::tempdir().expect("cwd");
    let base = store.netconf("1.0.0", "node-a");
    for (field, value) in [
        ("datastore_path", ""),
        ("datastore_path", "store"),
        ("datastore_path", "var/lib/calico/ipam"),
        ("ipam_lock_file", "ipam.lock"),
    ] {
        for command in ["ADD", "DEL", "CHECK"] {
            let conf = with(&base, |v| v[field] = json!(value));
            let out = common::cni_in(cwd.path(), command, "rel1", &[], conf.as_bytes());
            assert_eq!(
                out.status.code(),
                Some(1),
                "{field}={value:?}: {}",
                text(&out)
            );
            let err: Value = serde_json::from_slice(&out.stdout).expect("CNI error");
            assert_eq!(err["code"], 7, "{field}={value:?} {command}: {err}");
            assert!(
                err["details"]
                    .as_str()
                    .is_some_and(|d| d.starts_with(field)),
                "{err}"
            );
            let left: Vec<_> = std::fs::read_dir(cwd.path())
                .expect("cwd")
                .map(|e| e.map(|e| e.file_name()))
                .collect();
            assert!(
                left.is_empty(),
                "{field}={value:?} {command} created {left:?}"
            );
        }
    }
}

/// `conf` with a `"padding"` string of `n` bytes added.
fn padded(conf: &Value, n: usize) -> Vec<u8> {
    let mut out = conf.to_string().into_bytes();
    out.pop(); // the closing brace
    out.extend_from_slice(b",\"padding\":\"");
    out.resize(out.len() + n, b'x');
    out.extend_from_slice(b"\"}");
    out
}
