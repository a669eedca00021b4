//! Entering network namespaces without leaking the switch.
//!
//! `setns` changes the namespace of the calling *thread* only. [`NetNs::run`] takes a
//! synchronous closure, so nothing can `.await` while the thread is switched (a task
//! resumed on another worker would leave the first thread in the pod namespace, see
//! crates.md §3.4). Netlink sockets opened inside stay bound to that namespace and
//! can be used from anywhere afterwards.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};

use super::DataplaneError;

/// The calling thread's own namespace. `/proc/self/ns/net` would be the thread-group
/// leader's, which differs while some other thread is switched.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// An open network namespace.
#[derive(Debug)]
pub(crate) struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens `path` (`CNI_NETNS`). Whether it really is a namespace shows on entry.
    pub(crate) fn open(path: &Path) -> Result<Self, DataplaneError> {
        let file = File::open(path).map_err(|source| DataplaneError::NetnsOpen {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// The namespace the calling thread is in now.
    pub(crate) fn current() -> Result<Self, DataplaneError> {
        Self::open(Path::new(THREAD_NETNS))
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` with the calling thread inside this namespace and switches back
    /// before returning (also when `f` panics). If switching back fails the process
    /// aborts: carrying on would run unrelated code, and later netlink or sysctl
    /// calls, inside the pod.
    pub(crate) fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, DataplaneError> {
        let home = NetNs::current()?;
        setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|source| {
            let path = self.path.clone();
            if source == Errno::EINVAL {
                DataplaneError::NotNetns { path, source }
            } else {
                DataplaneError::NetnsEnter { path, source }
            }
        })?;
        let _back = SwitchBack(home);
        Ok(f())
    }
}

/// Returns the thread to its namespace when dropped.
struct SwitchBack(NetNs);

impl Drop for SwitchBack {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.0.file, CloneFlags::CLONE_NEWNET) {
            eprintln!(
                "calico-cni: cannot switch back to the original network namespace: {e}; aborting"
            );
            std::process::abort();
        }
    }
}
