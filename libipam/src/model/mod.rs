//! Calico's IPAM data model.
//!
//! Each struct is wire-compatible with the `spec` of the matching `crd.projectcalico.org/v1`
//! kind: same camelCase field names, same omitted-when-empty rules, and a flattened `extra` map
//! so fields this code does not model survive a read-modify-write.

mod affinity;
pub(crate) mod block;
mod config;
mod handle;
mod pool;
mod reservation;
pub mod time;

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

pub use affinity::{AffinityState, AffinityType, BlockAffinity};
pub use block::{
    AllocationAttribute, AssignError, Cooldown, IpamBlock, ReleaseOutcome, WINDOWS_RESERVED_HANDLE,
};
pub use config::{DEFAULT_MAX_BLOCKS_PER_HOST, IpamConfig};
pub use handle::IpamHandle;
pub use pool::{
    AllowedUse, AssignmentMode, DEFAULT_V4_BLOCK_SIZE, DEFAULT_V6_BLOCK_SIZE, EncapMode, IpPool,
    IpPoolSpec, V3_SPEC_FIELDS,
};
pub use reservation::{IpReservation, IpReservationSpec};

/// Unknown fields of a spec, kept so that a read-modify-write does not drop them.
pub type Extra = serde_json::Map<String, serde_json::Value>;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The family of a network.
    pub fn of_net(net: &IpNet) -> IpFamily {
        IpFamily::of(net.addr())
    }

    /// Address width in bits (32 or 128).
    pub fn bits(self) -> u8 {
        match self {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// The `affinity` string a block carries when it belongs to `host`.
pub fn host_affinity(host: &str) -> String {
    format!("host:{host}")
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

pub(crate) fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}
