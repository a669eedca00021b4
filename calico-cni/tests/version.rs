//! `calico --version`: the crate version and the git commit the binary was built from.

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
        let commit = v
            .trim()
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
    }
}
