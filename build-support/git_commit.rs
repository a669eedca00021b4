//! Build script shared by calico-ipam and calico-cni: embeds the git commit the binary is built
//! from as `GIT_COMMIT` (for `--version`).
//!
//! `CALICO_RS_GIT_COMMIT` wins when set (builds from a source tarball or an image context
//! without .git). Without git or a repository the commit is `unknown`: the build never fails
//! for want of it. It is HEAD's commit: uncommitted changes are not marked (a build script
//! cannot rerun on every edit to find out).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

pub fn main() {
    println!("cargo:rerun-if-env-changed=CALICO_RS_GIT_COMMIT");
    let commit = match std::env::var("CALICO_RS_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => from_git().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=GIT_COMMIT={commit}");
}

fn from_git() -> Option<String> {
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Rebuild when HEAD moves: HEAD itself, the branch it names, and packed refs. Only files
    // that exist are named (cargo reruns the script every build for a missing one).
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watch.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for path in watch {
        if let Some(p) = git(&["rev-parse", "--git-path", &path])
            && std::path::Path::new(&p).exists()
        {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    Some(commit)
}
