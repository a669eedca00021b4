//! Where IPAM state lives.
//!
//! Every write is a compare-and-swap on the revision the caller read, so concurrent allocators
//! on many hosts (or many processes on one host) never overwrite each other: a stale write
//! fails with [`DatastoreError::Conflict`] and the allocator re-reads and retries (in
//! [`crate::retry`], nowhere else).
//!
//! Contract for implementations:
//! - `create_*` fails with `AlreadyExists` when the object exists; `update_*` and `delete_*`
//!   fail with `Conflict` when the revision is stale and `NotFound` when the object is gone.
//! - Writes return the new revision, so the caller never re-reads an object it just wrote.
//! - Objects marked `deleted` (the first half of the Kubernetes two-step delete) are reported
//!   as absent by every read; finishing such a delete is the backend's business.
//! - Reads of a single object never see a half-written object.
//!
//! Freshness: `get_block`, `get_handle`, `get_affinity` and the full listings read the
//! datastore. A backend with a node-local cache (the Kubernetes one) may serve
//! [`Datastore::get_block_for_update`] and [`Datastore::get_handle_for_update`] from it —
//! callers only use those copies as the base of a compare-and-swap write, which fails if the
//! copy was stale — and may serve the configuration reads (`get_config`, `list_reservations`,
//! `node_labels`, `namespace_labels`) from a copy no older than its documented bound. It may
//! also offer [`Datastore::cached_host_affinities`], a copy of this host's affinity list with no
//! expiry: callers use it only to pick the blocks to try (each block's own `affinity` decides)
//! and list again with [`Datastore::list_host_affinities`], which always reads, before any
//! decision that this host has no block with room. `list_pools` always reads the datastore: a
//! pool deleted or disabled must never be allocated from by a request that starts after the
//! change. A backend may answer the first reads of a request from one read made when the
//! request started ([`Datastore::prefetch_request`]): that is a read of the datastore too.

pub mod api_group;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "kubernetes")]
pub mod kube;
pub mod local;
#[cfg_attr(not(feature = "testing"), doc(hidden))]
pub mod memory;

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;

use crate::model::{BlockAffinity, IpPool, IpReservation, IpamBlock, IpamConfig, IpamHandle};

/// An opaque object version: a Kubernetes `resourceVersion`, or the local store's generation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Revision(pub String);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A value together with the revision it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The object.
    pub value: T,
    /// The revision `value` was read (or last written) at.
    pub revision: Revision,
}

/// A datastore failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatastoreError {
    /// The revision was stale: somebody else wrote the object since it was read.
    #[error("update conflict: the object was modified concurrently")]
    Conflict,
    /// A create found the object already there.
    #[error("the object already exists")]
    AlreadyExists,
    /// An update or delete found the object gone.
    #[error("the object does not exist")]
    NotFound,
    /// The datastore could not be reached.
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
    /// Anything else (bad data, I/O errors, ...).
    #[error("{0}")]
    Other(String),
}

/// Result of a datastore call.
pub type DsResult<T> = Result<T, DatastoreError>;

/// An object that exists in the datastore but cannot be used as it is: it does not decode,
/// or (local store) its file name does not match what it holds, so lookups by key miss it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    /// Where it is: `IPPool file pools/x.json` (local), `IPAMBlock 10-0-0-0-26` (Kubernetes).
    pub object: String,
    /// Why it cannot be used.
    pub reason: String,
}

/// A pool object that exists but does not decode (a hand-edited file, an object written past
/// the CRD's schema). No address is allocated from it, and while its CIDR can still be read no
/// other pool allocates inside it (DESIGN.md, "A pool that cannot be read"); it can be replaced
/// or deleted by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadablePool {
    /// The pool's name: the one `apply_pool` and `delete_pool` reach it by.
    pub name: String,
    /// Where it is, for messages: `IPPool file pools/x.json` (local), `IPPool x` (Kubernetes).
    pub object: String,
    /// `spec.cidr`, when the object is JSON with a CIDR there.
    pub cidr: Option<IpNet>,
    /// Why it cannot be decoded.
    pub reason: String,
}

