//! Errors returned by the allocator.
//!
//! Every variant carries the context a person needs to act on it. `kind()` sorts them into the
//! five classes the binaries map to CNI error codes; libipam itself knows nothing about CNI codes.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::datastore::DatastoreError;
use crate::model::{AllowedUse, IpFamily};

/// The class of an [`IpamError`], for callers that map errors to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request or the configuration is wrong; retrying the same request will not help.
    InvalidRequest,
    /// No address is available under the current configuration.
    Exhausted,
    /// Too many concurrent writers: the retry budget was spent on conflicts. Try again later.
    Contended,
    /// The datastore could not be reached.
    Unavailable,
    /// A bug or corrupt data.
    Internal,
}

/// An allocator error.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A pool named in `ipv4_pools`/`ipv6_pools` is unknown or disabled.
    #[error("the given pool ({pool}) does not exist, or is not enabled")]
    PoolNotFound {
        /// The name or CIDR as requested.
        pool: String,
    },

    /// A pool named in `ipv4_pools`/`ipv6_pools` exists but is left out: it cannot be read,
    /// or does not validate.
    #[error("the given pool ({pool}) cannot be used: IPPool {name} {why}")]
    PoolUnusable {
        /// The name or CIDR as requested.
        pool: String,
        /// The pool's name.
        name: String,
        /// Why it is left out.
        why: String,
    },

    /// A specific address lies in the CIDR of a pool that is left out (it cannot be read, or
    /// does not validate): no pool allocates there until that pool is fixed.
    #[error(
        "the provided IP address {ip} is in {cidr}, the CIDR of IPPool {pool}, which is not used: {why}"
    )]
    AddressInUnusablePool {
        /// The address.
        ip: IpAddr,
        /// The left-out pool's CIDR.
        cidr: IpNet,
        /// Its name.
        pool: String,
        /// Why it is left out.
        why: String,
    },

    /// A pool of the wrong family was requested for a family.
    #[error("{list} contains {cidr} which is an {actual} pool")]
    WrongFamilyPool {
        /// `ipv4_pools` or `ipv6_pools`.
        list: &'static str,
        /// The pool's CIDR.
        cidr: IpNet,
        /// The family the pool really is.
        actual: IpFamily,
    },

    /// No enabled pool of the family allows the intended use.
    #[error("cannot find a qualified ippool: {reason}")]
    NoQualifiedPool {
        /// Why none qualified.
        reason: String,
    },

    /// Pools exist, but none selects this node (nodeSelector / namespaceSelector / assignmentMode).
    #[error("no configured Calico {family} pools for node {host}")]
    NoPoolsForNode {
        /// The node.
        host: String,
        /// The family that was asked for.
        family: IpFamily,
    },

    /// Every block of every eligible pool is full.
    #[error(
        "No more free addresses in pools {pools:?}: assigned {assigned} of {requested} {family} addresses"
    )]
    Exhausted {
        /// The family that ran out.
        family: IpFamily,
        /// The pools that were searched.
        pools: Vec<IpNet>,
        /// How many were requested.
        requested: u32,
        /// How many could be found before giving up (all of them were released again).
        assigned: u32,
    },

    /// Strict affinity is on and this host's blocks are full; no unclaimed block is left.
    #[error(
        "No more free affine blocks and strict affinity enabled: assigned {assigned} of {requested} {family} addresses for node {host}"
    )]
    StrictAffinityExhausted {
        /// The node.
        host: String,
        /// The family that ran out.
        family: IpFamily,
        /// How many were requested.
        requested: u32,
        /// How many could be found (released again).
        assigned: u32,
    },

    /// The per-host block limit is reached and every affine block is full.
    #[error(
        "cannot allocate new block: limit of {limit} blocks reached for node {host} (raise maxBlocksPerHost in the IPAM config, or free addresses)"
    )]
    BlockLimit {
        /// The effective limit.
        limit: u32,
        /// The node.
        host: String,
    },

    /// `autoAllocateBlocks` is false and this host's blocks are full.
    #[error(
        "failed to find or claim a block for node {host}: autoAllocateBlocks is disabled and the node's {family} blocks are full"
    )]
    AutoAllocateDisabled {
        /// The node.
        host: String,
        /// The family.
        family: IpFamily,
    },

    /// A specific address was requested but is already allocated.
    #[error("address {ip} is already assigned in block {block}")]
    AddressInUse {
        /// The address.
        ip: IpAddr,
        /// Its block.
        block: IpNet,
    },

    /// A specific address was requested that is outside every enabled pool.
    #[error("the provided IP address {ip} is not in a configured pool")]
    AddressNotInPool {
        /// The address.
        ip: IpAddr,
    },

    /// The pool holding a specific address does not allow the intended use (Calico v3.33's
    /// check in `AssignIP`, calico#13301): a pod's `ipAddrs` address in a Tunnel-only pool, or a
    /// tunnel address in a Workload-only one.
    #[error(
        "IP address {ip} is in IP pool {pool:?}, which is not allowed for use \"{intended_use}\" (allowedUses: {allowed})"
    )]
    UseNotAllowed {
        /// The address.
        ip: IpAddr,
        /// The pool name.
        pool: String,
        /// What the caller wanted the address for.
        intended_use: AllowedUse,
        /// The pool's allowed uses, as Calico prints them (`[Workload Tunnel]`).
        allowed: String,
    },

    /// A specific address's block belongs to another host and strict affinity is on.
    #[error(
        "block {block} holding {ip} is affine to another host ({affinity}) and strictAffinity is enabled"
    )]
    StrictAffinityViolation {
        /// The address.
        ip: IpAddr,
        /// Its block.
        block: IpNet,
        /// The block's affinity.
        affinity: String,
    },

    /// A block cannot be created because an existing block of another CIDR holds some of its
    /// addresses: two pools (or a pool and the blocks of one deleted or unreadable) cover one
    /// range with different block sizes. Creating it would let one address be allocated twice.
    #[error(
        "block {block} cannot be created: existing block {existing} holds some of its addresses (pools with different block sizes cover this range; `calico-ipam ipam check` lists the overlap)"
    )]
    BlockOverlap {
        /// The block that would have been created.
        block: IpNet,
        /// The existing block.
        existing: IpNet,
    },

    /// A pool definition was rejected.
    #[error(transparent)]
    InvalidPool(#[from] crate::validate::PoolError),

    /// The request itself is malformed.
    #[error("invalid request: {0}")]
    InvalidArgs(String),

    /// The retry budget was spent on write conflicts.
    #[error("{op}: gave up after {attempts} attempts; excessive concurrent IPAM requests")]
    RetriesExhausted {
        /// What was being attempted.
        op: String,
        /// How many attempts were made.
        attempts: u32,
    },

    /// A datastore operation failed.
    #[error("{op}")]
    Datastore {
        /// What was being done, e.g. "update block 10.244.1.0/26".
        op: String,
        /// The datastore's error.
        #[source]
        source: DatastoreError,
    },

    /// Stored data is inconsistent in a way the allocator cannot repair.
    #[error("inconsistent IPAM data: {0}")]
    Corrupt(String),
}

