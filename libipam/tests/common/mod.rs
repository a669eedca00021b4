//! Helpers shared by the allocator tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use libipam::datastore::memory::MemoryStore;
use libipam::model::{IpPool, IpamConfig};
use libipam::{Datastore, Ipam};

pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

pub fn pool(name: &str, cidr: &str, block_size: u32) -> IpPool {
    let mut p = IpPool::new(name, cidr);
    p.spec.block_size = Some(block_size);
    p
}

/// An allocator over a memory store holding `pools`.
pub fn ipam_with(pools: &[IpPool]) -> Ipam<MemoryStore> {
    let store = MemoryStore::new();
    block_on(async {
        for p in pools {
            store.apply_pool(p).await.expect("apply pool");
        }
    });
    Ipam::new(store)
}

pub fn dual_stack() -> Ipam<MemoryStore> {
    ipam_with(&[
        pool("default-ipv4-ippool", "10.244.0.0/16", 26),
        pool("default-ipv6-ippool", "fd00:10:244::/48", 122),
    ])
}

pub fn set_config(ipam: &Ipam<MemoryStore>, f: impl FnOnce(&mut IpamConfig)) {
    let mut c = IpamConfig::default();
    f(&mut c);
    block_on(ipam.store().apply_config(&c)).expect("config");
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Asserts the store is consistent.
pub fn assert_consistent<D: Datastore>(ipam: &Ipam<D>) {
    block_on(assert_consistent_on(ipam));
}

/// [`assert_consistent`] on the caller's runtime (for a store whose connections live there).
pub async fn assert_consistent_on<D: Datastore>(ipam: &Ipam<D>) {
    let problems = ipam.check().await.expect("check");
    assert!(
        problems.is_empty(),
        "problems:\n{}",
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
