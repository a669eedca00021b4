//! The `Datastore` contract (libipam/src/datastore/mod.rs), as tests every backend passes: the
//! memory and local stores (`local_store.rs`), the etcd store against a real cluster
//! (`etcd_store.rs`), the Kubernetes store against a real apiserver (`kube_store.rs`). The
//! compare-and-swap and soft-delete checks are written once over [`Kind`] and run for blocks,
//! handles and affinities alike. Each check works in a store other runs share: its objects are named by
//! [`Run`], and what it leaves is removed.
#![allow(dead_code)]

use ipnet::IpNet;
use libipam::datastore::{Datastore, DatastoreError, DsResult, Revision, Versioned};
use libipam::model::{AffinityState, BlockAffinity, IpPool, IpamBlock, IpamConfig, IpamHandle};

/// Names of this run's objects, apart from other runs' in a shared store.
pub struct Run {
    id: u64,
}

impl Run {
    pub fn new() -> Run {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Run {
            id: t ^ (u64::from(std::process::id()) << 20),
        }
    }

    /// A /28 of 10.0.0.0/8 for this run and `n`.
    pub fn cidr(&self, n: u8) -> IpNet {
        let x = self.id.wrapping_mul(0x9e37_79b9) >> 8;
        let b = (x % 250) as u8;
        let c = ((x >> 8) % 16) as u8 * 16;
        format!("10.{}.{b}.{}/28", 100 + n, c)
            .parse()
            .expect("cidr")
    }

    /// An IPv6 /122 for this run and `n`.
    pub fn cidr6(&self, n: u8) -> IpNet {
        let x = self.id.wrapping_mul(0x9e37_79b9) >> 8;
        format!("fd00:{n:x}:{:x}::/122", x % 0xffff)
            .parse()
            .expect("cidr6")
    }

    /// A name for this run.
    pub fn name(&self, what: &str) -> String {
        format!("{what}-{:x}", self.id % 0xffff_ffff)
    }
}

/// One kind of compare-and-swap object of the `Datastore` (blocks, handles, affinities): how
/// to make one, change it, mark it deleted, and reach it through the store. The checks below
/// are written once over this, not once per kind.
pub trait Kind {
    type Value: Clone + PartialEq + std::fmt::Debug;
    /// For messages.
    const NAME: &'static str;
    /// A fresh object of `run`, told apart from its others by `n`.
    fn sample(run: &Run, n: u8) -> Self::Value;
    /// A change that a read shows.
    fn change(v: &mut Self::Value);
    /// Another writer's first half of a delete.
    fn mark_deleted(v: &mut Self::Value);
    /// Whether two values are the same object (same name).
    fn same(a: &Self::Value, b: &Self::Value) -> bool;
    async fn create<D: Datastore>(s: &D, v: &Self::Value) -> DsResult<Revision>;
    async fn get<D: Datastore>(
        s: &D,
        like: &Self::Value,
    ) -> DsResult<Option<Versioned<Self::Value>>>;
    async fn update<D: Datastore>(s: &D, v: &Versioned<Self::Value>) -> DsResult<Revision>;
    async fn delete<D: Datastore>(s: &D, v: &Versioned<Self::Value>) -> DsResult<()>;
    /// The listing that would show `like` (all blocks, all handles, `like`'s host's affinities).
    async fn list<D: Datastore>(s: &D, like: &Self::Value)
    -> DsResult<Vec<Versioned<Self::Value>>>;
}

pub struct Blocks;
pub struct Handles;
pub struct Affinities;

impl Kind for Blocks {
    type Value = IpamBlock;
    const NAME: &'static str = "block";
    fn sample(run: &Run, n: u8) -> IpamBlock {
        let mut b = IpamBlock::new(run.cidr(n), Some("host:n1".into()), 1).expect("block");
        // Ours, not Calico's: Calico's IPAMBlock CRD prunes it.
        b.affinity_claim_time = None;
        b
    }
    fn change(v: &mut IpamBlock) {
        v.sequence_number += 1;
    }
    fn mark_deleted(v: &mut IpamBlock) {
        v.deleted = true;
    }
    fn same(a: &IpamBlock, b: &IpamBlock) -> bool {
        a.cidr == b.cidr
    }
    async fn create<D: Datastore>(s: &D, v: &IpamBlock) -> DsResult<Revision> {
        s.create_block(v).await
    }
    async fn get<D: Datastore>(s: &D, like: &IpamBlock) -> DsResult<Option<Versioned<IpamBlock>>> {
        s.get_block(&like.cidr).await
    }
    async fn update<D: Datastore>(s: &D, v: &Versioned<IpamBlock>) -> DsResult<Revision> {
        s.update_block(v).await
    }
    async fn delete<D: Datastore>(s: &D, v: &Versioned<IpamBlock>) -> DsResult<()> {
        s.delete_block(v).await
    }
    async fn list<D: Datastore>(s: &D, _: &IpamBlock) -> DsResult<Vec<Versioned<IpamBlock>>> {
        s.list_blocks().await
    }
}

