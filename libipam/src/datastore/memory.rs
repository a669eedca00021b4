//! A deterministic in-memory [`Datastore`] with fault injection, for tests.
//!
//! Revisions come from one store-wide counter (like a Kubernetes resourceVersion), so a
//! deleted and recreated object never gets a revision an old reader still holds.
//!
//! Faults apply to writes only and leave the store unchanged:
//! - [`MemoryStore::inject_conflicts`]: the next `n` compare-and-swap writes (updates and
//!   deletes) fail with `Conflict`, as if another writer got there first;
//! - [`MemoryStore::conflict_every`]: every k-th compare-and-swap write fails with `Conflict`;
//! - [`MemoryStore::conflict_randomly`]: each compare-and-swap write fails with `Conflict` with
//!   a given probability, from a seeded generator (reproducible);
//! - [`MemoryStore::fail_next_writes`]: the next `n` writes of any kind fail with a given error;
//! - [`MemoryStore::set_unavailable`]: every call fails with `Unavailable`;
//! - [`MemoryStore::lose_next_block_write_answer`]: the next block create or update is applied
//!   but answered `Unavailable`, as when a server's answer is lost;
//! - [`MemoryStore::race_next_block_delete`]: the next block delete loses to a write of the
//!   block by somebody else (which, unlike the faults above, changes the store).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use ipnet::IpNet;

use super::{Datastore, DatastoreError, DsResult, PoolList, Revision, UnreadablePool, Versioned};
use crate::model::{BlockAffinity, IpPool, IpReservation, IpamBlock, IpamConfig, IpamHandle};
use crate::names;

/// In-memory datastore. See the module documentation for fault injection.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    last_rev: u64,
    config: Option<IpamConfig>,
    pools: BTreeMap<String, IpPool>,
    /// Pool objects that "do not decode" (the other backends' corrupt objects).
    unreadable_pools: BTreeMap<String, UnreadablePool>,
    nodes: BTreeMap<String, BTreeMap<String, String>>,
    reservations: BTreeMap<String, IpReservation>,
    blocks: Table<IpNet, IpamBlock>,
    affinities: Table<(String, IpNet), BlockAffinity>,
    handles: Table<String, IpamHandle>,
    faults: Faults,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Faults {
    conflicts_next: u32,
    conflict_every: u32,
    /// (generator state, percent)
    conflict_random: Option<(u64, u8)>,
    fail_next: u32,
    fail_with: Option<DatastoreError>,
    unavailable: bool,
    race_block_delete: bool,
    lose_block_write_answer: bool,
}

/// Counters of what the store was asked to do.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Writes attempted (including failed ones).
    pub writes: u64,
    /// Compare-and-swap writes attempted (updates and deletes).
    pub cas_writes: u64,
    /// Conflicts returned because of injected faults.
    pub injected_conflicts: u64,
    /// `list_blocks` calls (full block listing).
    pub full_block_lists: u64,
    /// `list_block_cidrs` calls.
    pub block_cidr_lists: u64,
    /// `node_labels` calls.
    pub node_label_reads: u64,
    /// Single-block reads (`get_block`, `get_block_for_update`).
    pub block_reads: u64,
    /// Handle reads (`get_handle`, `get_handle_for_update`).
    pub handle_reads: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Write {
    Create,
    Cas,
}

impl Inner {
    /// The answer to a block write that was applied: lost once when asked to.
    fn answer_block_write(&mut self, rev: Revision) -> DsResult<Revision> {
        if std::mem::take(&mut self.faults.lose_block_write_answer) {
            return Err(DatastoreError::Unavailable("the answer was lost".into()));
        }
        Ok(rev)
    }

