//! Property tests: block ordinal math, and allocator invariants under injected conflicts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::{block_on, ipam_with, pool, set_config};
use ipnet::IpNet;
use libipam::datastore::memory::MemoryStore;
use libipam::model::IpamBlock;
use libipam::{AllowedUse, AssignIpArgs, AutoAssignArgs, Datastore, ErrorKind, Ipam, IpamError};
use proptest::prelude::*;

/// A random block of the given prefix length somewhere in the address space.
fn block_strategy() -> impl Strategy<Value = IpNet> {
    let v4 = (any::<u32>(), prop::sample::select(vec![26u8, 32, 20, 30])).prop_map(|(a, p)| {
        IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), p)
            .expect("net")
            .trunc()
    });
    let v6 = (
        any::<u128>(),
        prop::sample::select(vec![122u8, 128, 116, 125]),
    )
        .prop_map(|(a, p)| {
            IpNet::new(IpAddr::V6(Ipv6Addr::from(a)), p)
                .expect("net")
                .trunc()
        });
    prop_oneof![v4, v6]
}

fn no_attrs() -> BTreeMap<String, String> {
    BTreeMap::new()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn ordinal_and_address_round_trip(cidr in block_strategy(), ord in any::<u32>(), probe in any::<u128>()) {
        let b = IpamBlock::new(cidr, None, 1).expect("block");
        let size = b.size();
        prop_assert_eq!(u64::from(size), 1u64 << (cidr.max_prefix_len() - cidr.prefix_len()));
        prop_assert_eq!(b.allocations.len(), size as usize);
        let ord = ord % size;
        let ip = b.ip(ord).expect("in range");
        prop_assert!(cidr.contains(&ip));
        prop_assert_eq!(b.ordinal(ip), Some(ord));
        prop_assert_eq!(b.ip(size), None);
        // Containment agrees with the ordinal mapping for arbitrary addresses.
        let probe = match cidr {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(probe as u32)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(probe)),
        };
        prop_assert_eq!(b.ordinal(probe).is_some(), cidr.contains(&probe));
        // The block of an address (pool-aligned /blockSize) contains it at the right ordinal.
        let of_ip = IpNet::new(ip, cidr.prefix_len()).expect("net").trunc();
        prop_assert_eq!(of_ip, cidr);
        prop_assert_eq!(b.masked(ip), IpNet::new(ip, cidr.prefix_len()).expect("net"));
    }

    #[test]
    fn allocate_all_then_release_in_any_order_is_fifo(
        cidr in block_strategy().prop_filter("small blocks", |c| c.max_prefix_len() - c.prefix_len() <= 6),
        seed in any::<u64>(),
    ) {
        let mut b = IpamBlock::new(cidr, None, 1).expect("block");
        let size = b.size();
        let all = b.auto_assign(size + 3, Some("h"), &no_attrs(), |_| false);
        prop_assert_eq!(all.len(), size as usize);
        prop_assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), size as usize);
        prop_assert_eq!(b.num_free(|_| false), 0);
        prop_assert!(b.auto_assign(1, Some("h"), &no_attrs(), |_| false).is_empty());
        // Release in a shuffled order, one address per call.
        let mut order = all.clone();
        let mut s = seed;
        for i in (1..order.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (s >> 33) as usize % (i + 1));
        }
        for ip in &order {
            let out = b.release(&[*ip]);
            prop_assert_eq!(out.released, vec![*ip]);
        }
        prop_assert!(b.empty());
        prop_assert!(b.attributes.is_empty());
        prop_assert_eq!(b.num_free(|_| false), size);
        prop_assert!(b.consistency_problems().is_empty());
        // FIFO: addresses come back in the order they were released.
        let again = b.auto_assign(size, Some("h2"), &no_attrs(), |_| false);
        prop_assert_eq!(again, order);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Auto {
        host: u8,
        handle: u8,
        num4: u32,
        num6: u32,
        max_blocks: u32,
    },
    ReleaseHandle {
        handle: u8,
    },
    ReleaseIps {
        handle: u8,
        keep_mask: u8,
        extra: u8,
    },
    AssignIp {
        host: u8,
        handle: u8,
        v6: bool,
        offset: u8,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..3u8, 0..5u8, 0..3u32, 0..3u32, prop::sample::select(vec![0u32, 0, 1, 2]))
            .prop_map(|(host, handle, num4, num6, max_blocks)| Op::Auto { host, handle, num4, num6, max_blocks }),
        2 => (0..5u8).prop_map(|handle| Op::ReleaseHandle { handle }),
        2 => (0..5u8, any::<u8>(), any::<u8>())
            .prop_map(|(handle, keep_mask, extra)| Op::ReleaseIps { handle, keep_mask, extra }),
        2 => (0..3u8, 0..5u8, any::<bool>(), any::<u8>())
            .prop_map(|(host, handle, v6, offset)| Op::AssignIp { host, handle, v6, offset }),
    ]
}