impl Kind for Handles {
    type Value = IpamHandle;
    const NAME: &'static str = "handle";
    fn sample(run: &Run, n: u8) -> IpamHandle {
        // Mixed case: the ID is read back in its case (stores may lower-case the name).
        let mut h = IpamHandle::new(format!(
            "K8s-Pod-Network.{}",
            run.name(&format!("Handle{n}"))
        ));
        h.increment(&run.cidr(n), 2);
        h.increment(&run.cidr6(n), 1);
        h
    }
    fn change(v: &mut IpamHandle) {
        let first = v.block.keys().next().cloned();
        if let Some(cidr) = first.and_then(|c| c.parse::<IpNet>().ok()) {
            v.decrement(&cidr, 1);
        }
    }
    fn mark_deleted(v: &mut IpamHandle) {
        v.deleted = true;
    }
    fn same(a: &IpamHandle, b: &IpamHandle) -> bool {
        a.handle_id == b.handle_id
    }
    async fn create<D: Datastore>(s: &D, v: &IpamHandle) -> DsResult<Revision> {
        s.create_handle(v).await
    }
    async fn get<D: Datastore>(
        s: &D,
        like: &IpamHandle,
    ) -> DsResult<Option<Versioned<IpamHandle>>> {
        s.get_handle(&like.handle_id).await
    }
    async fn update<D: Datastore>(s: &D, v: &Versioned<IpamHandle>) -> DsResult<Revision> {
        s.update_handle(v).await
    }
    async fn delete<D: Datastore>(s: &D, v: &Versioned<IpamHandle>) -> DsResult<()> {
        s.delete_handle(v).await
    }
    async fn list<D: Datastore>(s: &D, _: &IpamHandle) -> DsResult<Vec<Versioned<IpamHandle>>> {
        s.list_handles().await
    }
}

impl Kind for Affinities {
    type Value = BlockAffinity;
    const NAME: &'static str = "affinity";
    fn sample(run: &Run, n: u8) -> BlockAffinity {
        BlockAffinity::host(
            run.name(&format!("node{n}")),
            run.cidr(n),
            AffinityState::Pending,
        )
    }
    fn change(v: &mut BlockAffinity) {
        v.state = AffinityState::Confirmed;
    }
    fn mark_deleted(v: &mut BlockAffinity) {
        v.deleted = true;
    }
    fn same(a: &BlockAffinity, b: &BlockAffinity) -> bool {
        a.node == b.node && a.cidr == b.cidr && a.affinity_type == b.affinity_type
    }
    async fn create<D: Datastore>(s: &D, v: &BlockAffinity) -> DsResult<Revision> {
        s.create_affinity(v).await
    }
    async fn get<D: Datastore>(
        s: &D,
        like: &BlockAffinity,
    ) -> DsResult<Option<Versioned<BlockAffinity>>> {
        s.get_affinity(&like.node, &like.cidr).await
    }
    async fn update<D: Datastore>(s: &D, v: &Versioned<BlockAffinity>) -> DsResult<Revision> {
        s.update_affinity(v).await
    }
    async fn delete<D: Datastore>(s: &D, v: &Versioned<BlockAffinity>) -> DsResult<()> {
        s.delete_affinity(v).await
    }
    async fn list<D: Datastore>(
        s: &D,
        like: &BlockAffinity,
    ) -> DsResult<Vec<Versioned<BlockAffinity>>> {
        s.list_host_affinities(&like.node).await
    }
}

/// Removes what an earlier, interrupted run of the same name left.
async fn clear<K: Kind, D: Datastore>(store: &D, like: &K::Value) {
    if let Some(old) = K::get(store, like).await.expect("get") {
        K::delete(store, &old).await.expect("clean up");
    }
}

/// Where `v`'s object is in `K`'s listing: its revision there.
async fn listed<K: Kind, D: Datastore>(store: &D, v: &K::Value) -> Option<Revision> {
    K::list(store, v)
        .await
        .expect("list")
        .into_iter()
        .find(|x| K::same(&x.value, v))
        .map(|x| x.revision)
}

