//! In-process IPAM: calico-cni runs calico-ipam's code in its own process only when the
//! calico-ipam in CNI_PATH is this same build, and then answers exactly as it does with the
//! binary: the same stdout bytes and exit status for every verb and error, the same log lines.
//!
//! Which way IPAM ran is read from the log: calico-ipam's lines carry the pid of the process
//! that wrote them, so in-process they carry calico-cni's pid and exec'd another.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Netns, Node, ipam_bin, text, tiny_pools};
use serde_json::{Value, json};

/// One line of the plugins' log: component (`ipam`, `cni-plugin`), pid, and the rest after the
/// pid (level, file and line, message, fields).
#[derive(Debug, Clone, PartialEq, Eq)]
struct LogLine {
    component: String,
    pid: u32,
    rest: String,
}

/// `2026-12-02 14:36:35.811 [ERROR][1055] ipam/skel.rs 152: message fields`.
fn parse_log(path: &Path) -> Vec<LogLine> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let after_time = line
                .get(24..)
                .unwrap_or_else(|| panic!("log line {line:?}"));
            let (level, rest) = after_time
                .split_once("][")
                .unwrap_or_else(|| panic!("log line {line:?}"));
            let (pid, rest) = rest
                .split_once("] ")
                .unwrap_or_else(|| panic!("log line {line:?}"));
            let (component, rest) = rest
                .split_once('/')
                .unwrap_or_else(|| panic!("log line {line:?}"));
            LogLine {
                component: component.to_string(),
                pid: pid.parse().unwrap_or_else(|_| panic!("pid in {line:?}")),
                rest: format!("{level}] {rest}"),
            }
        })
        .collect()
}

/// How IPAM ran in the invocations logged to `path`: in-process when every calico-ipam line
/// carries the pid of a calico-cni line, exec'd when none does.
#[derive(Debug, PartialEq, Eq)]
enum Ran {
    InProcess,
    Exec,
}

fn how_ipam_ran(path: &Path) -> Ran {
    let lines = parse_log(path);
    let cni: BTreeSet<u32> = lines
        .iter()
        .filter(|l| l.component == "cni-plugin")
        .map(|l| l.pid)
        .collect();
    let ipam: Vec<u32> = lines
        .iter()
        .filter(|l| l.component == "ipam")
        .map(|l| l.pid)
        .collect();
    assert!(
        !ipam.is_empty(),
        "no calico-ipam line in {}",
        path.display()
    );
    if ipam.iter().all(|p| cni.contains(p)) {
        Ran::InProcess
    } else if ipam.iter().all(|p| !cni.contains(p)) {
        Ran::Exec
    } else {
        panic!("mixed pids: {lines:?}")
    }
}

/// A change to a node's netconf, given the node's own earlier ADD result.
type Edit = dyn Fn(&mut Value, &Value);

/// A node whose netconf logs to a file of its own, with IPAM in-process allowed or not.
struct Case {
    node: Node,
    conf: Value,
}

impl Case {
    fn new(in_process: Option<bool>) -> Case {
        let node = Node::new();
        node.apply_pools(&tiny_pools());
        let mut conf = node.netconf("1.0.0");
        conf["log_file_path"] = json!(node.dir.path().join("cni.log"));
        if let Some(allowed) = in_process {
            conf["ipam_in_process"] = json!(allowed);
        }
        Case { node, conf }
    }

    fn log(&self) -> PathBuf {
        self.node.dir.path().join("cni.log")
    }

    fn conf_with(&self, edit: impl FnOnce(&mut Value)) -> Value {
        let mut conf = self.conf.clone();
        edit(&mut conf);
        conf
    }

    /// The verb for container `container` of pod `default/web-<container>` in `pod`.
    fn run(&self, command: &str, container: &str, pod: &Netns, conf: &Value) -> Output {
        let name = format!("web-{container}");
        self.node.cni(
            command,
            container,
            &pod.path(),
            Some(("default", &name)),
            conf,
        )
    }
}

/// stdout with what differs between two nodes by construction (the pod netns path, the pod
/// interface's kernel-chosen MAC) replaced by placeholders; everything else byte for byte.
fn comparable(out: &Output, pod: &Netns) -> (Option<i32>, String) {
    let mut stdout = String::from_utf8_lossy(&out.stdout).replace(&pod.path(), "<netns>");
    if let Ok(v) = serde_json::from_str::<Value>(&stdout)
        && let Some(interfaces) = v["interfaces"].as_array()
    {
        for i in interfaces {
            if i["sandbox"].is_string()
                && let Some(mac) = i["mac"].as_str()
            {
                stdout = stdout.replace(&format!("\"{mac}\""), "\"<mac>\"");
            }
        }
    }
    (out.status.code(), stdout)
}