impl IpamError {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            IpamError::PoolNotFound { .. }
            | IpamError::PoolUnusable { .. }
            | IpamError::AddressInUnusablePool { .. }
            | IpamError::WrongFamilyPool { .. }
            | IpamError::NoQualifiedPool { .. }
            | IpamError::NoPoolsForNode { .. }
            | IpamError::AddressInUse { .. }
            | IpamError::AddressNotInPool { .. }
            | IpamError::UseNotAllowed { .. }
            | IpamError::StrictAffinityViolation { .. }
            | IpamError::BlockOverlap { .. }
            | IpamError::InvalidPool(_)
            | IpamError::InvalidArgs(_) => ErrorKind::InvalidRequest,
            IpamError::Exhausted { .. }
            | IpamError::StrictAffinityExhausted { .. }
            | IpamError::BlockLimit { .. }
            | IpamError::AutoAllocateDisabled { .. } => ErrorKind::Exhausted,
            IpamError::RetriesExhausted { .. } => ErrorKind::Contended,
            IpamError::Datastore { source, .. } => match source {
                DatastoreError::Unavailable(_) => ErrorKind::Unavailable,
                DatastoreError::Conflict | DatastoreError::AlreadyExists => ErrorKind::Contended,
                DatastoreError::NotFound | DatastoreError::Other(_) => ErrorKind::Internal,
            },
            IpamError::Corrupt(_) => ErrorKind::Internal,
        }
    }

    /// True for the write conflicts that [`crate::retry::retry_on_conflict`] retries.
    /// Whether this is a write's answer that says it was not applied (a stale revision, an
    /// object already there or gone). Any other failure, a timeout or an unreachable server,
    /// may hide a write that happened.
    pub fn write_not_applied(&self) -> bool {
        matches!(
            self,
            IpamError::Datastore {
                source: DatastoreError::Conflict
                    | DatastoreError::AlreadyExists
                    | DatastoreError::NotFound,
                ..
            }
        )
    }

    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            IpamError::Datastore {
                source: DatastoreError::Conflict | DatastoreError::AlreadyExists,
                ..
            }
        )
    }

    pub(crate) fn store(op: impl Into<String>) -> impl FnOnce(DatastoreError) -> IpamError {
        let op = op.into();
        move |source| IpamError::Datastore { op, source }
    }

    /// A conflict raised by the allocator itself (a claim lost to another host, a stale affinity):
    /// the step is retried from fresh reads, exactly like a datastore conflict.
    pub(crate) fn conflict(op: impl Into<String>) -> IpamError {
        IpamError::Datastore {
            op: op.into(),
            source: DatastoreError::Conflict,
        }
    }
}

/// Shorthand for results carrying an [`IpamError`].
pub type Result<T, E = IpamError> = std::result::Result<T, E>;

/// `e` and its sources, `outer: inner: innermost`, skipping a source whose text the outer message
/// already contains. Transport errors keep the useful part ("tcp connect error: Connection
/// refused") in their sources, which `Display` alone drops.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = s.source();
    }
    out
}
