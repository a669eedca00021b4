//! The plugins' log, read back from `log_file_path` after real invocations: failed verbs leave
//! an error line naming the pod and the CNI code, calico-ipam (run by calico-cni) writes its own
//! lines, rotation keeps the configured number of files, and stdin never reaches the log.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use common::run::run_with_stdin;
use common::{CNI, Netns, Node, text};
use serde_json::{Value, json};

/// A pool with exactly one IPv4 address, so the second pod finds it exhausted.
const ONE_ADDRESS_POOL: &str = "apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: one-address}
spec: {cidr: 10.77.0.1/32, blockSize: 32}
";

/// `Node::netconf` logging to `log` at `level`, IPv4 only.
fn logged_conf(node: &Node, log: &Path, level: &str) -> Value {
    let mut conf = node.netconf("1.0.0");
    conf["log_level"] = json!(level);
    conf["log_file_path"] = json!(log);
    conf["ipam"]["assign_ipv6"] = json!("false");
    conf
}

/// The CNI error code calico-cni printed.
fn code_of(out: &Output) -> u64 {
    assert!(!out.status.success(), "expected a failure: {}", text(out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("error json");
    v["code"].as_u64().expect("code")
}

/// `YYYY-MM-DD HH:MM:SS.mmm ` at the start of the line (Calico's timestamp).
fn timestamped(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 24
        && b[..23].iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            _ => c.is_ascii_digit(),
        })
        && b[23] == b' '
}

/// The error line of a failed verb: timestamped, error level, this plugin's component, naming
/// the container, the pod and the code.
fn error_line<'a>(
    log: &'a str,
    component: &str,
    container: &str,
    pod: (&str, &str),
    code: u64,
) -> Option<&'a str> {
    log.lines().find(|l| {
        timestamped(l)
            && l[24..].starts_with("[ERROR][")
            && l.contains(&format!("] {component}/"))
            && l.contains("CNI ADD failed")
            && l.contains(&format!("ContainerID=\"{container}\""))
            && l.contains(&format!("Namespace=\"{}\"", pod.0))
            && l.contains(&format!("Pod=\"{}\"", pod.1))
            && l.contains(&format!(" code={code}"))
    })
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn failed_adds_leave_an_error_line_naming_the_pod_and_code() {
    let node = Node::new();
    node.apply_pools(ONE_ADDRESS_POOL);
    let log = node.dir.path().join("log").join("cni.log");
    let conf = logged_conf(&node, &log, "info");
    let pod = ("logs", "web-0");

    // The pod's network namespace does not exist.
    let out = node.cni(
        "ADD",
        "c-nonetns",
        "/var/run/netns/no-such-pod",
        Some(pod),
        &conf,
    );
    let code = code_of(&out);
    let all = read(&log);
    assert!(
        error_line(&all, "cni-plugin", "c-nonetns", pod, code).is_some(),
        "no error line for the missing netns (code {code}) in:\n{all}"
    );

    // The IPAM plugin named in the configuration is not in CNI_PATH.
    let mut unknown = conf.clone();
    unknown["ipam"]["type"] = json!("no-such-ipam");
    let out = node.cni(
        "ADD",
        "c-noipam",
        "/var/run/netns/unused",
        Some(pod),
        &unknown,
    );
    let code = code_of(&out);
    assert_eq!(code, 7, "{}", text(&out));
    let all = read(&log);
    let line = error_line(&all, "cni-plugin", "c-noipam", pod, code)
        .unwrap_or_else(|| panic!("no error line for the unknown IPAM type in:\n{all}"));
    assert!(line.contains("no-such-ipam"), "details missing: {line}");
    assert!(!line.contains("Some("), "{line}");

    // The pool's only address goes to the first pod; the second finds the pool exhausted, and
    // both calico-ipam (which found it) and calico-cni (which reports it) say so.
    let first = Netns::new("lgpod");
    node.add("c-first", &first, Some(("logs", "first")), &conf);
    let second = Netns::new("lgpod");
    let full = ("logs", "second");
    let out = node.cni("ADD", "c-full", &second.path(), Some(full), &conf);
    let code = code_of(&out);
    let all = read(&log);
    assert!(
        error_line(&all, "cni-plugin", "c-full", full, code).is_some(),
        "no calico-cni error line for the exhausted pool in:\n{all}"
    );
    assert!(
        error_line(&all, "ipam", "c-full", full, code).is_some(),
        "no calico-ipam error line for the exhausted pool in:\n{all}"
    );
    // calico-ipam also logs its successes, with the pod's identity on each line.
    assert!(
        all.lines().any(|l| timestamped(l)
            && l.contains("[INFO][")
            && l.contains("] ipam/")
            && l.contains("ContainerID=\"c-first\"")
            && l.contains("Pod=\"first\"")),
        "no calico-ipam info line for the first pod in:\n{all}"
    );
}