#[test]
fn in_process_and_exec_answer_byte_for_byte_alike() {
    let inproc = Case::new(None);
    let exec = Case::new(Some(false));
    // Pod netns per node: two pods, and one for the ADDs that fail.
    let pods: Vec<(Netns, Netns)> = (0..3)
        .map(|_| (Netns::new("ipod"), Netns::new("epod")))
        .collect();

    // Each step runs on both nodes (identical stores) and must print the same bytes. `edit`
    // gets the node's own earlier ADD result (for CHECK's prevResult).
    let results: std::cell::RefCell<[Value; 2]> = Default::default();
    let step = |what: &str, command: &str, container: &str, pod: usize, edit: &Edit| {
        let prev = results.borrow().clone();
        let a = inproc.run(
            command,
            container,
            &pods[pod].0,
            &inproc.conf_with(|c| edit(c, &prev[0])),
        );
        let b = exec.run(
            command,
            container,
            &pods[pod].1,
            &exec.conf_with(|c| edit(c, &prev[1])),
        );
        assert_eq!(
            comparable(&a, &pods[pod].0),
            comparable(&b, &pods[pod].1),
            "{what}\nin-process: {}\nexec: {}",
            text(&a),
            text(&b)
        );
        (a, b)
    };

    let (a, b) = step("ADD 1.0.0", "ADD", "c-one", 0, &|_, _| {});
    assert!(a.status.success(), "{}", text(&a));
    let first: Value = serde_json::from_slice(&a.stdout).expect("result");
    assert_eq!(first["ips"][0]["address"], "10.99.0.0/32", "{first}");
    *results.borrow_mut() = [first, serde_json::from_slice(&b.stdout).expect("result")];
    let (a, _) = step("ADD 0.3.1", "ADD", "c-two", 1, &|c, _| {
        c["cniVersion"] = json!("0.3.1")
    });
    assert!(a.status.success(), "{}", text(&a));

    // IPAM's errors, passed through calico-cni.
    let errors: [(&str, &Edit); 5] = [
        ("a pool list of the wrong family", &|c, _| {
            c["ipam"]["ipv4_pools"] = json!(["fd00::/48"])
        }),
        ("a pool that does not exist", &|c, _| {
            c["ipam"]["ipv4_pools"] = json!(["10.1.0.0/24"])
        }),
        ("nothing to assign", &|c, _| {
            c["ipam"]["assign_ipv4"] = json!("false");
            c["ipam"]["assign_ipv6"] = json!("false");
        }),
        ("an IPv6 pool name that does not exist", &|c, _| {
            c["ipam"]["ipv6_pools"] = json!(["no-such-pool"])
        }),
        ("a store that cannot be opened", &|c, _| {
            c["datastore_path"] = json!("/proc/version/store")
        }),
    ];
    for (what, edit) in errors {
        let (a, _) = step(what, "ADD", "c-bad", 2, edit);
        assert_eq!(a.status.code(), Some(1), "{what}: {}", text(&a));
        let e: Value = serde_json::from_slice(&a.stdout).expect("error json");
        assert!(e["code"].as_u64().is_some(), "{what}: {e}");
    }

    // CHECK: a healthy pod, then an attachment IPAM holds nothing for (IPAM's own error).
    let with_prev = |c: &mut Value, prev: &Value| c["prevResult"] = prev.clone();
    let (a, _) = step("CHECK", "CHECK", "c-one", 0, &with_prev);
    assert!(a.status.success(), "{}", text(&a));
    let (a, _) = step("CHECK, no allocation", "CHECK", "c-none", 0, &with_prev);
    assert!(!a.status.success(), "{}", text(&a));

    // STATUS and GC (1.1.0), then DEL of both pods, and one DEL again.
    let (a, _) = step("STATUS", "STATUS", "c-one", 0, &|c, _| {
        c["cniVersion"] = json!("1.1.0")
    });
    assert!(a.status.success(), "{}", text(&a));
    let gc = |c: &mut Value, _: &Value| {
        c["cniVersion"] = json!("1.1.0");
        c["cni.dev/valid-attachments"] = json!([{"containerID": "c-one", "ifname": "eth0"}]);
    };
    let (a, _) = step("GC", "GC", "", 0, &gc);
    assert!(a.status.success(), "{}", text(&a));
    for (container, pod) in [("c-one", 0), ("c-two", 1), ("c-one", 0)] {
        let (a, _) = step("DEL", "DEL", container, pod, &|_, _| {});
        assert!(a.status.success(), "{}", text(&a));
    }
    assert_eq!(inproc.node.ipam_in_use(), 0);
    assert_eq!(exec.node.ipam_in_use(), 0);
    assert!(inproc.node.ipam_consistent() && exec.node.ipam_consistent());

    // Which way each ran, and the same calico-ipam log lines but for the time and pid.
    assert_eq!(how_ipam_ran(&inproc.log()), Ran::InProcess);
    assert_eq!(how_ipam_ran(&exec.log()), Ran::Exec);
    let ipam_lines = |case: &Case| -> Vec<String> {
        parse_log(&case.log())
            .into_iter()
            .filter(|l| l.component == "ipam")
            .map(|l| l.rest)
            .collect()
    };
    let (a, b) = (ipam_lines(&inproc), ipam_lines(&exec));
    assert!(a.iter().any(|l| l.contains("CNI ADD succeeded")), "{a:#?}");
    assert!(a.iter().any(|l| l.contains("CNI ADD failed")), "{a:#?}");
    assert_eq!(a, b);
}

