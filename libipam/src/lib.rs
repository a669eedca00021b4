//! Calico-compatible IPAM: the data model of `crd.projectcalico.org/v1` IPAM objects, pool
//! validation, Calico's selector language, and the block-affinity allocator over a
//! revision-checked [`datastore::Datastore`].
//!
//! The pure modules (`model`, `names`, `selector`, `validate`) know nothing about storage or
//! networking. See `DESIGN.md` for the invariants the allocator keeps.

#![forbid(unsafe_code)]

pub mod alloc;
pub mod cni;
pub mod datastore;
pub mod error;
pub mod model;
pub mod names;
pub mod retry;
pub mod selector;
pub mod strict;
pub mod validate;

pub use alloc::{
    AddressOwner, AssignIpArgs, AutoAssignArgs, AutoAssignResult, BlockUsage, Ipam, PoolUsage,
    Problem,
};
pub use datastore::{Datastore, DatastoreError, Revision, Versioned};
pub use error::{ErrorKind, IpamError};
pub use model::AllowedUse;
