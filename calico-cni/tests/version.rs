//! `calico --version`: the crate version and the git commit the binary was built from, and the
//! build identity of the calico-ipam code inside it.

use std::process::Command;

#[test]
fn version_names_the_git_commit() {
    for flag in ["--version", "-v"] {
        let out = Command::new(env!("CARGO_BIN_EXE_calico-cni"))
            .arg(flag)
            .env_remove("CNI_COMMAND")
            .output()
            .expect("run calico-cni");
        assert!(out.status.success(), "{flag}: {out:?}");
        let v = String::from_utf8_lossy(&out.stdout);
        let mut lines = v.lines();
        let commit = lines
            .next()
            .unwrap_or_default()
            .strip_prefix(&format!("calico-cni {} (git ", env!("CARGO_PKG_VERSION")))
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{flag}: {v}"));
        let head = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("git");
        let want = if head.status.success() {
            String::from_utf8_lossy(&head.stdout).trim().to_string()
        } else {
            "unknown".to_string()
        };
        assert_eq!(commit, want);
        // The identity of the IPAM code inside: calico-ipam's, built beside it.
        let ipam = Command::new(
            std::path::Path::new(env!("CARGO_BIN_EXE_calico-cni")).with_file_name("calico-ipam"),
        )
        .arg("--version")
        .env_remove("CNI_COMMAND")
        .output()
        .expect("run calico-ipam");
        let ipam = String::from_utf8_lossy(&ipam.stdout);
        let ipam_id = ipam.lines().nth(1).and_then(|l| l.strip_prefix("build "));
        assert!(ipam_id.is_some_and(|id| id.len() == 64), "{ipam}");
        assert_eq!(
            lines.next().and_then(|l| l.strip_prefix("ipam build ")),
            ipam_id,
            "{flag}: {v}"
        );
        assert_eq!(lines.next(), None, "{flag}: {v}");
    }
}