/// The build identity `calico-ipam --version` prints on its second line.
fn build_id(binary: &Path) -> String {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .env_remove("CNI_COMMAND")
        .output()
        .expect("calico-ipam --version");
    let v = String::from_utf8_lossy(&out.stdout);
    let id = v
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("build "))
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(id.len(), 64, "{v}");
    id.to_string()
}

/// Put `binary` in the node's CNI_PATH as calico-ipam (replacing the link to ours).
fn install_ipam(node: &Node, binary: &Path) {
    let dest = node.dir.path().join("bin").join("calico-ipam");
    std::fs::remove_file(&dest).expect("remove calico-ipam link");
    std::fs::copy(binary, &dest).expect("copy calico-ipam");
}

#[test]
fn only_calico_ipam_of_this_build_runs_in_process() {
    let pod = Netns::new("ipod");
    let ours = ipam_bin();
    let id = build_id(&ours);

    // A copy of this build's calico-ipam (as the installer copies it): in-process.
    let copy = Case::new(None);
    install_ipam(&copy.node, &ours);
    let out = copy.run("ADD", "c-copy", &pod, &copy.conf);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(how_ipam_ran(&copy.log()), Ran::InProcess);
    copy.run("DEL", "c-copy", &pod, &copy.conf);

    // Another build: the same binary with another identity in its note. It is run, and
    // works.
    let other = Case::new(None);
    let scratch = tempfile::tempdir().expect("tempdir");
    let patched = scratch.path().join("calico-ipam");
    let bytes = std::fs::read(&ours).expect("read calico-ipam");
    let other_id: String = id.chars().rev().collect();
    assert_ne!(other_id, id);
    let mut replaced = 0;
    let mut out_bytes = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(id.as_bytes()) {
            out_bytes.extend_from_slice(other_id.as_bytes());
            i += id.len();
            replaced += 1;
        } else {
            out_bytes.push(bytes[i]);
            i += 1;
        }
    }
    assert!(replaced >= 1, "the identity is not in {}", ours.display());
    std::fs::write(&patched, out_bytes).expect("write");
    std::fs::set_permissions(
        &patched,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    assert_eq!(build_id(&patched), other_id);
    install_ipam(&other.node, &patched);
    let out = other.run("ADD", "c-other", &pod, &other.conf);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(how_ipam_ran(&other.log()), Ran::Exec);
    other.run("DEL", "c-other", &pod, &other.conf);

    // A wrapper script that runs this build's calico-ipam: run (it may do anything).
    let wrapped = Case::new(None);
    let marker = scratch.path().join("wrapper-ran");
    let script = scratch.path().join("wrapper");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho ran >> {}\nexec {} \"$@\"\n",
            marker.display(),
            ours.display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    install_ipam(&wrapped.node, &script);
    let out = wrapped.run("ADD", "c-wrap", &pod, &wrapped.conf);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(how_ipam_ran(&wrapped.log()), Ran::Exec);
    assert!(marker.exists(), "the wrapper did not run");
    wrapped.run("DEL", "c-wrap", &pod, &wrapped.conf);

    // This build, but the netconf says `"ipam_in_process": "false"`: run.
    let forced = Case::new(Some(false));
    forced.run("ADD", "c-forced", &pod, &forced.conf);
    assert_eq!(how_ipam_ran(&forced.log()), Ran::Exec);
    forced.run("DEL", "c-forced", &pod, &forced.conf);
}