/// Every pool object there is: those that decode, and those that do not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolList {
    /// The pools that decode, ordered by name, as stored (no defaults applied).
    pub pools: Vec<IpPool>,
    /// The pool objects that do not decode, ordered by name.
    pub unreadable: Vec<UnreadablePool>,
}

impl PoolList {
    /// The unreadable pool named `name`, if there is one.
    pub fn unreadable(&self, name: &str) -> Option<&UnreadablePool> {
        self.unreadable.iter().find(|u| u.name == name)
    }
}

/// `spec.cidr` of a pool object that does not decode, when it is there and a CIDR.
pub fn cidr_of_raw_pool(spec: Option<&serde_json::Value>) -> Option<IpNet> {
    spec?
        .get("cidr")?
        .as_str()?
        .trim()
        .parse::<IpNet>()
        .ok()
        .map(|c| c.trunc())
}

/// What an object that cannot be decoded costs, for `check`'s message: a pool is left out of
/// The pools a listing could not decode, as `check` reports them.
pub fn unusable_pools(unreadable: Vec<UnreadablePool>) -> Vec<Unusable> {
    unreadable
        .into_iter()
        .map(|u| Unusable {
            object: u.object,
            reason: format!(
                "cannot be decoded ({}): {}",
                u.reason,
                unreadable_consequence("IPPool")
            ),
        })
        .collect()
}

/// allocation; any other object fails the requests that read it.
pub fn unreadable_consequence(kind: &str) -> &'static str {
    if kind == "IPPool" {
        "no address is allocated from it, nor by any other pool inside its CIDR, until it is \
         replaced (calico-ipam apply -f with a good definition of that name) or deleted \
         (calico-ipam delete ippool)"
    } else {
        "every request that reads it fails until it is fixed"
    }
}

/// Every object the allocator depends on, read one by one, for `check`: an object that
/// cannot be decoded is listed in `unusable` instead of failing the whole read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    /// The `default` IPAMConfig; `None` when there is none (Calico's defaults apply).
    pub config: Option<IpamConfig>,
    /// Every pool, by name.
    pub pools: Vec<IpPool>,
    /// Every reservation.
    pub reservations: Vec<IpReservation>,
    /// Every block (soft-deleted ones left out).
    pub blocks: Vec<Versioned<IpamBlock>>,
    /// Every affinity of every host (soft-deleted ones left out).
    pub affinities: Vec<Versioned<BlockAffinity>>,
    /// Every handle (soft-deleted ones left out).
    pub handles: Vec<Versioned<IpamHandle>>,
    /// The objects above that could not be read.
    pub unusable: Vec<Unusable>,
}

/// Storage for Calico's IPAM objects with revision-checked writes.
///
/// The allocator reads this host's affinities once per request ([`Datastore::list_host_affinities`],
/// both families in one call), then touches single objects by key. Full listings
/// (`list_blocks`, `list_affinities`, `list_handles`) are for `check`, `usage` and reclaiming,
/// never for a steady-state allocation.
// The plugins run a current_thread runtime, so the returned futures need not be Send.
#[allow(async_fn_in_trait)]
pub trait Datastore {
    /// Starts a group of writes: until the matching [`Datastore::commit`], the writes made
    /// through this handle may be held back and made durable together, in one commit, or not
    /// at all if the process dies first. Reads through this handle see them at once; other
    /// handles see them once committed. Groups nest; the outermost `commit` commits. A
    /// backend whose writes are durable one by one (Kubernetes, memory) does nothing.
    fn begin(&self) {}
    /// Ends the group [`Datastore::begin`] started; the outermost one makes its writes
    /// durable before it returns. An error means they may or may not have been kept.
    async fn commit(&self) -> DsResult<()> {
        Ok(())
    }

