//! Bad input to calico-cni that is refused before any namespace, interface or datastore is
//! touched: each case gets its CNI code and a message naming the problem, and nothing is
//! created (the working directory and the datastore stay empty). These need no root.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn calico-cni");
        // A plugin that refuses early may close stdin before reading all of it.
        let _ = child.stdin.take().expect("stdin").write_all(stdin);
        child.wait_with_output().expect("wait")
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

/// `conf` with a `"padding"` string of `n` bytes added.
fn padded(conf: &Value, n: usize) -> Vec<u8> {
    let mut out = conf.to_string().into_bytes();
    out.pop(); // the closing brace
    out.extend_from_slice(b",\"padding\":\"");
    out.resize(out.len() + n, b'x');
    out.extend_from_slice(b"\"}");
    out
}
