//! IPAM and datastore failures as CNI errors: the one place their codes are chosen.

use std::path::Path;

use libipam::DatastoreError;
use libipam::cni::{CniError, code};
use libipam::error::{ErrorKind, IpamError, error_chain};

/// Map an allocator error to a CNI error with a code and a message a person can act on.
///
/// The message is the error's own text, worded as Calico words it (`the given pool
/// (10.0.0.0/24) does not exist, or is not enabled`), because operators and Calico's tests
/// match on it. Only a datastore failure, whose text is the operation that failed, gets a
/// summary as message and the operation with its cause as details.
pub fn cni_error(e: &IpamError) -> CniError {
    let code = code_of(e);
    match e {
        IpamError::Datastore { .. } => CniError::new(code, summary(e), error_chain(e)),
        _ => CniError::new(code, error_chain(e), ""),
    }
}

fn code_of(e: &IpamError) -> u32 {
    match e {
        IpamError::AddressInUse { .. }
        | IpamError::AddressNotInPool { .. }
        | IpamError::UseNotAllowed { .. }
        | IpamError::BlockOverlap { .. }
        | IpamError::AddressInUnusablePool { .. } => code::ADDRESS_UNAVAILABLE,
        _ => match e.kind() {
            ErrorKind::InvalidRequest => code::INVALID_CONFIG,
            ErrorKind::Exhausted => code::POOL_EXHAUSTED,
            ErrorKind::Contended | ErrorKind::Unavailable => code::TRY_AGAIN_LATER,
            ErrorKind::Internal => code::INTERNAL,
        },
    }
}

fn summary(e: &IpamError) -> &'static str {
    match e.kind() {
        ErrorKind::InvalidRequest => "invalid IPAM request",
        ErrorKind::Exhausted => "no address available",
        ErrorKind::Contended => "try again later",
        ErrorKind::Unavailable => "the IPAM datastore is unavailable",
        ErrorKind::Internal => "IPAM failed",
    }
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