    /// Applies injected faults to a write; `Err` means the write must not happen.
    fn gate(&mut self, kind: Write) -> DsResult<()> {
        self.stats.writes += 1;
        if self.faults.fail_next > 0 {
            self.faults.fail_next -= 1;
            return Err(self
                .faults
                .fail_with
                .clone()
                .unwrap_or(DatastoreError::Conflict));
        }
        if kind == Write::Cas {
            self.stats.cas_writes += 1;
            let every = self.faults.conflict_every;
            let hit_every = every > 0 && self.stats.cas_writes.is_multiple_of(u64::from(every));
            let hit_random = match self.faults.conflict_random.as_mut() {
                Some((state, percent)) => splitmix(state) % 100 < u64::from(*percent),
                None => false,
            };
            if self.faults.conflicts_next > 0 || hit_every || hit_random {
                self.faults.conflicts_next = self.faults.conflicts_next.saturating_sub(1);
                self.stats.injected_conflicts += 1;
                return Err(DatastoreError::Conflict);
            }
        }
        Ok(())
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn rev(n: u64) -> Revision {
    Revision(n.to_string())
}

/// The soft-delete marker of the IPAM objects (a soft-deleted object reads as absent).
trait SoftDeleted {
    fn is_deleted(&self) -> bool;
}

impl SoftDeleted for IpamBlock {
    fn is_deleted(&self) -> bool {
        self.deleted
    }
}

impl SoftDeleted for BlockAffinity {
    fn is_deleted(&self) -> bool {
        self.deleted
    }
}

impl SoftDeleted for IpamHandle {
    fn is_deleted(&self) -> bool {
        self.deleted
    }
}

/// One kind of IPAM object: each value with the revision of its last write. Every write is
/// compare-and-swap; revisions come from the store-wide counter `last`.
#[derive(Debug)]
struct Table<K, V>(BTreeMap<K, (V, u64)>);

impl<K, V> Default for Table<K, V> {
    fn default() -> Self {
        Table(BTreeMap::new())
    }
}

fn versioned<V: Clone>((value, r): &(V, u64)) -> Versioned<V> {
    Versioned {
        value: value.clone(),
        revision: rev(*r),
    }
}

impl<K: Ord, V: Clone + SoftDeleted> Table<K, V> {
    fn get(&self, key: &K) -> Option<Versioned<V>> {
        self.0
            .get(key)
            .filter(|(v, _)| !v.is_deleted())
            .map(versioned)
    }

    fn live(&self) -> Vec<Versioned<V>> {
        self.0
            .values()
            .filter(|(v, _)| !v.is_deleted())
            .map(versioned)
            .collect()
    }

    fn create(&mut self, key: K, value: &V, last: &mut u64) -> DsResult<Revision> {
        if self.0.contains_key(&key) {
            return Err(DatastoreError::AlreadyExists);
        }
        *last += 1;
        self.0.insert(key, (value.clone(), *last));
        Ok(rev(*last))
    }

    fn check(&self, key: &K, given: &Revision) -> DsResult<()> {
        let (_, stored) = self.0.get(key).ok_or(DatastoreError::NotFound)?;
        if rev(*stored) == *given {
            Ok(())
        } else {
            Err(DatastoreError::Conflict)
        }
    }

    fn update(&mut self, key: K, value: &Versioned<V>, last: &mut u64) -> DsResult<Revision> {
        self.check(&key, &value.revision)?;
        *last += 1;
        self.0.insert(key, (value.value.clone(), *last));
        Ok(rev(*last))
    }

    fn delete(&mut self, key: &K, given: &Revision) -> DsResult<()> {
        self.check(key, given)?;
        self.0.remove(key);
        Ok(())
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> DsResult<MutexGuard<'_, Inner>> {
        let guard = self
            .inner
            .lock()
            .map_err(|_| DatastoreError::Other("memory store lock poisoned".into()))?;
        if guard.faults.unavailable {
            return Err(DatastoreError::Unavailable("injected outage".into()));
        }
        Ok(guard)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> DsResult<T>) -> DsResult<T> {
        f(&mut *self.lock()?)
    }

    /// The next `n` compare-and-swap writes fail with `Conflict`.
    pub fn inject_conflicts(&self, n: u32) {
        if let Ok(mut g) = self.inner.lock() {
            g.faults.conflicts_next = n;
        }
    }

    /// Every `k`-th compare-and-swap write fails with `Conflict` (0 turns this off).
    pub fn conflict_every(&self, k: u32) {
        if let Ok(mut g) = self.inner.lock() {
            g.faults.conflict_every = k;
        }
    }

    /// Each compare-and-swap write fails with `Conflict` with probability `percent`/100,
    /// drawn from a generator seeded with `seed` (`percent` 0 turns this off).
    pub fn conflict_randomly(&self, seed: u64, percent: u8) {
        if let Ok(mut g) = self.inner.lock() {
            g.faults.conflict_random = (percent > 0).then_some((seed, percent.min(100)));
        }
    }

    /// The next block create or update is applied, then answered `Unavailable`.
    pub fn lose_next_block_write_answer(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.faults.lose_block_write_answer = true;
        }
    }

    /// The next `n` writes of any kind fail with `error`.
    pub fn fail_next_writes(&self, n: u32, error: DatastoreError) {
        if let Ok(mut g) = self.inner.lock() {
            g.faults.fail_next = n;
            g.faults.fail_with = Some(error);
        }
    }

    /// The next block delete finds the block written by somebody else since it was read (as
    /// its owner would, allocating from it): the block is rewritten with the next sequence
    /// number and a new revision just before the delete, which then fails with `Conflict`.
    pub fn race_next_block_delete(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.faults.race_block_delete = true;
        }
    }

