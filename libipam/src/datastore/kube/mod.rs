//! The Kubernetes datastore (`datastore_type: kubernetes`): Calico's `crd.projectcalico.org/v1`
//! objects through a real API server, written exactly as libcalico-go writes them so that
//! calicoctl, Felix and kube-controllers read them as their own.
//!
//! - Names: IPAMBlock `CIDRToName(cidr)` (`10-244-1-0-26`), BlockAffinity `<node>-<block
//!   name>` (hashed at 253 characters) with its three `projectcalico.org/` labels, IPAMHandle
//!   the lower-cased handle ID. Every IPAM object carries the `projectcalico.org/metadata`
//!   annotation.
//! - Compare-and-swap: updates carry the `resourceVersion` that was read; the server answers
//!   409 Conflict when it is stale ([`DatastoreError::Conflict`]) and 409 AlreadyExists on a
//!   create of an existing name ([`DatastoreError::AlreadyExists`]). The allocator's one
//!   retry loop handles both.
//! - Deletes are compare-and-delete: a DELETE with a `resourceVersion` precondition (409 when
//!   stale). Calico deletes in two steps (a CAS update setting `spec.deleted`, then a DELETE);
//!   every read treats `deleted: true` as absent and finishes such a delete.
//! - Requests: writes return the stored object, so nothing just written is read back, and an
//!   optional node-local cache ([`CacheConfig`], see `cache.rs` for why it is safe) lets a
//!   steady-state allocation go straight to its compare-and-swap writes.
//!
//! This module is the only part of libipam that knows about kube.
//!
//! Files by job: `connection.rs` (the client and its errors), `typed.rs` (one typed request per
//! object, two-step deletes finished), one file per object kind for the [`Datastore`] methods
//! (`blocks.rs`, `affinities.rs`, `handles.rs`, `pools.rs`, and `settings.rs` for the config,
//! reservations and labels), `cache.rs` (the node cache), `scan.rs` (`check`'s raw read),
//! `inventory.rs` (cluster facts for `check`), `decode.rs` and `objects.rs` (the wire shapes).

mod affinities;
mod ahead;
pub mod api_group;
mod blocks;
mod cache;
pub mod client;
mod connection;
pub mod decode;
mod handles;
mod inventory;
mod objects;
mod pools;
mod scan;
mod settings;
mod typed;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard};

use ipnet::IpNet;

use super::{Datastore, DsResult, Inventory, PoolList, Revision, Versioned};
use crate::model::{BlockAffinity, IpPool, IpReservation, IpamBlock, IpamConfig, IpamHandle};

pub use crate::datastore::api_group::ApiGroup;
pub use ahead::{ReadAhead, read_ahead};
pub use api_group::GroupCell;
pub use cache::{CacheConfig, NodeCache};
pub use client::{ClientOptions, Deadline};
pub use connection::{CONNECT_TIMEOUT, Connection, READ_TIMEOUT, connect, connect_with};
pub use inventory::ClusterFacts;

/// The Kubernetes datastore. With a node cache, the cache file is written back when the store
/// is dropped (callers drop it while still holding the host-wide IPAM lock).
#[derive(Debug)]
pub struct KubeStore {
    conn: Connection,
    cache: Option<Mutex<NodeCache>>,
    /// A block create found its name taken: the next listing of block names is a consistent
    /// read, not the watch cache's (`blocks::list_cidrs`).
    block_list_stale: AtomicBool,
    /// What this request read before it took the host-wide lock ([`read_ahead`]).
    ahead: Mutex<ReadAhead>,
}

impl Drop for KubeStore {
    fn drop(&mut self) {
        if let Some(c) = self.cache.as_mut() {
            match c.get_mut() {
                Ok(c) => c.save(),
                Err(poisoned) => poisoned.into_inner().save(),
            }
        }
    }
}

impl KubeStore {
    /// A store without a cache: every read goes to the API server (the operator CLI).
    pub fn new(conn: Connection) -> KubeStore {
        KubeStore {
            conn,
            cache: None,
            block_list_stale: AtomicBool::new(false),
            ahead: Mutex::new(ReadAhead::default()),
        }
    }

    /// A store with a node-local cache (the IPAM plugin, under the host-wide lock).
    pub fn with_cache(conn: Connection, cache: &CacheConfig) -> KubeStore {
        let loaded = NodeCache::load(cache, &conn.server);
        // The group found by an earlier process of this node, while fresh: no discovery
        // request in the steady state.
        if let Some(g) = loaded.api_group() {
            conn.group_cell().seed(g);
        }
        KubeStore {
            conn,
            cache: Some(Mutex::new(loaded)),
            block_list_stale: AtomicBool::new(false),
            ahead: Mutex::new(ReadAhead::default()),
        }
    }

    /// The connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn cache(&self) -> Option<MutexGuard<'_, NodeCache>> {
        self.cache
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The API group of Calico's objects (found on first use, see `api_group.rs`); it is
    /// kept in the node cache until a request finds it not served (and a cache read from
    /// another group is dropped).
    pub async fn api_group(&self) -> DsResult<ApiGroup> {
        let g = self.conn.api_group().await?;
        if let Some(mut c) = self.cache() {
            c.set_api_group(g);
        }
        Ok(g)
    }
}

impl Datastore for KubeStore {
    async fn get_config(&self) -> DsResult<IpamConfig> {
        settings::config(self).await
    }

    async fn apply_config(&self, config: &IpamConfig) -> DsResult<()> {
        settings::apply_config(self, config).await
    }

    async fn list_pools(&self) -> DsResult<PoolList> {
        match self.take_ahead(|a| a.pools.take()) {
            Some(pools) => Ok(pools),
            None => pools::list(self).await,
        }
    }

    async fn apply_pool(&self, pool: &IpPool) -> DsResult<()> {
        self.take_ahead(|a| a.pools.take());
        pools::apply(self, pool).await
    }

    async fn delete_pool(&self, name: &str) -> DsResult<bool> {
        self.take_ahead(|a| a.pools.take());
        pools::delete(self, name).await
    }

    async fn node_labels(&self, node: &str) -> DsResult<Option<BTreeMap<String, String>>> {
        settings::node_labels(self, node).await
    }

    async fn namespace_labels(
        &self,
        namespace: &str,
    ) -> DsResult<Option<BTreeMap<String, String>>> {
        settings::namespace_labels(self, namespace).await
    }

    async fn list_reservations(&self) -> DsResult<Vec<IpReservation>> {
        settings::reservations(self).await
    }

    async fn get_block(&self, cidr: &IpNet) -> DsResult<Option<Versioned<IpamBlock>>> {
        blocks::get(self, cidr).await
    }

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

    fn cached_host_affinities(&self, host: &str) -> Option<Vec<Versioned<BlockAffinity>>> {
        affinities::cached_host(self, host)
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

    async fn get_handle_for_update(
        &self,
        handle_id: &str,
    ) -> DsResult<Option<Versioned<IpamHandle>>> {
        handles::get_for_update(self, handle_id).await
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

    /// Every object listed raw and decoded one by one (`scan.rs`); never from the cache.
    async fn inventory(&self) -> DsResult<Inventory> {
        self.read_inventory().await
    }
}

const _: fn() = || {
    fn implements<T: Datastore>() {}
    implements::<KubeStore>();
};
