//! Calico's once-per-node IPAM upgrade step. Calico's IPAM plugin, before it assigns, checks
//! for a marker file on the host; without it, it labels this node's BlockAffinities written
//! before Calico v3.31 (`UpgradeHost`) and then creates the marker, so the work and its LIST of
//! every unlabeled affinity in the cluster happen once per node, not once per pod.
//!
//! Calico's marker is `/var/run/calico/cni/ipam_upgraded`. Ours is `cni/ipam_upgraded` in the
//! directory of the host-wide IPAM lock, which is the same file with the default lock
//! (`/var/run/calico/ipam.lock`), and a private one for a node whose lock lives elsewhere
//! (as in the tests). Only the Kubernetes datastore has anything to upgrade.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use libipam::cni::CniError;
use libipam::datastore::kube::KubeStore;

use crate::errors;

/// The marker for a host whose IPAM lock is `lock_file`.
pub fn marker_path(lock_file: &Path) -> PathBuf {
    lock_file
        .parent()
        .unwrap_or(Path::new("/"))
        .join("cni")
        .join("ipam_upgraded")
}

/// Runs the upgrade for `node` unless `marker` exists, then creates `marker`. Call it while
/// holding the host-wide IPAM lock, so one process per node does the work.
pub async fn maybe_upgrade(store: &KubeStore, node: &str, marker: &Path) -> Result<(), CniError> {
    if marker.exists() {
        return Ok(());
    }
    store
        .upgrade_host(node)
        .await
        .map_err(|e| errors::upgrade_failed(&e))?;
    touch(marker).map_err(|e| errors::upgrade_marker_failed(marker, &e))
}

fn touch(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_calicos_path_with_the_default_lock() {
        assert_eq!(
            marker_path(Path::new(libipam::cni::netconf::DEFAULT_IPAM_LOCK_FILE)),
            Path::new("/var/run/calico/cni/ipam_upgraded")
        );
    }

    #[test]
    fn touch_creates_the_directory_and_keeps_an_existing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = marker_path(&dir.path().join("ipam.lock"));
        touch(&marker).expect("touch");
        assert!(marker.is_file());
        touch(&marker).expect("again");
    }
}
