//! The `Datastore` contract (libipam/src/datastore/mod.rs), as tests every backend passes: the
//! memory and local stores (`local_store.rs`), the etcd store against a real cluster
//! (`etcd_store.rs`). Each check works in a store other runs share: its objects are named by
//! [`Run`], and what it leaves is removed.
#![allow(dead_code)]

use ipnet::IpNet;
use libipam::datastore::{Datastore, DatastoreError, Versioned};
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

async fn clear_block<D: Datastore>(store: &D, cidr: &IpNet) {
    if let Some(old) = store.get_block(cidr).await.expect("get") {
        store.delete_block(&old).await.expect("clean up");
    }
}

/// Blocks: create, AlreadyExists, compare-and-swap updates and deletes, NotFound, and a
/// recreated block never matching a revision of its previous life.
pub async fn block_compare_and_swap<D: Datastore>(store: &D, run: &Run) {
    let cidr = run.cidr(1);
    clear_block(store, &cidr).await;
    let block = IpamBlock::new(cidr, Some("host:n1".into()), 1).expect("block");
    let r1 = store.create_block(&block).await.expect("create");
    assert_eq!(
        store.create_block(&block).await,
        Err(DatastoreError::AlreadyExists)
    );
    let read = store.get_block(&cidr).await.expect("get").expect("exists");
    assert_eq!(
        read.revision, r1,
        "a write returns the revision a read sees"
    );
    assert_eq!(read.value, block, "read back as written");
    let mut v = read.clone();
    v.value.sequence_number += 1;
    let r2 = store.update_block(&v).await.expect("update at r1");
    assert_ne!(r1, r2);
    // The copy at r1 is stale now: every write from it is refused.
    assert_eq!(
        store.update_block(&read).await,
        Err(DatastoreError::Conflict)
    );
    assert_eq!(
        store.delete_block(&read).await,
        Err(DatastoreError::Conflict)
    );
    let current = store.get_block(&cidr).await.expect("get").expect("exists");
    assert_eq!(current.revision, r2);
    assert_eq!(current.value.sequence_number, 2);
    assert!(
        store
            .list_block_cidrs()
            .await
            .expect("cidrs")
            .contains(&cidr)
    );
    assert!(
        store
            .list_blocks()
            .await
            .expect("list")
            .iter()
            .any(|b| b.value.cidr == cidr && b.revision == r2)
    );
    store.delete_block(&current).await.expect("delete at r2");
    assert!(store.get_block(&cidr).await.expect("get").is_none());
    assert_eq!(
        store.update_block(&current).await,
        Err(DatastoreError::NotFound)
    );
    assert_eq!(
        store.delete_block(&current).await,
        Err(DatastoreError::NotFound)
    );
    assert!(
        !store
            .list_block_cidrs()
            .await
            .expect("cidrs")
            .contains(&cidr)
    );
    // A recreated block never matches a revision from its previous life.
    let r3 = store.create_block(&block).await.expect("recreate");
    assert!(r3 != r1 && r3 != r2);
    assert_eq!(
        store.update_block(&read).await,
        Err(DatastoreError::Conflict)
    );
    let again = store.get_block(&cidr).await.expect("get").expect("exists");
    store.delete_block(&again).await.expect("delete");
}

/// Whether a backend finishes another writer's two-step delete when it reads the object
/// (Kubernetes, etcd), so that the name can be created again at once; the memory and local
/// stores leave that to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    FinishDeletes,
    LeaveDeletes,
}

/// Objects another writer marked `deleted: true` read as absent, in single reads and
/// listings; a backend that finishes such deletes lets their names be created again.
pub async fn soft_deleted_objects_read_as_absent<D: Datastore>(store: &D, run: &Run, reads: Reads) {
    let cidr = run.cidr(2);
    clear_block(store, &cidr).await;
    let block = IpamBlock::new(cidr, None, 1).expect("block");
    let rev = store.create_block(&block).await.expect("create");
    let mut marked = Versioned {
        value: block,
        revision: rev,
    };
    marked.value.deleted = true;
    marked.revision = store.update_block(&marked).await.expect("mark deleted");
    assert!(store.get_block(&cidr).await.expect("get").is_none());
    assert!(
        !store
            .list_blocks()
            .await
            .expect("list")
            .iter()
            .any(|b| b.value.cidr == cidr)
    );
    if reads == Reads::FinishDeletes {
        let again = IpamBlock::new(cidr, None, 2).expect("block");
        let rev = store.create_block(&again).await.expect("recreate");
        store
            .delete_block(&Versioned {
                value: again,
                revision: rev,
            })
            .await
            .expect("delete");
    } else {
        store
            .delete_block(&marked)
            .await
            .expect("finish the delete");
    }

    let host = run.name("soft");
    let a = BlockAffinity::host(&host, cidr, AffinityState::Confirmed);
    let rev = store.create_affinity(&a).await.expect("affinity");
    let mut marked = Versioned {
        value: a.clone(),
        revision: rev,
    };
    marked.value.deleted = true;
    marked.revision = store.update_affinity(&marked).await.expect("mark deleted");
    assert!(
        store
            .get_affinity(&host, &cidr)
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        store
            .list_host_affinities(&host)
            .await
            .expect("list")
            .is_empty()
    );
    if reads == Reads::FinishDeletes {
        let rev = store.create_affinity(&a).await.expect("recreate");
        store
            .delete_affinity(&Versioned {
                value: a,
                revision: rev,
            })
            .await
            .expect("delete");
    } else {
        store
            .delete_affinity(&marked)
            .await
            .expect("finish the delete");
    }

    let id = run.name("soft-handle");
    let h = IpamHandle::new(&id);
    let rev = store.create_handle(&h).await.expect("handle");
    let mut marked = Versioned {
        value: h.clone(),
        revision: rev,
    };
    marked.value.deleted = true;
    marked.revision = store.update_handle(&marked).await.expect("mark deleted");
    assert!(store.get_handle(&id).await.expect("get").is_none());
    assert!(
        !store
            .list_handles()
            .await
            .expect("list")
            .iter()
            .any(|x| x.value.handle_id == id)
    );
    if reads == Reads::FinishDeletes {
        let rev = store.create_handle(&h).await.expect("recreate");
        store
            .delete_handle(&Versioned {
                value: h,
                revision: rev,
            })
            .await
            .expect("delete");
    } else {
        store
            .delete_handle(&marked)
            .await
            .expect("finish the delete");
    }
}

