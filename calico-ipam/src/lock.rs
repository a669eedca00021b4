//! The host-wide IPAM lock (Calico's /var/run/calico/ipam.lock). Pods starting together on one
//! node almost always want the same block; taking turns is cheaper than racing and retrying,
//! and it is what keeps a node from claiming more blocks than it fills: an ADD claims a block
//! only after seeing this node's blocks full, which holds only while no other ADD of the node
//! runs meanwhile (libipam/DESIGN.md, "The host lock").

use std::fs::{File, OpenOptions};
use std::path::Path;

use libipam::cni::{CniError, code};

/// Held for the whole allocation or release; released on drop (closing the file drops the flock).
pub struct HostLock {
    _file: Option<File>,
}

fn open(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        // A missing directory is created; one that cannot be shows in the open below.
        let _ = std::fs::create_dir_all(dir);
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

fn open_and_lock(path: &Path) -> std::io::Result<File> {
    let file = open(path)?;
    file.lock()?;
    Ok(file)
}

/// Takes the lock for an allocation if no other process holds it (`None` if one does), without
/// waiting; refused as [`acquire`] when the file cannot be used.
pub fn try_acquire(path: &Path) -> Result<Option<HostLock>, CniError> {
    let file = open(path).map_err(|e| refused(path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(HostLock { _file: Some(file) })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(refused(path, e)),
    }
}

/// Takes the lock for an allocation, waiting for it. Unlike Calico, which goes on unlocked
/// when the file cannot be used, an allocation is refused (code 5): racing unlocked, a node's
/// ADDs each claim a block of their own (1,200 of them once claimed 28 and 35 blocks where 19
/// per family did), and those blocks stay affine to the node.
pub fn acquire(path: &Path) -> Result<HostLock, CniError> {
    open_and_lock(path)
        .map(|f| HostLock { _file: Some(f) })
        .map_err(|e| refused(path, e))
}

fn refused(path: &Path, e: std::io::Error) -> CniError {
    CniError::new(
        code::IO,
        "cannot take the host-wide IPAM lock",
        format!(
            "{}: {e}; calico-ipam allocates only while holding it, so that this node's ADDs \
             take turns and claim no more blocks than they fill: make its directory writable, \
             or set ipam_lock_file to a path that is",
            path.display()
        ),
    )
}

/// Takes the lock for a release (DEL, GC), or goes on without it, as Calico does: releases
/// claim nothing, and the datastore's compare-and-swap keeps them exact without the lock.
pub fn acquire_for_release(path: &Path) -> HostLock {
    match open_and_lock(path) {
        Ok(f) => HostLock { _file: Some(f) },
        Err(e) => {
            tracing::warn!(
                "cannot take the host-wide IPAM lock {}: {e}; releasing without it",
                path.display()
            );
            HostLock { _file: None }
        }
    }
}
