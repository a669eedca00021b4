//! The input surfaces: every way bytes from outside reach our parsers, each driven through the
//! same function the binaries call. A target returns an outcome signature (see
//! [`crate::engine::signature`]); a panic is a finding, and so is a broken oracle (an
//! `assert!` on a property every outcome must have).
//!
//! The corpus of surface `NAME` is `testdata/fuzz/NAME/`.

mod cni;
mod kube;
mod local;
mod model;
mod pools;

/// A running target: one input in, its outcome signature out.
pub type Target = Box<dyn FnMut(&[u8]) -> String>;

/// A fuzz target and what it needs.
pub struct Surface {
    /// The name used by `--surface` and the corpus directory.
    pub name: &'static str,
    /// What the input is and which code reads it.
    pub about: &'static str,
    /// Words worth inserting (field names, operators, values).
    pub tokens: &'static [&'static str],
    /// Builds the target (any scratch state it needs lives in the closure).
    pub make: fn() -> Target,
}

/// Every surface, in the order `scripts/fuzz.sh` runs them.
pub static ALL: &[Surface] = &[
    cni::IPAM_PLUGIN,
    cni::CNI_PLUGIN,
    cni::NETCONF,
    cni::CNI_ENV,
    cni::CNI_RESULT,
    cni::ANNOTATIONS,
    pools::POOL_APPLY,
    pools::SELECTOR,
    local::LOCAL_STORE,
    local::NODE_CACHE,
    kube::KUBE_OBJECTS,
];

/// The surface called `name`.
pub fn find(name: &str) -> Option<&'static Surface> {
    ALL.iter().find(|s| s.name == name)
}

/// A scratch directory for one target, removed when dropped. It lives under /dev/shm when
/// that exists (fsync costs nothing there), else in the system temp directory, and its name
/// carries the process id so the supervisor can remove what a killed run left.
pub(crate) struct Scratch(pub std::path::PathBuf);

/// The prefix of every scratch directory of process `pid`.
pub fn scratch_prefix(pid: u32) -> String {
    format!("calico-fuzz-{pid}-")
}

/// Where scratch directories are made.
pub fn scratch_base() -> std::path::PathBuf {
    if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    }
}

impl Scratch {
    pub(crate) fn new(what: &str) -> Scratch {
        let dir = scratch_base().join(format!(
            "{}{what}-{}",
            scratch_prefix(std::process::id()),
            fastrand::u64(..)
        ));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create the scratch directory {}: {e}", dir.display());
        }
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