    /// Makes every call fail with `Unavailable` (or work again).
    pub fn set_unavailable(&self, unavailable: bool) {
        if let Ok(mut g) = self.inner.lock() {
            g.faults.unavailable = unavailable;
        }
    }

    /// What the store was asked to do so far.
    pub fn stats(&self) -> Stats {
        self.inner.lock().map(|g| g.stats).unwrap_or_default()
    }

    /// Sets (creates) a node with labels.
    pub fn set_node_labels(&self, node: &str, labels: BTreeMap<String, String>) {
        if let Ok(mut g) = self.inner.lock() {
            g.nodes.insert(node.to_owned(), labels);
        }
    }

    /// Stores a pool object that does not decode, as a hand-edited file or an object written
    /// past the CRD's schema would be (it replaces a pool of that name).
    pub fn put_unreadable_pool(&self, pool: UnreadablePool) {
        if let Ok(mut g) = self.inner.lock() {
            g.pools.remove(&pool.name);
            g.unreadable_pools.insert(pool.name.clone(), pool);
        }
    }

    /// Adds or replaces a reservation.
    pub fn apply_reservation(&self, reservation: IpReservation) {
        if let Ok(mut g) = self.inner.lock() {
            g.reservations.insert(reservation.name.clone(), reservation);
        }
    }
}

impl Datastore for MemoryStore {
    async fn get_config(&self) -> DsResult<IpamConfig> {
        self.with(|s| Ok(s.config.clone().unwrap_or_default()))
    }

    async fn apply_config(&self, config: &IpamConfig) -> DsResult<()> {
        self.with(|s| {
            s.gate(Write::Create)?;
            s.config = Some(config.clone());
            Ok(())
        })
    }

    async fn list_pools(&self) -> DsResult<PoolList> {
        self.with(|s| {
            Ok(PoolList {
                pools: s.pools.values().cloned().collect(),
                unreadable: s.unreadable_pools.values().cloned().collect(),
            })
        })
    }

    async fn apply_pool(&self, pool: &IpPool) -> DsResult<()> {
        self.with(|s| {
            s.gate(Write::Create)?;
            s.unreadable_pools.remove(&pool.name);
            s.pools.insert(pool.name.clone(), pool.clone());
            Ok(())
        })
    }

    async fn delete_pool(&self, name: &str) -> DsResult<bool> {
        self.with(|s| {
            s.gate(Write::Create)?;
            let unreadable = s.unreadable_pools.remove(name).is_some();
            Ok(s.pools.remove(name).is_some() || unreadable)
        })
    }

    async fn node_labels(&self, node: &str) -> DsResult<Option<BTreeMap<String, String>>> {
        self.with(|s| {
            s.stats.node_label_reads += 1;
            Ok(s.nodes.get(node).cloned())
        })
    }

    async fn list_reservations(&self) -> DsResult<Vec<IpReservation>> {
        self.with(|s| Ok(s.reservations.values().cloned().collect()))
    }

    async fn get_block(&self, cidr: &IpNet) -> DsResult<Option<Versioned<IpamBlock>>> {
        self.with(|s| {
            s.stats.block_reads += 1;
            Ok(s.blocks.get(cidr))
        })
    }

    async fn create_block(&self, block: &IpamBlock) -> DsResult<Revision> {
        self.with(|s| {
            s.gate(Write::Create)?;
            let rev = s.blocks.create(block.cidr, block, &mut s.last_rev)?;
            s.answer_block_write(rev)
        })
    }

    async fn update_block(&self, block: &Versioned<IpamBlock>) -> DsResult<Revision> {
        self.with(|s| {
            s.gate(Write::Cas)?;
            let rev = s.blocks.update(block.value.cidr, block, &mut s.last_rev)?;
            s.answer_block_write(rev)
        })
    }

