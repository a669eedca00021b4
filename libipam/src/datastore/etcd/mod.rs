//! The etcd v3 datastore (`datastore_type: etcdv3`): Calico's own keys and JSON values
//! ([`keys`]) in an etcd v3 cluster, so that calicoctl, Felix and Calico's IPAM in etcd mode read
//! what this writes and the other way round.
//!
//! - **Compare-and-swap in one transaction per write**, as libcalico-go's etcdv3 backend does:
//!   a create is `If(version(key) = 0) Then(put)`, an update `If(mod_revision(key) = rev)
//!   Then(put) Else(get key)` (the `Else` tells `Conflict` from `NotFound`), a delete the same
//!   with `delete`. A revision is the key's mod revision in decimal; a write returns the
//!   transaction's revision, which is the written key's new mod revision.
//! - **Deletes are atomic** (no two-step as in Kubernetes); an object another writer marked
//!   `deleted: true` reads as absent and is deleted (at the revision read) by the read.
//! - **Connections**: one client per endpoint, TLS with a client certificate when the files
//!   are given; a process starts with the member its pid picks, so the nodes' requests spread
//!   over the cluster. No request waits more than [`REQUEST_TIMEOUT`] (connecting at most
//!   [`CONNECT_TIMEOUT`]), and a member without a leader answers at once (`require_leader`).
//! - **Failover, not retries**: a request goes to the next member (each member once at most)
//!   when the one asked cannot have acted on it: the connection was refused or could not be
//!   made, or the member has no leader; a read also when the answer was lost. A write whose
//!   answer was lost is not sent again (it may have been applied): it is `Unavailable`, as is
//!   a request no member took (a cluster that lost its majority): CNI code 11. Conflicts are
//!   only ever retried by the allocator's one loop.
//! - **Read ahead**: an allocation's first reads (config, pools, reservations, the host's
//!   affinities) are one transaction of range reads, and the fast path's affine blocks another
//!   ([`Datastore::prefetch_request`], [`Datastore::prefetch_blocks`]). Each answer is taken
//!   once, dropped first by any write of this store to a key it covers, and dropped at the end
//!   of the request ([`Datastore::end_request`]).
//!
//! This module is the only part of libipam that knows about the etcd client.
//!
//! Files by job: `connection.rs` (the clients and what their errors mean), `kv.rs` (one
//! request: failover, reads, compare-and-swap writes), `prefetch.rs` (the read-ahead),
//! `decode.rs` (stored values to versioned objects, soft deletes finished), one file per kind
//! for the [`Datastore`] methods (`blocks.rs`, `affinities.rs`, `handles.rs`, `pools.rs`, and
//! `settings.rs` for the config, reservations and labels), `inventory.rs` (`check`'s read),
//! `resources.rs` (v3 resources written as calicoctl does) and `keys.rs` (keys and values).

mod affinities;
mod blocks;
mod connection;
mod decode;
mod handles;
mod inventory;
pub mod keys;
mod kv;
mod pools;
mod prefetch;
mod resources;
mod settings;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use ipnet::IpNet;

use super::{Datastore, DatastoreError, DsResult, Inventory, PoolList, Revision, Versioned};
use crate::model::{BlockAffinity, IpPool, IpReservation, IpamBlock, IpamConfig, IpamHandle};
use prefetch::Slot;

pub use connection::{CONNECT_TIMEOUT, Connection, EtcdConfig, REQUEST_TIMEOUT, connect};
pub use resources::put_resource;

/// Counters of what this store asked the cluster, for benchmarks.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
}

/// Calico's IPAM objects in etcd. See the module documentation.
#[derive(Debug)]
pub struct EtcdStore {
    conn: Connection,
    /// The member asked first: the last one that answered.
    preferred: AtomicUsize,
    counters: Counters,
    /// Answers read ahead for the current request, each taken at most once. Invariants: every
    /// slot was read after the request started (`end_request` empties this), and none is
    /// older than a write of this store to a key it covers (each write drops those first).
    /// A store serves one request at a time (each plugin process makes one): a caller running
    /// beside a request on the same store could take what that request read ahead.
    prefetched: Mutex<Vec<Slot>>,
}

fn segment(what: &str, name: &str) -> DsResult<()> {
    keys::check_segment(what, name).map_err(DatastoreError::Other)
}

impl EtcdStore {
    /// A store over `conn`.
    pub fn new(conn: Connection) -> EtcdStore {
        let first = std::process::id() as usize % conn.members.len().max(1);
        EtcdStore {
            conn,
            preferred: AtomicUsize::new(first),
            counters: Counters::default(),
            prefetched: Mutex::default(),
        }
    }

    /// The connection's endpoints, for messages.
    pub fn server(&self) -> &str {
        &self.conn.server
    }

    /// How many requests this store sent so far.
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::Relaxed)
    }
}

