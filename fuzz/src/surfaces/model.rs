//! What the allocator, `check` and `show` do with an object once it is decoded, applied to
//! decoded fuzz inputs: a stored object is only harmless if using it is too.

use std::collections::BTreeMap;

use libipam::model::{
    BlockAffinity, Cooldown, IpPool, IpReservation, IpamBlock, IpamConfig, IpamHandle,
};
use libipam::selector::Selector;
use libipam::validate::validate_pool;

/// Pool handling as the allocator does it (defaults, validation, selectors, block size).
pub fn exercise_pool(pool: &IpPool) {
    let pool = pool.clone().with_defaults();
    let _ = validate_pool(&pool);
    let _ = (pool.cidr(), pool.spec.family(), pool.spec.allowed_uses());
    let _ = pool.spec.assignment_mode();
    let labels = BTreeMap::from([("kubernetes.io/hostname".to_string(), "node-a".to_string())]);
    for sel in [&pool.spec.node_selector, &pool.spec.namespace_selector] {
        if let Ok(s) = Selector::parse(sel.as_deref().unwrap_or("")) {
            let _ = s.matches(&labels);
        }
    }
}

/// Every block operation of the allocator, `check` and `show`, on a copy.
pub fn exercise_block(block: &IpamBlock) {
    let mut b = block.clone();
    let _ = (
        b.size(),
        b.in_use(),
        b.empty(),
        b.host(),
        b.is_affine_to("node-a"),
    );
    let _ = (
        b.consistency_problems(),
        b.handle_counts(),
        b.num_free(|_| false),
    );
    for ord in 0..b.size().min(4) {
        if let Some(ip) = b.ip(ord) {
            assert_eq!(b.ordinal(ip), Some(ord), "ordinal of {ip} in {}", b.cidr);
            let _ = b.masked(ip);
        }
    }
    let attrs = BTreeMap::from([("node".to_string(), "node-a".to_string())]);
    let got = b.auto_assign(2, Some("fuzz-handle"), &attrs, |_| false);
    let _ = b.ips_for_handle("fuzz-handle");
    if let Some(first) = b.ip(0) {
        let _ = b.assign(first, Some("fuzz-handle"), &attrs);
    }
    let _ = b.release(&got);
    let cooldown = Cooldown {
        seconds: 30,
        now_nanos: 1_785_578_405_000_000_000,
    };
    let _ = b.release_by_handle_with("fuzz-handle", cooldown);
    let _ = b.garbage_collect(Cooldown {
        seconds: 30,
        now_nanos: u64::MAX,
    });
    let _ = b.release_by_handle("fuzz-handle");
    if let Err(e) = serde_json::to_vec(&b) {
        panic!("a block that decoded does not encode: {e}");
    }
}

pub fn exercise_affinity(a: &BlockAffinity) {
    let _ = (a.name(), a.labels());
    if let Err(e) = serde_json::to_vec(a) {
        panic!("an affinity that decoded does not encode: {e}");
    }
}

pub fn exercise_handle(h: &IpamHandle) {
    let mut h = h.clone();
    let _ = (h.blocks(), h.is_empty());
    if let Some(cidr) = h.blocks().first().copied() {
        h.increment(&cidr, 1);
        h.decrement(&cidr, 3);
    }
    if let Err(e) = serde_json::to_vec(&h) {
        panic!("a handle that decoded does not encode: {e}");
    }
}

pub fn exercise_config(c: &IpamConfig) {
    let _ = (c.block_limit(0), c.block_limit(3));
}

pub fn exercise_reservation(r: &IpReservation) {
    let _ = r.spec.networks();
}