    async fn delete_block(&self, block: &Versioned<IpamBlock>) -> DsResult<()> {
        self.with(|s| {
            if std::mem::take(&mut s.faults.race_block_delete)
                && let Some(mut current) = s.blocks.get(&block.value.cidr)
            {
                current.value.sequence_number = current.value.sequence_number.wrapping_add(1);
                s.blocks
                    .update(block.value.cidr, &current, &mut s.last_rev)?;
            }
            s.gate(Write::Cas)?;
            s.blocks.delete(&block.value.cidr, &block.revision)
        })
    }

    async fn list_block_cidrs(&self) -> DsResult<Vec<IpNet>> {
        self.with(|s| {
            s.stats.block_cidr_lists += 1;
            Ok(s.blocks.0.keys().copied().collect())
        })
    }

    async fn list_blocks(&self) -> DsResult<Vec<Versioned<IpamBlock>>> {
        self.with(|s| {
            s.stats.full_block_lists += 1;
            Ok(s.blocks.live())
        })
    }

    async fn list_host_affinities(&self, host: &str) -> DsResult<Vec<Versioned<BlockAffinity>>> {
        self.with(|s| {
            Ok(s.affinities
                .0
                .range((host.to_owned(), IpNet::default())..)
                .take_while(|((h, _), _)| h == host)
                .filter(|(_, (a, _))| !a.deleted)
                .map(|(_, entry)| versioned(entry))
                .collect())
        })
    }

    async fn list_affinities(&self) -> DsResult<Vec<Versioned<BlockAffinity>>> {
        self.with(|s| Ok(s.affinities.live()))
    }

    async fn get_affinity(
        &self,
        host: &str,
        cidr: &IpNet,
    ) -> DsResult<Option<Versioned<BlockAffinity>>> {
        self.with(|s| Ok(s.affinities.get(&(host.to_owned(), *cidr))))
    }

    async fn create_affinity(&self, affinity: &BlockAffinity) -> DsResult<Revision> {
        self.with(|s| {
            s.gate(Write::Create)?;
            let key = (affinity.node.clone(), affinity.cidr);
            s.affinities.create(key, affinity, &mut s.last_rev)
        })
    }

    async fn update_affinity(&self, affinity: &Versioned<BlockAffinity>) -> DsResult<Revision> {
        self.with(|s| {
            s.gate(Write::Cas)?;
            let key = (affinity.value.node.clone(), affinity.value.cidr);
            s.affinities.update(key, affinity, &mut s.last_rev)
        })
    }

    async fn delete_affinity(&self, affinity: &Versioned<BlockAffinity>) -> DsResult<()> {
        self.with(|s| {
            s.gate(Write::Cas)?;
            let key = (affinity.value.node.clone(), affinity.value.cidr);
            s.affinities.delete(&key, &affinity.revision)
        })
    }

    async fn get_handle(&self, handle_id: &str) -> DsResult<Option<Versioned<IpamHandle>>> {
        self.with(|s| {
            s.stats.handle_reads += 1;
            Ok(s.handles.get(&names::handle_object_name(handle_id)))
        })
    }

    async fn create_handle(&self, handle: &IpamHandle) -> DsResult<Revision> {
        self.with(|s| {
            s.gate(Write::Create)?;
            let key = names::handle_object_name(&handle.handle_id);
            s.handles.create(key, handle, &mut s.last_rev)
        })
    }

    async fn update_handle(&self, handle: &Versioned<IpamHandle>) -> DsResult<Revision> {
        self.with(|s| {
            s.gate(Write::Cas)?;
            let key = names::handle_object_name(&handle.value.handle_id);
            s.handles.update(key, handle, &mut s.last_rev)
        })
    }

    async fn delete_handle(&self, handle: &Versioned<IpamHandle>) -> DsResult<()> {
        self.with(|s| {
            s.gate(Write::Cas)?;
            let key = names::handle_object_name(&handle.value.handle_id);
            s.handles.delete(&key, &handle.revision)
        })
    }

    async fn list_handles(&self) -> DsResult<Vec<Versioned<IpamHandle>>> {
        self.with(|s| Ok(s.handles.live()))
    }
}

const _: fn() = || {
    fn implements<T: Datastore>() {}
    implements::<MemoryStore>();
};
