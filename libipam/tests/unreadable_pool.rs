//! A pool object that cannot be decoded takes nothing down (issue 10, item 1's principle): it
//! is left out of allocation like a pool that does not validate, named in
//! `Ipam::ignored_pools` and by `check`; every other pool keeps working. And it hands nothing
//! out twice: no pool over its CIDR (where the CIDR can still be read) claims, borrows,
//! reclaims or assigns there, its addresses are released as before, and a pool applied beside
//! it must keep clear of it.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;

use common::{block_on, pool, set_config};
use ipnet::IpNet;
use libipam::datastore::UnreadablePool;
use libipam::datastore::memory::MemoryStore;
use libipam::model::{IpamBlock, host_affinity};
use libipam::{AllowedUse, AssignIpArgs, AutoAssignArgs, Datastore, Ipam, IpamError};

fn net(s: &str) -> IpNet {
    s.parse().expect("cidr")
}

fn broken(name: &str, cidr: Option<&str>) -> UnreadablePool {
    UnreadablePool {
        name: name.into(),
        object: format!("IPPool {name}"),
        cidr: cidr.map(net),
        reason: "spec.blockSize: invalid value: integer `-1`, expected u32".into(),
    }
}

fn ipam(pools: &[libipam::model::IpPool]) -> Ipam<MemoryStore> {
    let store = MemoryStore::new();
    for p in pools {
        block_on(store.apply_pool(p)).expect("write pool");
    }
    Ipam::new(store)
}

fn add(
    ipam: &Ipam<MemoryStore>,
    handle: &str,
    host: &str,
    v4pools: &[&str],
) -> Result<IpAddr, IpamError> {
    let mut args = AutoAssignArgs::new(handle, host, 1, 0);
    args.ipv4_pools = v4pools.iter().map(|p| (*p).to_owned()).collect();
    block_on(ipam.auto_assign(&args)).map(|r| r.ipv4[0].addr())
}

#[test]
fn other_pools_keep_working_and_the_pool_is_named() {
    let ipam = ipam(&[pool("good", "10.1.0.0/24", 26)]);
    ipam.store()
        .put_unreadable_pool(broken("aa-broken", Some("10.2.0.0/24")));
    ipam.store().put_unreadable_pool(broken("zz-broken", None));
    let ip = add(&ipam, "h1", "host-a", &[]).expect("ADD from the good pool");
    assert!(net("10.1.0.0/24").contains(&ip), "{ip}");
    let ignored = ipam.ignored_pools();
    assert!(
        ignored["aa-broken"].starts_with("cannot be read (IPPool aa-broken: spec.blockSize"),
        "{ignored:?}"
    );
    assert!(ignored.contains_key("zz-broken"), "{ignored:?}");
    // Requested by name or CIDR, it says why it cannot be used.
    for want in ["aa-broken", "10.2.0.0/24"] {
        let e = add(&ipam, "h2", "host-a", &[want]).expect_err("refused");
        assert!(
            matches!(&e, IpamError::PoolUnusable { name, .. } if name == "aa-broken"),
            "{e}"
        );
        assert!(
            e.to_string().starts_with(&format!(
                "the given pool ({want}) cannot be used: IPPool aa-broken cannot be read"
            )),
            "{e}"
        );
    }
    let problems = block_on(ipam.check()).expect("check");
    assert!(
        problems.iter().any(|p| p.object == "IPPool aa-broken"
            && p.message.contains("cannot be decoded (spec.blockSize")
            && p.message.contains("no address is allocated from it")),
        "{problems:?}"
    );
}