/// Create, AlreadyExists, compare-and-swap updates and deletes, NotFound, listings, and a
/// recreated object never matching a revision of its previous life: for one kind.
pub async fn compare_and_swap<K: Kind, D: Datastore>(store: &D, run: &Run) {
    let what = K::NAME;
    let object = K::sample(run, 1);
    clear::<K, D>(store, &object).await;
    let r1 = K::create(store, &object).await.expect("create");
    assert_eq!(
        K::create(store, &object).await,
        Err(DatastoreError::AlreadyExists),
        "{what}: a second create"
    );
    let read = K::get(store, &object).await.expect("get").expect("exists");
    assert_eq!(
        read.revision, r1,
        "{what}: a write returns the revision a read sees"
    );
    assert_eq!(read.value, object, "{what}: read back as written");
    assert_eq!(
        listed::<K, D>(store, &object).await,
        Some(r1.clone()),
        "{what}: listed"
    );
    let mut v = read.clone();
    K::change(&mut v.value);
    let r2 = K::update(store, &v).await.expect("update at r1");
    assert_ne!(r1, r2, "{what}: an update moves the revision");
    // The copy at r1 is stale now: every write from it is refused.
    assert_eq!(
        K::update(store, &read).await,
        Err(DatastoreError::Conflict),
        "{what}"
    );
    assert_eq!(
        K::delete(store, &read).await,
        Err(DatastoreError::Conflict),
        "{what}"
    );
    let current = K::get(store, &object).await.expect("get").expect("exists");
    assert_eq!(current.revision, r2, "{what}");
    assert_eq!(current.value, v.value, "{what}: the update read back");
    assert_eq!(
        listed::<K, D>(store, &object).await,
        Some(r2.clone()),
        "{what}: listed at r2"
    );
    K::delete(store, &current).await.expect("delete at r2");
    assert!(
        K::get(store, &object).await.expect("get").is_none(),
        "{what}: deleted"
    );
    assert_eq!(
        K::update(store, &current).await,
        Err(DatastoreError::NotFound),
        "{what}"
    );
    assert_eq!(
        K::delete(store, &current).await,
        Err(DatastoreError::NotFound),
        "{what}"
    );
    assert_eq!(
        listed::<K, D>(store, &object).await,
        None,
        "{what}: not listed once deleted"
    );
    // A recreated object never matches a revision from its previous life.
    let r3 = K::create(store, &object).await.expect("recreate");
    assert!(r3 != r1 && r3 != r2, "{what}: {r3:?} reused");
    assert_eq!(
        K::update(store, &read).await,
        Err(DatastoreError::Conflict),
        "{what}"
    );
    assert_eq!(
        K::update(store, &current).await,
        Err(DatastoreError::Conflict),
        "{what}"
    );
    let again = K::get(store, &object).await.expect("get").expect("exists");
    K::delete(store, &again).await.expect("delete");
}

/// Whether a backend finishes another writer's two-step delete when it reads the object
/// (Kubernetes, etcd), so that the name can be created again at once; the memory and local
/// stores leave that to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    FinishDeletes,
    LeaveDeletes,
}

/// An object another writer marked `deleted: true` reads as absent, in single reads and
/// listings; a backend that finishes such deletes lets its name be created again.
pub async fn soft_deleted_reads_as_absent<K: Kind, D: Datastore>(
    store: &D,
    run: &Run,
    reads: Reads,
) {
    let what = K::NAME;
    let object = K::sample(run, 2);
    clear::<K, D>(store, &object).await;
    let rev = K::create(store, &object).await.expect("create");
    let mut marked = Versioned {
        value: object.clone(),
        revision: rev,
    };
    K::mark_deleted(&mut marked.value);
    marked.revision = K::update(store, &marked).await.expect("mark deleted");
    assert!(
        K::get(store, &object).await.expect("get").is_none(),
        "{what}: read as absent"
    );
    assert_eq!(listed::<K, D>(store, &object).await, None, "{what}: listed");
    if reads == Reads::FinishDeletes {
        let rev = K::create(store, &object).await.expect("recreate");
        K::delete(
            store,
            &Versioned {
                value: object,
                revision: rev,
            },
        )
        .await
        .expect("delete");
    } else {
        K::delete(store, &marked).await.expect("finish the delete");
    }
}

/// Every kind's compare-and-swap.
pub async fn compare_and_swap_all<D: Datastore>(store: &D, run: &Run) {
    compare_and_swap::<Blocks, D>(store, run).await;
    compare_and_swap::<Handles, D>(store, run).await;
    compare_and_swap::<Affinities, D>(store, run).await;
}

/// Every kind's soft-deleted objects.
pub async fn soft_deleted_objects_read_as_absent<D: Datastore>(store: &D, run: &Run, reads: Reads) {
    soft_deleted_reads_as_absent::<Blocks, D>(store, run, reads).await;
    soft_deleted_reads_as_absent::<Handles, D>(store, run, reads).await;
    soft_deleted_reads_as_absent::<Affinities, D>(store, run, reads).await;
}

