//! Files on the node: the local datastore's object files (as LocalStore decodes them, then as
//! the allocator, `check` and `show` use them) and the Kubernetes datastore's node cache.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use libipam::Datastore;
use libipam::alloc::{AutoAssignArgs, Ipam};
use libipam::datastore::kube::{CacheConfig, NodeCache};
use libipam::datastore::local::LocalStore;
use libipam::model::{AllowedUse, IpPool};

use super::cni::runtime;
use super::model::{
    exercise_affinity, exercise_block, exercise_config, exercise_handle, exercise_pool,
    exercise_reservation,
};
use super::{Scratch, Surface};

/// Spec field names of every stored kind.
const STORE_TOKENS: &[&str] = &[
    "\"revision\"",
    "\"value\"",
    "\"cidr\"",
    "\"affinity\"",
    "\"host:node-a\"",
    "\"allocations\"",
    "\"unallocated\"",
    "\"attributes\"",
    "\"handle_id\"",
    "\"secondary\"",
    "\"sequenceNumber\"",
    "\"sequenceNumberForAllocation\"",
    "\"deleted\"",
    "\"strictAffinity\"",
    "\"handleID\"",
    "\"block\"",
    "\"node\"",
    "\"state\"",
    "\"confirmed\"",
    "\"pending\"",
    "\"pendingDeletion\"",
    "\"type\"",
    "\"host\"",
    "\"labels\"",
    "\"strictAffinity\"",
    "\"autoAllocateBlocks\"",
    "\"maxBlocksPerHost\"",
    "\"ipCooldownSeconds\"",
    "\"reservedCIDRs\"",
    "\"blockSize\"",
    "\"nodeSelector\"",
    "\"namespaceSelector\"",
    "\"allowedUses\"",
    "\"assignmentMode\"",
    "\"disabled\"",
    "\"releasedAt\"",
    "\"10.244.0.0/26\"",
    "\"10.244.0.0/16\"",
    "\"fd00:10:244::/122\"",
    "\"0.0.0.0/0\"",
    "\"::/0\"",
    "\"10.244.0.0/32\"",
    "\"10.244.0.0/26\":",
    "null",
    "\"true\"",
    "\"false\"",
];

const NODE: &str = "node-a";
const BLOCK: &str = "10.244.0.0/26";
const HANDLE: &str = "fuzz-handle";

/// Where the fuzzed bytes go: one file of every kind, named so that the allocator for NODE in
/// the good pool meets each of them.
const FILES: &[&str] = &[
    "config.json",
    "pools/fuzz.json",
    "nodes/node-a.json",
    "reservations/fuzz.json",
    "blocks/10-244-0-0-26.json",
    "affinities/node-a/10-244-0-0-26.json",
    "handles/fuzz-handle.json",
];

fn write(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    if let Some(dir) = path.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        panic!("scratch store {}: {e}", dir.display());
    }
    if let Err(e) = std::fs::write(&path, data) {
        panic!("scratch store {}: {e}", path.display());
    }
}

/// A store holding the two good pools, then `input` as the file of every kind.
fn prepare(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    input: &[u8],
    with_config: bool,
) -> LocalStore {
    let _ = std::fs::remove_dir_all(root);
    let store = LocalStore::open(root).unwrap_or_else(|e| panic!("scratch store: {e}"));
    for (name, cidr) in [
        ("good-v4", "10.244.0.0/16"),
        ("good-v6", "fd00:10:244::/48"),
    ] {
        if let Err(e) = rt.block_on(store.apply_pool(&IpPool::new(name, cidr))) {
            panic!("scratch store: {e}");
        }
    }
    for rel in FILES {
        if with_config || *rel != "config.json" {
            write(root, rel, input);
        }
    }
    store
}

/// Every read of the Datastore trait, and what is done with what it returns.
async fn read_all(store: &LocalStore) -> String {
    let cidr = BLOCK.parse().unwrap_or_else(|e| panic!("{e}"));
    let mut ok = Vec::new();
    let mut mark = |name: &str, good: bool| {
        if good {
            ok.push(name.to_string());
        }
    };
    let c = store.get_config().await;
    if let Ok(c) = &c {
        exercise_config(c);
    }
    mark("config", c.is_ok());
    let pools = store.list_pools().await;
    if let Ok(pools) = &pools {
        pools.pools.iter().for_each(exercise_pool);
    }
    mark(
        "pools",
        pools.as_ref().is_ok_and(|p| p.unreadable.is_empty()),
    );
    mark("node", store.node_labels(NODE).await.is_ok());
    let r = store.list_reservations().await;
    if let Ok(r) = &r {
        r.iter().for_each(exercise_reservation);
    }
    mark("reservations", r.is_ok());
    let b = store.get_block(&cidr).await;
    if let Ok(Some(b)) = &b {
        exercise_block(&b.value);
    }
    mark("block", matches!(b, Ok(Some(_))));
    let _ = store.list_blocks().await;
    let _ = store.list_block_cidrs().await;
    let a = store.get_affinity(NODE, &cidr).await;
    if let Ok(Some(a)) = &a {
        exercise_affinity(&a.value);
    }
    mark("affinity", matches!(a, Ok(Some(_))));
    let _ = store.list_host_affinities(NODE).await;
    let _ = store.list_affinities().await;
    let h = store.get_handle(HANDLE).await;
    if let Ok(Some(h)) = &h {
        exercise_handle(&h.value);
    }
    mark("handle", matches!(h, Ok(Some(_))));
    let _ = store.list_handles().await;
    ok.join(",")
}

