//! IPAM and datastore failures as CNI errors: the one place their codes are chosen.

use std::path::Path;

use libipam::DatastoreError;
use libipam::cni::{CniError, code};
use libipam::error::{ErrorKind, IpamError, error_chain};

/// Map an allocator error to a CNI error with a code and a message a person can act on.
pub fn cni_error(e: &IpamError) -> CniError {
    let (code, msg) = match e.kind() {
        ErrorKind::InvalidRequest => (code::INVALID_CONFIG, "invalid IPAM request"),
        ErrorKind::Exhausted => (code::POOL_EXHAUSTED, "no address available"),
        ErrorKind::Contended => (code::TRY_AGAIN_LATER, "try again later"),
        ErrorKind::Unavailable => (code::TRY_AGAIN_LATER, "the IPAM datastore is unavailable"),
        ErrorKind::Internal => (code::INTERNAL, "IPAM failed"),
    };
    let code = match e {
        IpamError::AddressInUse { .. } | IpamError::AddressNotInPool { .. } => {
            code::ADDRESS_UNAVAILABLE
        }
        _ => code,
    };
    CniError::new(code, msg, error_chain(e))
}

/// Calico's wording for a failed once-per-node upgrade (`maybeUpgradeIPAM`).
const UPGRADE_FAILED: &str = "failed to upgrade IPAM database";

/// The upgrade of this node's BlockAffinities failed; a busy or unreachable server is worth a
/// retry.
pub fn upgrade_failed(e: &DatastoreError) -> CniError {
    let code = match e {
        DatastoreError::Unavailable(_) | DatastoreError::Conflict => code::TRY_AGAIN_LATER,
        _ => code::INTERNAL,
    };
    CniError::new(code, UPGRADE_FAILED, e.to_string())
}

/// The upgrade worked but its marker file could not be written.
pub fn upgrade_marker_failed(marker: &Path, e: &std::io::Error) -> CniError {
    CniError::new(
        code::IO,
        UPGRADE_FAILED,
        format!(
            "failed to create IPAM upgrade marker file {}: {e}",
            marker.display()
        ),
    )
}