/// Whether `cidr` is (`present`) or is not among the listed block CIDRs within a few seconds:
/// the listing may come from a cache a moment behind the writes (the Kubernetes store lists
/// from the API server's watch cache).
async fn block_cidrs_settle<D: Datastore>(store: &D, cidr: &IpNet, present: bool) -> bool {
    for _ in 0..50 {
        let listed = store.list_block_cidrs().await.expect("cidrs");
        if listed.contains(cidr) == present {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// Blocks are also listed by CIDR alone.
pub async fn block_cidrs<D: Datastore>(store: &D, run: &Run) {
    let block = Blocks::sample(run, 3);
    clear::<Blocks, D>(store, &block).await;
    let rev = store.create_block(&block).await.expect("create");
    assert!(block_cidrs_settle(store, &block.cidr, true).await);
    store
        .delete_block(&Versioned {
            value: block.clone(),
            revision: rev,
        })
        .await
        .expect("delete");
    assert!(block_cidrs_settle(store, &block.cidr, false).await);
}

/// Affinities: one listing per host gives both families and no other host's (not even one
/// whose name starts with this one's); all hosts' in the full listing.
pub async fn affinity_listings<D: Datastore>(store: &D, run: &Run) {
    let host = run.name("node");
    let longer = format!("{host}x");
    let (v4, v6) = (run.cidr(4), run.cidr6(4));
    let mut written = Vec::new();
    for (h, cidr, state) in [
        (&host, v4, AffinityState::Pending),
        (&host, v6, AffinityState::Confirmed),
        (&longer, v4, AffinityState::Confirmed),
    ] {
        let a = BlockAffinity::host(h.as_str(), cidr, state);
        clear::<Affinities, D>(store, &a).await;
        let rev = store.create_affinity(&a).await.expect("create");
        written.push(Versioned {
            value: a,
            revision: rev,
        });
    }
    let mut listed = store.list_host_affinities(&host).await.expect("list");
    listed.sort_by_key(|a| a.value.cidr.to_string());
    let mut expected = written[..2].to_vec();
    expected.sort_by_key(|a| a.value.cidr.to_string());
    assert_eq!(listed, expected, "both families of this host only");
    let all = store.list_affinities().await.expect("list all");
    for w in &written {
        assert!(all.contains(w), "{w:?}");
    }
    for w in &written {
        store.delete_affinity(w).await.expect("delete");
    }
    assert!(
        store
            .list_host_affinities(&host)
            .await
            .expect("list")
            .is_empty()
    );
}

/// Pools are admin objects: applied (created or replaced), listed by name, deleted.
pub async fn pools<D: Datastore>(store: &D, run: &Run) {
    let name = run.name("pool");
    let mut pool = IpPool::new(&name, run.cidr(5).to_string());
    pool.spec.block_size = Some(30);
    pool.spec.node_selector = Some("all()".into());
    store.apply_pool(&pool).await.expect("apply");
    let listed = store.list_pools().await.expect("list");
    assert_eq!(
        listed.pools.iter().find(|p| p.name == name),
        Some(&pool),
        "read back as written"
    );
    pool.spec.disabled = true;
    store.apply_pool(&pool).await.expect("replace");
    let listed = store.list_pools().await.expect("list");
    assert_eq!(listed.pools.iter().find(|p| p.name == name), Some(&pool));
    let names: Vec<_> = listed.pools.iter().map(|p| p.name.clone()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "ordered by name");
    assert!(store.delete_pool(&name).await.expect("delete"));
    assert!(!store.delete_pool(&name).await.expect("delete again"));
    assert!(
        !store
            .list_pools()
            .await
            .expect("list")
            .pools
            .iter()
            .any(|p| p.name == name)
    );
}

/// The IPAM configuration round-trips (`cooldown`: our `ipCooldownSeconds`, 0 where the
/// backend keeps only Calico's fields); `reset` is applied afterwards.
pub async fn config<D: Datastore>(store: &D, reset: &IpamConfig, cooldown: u32) {
    let c = IpamConfig {
        strict_affinity: true,
        auto_allocate_blocks: false,
        max_blocks_per_host: 7,
        ip_cooldown_seconds: cooldown,
        ..IpamConfig::default()
    };
    store.apply_config(&c).await.expect("apply");
    assert_eq!(store.get_config().await.expect("get"), c);
    store.apply_config(reset).await.expect("reset");
    assert_eq!(&store.get_config().await.expect("get"), reset);
}

/// Every check above but the configuration's, one after the other.
pub async fn all<D: Datastore>(store: &D, run: &Run, reads: Reads) {
    compare_and_swap_all(store, run).await;
    soft_deleted_objects_read_as_absent(store, run, reads).await;
    block_cidrs(store, run).await;
    affinity_listings(store, run).await;
    pools(store, run).await;
}
