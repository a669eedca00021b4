//! The host-wide IPAM lock (Calico's /var/run/calico/ipam.lock). Pods starting together on one
//! node almost always want the same block; taking turns is cheaper than racing and retrying.

use std::fs::{File, OpenOptions};
use std::path::Path;

/// Held for the whole allocation or release; released on drop (closing the file drops the flock).
pub struct HostLock {
    _file: Option<File>,
}

/// Take the lock. Best effort, like Calico: if the file cannot be created (read-only /var/run,
/// say) we proceed unlocked — the datastore's compare-and-swap still keeps allocations unique.
pub fn acquire(path: &Path) -> HostLock {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ok()
        .filter(|f| f.lock().is_ok());
    HostLock { _file: file }
}
