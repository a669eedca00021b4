//! calico-ipam's build identity (`CALICO_RS_BUILD_ID`, 64 hex digits): SHA-256 over everything
//! that decides what the IPAM code does, so that two builds share it only if they run the same
//! code. calico-cni links the calico-ipam library and so carries the identity of the IPAM code it
//! holds; it runs that code in-process only for a calico-ipam binary carrying the same one
//! (`calico-cni/src/ipam_identity.rs`).
//!
//! The inputs, each hashed with its name and length: the package version; the compiler
//! (`rustc -vV`); the target, profile, optimisation and debug settings, panic strategy, target
//! features and RUSTFLAGS; calico-ipam's enabled features; the workspace manifest and
//! `Cargo.lock` (every dependency's exact version and checksum); and every file under
//! `libipam/` and `calico-ipam/` that the build reads (`Cargo.toml`, `src/`, `build.rs`), and
//! `build-support/`. Tests, docs and other crates are not inputs. A debug build (with its crash
//! hooks) and a release build of one tree differ; two release builds of one tree with one
//! toolchain agree, wherever they are built.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Called from the build script's `main`.
pub fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest
        .parent()
        .expect("calico-ipam lives in the workspace")
        .to_path_buf();
    let mut h = Sha256::new();

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let compiler = Command::new(&rustc)
        .arg("-vV")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    field(&mut h, "rustc -vV", &compiler);
    for var in [
        "CARGO_PKG_VERSION",
        "TARGET",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "CARGO_CFG_DEBUG_ASSERTIONS",
        "CARGO_CFG_PANIC",
        "CARGO_CFG_TARGET_FEATURE",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        let value = std::env::var(var).unwrap_or_default();
        field(&mut h, var, value.as_bytes());
    }
    let mut features: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("CARGO_FEATURE_"))
        .collect();
    features.sort();
    field(&mut h, "features", features.join(",").as_bytes());

    let mut files = vec![root.join("Cargo.toml"), root.join("Cargo.lock")];
    for krate in ["libipam", "calico-ipam"] {
        files.push(root.join(krate).join("Cargo.toml"));
        files.push(root.join(krate).join("build.rs"));
        walk(&root.join(krate).join("src"), &mut files);
    }
    walk(&root.join("build-support"), &mut files);
    files.sort();
    for file in &files {
        let Ok(bytes) = std::fs::read(file) else {
            continue; // absent (no build.rs): nothing to hash, and nothing to watch
        };
        let name = file.strip_prefix(&root).unwrap_or(file);
        field(&mut h, &name.to_string_lossy(), &bytes);
        println!("cargo:rerun-if-changed={}", file.display());
    }
    // New files appear in these directories without touching an existing one.
    for dir in ["libipam/src", "calico-ipam/src", "build-support"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }

    let id: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=CALICO_RS_BUILD_ID={id}");
}

/// `name`, then the length and bytes of `value`: no two inputs run into each other.
fn field(h: &mut Sha256, name: &str, value: &[u8]) {
    let mut framed = Vec::with_capacity(name.len() + value.len() + 16);
    let _ = write!(framed, "{name}\0{}\0", value.len());
    framed.extend_from_slice(value);
    h.update(&framed);
}

/// Every regular file under `dir`, recursively (symlinks are not followed).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            walk(&entry.path(), out);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
}