/// The pool's blocks (four empty ones of another host, which could be reclaimed, and one with
/// an address) under a pool written over the same range past validation: that pool gets only
/// addresses outside the broken pool's CIDR, and leaves its blocks alone.
#[test]
fn nothing_is_claimed_borrowed_reclaimed_or_assigned_inside_its_cidr() {
    let ipam = ipam(&[pool("x", "10.0.0.0/24", 26)]);
    set_config(&ipam, |c| c.strict_affinity = false);
    let held = add(&ipam, "held", "host-z", &["x"]).expect("ADD from x while it is readable");
    let held_block = IpNet::new(held, 26).expect("net").trunc();
    // The rest of x: empty blocks of host-z, claimed long ago (no claim time).
    let x = net("10.0.0.0/24");
    for b in x.subnets(26).expect("blocks").filter(|b| *b != held_block) {
        let mut block = IpamBlock::new(b, Some(host_affinity("host-z")), 1).expect("block");
        block.affinity_claim_time = None;
        block_on(ipam.store().create_block(&block)).expect("create");
    }
    let before: Vec<_> = block_on(ipam.store().list_blocks()).expect("blocks");
    ipam.store()
        .put_unreadable_pool(broken("x", Some("10.0.0.0/24")));
    block_on(ipam.store().apply_pool(&pool("y", "10.0.0.0/23", 26))).expect("y, unvalidated");

    let mut got = BTreeSet::new();
    let e = loop {
        match add(&ipam, &format!("h{}", got.len()), "host-b", &[]) {
            Ok(ip) => assert!(got.insert(ip), "{ip} handed out twice"),
            Err(e) => break e,
        }
    };
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
    assert_eq!(got.len(), 256, "y has 256 addresses outside x");
    assert!(got.iter().all(|ip| !x.contains(ip)));
    let after: Vec<_> = block_on(ipam.store().list_blocks()).expect("blocks");
    for b in &before {
        assert!(after.contains(b), "block {} of x was changed", b.value.cidr);
    }

    // A specific address inside x: refused, naming the pool.
    let e = block_on(ipam.assign_ip(&AssignIpArgs {
        ip: "10.0.0.200".parse().expect("ip"),
        handle_id: "hip".into(),
        attrs: Default::default(),
        hostname: "host-b".into(),
        intended_use: AllowedUse::Workload,
    }))
    .expect_err("refused");
    assert!(
        e.to_string().starts_with(
            "the provided IP address 10.0.0.200 is in 10.0.0.0/24, the CIDR of IPPool x, which is not used: cannot be read"
        ),
        "{e}"
    );

    // What x handed out before is released as ever, by handle and by address.
    assert_eq!(
        block_on(ipam.release_by_handle("held")).expect("release"),
        vec![held]
    );
    add(&ipam, "held2", "host-z", &["y"]).expect_err("y is full");
    let mut args = AssignIpArgs {
        ip: held,
        handle_id: "again".into(),
        attrs: Default::default(),
        hostname: "host-z".into(),
        intended_use: AllowedUse::Workload,
    };
    // Nobody re-assigns it while x cannot be read.
    assert!(block_on(ipam.assign_ip(&args)).is_err());
    args.ip = *got.iter().next().expect("one");
    assert!(
        block_on(ipam.release_ips(&[args.ip]))
            .expect("release")
            .is_empty()
    );
}

#[test]
fn a_pool_applied_beside_it_must_keep_clear() {
    let ipam = ipam(&[pool("good", "10.1.0.0/24", 26)]);
    ipam.store()
        .put_unreadable_pool(broken("known", Some("10.2.0.0/24")));
    let e = block_on(ipam.apply_pool(pool("over", "10.2.0.0/16", 26))).expect_err("overlap");
    assert!(
        e.to_string().starts_with(
            "pool over (10.2.0.0/16) overlaps IPPool known (10.2.0.0/24), which cannot be read"
        ),
        "{e}"
    );
    block_on(ipam.apply_pool(pool("beside", "10.3.0.0/24", 26))).expect("no overlap");
    ipam.store().put_unreadable_pool(broken("unknown", None));
    let e = block_on(ipam.apply_pool(pool("other", "10.4.0.0/24", 26))).expect_err("unknown CIDR");
    assert!(
        e.to_string().starts_with(
            "IPPool unknown cannot be read (spec.blockSize: invalid value: integer `-1`, expected u32) and its CIDR is unknown, so whether pool other overlaps it cannot be checked"
        ),
        "{e}"
    );
    // A good definition of its own name replaces it.
    block_on(ipam.apply_pool(pool("unknown", "10.5.0.0/24", 26))).expect("replaced");
    block_on(ipam.apply_pool(pool("known", "10.2.0.0/24", 26))).expect("replaced");
    let listed = block_on(ipam.store().list_pools()).expect("pools");
    assert!(listed.unreadable.is_empty(), "{listed:?}");
    block_on(ipam.apply_pool(pool("other", "10.4.0.0/24", 26))).expect("now checked");
}
