//! IPAM and datastore failures as CNI errors: the one place their codes are chosen.

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