/// Handles: the ID keeps its case, the counts round-trip, compare-and-swap as for blocks.
pub async fn handles<D: Datastore>(store: &D, run: &Run) {
    let id = format!("K8s-Pod-Network.{}", run.name("MixedCase"));
    let mut h = IpamHandle::new(&id);
    h.increment(&run.cidr(3), 2);
    h.increment(&run.cidr6(3), 1);
    let r1 = store.create_handle(&h).await.expect("create");
    assert_eq!(
        store.create_handle(&h).await,
        Err(DatastoreError::AlreadyExists)
    );
    let got = store.get_handle(&id).await.expect("get").expect("found");
    assert_eq!(got.value, h, "read back as written, the ID in its case");
    assert_eq!(got.revision, r1);
    assert!(
        store
            .list_handles()
            .await
            .expect("list")
            .iter()
            .any(|x| x.value.handle_id == id)
    );
    let mut v = got.clone();
    v.value.decrement(&run.cidr(3), 2);
    let r2 = store.update_handle(&v).await.expect("update");
    assert_eq!(
        store.update_handle(&got).await,
        Err(DatastoreError::Conflict)
    );
    v.revision = r2;
    store.delete_handle(&v).await.expect("delete");
    assert!(store.get_handle(&id).await.expect("get").is_none());
    assert_eq!(store.delete_handle(&v).await, Err(DatastoreError::NotFound));
}

/// Affinities: one listing per host gives both families and no other host's (not even one
/// whose name starts with this one's); compare-and-swap as for blocks.
pub async fn affinities<D: Datastore>(store: &D, run: &Run) {
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
        let rev = store.create_affinity(&a).await.expect("create");
        assert_eq!(
            store.create_affinity(&a).await,
            Err(DatastoreError::AlreadyExists)
        );
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
    let got = store
        .get_affinity(&host, &v4)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got, written[0]);
    let mut confirmed = got.clone();
    confirmed.value.state = AffinityState::Confirmed;
    confirmed.revision = store.update_affinity(&confirmed).await.expect("confirm");
    assert_eq!(
        store.update_affinity(&got).await,
        Err(DatastoreError::Conflict)
    );
    assert_eq!(
        store.delete_affinity(&got).await,
        Err(DatastoreError::Conflict)
    );
    assert_eq!(
        store
            .get_affinity(&host, &v4)
            .await
            .expect("get")
            .map(|a| a.value.state),
        Some(AffinityState::Confirmed)
    );
    store.delete_affinity(&confirmed).await.expect("delete");
    assert_eq!(
        store.update_affinity(&confirmed).await,
        Err(DatastoreError::NotFound)
    );
    for w in &written[1..] {
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

/// The IPAM configuration round-trips; `reset` is applied afterwards.
pub async fn config<D: Datastore>(store: &D, reset: &IpamConfig) {
    let c = IpamConfig {
        strict_affinity: true,
        auto_allocate_blocks: false,
        max_blocks_per_host: 7,
        ip_cooldown_seconds: 30,
        ..IpamConfig::default()
    };
    store.apply_config(&c).await.expect("apply");
    assert_eq!(store.get_config().await.expect("get"), c);
    store.apply_config(reset).await.expect("reset");
    assert_eq!(&store.get_config().await.expect("get"), reset);
}

/// Every check above, one after the other.
pub async fn all<D: Datastore>(store: &D, run: &Run, reads: Reads) {
    block_compare_and_swap(store, run).await;
    soft_deleted_objects_read_as_absent(store, run, reads).await;
    handles(store, run).await;
    affinities(store, run).await;
    pools(store, run).await;
}