/// Run calico-cni outside any netns with `conf` on stdin (for verbs that fail before the
/// dataplane).
fn run_cni(container: &str, conf: &Value) -> Output {
    let mut cmd = Command::new(CNI);
    cmd.env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", "/var/run/netns/unused")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent")
        .env("CNI_ARGS", "K8S_POD_NAMESPACE=logs;K8S_POD_NAME=rot");
    run_with_stdin(&mut cmd, conf.to_string().as_bytes())
}

/// A netconf whose ADD fails at once (unknown IPAM type), logging to `log`.
fn failing_conf(log: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "calico",
        "nodename": "node-a",
        "log_level": "info",
        "log_file_path": log,
        "log_file_max_size": 1,
        "log_file_max_count": 3,
        "ipam": {"type": "no-such-ipam"}
    })
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn rotation_keeps_the_configured_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("cni.log");
    let conf = failing_conf(&log);
    // Each round fills the current file to the 1 MB limit, so the next line rotates it: eight
    // rounds rotate eight times, and only the current file and 3 rotated ones may remain.
    let filler = vec![b'#'; 1024 * 1024];
    for round in 0..8 {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log");
        f.write_all(&filler).expect("fill");
        drop(f);
        let out = run_cni(&format!("rot-{round}"), &conf);
        assert_eq!(code_of(&out), 7, "{}", text(&out));
    }
    let names: Vec<String> = log_files(dir.path())
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["cni.log", "cni.log.1", "cni.log.2", "cni.log.3"],
        "log_file_max_count 3 keeps three rotated files"
    );
    // The current file holds only the last round's lines; the newest rotated one starts with
    // the filler that pushed it over the limit.
    let current = read(&log);
    assert!(current.contains("ContainerID=\"rot-7\""), "{current}");
    assert!(!current.contains('#'), "the current file was not rotated");
    assert!(read(&dir.path().join("cni.log.1")).contains("ContainerID=\"rot-6\""));

    // log_file_max_age: a rotated file older than the limit is removed by the next invocation.
    let old = SystemTime::now() - Duration::from_secs(3 * 86_400);
    for n in [2, 3] {
        std::fs::File::options()
            .write(true)
            .open(dir.path().join(format!("cni.log.{n}")))
            .expect("open rotated")
            .set_modified(old)
            .expect("age it");
    }
    let mut aged = conf.clone();
    aged["log_file_max_age"] = json!(2);
    let out = run_cni("rot-age", &aged);
    assert_eq!(code_of(&out), 7, "{}", text(&out));
    let names: Vec<String> = log_files(dir.path())
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["cni.log", "cni.log.1"],
        "files older than 2 days go"
    );
}

#[test]
fn stdin_and_tokens_never_reach_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("cni.log");
    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.FAKE-TOKEN-never-logged";
    let mut conf = failing_conf(&log);
    conf["log_level"] = json!("debug");
    conf["policy"] = json!({"type": "k8s", "k8s_auth_token": TOKEN});
    conf["kubernetes"] = json!({"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"});
    // Absolute, as the netconf requires of it (a relative one is refused before logging starts).
    conf["etcd_key_file"] = json!(format!("/etc/calico/{TOKEN}"));
    let out = run_cni("c-secret", &conf);
    assert_eq!(code_of(&out), 7, "{}", text(&out));
    // A configuration that cannot be decoded names no log file: its error goes to stderr (as
    // Calico's does), without the value that failed to decode.
    let mut broken = conf.clone();
    broken["mtu"] = json!(format!("mtu-{TOKEN}"));
    let out = run_cni("c-broken", &broken);
    assert_eq!(code_of(&out), 7, "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().any(|l| timestamped(l)
            && l.contains("[ERROR][")
            && l.contains("ContainerID=\"c-broken\"")
            && l.contains("code=7")),
        "the decode failure is logged on stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("FAKE-TOKEN"),
        "the token leaked to stderr:\n{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("FAKE-TOKEN"),
        "the token came back on stdout: {}",
        text(&out)
    );

    let all = read(&log);
    assert!(
        all.lines()
            .any(|l| l.contains("[ERROR][") && l.contains("ContainerID=\"c-secret\"")),
        "the failure is logged:\n{all}"
    );
    assert!(!all.contains("c-broken"), "no log file was named:\n{all}");
    assert!(
        all.lines().any(|l| l.contains("[DEBUG][")),
        "debug level honoured:\n{all}"
    );
    assert!(
        !all.contains("FAKE-TOKEN"),
        "the token leaked into the log:\n{all}"
    );
    assert!(
        !all.contains("k8s_auth_token"),
        "stdin leaked into the log:\n{all}"
    );
}