impl Datastore for EtcdStore {
    /// Reads the request's first objects in one transaction (see the trait). An error is
    /// returned, not ignored: it is what the first of the reads it replaces would have
    /// returned (the same failover and mapping, `Unavailable` when no member answers: CNI code
    /// 11), and asking a failing cluster again read by read would only make the ADD fail later,
    /// each read waiting for every member in turn. What it reads is decoded by the call that
    /// takes it, so an object that does not decode fails that call, as before.
    async fn prefetch_request(&self, host: &str) -> DsResult<()> {
        prefetch::request(self, host).await
    }

    /// Reads the handle and the config in one transaction (errors as `prefetch_request`).
    async fn prefetch_release(&self, handle_id: &str) -> DsResult<()> {
        prefetch::release(self, handle_id).await
    }

    /// Reads the blocks in one transaction, unless there is only one (a read costs the same).
    async fn prefetch_blocks(&self, cidrs: &[IpNet]) -> DsResult<()> {
        prefetch::blocks(self, cidrs).await
    }

    fn end_request(&self) {
        prefetch::end(self)
    }

    async fn get_config(&self) -> DsResult<IpamConfig> {
        settings::config(self).await
    }

    async fn apply_config(&self, config: &IpamConfig) -> DsResult<()> {
        settings::apply_config(self, config).await
    }

    async fn list_pools(&self) -> DsResult<PoolList> {
        pools::list(self).await
    }

    /// Creates or replaces the pool, keeping the metadata of the one stored (also of one that
    /// does not decode). Last writer wins, as for every admin object.
    async fn apply_pool(&self, pool: &IpPool) -> DsResult<()> {
        pools::apply(self, pool).await
    }

    async fn delete_pool(&self, name: &str) -> DsResult<bool> {
        pools::delete(self, name).await
    }

    async fn node_labels(&self, node: &str) -> DsResult<Option<BTreeMap<String, String>>> {
        settings::node_labels(self, node).await
    }

    async fn list_reservations(&self) -> DsResult<Vec<IpReservation>> {
        settings::reservations(self).await
    }

    async fn get_block(&self, cidr: &IpNet) -> DsResult<Option<Versioned<IpamBlock>>> {
        blocks::get(self, cidr).await
    }

    /// The copy read ahead by `prefetch_blocks` if there is one (a compare-and-swap base,
    /// read during this request and not older than this store's last write of it).
    async fn get_block_for_update(&self, cidr: &IpNet) -> DsResult<Option<Versioned<IpamBlock>>> {
        blocks::get_for_update(self, cidr).await
    }

    async fn create_block(&self, block: &IpamBlock) -> DsResult<Revision> {
        blocks::create(self, block).await
    }

    async fn update_block(&self, block: &Versioned<IpamBlock>) -> DsResult<Revision> {
        blocks::update(self, block).await
    }

    async fn delete_block(&self, block: &Versioned<IpamBlock>) -> DsResult<()> {
        blocks::delete(self, block).await
    }

    async fn list_block_cidrs(&self) -> DsResult<Vec<IpNet>> {
        blocks::list_cidrs(self).await
    }

    async fn list_blocks(&self) -> DsResult<Vec<Versioned<IpamBlock>>> {
        blocks::list(self).await
    }

    async fn list_host_affinities(&self, host: &str) -> DsResult<Vec<Versioned<BlockAffinity>>> {
        affinities::list_host(self, host).await
    }

    async fn list_affinities(&self) -> DsResult<Vec<Versioned<BlockAffinity>>> {
        affinities::list(self).await
    }

    async fn get_affinity(
        &self,
        host: &str,
        cidr: &IpNet,
    ) -> DsResult<Option<Versioned<BlockAffinity>>> {
        affinities::get(self, host, cidr).await
    }

    async fn create_affinity(&self, affinity: &BlockAffinity) -> DsResult<Revision> {
        affinities::create(self, affinity).await
    }

    async fn update_affinity(&self, affinity: &Versioned<BlockAffinity>) -> DsResult<Revision> {
        affinities::update(self, affinity).await
    }

    async fn delete_affinity(&self, affinity: &Versioned<BlockAffinity>) -> DsResult<()> {
        affinities::delete(self, affinity).await
    }

    async fn get_handle(&self, handle_id: &str) -> DsResult<Option<Versioned<IpamHandle>>> {
        handles::get(self, handle_id).await
    }

    async fn create_handle(&self, handle: &IpamHandle) -> DsResult<Revision> {
        handles::create(self, handle).await
    }

    async fn update_handle(&self, handle: &Versioned<IpamHandle>) -> DsResult<Revision> {
        handles::update(self, handle).await
    }

    async fn delete_handle(&self, handle: &Versioned<IpamHandle>) -> DsResult<()> {
        handles::delete(self, handle).await
    }

    async fn list_handles(&self) -> DsResult<Vec<Versioned<IpamHandle>>> {
        handles::list(self).await
    }

    /// Everything `check` reads, object by object: one that does not decode is reported
    /// instead of failing its kind's listing.
    async fn inventory(&self) -> DsResult<Inventory> {
        inventory::read(self).await
    }
}

const _: fn() = || {
    fn implements<T: Datastore>() {}
    implements::<EtcdStore>();
};