    /// An allocation for `host` starts (the allocator calls this once, before its first read,
    /// and [`Datastore::end_request`] when it is done). A backend whose reads are round trips
    /// may read here, in one, what the request reads first — [`Datastore::get_config`],
    /// [`Datastore::list_reservations`], [`Datastore::list_pools`] and
    /// [`Datastore::list_host_affinities`] of `host` — and answer the next call of each from
    /// that read, once. Such a copy is never older than the request, and the backend drops it
    /// on any write of its own to that kind of object, so the reads keep their freshness rules.
    /// An error is the one the first of those reads would have returned.
    async fn prefetch_request(&self, _host: &str) -> DsResult<()> {
        Ok(())
    }
    /// The blocks `cidrs` are about to be read, each at most once, with
    /// [`Datastore::get_block_for_update`] (the fast path's affine blocks): a backend may read
    /// them together now, and answer those calls from that read (only those: the copies are
    /// compare-and-swap bases). Dropped on any block write of its own and by
    /// [`Datastore::end_request`].
    async fn prefetch_blocks(&self, _cidrs: &[IpNet]) -> DsResult<()> {
        Ok(())
    }
    /// A release by handle starts (the allocator calls this once, before its first read, and
    /// [`Datastore::end_request`] when it is done): a backend may read the handle
    /// ([`Datastore::get_handle_for_update`]) and [`Datastore::get_config`] (the cooldown) in
    /// one, with the same rules as [`Datastore::prefetch_request`].
    async fn prefetch_release(&self, _handle_id: &str) -> DsResult<()> {
        Ok(())
    }
    /// The request [`Datastore::prefetch_request`] or [`Datastore::prefetch_release`] started
    /// is over: whatever it read that was
    /// not used is dropped, so no later call is answered from it.
    fn end_request(&self) {}

    /// The `default` IPAMConfig; Calico's defaults when absent (not persisted).
    async fn get_config(&self) -> DsResult<IpamConfig>;
    /// Creates or replaces the `default` IPAMConfig.
    async fn apply_config(&self, config: &IpamConfig) -> DsResult<()>;

    /// All pools (enabled or not), ordered by name, as stored (no defaults applied), and the
    /// pool objects that do not decode: one of those never fails the listing. Never served
    /// from a cache (at most from the current request's [`Datastore::prefetch_request`], or
    /// the Kubernetes store's read made by this request before it took the host lock).
    async fn list_pools(&self) -> DsResult<PoolList>;
    /// Creates or replaces a pool (validation is the caller's job), also one whose stored
    /// object does not decode.
    async fn apply_pool(&self, pool: &IpPool) -> DsResult<()>;
    /// Deletes a pool, also one whose stored object does not decode; `Ok(false)` when there
    /// was none.
    async fn delete_pool(&self, name: &str) -> DsResult<bool>;

    /// The labels of a node; `None` when the node object does not exist.
    async fn node_labels(&self, node: &str) -> DsResult<Option<BTreeMap<String, String>>>;
    /// The labels of a namespace, for pools' namespaceSelector; `None` when unknown (a store
    /// without namespaces).
    async fn namespace_labels(
        &self,
        _namespace: &str,
    ) -> DsResult<Option<BTreeMap<String, String>>> {
        Ok(None)
    }
    /// All IP reservations.
    async fn list_reservations(&self) -> DsResult<Vec<IpReservation>>;

    /// One block.
    async fn get_block(&self, cidr: &IpNet) -> DsResult<Option<Versioned<IpamBlock>>>;
    /// One block, possibly from a cache: only to be used as the base of a compare-and-swap
    /// write (a stale copy makes that write fail with `Conflict` or `NotFound`).
    async fn get_block_for_update(&self, cidr: &IpNet) -> DsResult<Option<Versioned<IpamBlock>>> {
        self.get_block(cidr).await
    }
    /// Creates a block; `AlreadyExists` if its CIDR is taken.
    async fn create_block(&self, block: &IpamBlock) -> DsResult<Revision>;
    /// Replaces a block if it is still at `block.revision`.
    async fn update_block(&self, block: &Versioned<IpamBlock>) -> DsResult<Revision>;
    /// Deletes a block if it is still at `block.revision`.
    async fn delete_block(&self, block: &Versioned<IpamBlock>) -> DsResult<()>;
    /// The CIDRs of all blocks. Must be cheap (no block contents read where avoidable). May
    /// lag a moment behind the writes (the Kubernetes store lists from the API server's watch
    /// cache): a block missing from it costs a claim a lost race (its create answers
    /// `AlreadyExists`), and the listing after such a create must not lag.
    async fn list_block_cidrs(&self) -> DsResult<Vec<IpNet>>;
    /// All blocks with their contents.
    async fn list_blocks(&self) -> DsResult<Vec<Versioned<IpamBlock>>>;