/// An ADD, a DEL of the fuzzed handle, `check` and `show` over the store.
async fn allocate(store: LocalStore) {
    let ipam = Ipam::new(store);
    let args = AutoAssignArgs {
        num4: 1,
        num6: 1,
        handle_id: "fuzz-add".into(),
        attrs: BTreeMap::from([("node".to_string(), NODE.to_string())]),
        hostname: NODE.into(),
        ipv4_pools: Vec::new(),
        ipv6_pools: Vec::new(),
        max_blocks_per_host: 0,
        intended_use: AllowedUse::Workload,
        namespace_labels: Some(BTreeMap::new()),
        namespace: None,
        reuse_existing: true,
    };
    let _ = ipam.auto_assign(&args).await;
    let _ = ipam.release_by_handle(HANDLE).await;
    let _ = ipam.check().await;
    let _ = ipam.usage().await;
    let _ = ipam.blocks().await;
    if let Ok(ip) = "10.244.0.1".parse() {
        let _ = ipam.owner_of(ip).await;
    }
    let _ = ipam.release_by_handle("fuzz-add").await;
}

pub const LOCAL_STORE: Surface = Surface {
    name: "local-store",
    about: "an object file of the local datastore, written as every kind (config, pool, node, \
            reservation, block, affinity, handle): LocalStore's reads, then ADD, DEL, check and \
            show over a store that holds it",
    tokens: STORE_TOKENS,
    make: || {
        let scratch = Scratch::new("local-store");
        let rt = runtime();
        Box::new(move |input| {
            let root = scratch.0.join("store");
            let store = prepare(&rt, &root, input, true);
            let sig = rt.block_on(read_all(&store));
            // The allocator with a readable config, so that it gets as far as the other objects.
            let store = prepare(&rt, &root, input, false);
            rt.block_on(allocate(store));
            sig
        })
    },
};

pub const NODE_CACHE: Surface = Surface {
    name: "node-cache",
    about: "the Kubernetes datastore's node-local cache file: NodeCache::load, every entry it \
            serves, and a save and reload",
    tokens: &[
        "\"format\"",
        "\"server\"",
        "\"node\"",
        "\"config\"",
        "\"pools\"",
        "\"reservations\"",
        "\"nodeLabels\"",
        "\"namespaces\"",
        "\"affinities\"",
        "\"blocks\"",
        "\"handles\"",
        "\"at\"",
        "\"value\"",
        "\"revision\"",
        "\"https://10.0.0.1:6443\"",
        "\"node-a\"",
        "\"10.244.0.0/26\"",
    ],
    make: || {
        let scratch = Scratch::new("node-cache");
        Box::new(move |input| {
            let cfg = CacheConfig {
                path: scratch.0.join("cache.json"),
                node: NODE.into(),
                // Long enough that the seeds' timed entries are served.
                ttl: Duration::from_secs(100 * 365 * 24 * 3600),
            };
            write(&scratch.0, "cache.json", input);
            let mut cache = NodeCache::load(&cfg, "https://10.0.0.1:6443");
            let mut served = Vec::new();
            if let Some(Some(c)) = cache.config() {
                exercise_config(&c);
                served.push("config");
            }
            if let Some(r) = cache.reservations() {
                r.iter().for_each(exercise_reservation);
                served.push("reservations");
            }
            let _ = (cache.node_labels(), cache.namespace_labels("default"));
            if let Some(a) = cache.affinities() {
                a.iter().for_each(|a| exercise_affinity(&a.value));
                served.push("affinities");
            }
            if let Some(b) = cache.block(BLOCK) {
                exercise_block(&b.value);
                served.push("block");
            }
            if let Some(h) = cache.handle(HANDLE) {
                exercise_handle(&h.value);
                served.push("handle");
            }
            cache.set_node_labels(BTreeMap::from([("zone".to_string(), "b".to_string())]));
            cache.save();
            let _ = NodeCache::load(&cfg, "https://10.0.0.1:6443");
            served.join(",")
        })
    },
};
