//! Bad input to calico-cni that is refused before any namespace, interface or datastore is
//! touched: each case gets its CNI code and a message naming the problem, and nothing is
//! created (the working directory and the datastore stay empty). These need no root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::run::run_with_stdin;

use serde_json::{Value, json};

const CNI: &str = env!("CARGO_BIN_EXE_calico-cni");

/// A CNI_PATH directory and a place for a datastore that must stay absent.
struct Scratch {
    dir: tempfile::TempDir,
    cwd: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("bin")).expect("bin");
        Scratch {
            dir,
            cwd: tempfile::tempdir().expect("cwd"),
        }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn netconf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "calico",
            "datastore_type": "local",
            "datastore_path": self.dir.path().join("store"),
            "ipam_lock_file": self.dir.path().join("ipam.lock"),
            "nodename": "node-a",
            "ipam": {"type": "calico-ipam"}
        })
    }

    /// Run calico-cni in the scratch working directory.
    fn cni(&self, command: &str, env: &[(&str, &str)], stdin: &[u8]) -> Output {
        let mut cmd = Command::new(CNI);
        cmd.current_dir(self.cwd.path())
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "c1")
            .env("CNI_NETNS", "/var/run/netns/does-not-matter")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", self.bin())
            .envs(env.iter().copied());
        run_with_stdin(&mut cmd, stdin)
    }

    /// Nothing in the working directory, no datastore, no lock file.
    fn assert_nothing_created(&self, case: &str) {
        let entries = |p: &Path| -> Vec<String> {
            std::fs::read_dir(p)
                .expect("read_dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        };
        assert!(
            entries(self.cwd.path()).is_empty(),
            "{case}: created in the working directory"
        );
        assert_eq!(
            entries(self.dir.path()),
            ["bin"],
            "{case}: created beside the config"
        );
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The CNI error on stdout; the exit status must be 1.
fn cni_error(out: &Output, case: &str) -> Value {
    assert_eq!(out.status.code(), Some(1), "{case}: {}", text(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{case}: stdout is not a CNI error ({e}): {}", text(out)))
}

#[test]
fn bad_paths_and_names_are_refused_before_anything_is_made() {
    let s = Scratch::new();
    let base = s.netconf();
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v);
        v.to_string()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "empty datastore_path",
            edit(&|v| v["datastore_path"] = json!("")),
            "datastore_path is empty",
        ),
        (
            "relative datastore_path",
            edit(&|v| v["datastore_path"] = json!("store")),
            "datastore_path \"store\" is not an absolute path",
        ),
        (
            "relative ipam_lock_file",
            edit(&|v| v["ipam_lock_file"] = json!("run/ipam.lock")),
            "ipam_lock_file \"run/ipam.lock\" is not an absolute path",
        ),
        (
            "relative log_file_path",
            edit(&|v| v["log_file_path"] = json!("cni.log")),
            "log_file_path \"cni.log\" is not an absolute path",
        ),
        (
            "relative etcd_key_file",
            edit(&|v| {
                v["datastore_type"] = json!("etcdv3");
                v["etcd_endpoints"] = json!("https://127.0.0.1:1");
                v["etcd_key_file"] = json!("calico-tls/etcd-key");
            }),
            "etcd_key_file \"calico-tls/etcd-key\" is not an absolute path",
        ),
        (
            "missing name",
            edit(&|v| {
                v.as_object_mut().map(|o| o.remove("name"));
            }),
            "missing network name",
        ),
        (
            "name with a slash",
            edit(&|v| v["name"] = json!("net/../../etc")),
            "invalid characters in network name \"net/../../etc\"",
        ),
        (
            "name of 100 KB",
            edit(&|v| v["name"] = json!("n".repeat(100_000))),
            "is 100000 bytes long; the limit is 100",
        ),
    ];
    for (case, stdin, says) in cases {
        for command in ["ADD", "DEL", "CHECK"] {
            let out = s.cni(command, &[], stdin.as_bytes());
            let err = cni_error(&out, case);
            assert_eq!(err["code"], 7, "{case} {command}: {err}");
            assert!(
                err["details"].as_str().is_some_and(|d| d.contains(says)),
                "{case} {command}: {err} should say {says:?}"
            );
            s.assert_nothing_created(case);
        }
    }
}

/// A 50 MB netconf is refused after 1 MiB, before the IPAM plugin or anything else runs.
#[test]
fn a_netconf_over_1_mib_is_refused_unread() {
    let s = Scratch::new();
    let conf = s.netconf();
    let big = padded(&conf, 50 << 20);
    for command in ["ADD", "DEL", "VERSION"] {
        let out = s.cni(command, &[], &big);
        let err = cni_error(&out, command);
        assert_eq!(err["code"], 7, "{command}: {err}");
        assert!(
            err["details"]
                .as_str()
                .is_some_and(|d| d.contains("larger than 1048576 bytes (1 MiB)")),
            "{err}"
        );
        s.assert_nothing_created(command);
    }
}

/// Issue 10 item 8: a wrong type names the field's path; anything but a JSON object is a
/// decoding failure (code 6). Read field by field, the array below is a netconf for the
/// scratch store (it was, and calico-cni and calico-ipam allocated a pair from it).
#[test]
fn wrong_types_name_their_field_and_a_json_array_is_no_netconf() {
    let s = Scratch::new();
    std::os::unix::fs::symlink(
        Path::new(CNI).with_file_name("calico-ipam"),
        s.bin().join("calico-ipam"),
    )
    .expect("link calico-ipam");
    let base = s.netconf();
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v);
        v.to_string()
    };
    let positional = json!([
        "1.0.0",
        "k8s-pod-network",
        "calico",
        "local",
        s.dir.path().join("store"),
        "node-a",
        null,
        null,
        {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"}
    ]);
    let cases: Vec<(&str, String, u64, &str)> = vec![
        (
            "mtu of the wrong type",
            edit(&|v| v["mtu"] = json!("1500")),
            7,
            "mtu: invalid type: a string, expected u32 at line 1",
        ),
        (
            "a nested boolean of the wrong type",
            edit(&|v| v["ipam"]["assign_ipv6"] = json!(5)),
            7,
            "ipam.assign_ipv6 must be true or false",
        ),
        (
            "a nested section as an array",
            edit(&|v| v["container_settings"] = json!([true])),
            7,
            "container_settings: invalid type: sequence, expected a JSON object",
        ),
        (
            "the netconf as a JSON array",
            positional.to_string(),
            6,
            "the network configuration must be a JSON object: invalid type: sequence",
        ),
        (
            "the netconf as a number",
            "1".into(),
            6,
            "the network configuration must be a JSON object: invalid type: integer",
        ),
        (
            "prevResult as a JSON array",
            edit(&|v| v["prevResult"] = json!([[], [{"address": "10.99.0.0/26"}]])),
            7,
            "prevResult: invalid type: sequence, expected a JSON object",
        ),
        (
            "prevResult as a string",
            edit(&|v| v["prevResult"] = json!("ok")),
            7,
            "prevResult: invalid type: a string, expected a JSON object",
        ),
    ];
    for (case, conf, code, says) in cases {
        for command in ["ADD", "DEL", "CHECK"] {
            let out = s.cni(command, &[], conf.as_bytes());
            let err = cni_error(&out, case);
            assert_eq!(err["code"], code, "{case} {command}: {err}");
            assert!(
                err["details"].as_str().is_some_and(|d| d.contains(says)),
                "{case} {command}: {err}"
            );
            s.assert_nothing_created(&format!("{case} {command}"));
        }
    }
    // What is in prevResult is read by CHECK, and refused there before anything is looked at.
    let conf = edit(&|v| {
        v["prevResult"] = json!({"cniVersion": "1.0.0", "interfaces": [["eth0"]], "ips": []})
    });
    let err = cni_error(&s.cni("CHECK", &[], conf.as_bytes()), "CHECK");
    assert_eq!(err["code"], 7, "{err}");
    assert_eq!(
        err["details"],
        "prevResult: interfaces[0]: invalid type: sequence, expected struct Interface",
        "{err}"
    );
    s.assert_nothing_created("CHECK");
}

/// VERSION reads nothing from stdin but an object's `cniVersion` string, which it echoes (the
/// spec: the reply's `cniVersion` is the input's). The reference skel never reads VERSION's
/// stdin at all and always answers; so does calico-cni for any JSON: an array, a number, a
/// string or `null` (or a `cniVersion` that is not a string) is answered with the latest
/// version, and nothing is taken from it by position. Only broken JSON is refused (code 6).
#[test]
fn version_answers_any_json_and_takes_only_an_objects_cni_version() {
    let s = Scratch::new();
    for (stdin, echoed) in [
        (r#"{"cniVersion":"0.4.0"}"#, "0.4.0"),
        (r#"["0.4.0"]"#, "1.1.0"),
        (r#"[{"cniVersion":"0.4.0"}]"#, "1.1.0"),
        ("7", "1.1.0"),
        (r#""0.4.0""#, "1.1.0"),
        ("null", "1.1.0"),
        (r#"{"cniVersion":4}"#, "1.1.0"),
        ("", "1.1.0"),
    ] {
        let out = s.cni("VERSION", &[], stdin.as_bytes());
        assert!(out.status.success(), "{stdin}: {}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["cniVersion"], echoed, "{stdin}: {v}");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]),
            "{stdin}"
        );
    }
    let err = cni_error(&s.cni("VERSION", &[], br#"{"cniVersion":"#), "broken JSON");
    assert_eq!(err["code"], 6, "{err}");
    s.assert_nothing_created("VERSION");
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

/// Live (not zombie) processes whose environment holds `var=value`.
fn live_with_env(var: &str, value: &str) -> Vec<u32> {
    let needle = format!("{var}={value}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let marked = std::fs::read(entry.path().join("environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()));
        let state = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|st| st.rsplit_once(") ").and_then(|(_, r)| r.chars().next()));
        if marked && !matches!(state, Some('Z' | 'X') | None) {
            found.push(pid);
        }
    }
    found
}

/// `ipam.type: "calico"` names calico-cni itself (through a symlink, as install-cni lays it
/// out): refused before it runs anything, instead of executing itself without end.
#[test]
fn calico_cni_is_not_its_own_ipam_plugin() {
    let s = Scratch::new();
    std::os::unix::fs::symlink(CNI, s.bin().join("calico")).expect("symlink");
    std::fs::hard_link(CNI, s.bin().join("calico-hardlink")).expect("hard link");
    let mark = format!("self-{}", std::process::id());
    for ipam_type in ["calico", "calico-hardlink"] {
        let mut conf = s.netconf();
        conf["ipam"]["type"] = json!(ipam_type);
        conf["cniVersion"] = json!("1.1.0");
        for command in ["ADD", "DEL", "STATUS", "GC"] {
            let out = s.cni(command, &[("MARK", &mark)], conf.to_string().as_bytes());
            let err = cni_error(&out, command);
            assert_eq!(err["code"], 7, "{ipam_type} {command}: {err}");
            let details = err["details"].as_str().unwrap_or("");
            assert!(
                details.starts_with(&format!("ipam.type \"{ipam_type}\" is calico-cni itself")),
                "{ipam_type} {command}: {err}"
            );
            assert!(
                !details.contains("DELEGATION_DEPTH"),
                "refused at once, not by the depth bound: {err}"
            );
            s.assert_nothing_created(command);
            assert!(live_with_env("MARK", &mark).is_empty(), "processes left");
        }
    }
}

/// An IPAM plugin that runs calico-cni again (a wrapper script: not the same binary, so only
/// the depth bound can stop it) ends after a bounded number of rounds with code 7 naming the
/// depth, and leaves no process.
#[test]
fn a_delegation_loop_is_cut_at_the_depth_bound() {
    let s = Scratch::new();
    let count = s.dir.path().join("rounds");
    let script = s.bin().join("loop-ipam");
    std::fs::write(
        &script,
        "#!/bin/sh\necho round >> \"$ROUNDS\"\nexec \"$CALICO_CNI\"\n",
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let mut conf = s.netconf();
    conf["ipam"]["type"] = json!("loop-ipam");
    conf["cniVersion"] = json!("1.1.0");
    let mark = format!("loop-{}", std::process::id());
    let rounds_path = count.to_str().expect("utf8").to_string();
    for command in ["STATUS", "GC"] {
        let _ = std::fs::remove_file(&count);
        let env = [
            ("ROUNDS", rounds_path.as_str()),
            ("CALICO_CNI", CNI),
            ("MARK", mark.as_str()),
        ];
        let out = s.cni(command, &env, conf.to_string().as_bytes());
        let err = cni_error(&out, command);
        assert_eq!(err["code"], 7, "{command}: {err}");
        assert_eq!(
            err["details"],
            "IPAM delegation is 4 plugins deep (CALICO_CNI_DELEGATION_DEPTH=4), the most calico-cni allows is 4: ipam.type \"loop-ipam\" leads back to calico-cni; name an IPAM plugin such as calico-ipam or host-local",
            "{command}"
        );
        let rounds = std::fs::read_to_string(&count).expect("rounds");
        assert_eq!(
            rounds.lines().count(),
            4,
            "{command}: the wrapper ran {rounds:?}"
        );
        assert!(live_with_env("MARK", &mark).is_empty(), "processes left");
        assert!(
            std::fs::read_dir(s.cwd.path())
                .expect("cwd")
                .next()
                .is_none()
        );
    }
}