    /// Every affinity of `host`, both families, every state: a read of the datastore.
    async fn list_host_affinities(&self, host: &str) -> DsResult<Vec<Versioned<BlockAffinity>>>;
    /// `host`'s affinities as a node cache last saw them, if the backend keeps such a copy
    /// (the Kubernetes one does, with no expiry; DESIGN.md "Node cache"); `None` otherwise.
    /// It may be stale both ways (a block taken away, a block claimed by another process), so
    /// it only says which blocks to try first: the blocks' `affinity` fields decide, and a
    /// caller about to conclude that the host has no block with room lists again.
    fn cached_host_affinities(&self, _host: &str) -> Option<Vec<Versioned<BlockAffinity>>> {
        None
    }
    /// Every affinity of every host.
    async fn list_affinities(&self) -> DsResult<Vec<Versioned<BlockAffinity>>>;
    /// One affinity.
    async fn get_affinity(
        &self,
        host: &str,
        cidr: &IpNet,
    ) -> DsResult<Option<Versioned<BlockAffinity>>>;
    /// Creates an affinity; `AlreadyExists` if `(node, cidr)` exists.
    async fn create_affinity(&self, affinity: &BlockAffinity) -> DsResult<Revision>;
    /// Replaces an affinity if it is still at `affinity.revision`.
    async fn update_affinity(&self, affinity: &Versioned<BlockAffinity>) -> DsResult<Revision>;
    /// Deletes an affinity if it is still at `affinity.revision`.
    async fn delete_affinity(&self, affinity: &Versioned<BlockAffinity>) -> DsResult<()>;

    /// One handle (looked up by its lowercase object name).
    async fn get_handle(&self, handle_id: &str) -> DsResult<Option<Versioned<IpamHandle>>>;
    /// One handle, possibly from a cache: only to be used as the base of a compare-and-swap
    /// write, or to find the blocks to re-read.
    async fn get_handle_for_update(
        &self,
        handle_id: &str,
    ) -> DsResult<Option<Versioned<IpamHandle>>> {
        self.get_handle(handle_id).await
    }
    /// Creates a handle; `AlreadyExists` if it exists.
    async fn create_handle(&self, handle: &IpamHandle) -> DsResult<Revision>;
    /// Replaces a handle if it is still at `handle.revision`.
    async fn update_handle(&self, handle: &Versioned<IpamHandle>) -> DsResult<Revision>;
    /// Deletes a handle if it is still at `handle.revision`.
    async fn delete_handle(&self, handle: &Versioned<IpamHandle>) -> DsResult<()>;
    /// All handles.
    async fn list_handles(&self) -> DsResult<Vec<Versioned<IpamHandle>>>;

    /// Everything `check` reads. A backend that can read objects one by one overrides this so
    /// that one object that does not decode is reported in [`Inventory::unusable`] rather than
    /// failing the listing of its kind (which is what the allocator's reads do).
    async fn inventory(&self) -> DsResult<Inventory> {
        let listed = self.list_pools().await?;
        let mut pools = listed.pools;
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        let unusable = unusable_pools(listed.unreadable);
        Ok(Inventory {
            config: Some(self.get_config().await?),
            pools,
            reservations: self.list_reservations().await?,
            blocks: self.list_blocks().await?,
            affinities: self.list_affinities().await?,
            handles: self.list_handles().await?,
            unusable,
        })
    }
}