const V4_POOL: &str = "10.0.0.0/26";
const V6_POOL: &str = "fd00::/122";

fn pool_addr(v6: bool, offset: u8) -> IpAddr {
    let offset = offset % 64;
    if v6 {
        IpAddr::V6(Ipv6Addr::from(0xfd00u128 << 112 | u128::from(offset)))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, offset))
    }
}

/// Who holds what, according to the answers the allocator gave.
#[derive(Default)]
struct Model {
    held: BTreeMap<String, BTreeSet<IpAddr>>,
}

impl Model {
    fn owner(&self, ip: &IpAddr) -> Option<&str> {
        self.held
            .iter()
            .find(|(_, ips)| ips.contains(ip))
            .map(|(h, _)| h.as_str())
    }
}

fn acceptable_failure(e: &IpamError) -> bool {
    matches!(e.kind(), ErrorKind::Exhausted | ErrorKind::InvalidRequest)
}

fn run(
    ops: &[Op],
    conflict_seed: u64,
    conflict_percent: u8,
    strict: bool,
) -> Result<(), TestCaseError> {
    let ipam: Ipam<MemoryStore> = ipam_with(&[pool("v4", V4_POOL, 29), pool("v6", V6_POOL, 125)]);
    set_config(&ipam, |c| c.strict_affinity = strict);
    ipam.store()
        .conflict_randomly(conflict_seed, conflict_percent);
    let mut model = Model::default();
    let (v4_pool, v6_pool): (IpNet, IpNet) =
        (V4_POOL.parse().expect("net"), V6_POOL.parse().expect("net"));

    for op in ops {
        match op {
            Op::Auto {
                host,
                handle,
                num4,
                num6,
                max_blocks,
            } => {
                let mut args =
                    AutoAssignArgs::new(format!("h{handle}"), format!("node-{host}"), *num4, *num6);
                args.max_blocks_per_host = *max_blocks;
                match block_on(ipam.auto_assign(&args)) {
                    Ok(r) => {
                        prop_assert_eq!(r.ipv4.len() as u32, *num4);
                        prop_assert_eq!(r.ipv6.len() as u32, *num6);
                        for n in &r.ipv4 {
                            prop_assert!(v4_pool.contains(n) && n.prefix_len() == 29, "{}", n);
                        }
                        for n in &r.ipv6 {
                            prop_assert!(v6_pool.contains(n) && n.prefix_len() == 125, "{}", n);
                        }
                        for n in r.all() {
                            let ip = n.addr();
                            prop_assert!(model.owner(&ip).is_none(), "{} handed out twice", ip);
                            model
                                .held
                                .entry(args.handle_id.clone())
                                .or_default()
                                .insert(ip);
                        }
                    }
                    Err(e) => prop_assert!(acceptable_failure(&e), "{}", e),
                }
            }
            Op::ReleaseHandle { handle } => {
                let h = format!("h{handle}");
                let released: BTreeSet<IpAddr> = block_on(ipam.release_by_handle(&h))
                    .expect("release")
                    .into_iter()
                    .collect();
                prop_assert_eq!(released, model.held.remove(&h).unwrap_or_default());
            }
            Op::ReleaseIps {
                handle,
                keep_mask,
                extra,
            } => {
                let h = format!("h{handle}");
                let held: Vec<IpAddr> = model.held.get(&h).into_iter().flatten().copied().collect();
                let mut ips: Vec<IpAddr> = held
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| keep_mask & (1 << (i % 8)) == 0)
                    .map(|(_, ip)| *ip)
                    .collect();
                let stray = pool_addr(extra % 2 == 1, *extra);
                ips.push(stray);
                let expected_unallocated: BTreeSet<IpAddr> = ips
                    .iter()
                    .filter(|ip| model.owner(ip).is_none())
                    .copied()
                    .collect();
                let unallocated: BTreeSet<IpAddr> = block_on(ipam.release_ips(&ips))
                    .expect("release")
                    .into_iter()
                    .collect();
                prop_assert_eq!(unallocated, expected_unallocated);
                for set in model.held.values_mut() {
                    for ip in &ips {
                        set.remove(ip);
                    }
                }
                model.held.retain(|_, s| !s.is_empty());
            }
            Op::AssignIp {
                host,
                handle,
                v6,
                offset,
            } => {
                let ip = pool_addr(*v6, *offset);
                let args = AssignIpArgs {
                    ip,
                    handle_id: format!("h{handle}"),
                    attrs: BTreeMap::new(),
                    hostname: format!("node-{host}"),
                    intended_use: AllowedUse::Workload,
                };
                match block_on(ipam.assign_ip(&args)) {
                    Ok(n) => {
                        prop_assert_eq!(n.addr(), ip);
                        prop_assert!(model.owner(&ip).is_none(), "{} assigned twice", ip);
                        model.held.entry(args.handle_id).or_default().insert(ip);
                    }
                    Err(IpamError::AddressInUse { .. }) => prop_assert!(model.owner(&ip).is_some()),
                    Err(e @ IpamError::StrictAffinityViolation { .. }) => {
                        prop_assert!(strict, "{}", e)
                    }
                    Err(e) => prop_assert!(false, "unexpected error {}", e),
                }
            }
        }
    }

    // Final state agrees with the model, with no fault injection in the way.
    ipam.store().conflict_randomly(0, 0);
    let problems = block_on(ipam.check()).expect("check");
    prop_assert!(problems.is_empty(), "{:?}", problems);
    let blocks = block_on(ipam.store().list_blocks()).expect("blocks");
    let mut live = BTreeMap::new();
    for b in &blocks {
        for (h, n) in b.value.handle_counts() {
            *live.entry(h).or_insert(0u32) += n;
        }
        for ip in b
            .value
            .allocations
            .iter()
            .enumerate()
            .filter(|(_, a)| a.is_some())
        {
            let addr = b.value.ip(ip.0 as u32).expect("ip");
            prop_assert!(
                model.owner(&addr).is_some(),
                "{} allocated but unknown",
                addr
            );
        }
    }
    let cidrs: Vec<IpNet> = blocks.iter().map(|b| b.value.cidr).collect();
    for (i, a) in cidrs.iter().enumerate() {
        for b in &cidrs[i + 1..] {
            prop_assert!(
                !a.contains(b) && !b.contains(a),
                "blocks {} and {} overlap",
                a,
                b
            );
        }
    }
    for (h, ips) in &model.held {
        let got: BTreeSet<IpAddr> = block_on(ipam.ips_by_handle(h))
            .expect("ips")
            .iter()
            .map(IpNet::addr)
            .collect();
        prop_assert_eq!(&got, ips);
        prop_assert_eq!(live.get(h).copied().unwrap_or(0) as usize, ips.len());
        // Handles count exactly (no over-count on this code path).
        let handle = block_on(ipam.store().get_handle(h))
            .expect("get")
            .expect("handle exists");
        prop_assert_eq!(handle.value.block.values().sum::<i64>(), ips.len() as i64);
    }
    let handles = block_on(ipam.store().list_handles()).expect("handles");
    prop_assert_eq!(handles.len(), model.held.len(), "no leftover handles");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn allocator_invariants_hold_under_conflicts(
        ops in prop::collection::vec(op_strategy(), 1..40),
        seed in any::<u64>(),
        percent in 0u8..40,
        strict in prop::bool::weighted(0.25),
    ) {
        run(&ops, seed, percent, strict)?;
    }
}
