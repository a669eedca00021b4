//! Blocks never overlap, whatever the pools say. Two pools of different block sizes over one
//! range cannot be applied, but they can be written past validation (kubectl, a hand-edited
//! store), and a pool that can no longer be read leaves its blocks under whatever pool is
//! applied there next. A claim is a create of the object named by its CIDR, so without a check
//! `10.0.0.0/28` could be created inside an existing `10.0.0.0/26`, and one address be handed
//! out from both.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;

use common::{block_on, pool};
use ipnet::IpNet;
use libipam::datastore::memory::MemoryStore;
use libipam::model::IpamBlock;
use libipam::{AssignIpArgs, AutoAssignArgs, Datastore, Ipam, IpamError};

fn net(s: &str) -> IpNet {
    s.parse().expect("cidr")
}

/// An allocator over pools written straight into the store (no validation).
fn unvalidated(pools: &[libipam::model::IpPool]) -> Ipam<MemoryStore> {
    let store = MemoryStore::new();
    for p in pools {
        block_on(store.apply_pool(p)).expect("write pool");
    }
    Ipam::new(store)
}

fn one_from(ipam: &Ipam<MemoryStore>, pool: &str, host: &str, handle: &str) -> Option<IpAddr> {
    let mut args = AutoAssignArgs::new(handle, host, 1, 0);
    args.ipv4_pools = vec![pool.into()];
    block_on(ipam.auto_assign(&args))
        .ok()
        .map(|r| r.ipv4[0].addr())
}

fn assert_no_overlap(blocks: &[IpNet]) {
    for (i, a) in blocks.iter().enumerate() {
        for b in &blocks[i + 1..] {
            assert!(
                !a.contains(&b.network()) && !b.contains(&a.network()),
                "blocks {a} and {b} overlap"
            );
        }
    }
}

#[test]
fn pools_of_two_block_sizes_over_one_range_never_make_overlapping_blocks() {
    let ipam = unvalidated(&[pool("a", "10.0.0.0/24", 26), pool("b", "10.0.0.0/24", 28)]);
    let first = one_from(&ipam, "a", "host-a", "h-a").expect("pool a");
    let big = IpNet::new(first, 26).expect("net").trunc();
    let mut handed_out = vec![first];
    // Pool b on another host until it runs out: it claims /28s and borrows from its own, and
    // never creates one inside the /26 that pool a made.
    for i in 0..300 {
        match one_from(&ipam, "b", "host-b", &format!("h-b{i}")) {
            Some(ip) => handed_out.push(ip),
            None => break,
        }
    }
    let unique: BTreeSet<IpAddr> = handed_out.iter().copied().collect();
    assert_eq!(
        unique.len(),
        handed_out.len(),
        "an address was handed out twice"
    );
    assert_eq!(
        handed_out.len(),
        1 + 192,
        "pool b gets every address outside pool a's block"
    );
    assert!(handed_out[1..].iter().all(|ip| !big.contains(ip)));
    let blocks: Vec<IpNet> = block_on(ipam.store().list_block_cidrs()).expect("blocks");
    assert_no_overlap(&blocks);
    assert_eq!(blocks.len(), 1 + 12, "{blocks:?}");
}

/// A block left by a pool since deleted (or one that cannot be read) under a pool of another
/// block size: a specific address there is refused, its block not created.
#[test]
fn a_specific_address_whose_block_would_overlap_an_existing_one_is_refused() {
    let ipam = unvalidated(&[pool("b", "10.0.0.0/24", 28)]);
    let left = net("10.0.0.64/26");
    let block = IpamBlock::new(left, Some("host:host-a".into()), 1).expect("block");
    block_on(ipam.store().create_block(&block)).expect("create");
    let e = block_on(ipam.assign_ip(&AssignIpArgs {
        ip: "10.0.0.84".parse().expect("ip"),
        handle_id: "h-ip".into(),
        attrs: Default::default(),
        hostname: "host-b".into(),
        intended_use: libipam::AllowedUse::Workload,
    }))
    .expect_err("refused");
    assert!(
        matches!(e, IpamError::BlockOverlap { existing, block } if existing == left && block == net("10.0.0.80/28")),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("block 10.0.0.80/28 cannot be created: existing block 10.0.0.64/26 holds some of its addresses"),
        "{e}"
    );
    for i in 0..40 {
        let ip = one_from(&ipam, "b", "host-b", &format!("h-b{i}")).expect("pool b");
        assert!(!left.contains(&ip), "{ip}");
    }
    assert_no_overlap(&block_on(ipam.store().list_block_cidrs()).expect("blocks"));
}

#[test]
fn a_small_block_pool_inside_a_large_block_skips_it_in_one_step() {
    // Pool b's walk meets pool a's /20 block: 256 /28s it must not create, skipped at once.
    let ipam = unvalidated(&[pool("a", "10.0.0.0/20", 20), pool("b", "10.0.0.0/19", 28)]);
    one_from(&ipam, "a", "host-a", "h-a").expect("pool a");
    for i in 0..20 {
        let ip = one_from(&ipam, "b", "host-b", &format!("h-b{i}")).expect("pool b");
        assert!(!net("10.0.0.0/20").contains(&ip), "{ip}");
    }
    assert_no_overlap(&block_on(ipam.store().list_block_cidrs()).expect("blocks"));
}

#[test]
fn check_names_blocks_that_overlap() {
    let ipam = unvalidated(&[pool("a", "10.0.0.0/24", 26)]);
    for cidr in ["10.0.0.0/26", "10.0.0.16/28"] {
        let block = IpamBlock::new(net(cidr), None, 1).expect("block");
        block_on(ipam.store().create_block(&block)).expect("create");
    }
    let problems = block_on(ipam.check()).expect("check");
    assert!(
        problems.iter().any(|p| p.object == "block 10.0.0.0/26"
            && p.message.starts_with("overlaps block 10.0.0.16/28")),
        "{problems:?}"
    );
}
