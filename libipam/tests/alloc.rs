//! Allocator scenarios on the in-memory store.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;

use common::*;
use ipnet::IpNet;
use libipam::datastore::DatastoreError;
use libipam::datastore::memory::MemoryStore;
use libipam::model::{
    AffinityState, AllowedUse, IpFamily, IpReservation, IpReservationSpec, IpamBlock, IpamHandle,
};
use libipam::{AssignIpArgs, AutoAssignArgs, Datastore, ErrorKind, Ipam, IpamError};

fn net(s: &str) -> IpNet {
    s.parse().expect("cidr")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn assign(
    ipam: &Ipam<MemoryStore>,
    args: &AutoAssignArgs,
) -> Result<libipam::AutoAssignResult, IpamError> {
    block_on(ipam.auto_assign(args))
}

#[test]
fn dual_stack_returns_block_masks_and_writes_calico_objects() {
    let ipam = dual_stack();
    let mut args = AutoAssignArgs::new("k8s-pod-network.abc", "node-a", 1, 1);
    args.attrs = labels(&[
        ("node", "node-a"),
        ("pod", "nginx"),
        ("namespace", "default"),
    ]);
    let r = assign(&ipam, &args).expect("assign");
    assert_eq!(r.ipv4.len(), 1);
    assert_eq!(r.ipv6.len(), 1);
    assert_eq!(r.ipv4[0].prefix_len(), 26);
    assert_eq!(r.ipv6[0].prefix_len(), 122);
    assert!(net("10.244.0.0/16").contains(&r.ipv4[0].addr()));
    assert!(net("fd00:10:244::/48").contains(&r.ipv6[0].addr()));
    assert_eq!(r.all(), vec![r.ipv4[0], r.ipv6[0]]);
    // First address of a fresh block is its ordinal 0 (no network-address exclusion).
    assert_eq!(r.ipv4[0].addr(), r.ipv4[0].network());

    let store = ipam.store();
    let handle = block_on(store.get_handle("k8s-pod-network.abc"))
        .expect("get")
        .expect("handle");
    assert_eq!(handle.value.block.len(), 2);
    assert_eq!(handle.value.block[&r.ipv4[0].trunc().to_string()], 1);
    let affs = block_on(store.list_host_affinities("node-a")).expect("affinities");
    assert_eq!(affs.len(), 2);
    assert!(
        affs.iter()
            .all(|a| a.value.state == AffinityState::Confirmed)
    );
    let block = block_on(store.get_block(&r.ipv4[0].trunc()))
        .expect("get")
        .expect("block");
    assert_eq!(block.value.affinity.as_deref(), Some("host:node-a"));
    assert_eq!(
        block.value.attributes[0].secondary.as_ref().expect("attrs")["pod"],
        "nginx"
    );
    // Claimed with S, allocation write makes it S+1 and records S for ordinal 0.
    let s = block.value.sequence_number_for_allocation["0"];
    assert_eq!(block.value.sequence_number, s + 1);

    assert_eq!(
        block_on(ipam.ips_by_handle("k8s-pod-network.abc")).expect("ips"),
        r.all()
    );
    assert_consistent(&ipam);

    // A second pod on the same node uses the same blocks without new claims.
    let r2 = assign(&ipam, &AutoAssignArgs::new("h2", "node-a", 1, 1)).expect("assign");
    assert_eq!(r2.ipv4[0].trunc(), r.ipv4[0].trunc());
    assert_eq!(r2.ipv6[0].trunc(), r.ipv6[0].trunc());
    assert_ne!(r2.ipv4[0], r.ipv4[0]);

    let released = block_on(ipam.release_by_handle("k8s-pod-network.abc")).expect("release");
    assert_eq!(released, vec![r.ipv4[0].addr(), r.ipv6[0].addr()]);
    assert!(
        block_on(store.get_handle("k8s-pod-network.abc"))
            .expect("get")
            .is_none()
    );
    assert_eq!(
        block_on(ipam.release_by_handle("k8s-pod-network.abc")).expect("again"),
        Vec::<IpAddr>::new()
    );
    assert_consistent(&ipam);
}

#[test]
fn claim_walk_is_deterministic_per_host_and_lazy_on_a_huge_pool() {
    let first_block = |host: &str| {
        let ipam = dual_stack();
        let r = assign(&ipam, &AutoAssignArgs::new("h", host, 0, 1)).expect("assign");
        r.ipv6[0].trunc()
    };
    // A /48 of /122s holds 2^74 blocks: were the walk to enumerate them, this would never end.
    let a1 = first_block("node-a");
    let a2 = first_block("node-a");
    let b = first_block("node-b");
    assert_eq!(a1, a2, "same host, same start");
    assert_ne!(a1, b, "different hosts start apart");

    // Filling many blocks on one host keeps claiming adjacent blocks, from CIDR listings only.
    let ipam = ipam_with(&[pool("v6", "fd00:10:244::/48", 128)]);
    let mut args = AutoAssignArgs::new("h", "node-a", 0, 15);
    args.max_blocks_per_host = 50;
    let r = assign(&ipam, &args).expect("assign");
    assert_eq!(r.ipv6.len(), 15);
    assert!(r.ipv6.iter().all(|n| n.prefix_len() == 128));
    assert_eq!(
        ipam.store().stats().full_block_lists,
        0,
        "claims list CIDRs only"
    );
    assert_consistent(&ipam);
}

#[test]
fn block_limit_from_request_and_config() {
    let ipam = ipam_with(&[pool("p", "10.0.0.0/24", 30)]);
    let mut args = AutoAssignArgs::new("h", "node-a", 4, 0);
    args.max_blocks_per_host = 1;
    assign(&ipam, &args).expect("one block worth");
    args.num4 = 1;
    args.handle_id = "h2".into();
    let e = assign(&ipam, &args).expect_err("limit");
    assert_eq!(e.kind(), ErrorKind::Exhausted);
    assert_eq!(
        e.to_string(),
        "cannot allocate new block: limit of 1 blocks reached for node node-a (raise maxBlocksPerHost in the IPAM config, or free addresses)"
    );

    // Config limit 2, request 0: two blocks, then the limit.
    set_config(&ipam, |c| c.max_blocks_per_host = 2);
    args.max_blocks_per_host = 0;
    args.num4 = 4;
    assign(&ipam, &args).expect("second block");
    let e = assign(&ipam, &AutoAssignArgs::new("h3", "node-a", 1, 0)).expect_err("limit");
    assert!(matches!(e, IpamError::BlockLimit { limit: 2, .. }), "{e}");
    // The request may be more restrictive than the config, not less.
    let mut more = AutoAssignArgs::new("h4", "node-a", 1, 0);
    more.max_blocks_per_host = 5;
    assert!(matches!(
        assign(&ipam, &more),
        Err(IpamError::BlockLimit { limit: 2, .. })
    ));
    assert_consistent(&ipam);
}

#[test]
fn borrowing_depends_on_strict_affinity() {
    // One pool, one block: node-a owns it, node-b can only borrow.
    let ipam = ipam_with(&[pool("p", "10.0.0.0/28", 28)]);
    let a = assign(&ipam, &AutoAssignArgs::new("a", "node-a", 1, 0)).expect("owner");
    let b = assign(&ipam, &AutoAssignArgs::new("b", "node-b", 1, 0)).expect("borrower");
    assert_eq!(a.ipv4[0].trunc(), b.ipv4[0].trunc());
    let block = block_on(ipam.store().get_block(&net("10.0.0.0/28")))
        .expect("get")
        .expect("b");
    assert_eq!(
        block.value.affinity.as_deref(),
        Some("host:node-a"),
        "borrowing claims nothing"
    );

    set_config(&ipam, |c| c.strict_affinity = true);
    let e = assign(&ipam, &AutoAssignArgs::new("c", "node-b", 1, 0)).expect_err("strict");
    assert!(
        matches!(e, IpamError::StrictAffinityExhausted { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("strict affinity enabled"));
    assert!(
        assign(&ipam, &AutoAssignArgs::new("d", "node-a", 1, 0)).is_ok(),
        "owner still can"
    );

    // Borrowed addresses are released normally.
    set_config(&ipam, |_| {});
    assert_eq!(
        block_on(ipam.release_by_handle("b")).expect("release"),
        vec![b.ipv4[0].addr()]
    );
    assert_consistent(&ipam);
}

#[test]
fn exhaustion_lists_the_pools() {
    let ipam = ipam_with(&[pool("tiny", "10.0.0.0/30", 30)]);
    assign(&ipam, &AutoAssignArgs::new("a", "node-a", 4, 0)).expect("all four");
    let e = assign(&ipam, &AutoAssignArgs::new("b", "node-a", 1, 0)).expect_err("full");
    assert_eq!(e.kind(), ErrorKind::Exhausted);
    assert!(
        e.to_string()
            .starts_with("No more free addresses in pools [10.0.0.0/30]"),
        "{e}"
    );
    // Released addresses come back.
    block_on(ipam.release_ips(&[ip("10.0.0.2")])).expect("release");
    let r = assign(&ipam, &AutoAssignArgs::new("b", "node-a", 1, 0)).expect("reuse");
    assert_eq!(r.ipv4[0], net("10.0.0.2/30"));
    assert_consistent(&ipam);
}

#[test]
fn node_selector_excludes_a_host_unless_the_pool_is_requested() {
    let mut p = pool("zone-a", "10.0.0.0/24", 28);
    p.spec.node_selector = Some("zone == 'a'".into());
    let ipam = ipam_with(&[p]);
    ipam.store()
        .set_node_labels("node-b", labels(&[("zone", "b")]));
    ipam.store()
        .set_node_labels("node-a", labels(&[("zone", "a")]));
    let e = assign(&ipam, &AutoAssignArgs::new("h", "node-b", 1, 0)).expect_err("excluded");
    assert_eq!(
        e.to_string(),
        "no configured Calico IPv4 pools for node node-b"
    );
    assert_eq!(e.kind(), ErrorKind::InvalidRequest);
    // A node without a node object has no labels either.
    assert!(assign(&ipam, &AutoAssignArgs::new("h", "node-x", 1, 0)).is_err());
    assert!(assign(&ipam, &AutoAssignArgs::new("h", "node-a", 1, 0)).is_ok());

    let mut requested = AutoAssignArgs::new("h2", "node-b", 1, 0);
    requested.ipv4_pools = vec!["zone-a".into()];
    assert!(
        assign(&ipam, &requested).is_ok(),
        "requested pools bypass nodeSelector"
    );
    requested.ipv4_pools = vec!["10.0.0.0/24".into()];
    requested.handle_id = "h3".into();
    assert!(assign(&ipam, &requested).is_ok(), "by CIDR too");
    assert_consistent(&ipam);
}

#[test]
fn requested_pool_errors() {
    let mut disabled = pool("off", "10.1.0.0/16", 26);
    disabled.spec.disabled = true;
    let ipam = ipam_with(&[
        pool("v4", "10.0.0.0/16", 26),
        pool("v6", "fd00::/48", 122),
        disabled,
    ]);
    let mut args = AutoAssignArgs::new("h", "n", 1, 0);
    args.ipv4_pools = vec!["nope".into()];
    let e = assign(&ipam, &args).expect_err("unknown");
    assert_eq!(
        e.to_string(),
        "the given pool (nope) does not exist, or is not enabled"
    );
    args.ipv4_pools = vec!["off".into()];
    assert!(matches!(
        assign(&ipam, &args),
        Err(IpamError::PoolNotFound { .. })
    ));
    args.ipv4_pools = vec!["fd00::/48".into()];
    let e = assign(&ipam, &args).expect_err("family");
    assert_eq!(
        e.to_string(),
        "ipv4_pools contains fd00::/48 which is an IPv6 pool"
    );
    args.ipv4_pools = vec![];
    args.ipv6_pools = vec!["v4".into()];
    let e = assign(&ipam, &args).expect_err("family");
    assert_eq!(
        e.to_string(),
        "ipv6_pools contains 10.0.0.0/16 which is an IPv4 pool"
    );
    assert_eq!(e.kind(), ErrorKind::InvalidRequest);
}

#[test]
fn allowed_uses_filter_pools() {
    let mut tunnel_only = pool("tunnel", "10.0.0.0/24", 28);
    tunnel_only.spec.allowed_uses = Some(vec!["Tunnel".into()]);
    let ipam = ipam_with(&[tunnel_only]);
    let e = assign(&ipam, &AutoAssignArgs::new("h", "n", 1, 0)).expect_err("workload");
    assert!(
        e.to_string()
            .contains("no IPv4 pools match the required use Workload"),
        "{e}"
    );
    let mut args = AutoAssignArgs::new("h", "n", 1, 0);
    args.intended_use = AllowedUse::Tunnel;
    assert!(assign(&ipam, &args).is_ok());
    let e = block_on(ipam.assign_ip(&AssignIpArgs {
        ip: ip("10.0.0.200"),
        handle_id: "x".into(),
        attrs: Default::default(),
        hostname: "n".into(),
        intended_use: AllowedUse::Workload,
    }))
    .expect_err("use");
    assert_eq!(
        e.to_string(),
        "IP address 10.0.0.200 is in IP pool \"tunnel\", which is not allowed for use \"Workload\" (allowedUses: [Tunnel])"
    );
    assert_eq!(e.kind(), ErrorKind::InvalidRequest);

    // The reverse (calico#13301): a tunnel address is refused in a pool for workloads only,
    // and allowed in one that allows tunnels.
    let mut workload_only = pool("pods", "10.1.0.0/24", 28);
    workload_only.spec.allowed_uses = Some(vec!["Workload".into()]);
    let both = pool("both", "10.2.0.0/24", 28);
    let ipam = ipam_with(&[workload_only, both]);
    let specific = |ip_s: &str, intended_use| AssignIpArgs {
        ip: ip(ip_s),
        handle_id: format!("tunnel-{ip_s}"),
        attrs: Default::default(),
        hostname: "n".into(),
        intended_use,
    };
    let e = block_on(ipam.assign_ip(&specific("10.1.0.1", AllowedUse::Tunnel))).expect_err("use");
    assert_eq!(
        e.to_string(),
        "IP address 10.1.0.1 is in IP pool \"pods\", which is not allowed for use \"Tunnel\" (allowedUses: [Workload])"
    );
    block_on(ipam.assign_ip(&specific("10.1.0.2", AllowedUse::Workload))).expect("workload");
    block_on(ipam.assign_ip(&specific("10.2.0.1", AllowedUse::Tunnel))).expect("tunnel");
    block_on(ipam.assign_ip(&specific("10.2.0.2", AllowedUse::Workload))).expect("workload");
    // Refused before anything was read or written: no block was claimed for 10.1.0.1 other
    // than the one 10.1.0.2 made, and it holds only 10.1.0.2.
    let block = block_on(ipam.store().get_block(&net("10.1.0.0/28")))
        .expect("get")
        .expect("block");
    assert_eq!(block.value.in_use(), 1);
    assert_consistent(&ipam);
}

#[test]
fn reuse_existing_returns_what_the_handle_holds() {
    let ipam = dual_stack();
    let mut args = AutoAssignArgs::new("k8s-pod-network.c1", "node-a", 1, 1);
    args.reuse_existing = true;
    let first = assign(&ipam, &args).expect("first");
    let again = assign(&ipam, &args).expect("again");
    assert_eq!(first, again);
    // Without reuse, Calico semantics: another address under the same handle.
    args.reuse_existing = false;
    let more = assign(&ipam, &args).expect("more");
    assert_ne!(more.ipv4, first.ipv4);
    assert_eq!(
        block_on(ipam.ips_by_handle("k8s-pod-network.c1"))
            .expect("ips")
            .len(),
        4
    );
    // Reuse tops up a family it holds nothing of.
    let mut v4_only = AutoAssignArgs::new("k8s-pod-network.c2", "node-a", 1, 0);
    v4_only.reuse_existing = true;
    let r4 = assign(&ipam, &v4_only).expect("v4");
    v4_only.num6 = 1;
    let r46 = assign(&ipam, &v4_only).expect("v4+v6");
    assert_eq!(r46.ipv4, r4.ipv4);
    assert_eq!(r46.ipv6.len(), 1);
    assert_consistent(&ipam);
}

#[test]
fn reuse_skips_addresses_of_pools_since_disabled_or_deleted() {
    let ipam = ipam_with(&[pool("a", "10.1.0.0/24", 26), pool("b", "10.2.0.0/24", 26)]);
    let mut args = AutoAssignArgs::new("k8s-pod-network.r1", "node-a", 1, 0);
    args.reuse_existing = true;
    let first = assign(&ipam, &args).expect("first");
    assert!(
        net("10.1.0.0/24").contains(&first.ipv4[0].addr()),
        "{first:?}"
    );
    // Pool a is disabled; its block stays affine to node-a with 63 free addresses.
    let mut a = pool("a", "10.1.0.0/24", 26);
    a.spec.disabled = true;
    block_on(ipam.store().apply_pool(&a)).expect("disable");
    let again = assign(&ipam, &args).expect("again");
    assert!(
        net("10.2.0.0/24").contains(&again.ipv4[0].addr()),
        "{again:?}"
    );
    // The handle keeps both, as Calico's would; the next repeat returns the usable one.
    assert_eq!(
        block_on(ipam.ips_by_handle("k8s-pod-network.r1"))
            .expect("ips")
            .len(),
        2
    );
    assert_eq!(assign(&ipam, &args).expect("third"), again);
    // Deleted rather than disabled: the same.
    block_on(ipam.store().delete_pool("b")).expect("delete");
    block_on(ipam.store().apply_pool(&pool("c", "10.3.0.0/24", 26))).expect("c");
    let fourth = assign(&ipam, &args).expect("fourth");
    assert!(
        net("10.3.0.0/24").contains(&fourth.ipv4[0].addr()),
        "{fourth:?}"
    );
    assert_consistent(&ipam);
}

#[test]
fn partial_dual_stack_is_rolled_back() {
    // No IPv6 pool: the IPv4 address must not leak.
    let ipam = ipam_with(&[pool("v4", "10.0.0.0/24", 28)]);
    let e = assign(&ipam, &AutoAssignArgs::new("h", "node-a", 1, 1)).expect_err("no v6");
    assert!(matches!(e, IpamError::NoQualifiedPool { .. }), "{e}");
    assert!(
        block_on(ipam.store().get_handle("h"))
            .expect("get")
            .is_none()
    );
    let usage = block_on(ipam.usage()).expect("usage");
    assert_eq!(usage[0].in_use, 0);

    // IPv6 exhausted part-way through a multi-address request.
    let ipam = ipam_with(&[pool("v4", "10.0.0.0/24", 28), pool("v6", "fd00::/126", 126)]);
    let e = assign(&ipam, &AutoAssignArgs::new("h", "node-a", 2, 5)).expect_err("v6 short");
    assert!(
        matches!(
            e,
            IpamError::Exhausted {
                family: IpFamily::V6,
                assigned: 4,
                ..
            }
        ),
        "{e}"
    );
    let usage = block_on(ipam.usage()).expect("usage");
    assert!(usage.iter().all(|u| u.in_use == 0), "{usage:?}");
    assert!(
        block_on(ipam.store().get_handle("h"))
            .expect("get")
            .is_none()
    );
    assert_consistent(&ipam);
}

#[test]
fn empty_non_affine_block_is_deleted_on_release() {
    let ipam = ipam_with(&[pool("p", "10.0.0.0/24", 28)]);
    let store = ipam.store();
    let cidr = net("10.0.0.16/28");
    let mut block = IpamBlock::new(cidr, None, 1).expect("block");
    block
        .assign(ip("10.0.0.17"), Some("orphan"), &Default::default())
        .expect("assign");
    block_on(store.create_block(&block)).expect("create");
    let mut h = IpamHandle::new("orphan");
    h.increment(&cidr, 1);
    block_on(store.create_handle(&h)).expect("handle");
    assert_consistent(&ipam);

    assert_eq!(
        block_on(ipam.release_by_handle("orphan")).expect("release"),
        vec![ip("10.0.0.17")]
    );
    assert!(
        block_on(store.get_block(&cidr)).expect("get").is_none(),
        "deleted"
    );

    // An affine block stays when it empties.
    let r = assign(&ipam, &AutoAssignArgs::new("a", "node-a", 1, 0)).expect("assign");
    block_on(ipam.release_ips(&[r.ipv4[0].addr()])).expect("release");
    let kept = block_on(store.get_block(&r.ipv4[0].trunc()))
        .expect("get")
        .expect("kept");
    assert!(kept.value.empty());
    assert!(block_on(store.get_handle("a")).expect("get").is_none());
    assert_consistent(&ipam);
}

#[test]
fn release_ips_reports_unallocated_and_dedupes() {
    let ipam = dual_stack();
    let r = assign(&ipam, &AutoAssignArgs::new("h", "node-a", 2, 0)).expect("assign");
    let a = r.ipv4[0].addr();
    let outside = ip("192.168.1.1");
    let free_in_block = r.ipv4[0].trunc().broadcast();
    let not_alloc = block_on(ipam.release_ips(&[a, a, outside, free_in_block])).expect("release");
    assert_eq!(
        not_alloc.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([outside, free_in_block])
    );
    let handle = block_on(ipam.store().get_handle("h"))
        .expect("get")
        .expect("handle");
    assert_eq!(handle.value.block.values().sum::<i64>(), 1);
    assert_eq!(
        block_on(ipam.ips_by_handle("h")).expect("ips"),
        vec![r.ipv4[1]]
    );
    assert_consistent(&ipam);
}

#[test]
fn assign_specific_addresses() {
    let ipam = dual_stack();
    let args = |addr: &str, handle: &str| AssignIpArgs {
        ip: ip(addr),
        handle_id: handle.into(),
        attrs: Default::default(),
        hostname: "node-a".into(),
        intended_use: AllowedUse::Workload,
    };
    let got = block_on(ipam.assign_ip(&args("10.244.7.9", "x"))).expect("assign");
    assert_eq!(got, net("10.244.7.9/26"));
    let block = block_on(ipam.store().get_block(&net("10.244.7.0/26")))
        .expect("get")
        .expect("b");
    assert_eq!(
        block.value.affinity.as_deref(),
        Some("host:node-a"),
        "block claimed for the host"
    );
    let e = block_on(ipam.assign_ip(&args("10.244.7.9", "y"))).expect_err("taken");
    assert_eq!(
        e.to_string(),
        "address 10.244.7.9 is already assigned in block 10.244.7.0/26"
    );
    let e = block_on(ipam.assign_ip(&args("192.168.0.1", "y"))).expect_err("outside");
    assert_eq!(
        e.to_string(),
        "the provided IP address 192.168.0.1 is not in a configured pool"
    );
    let v6 = block_on(ipam.assign_ip(&args("fd00:10:244::1:5", "x"))).expect("v6");
    assert_eq!(v6, net("fd00:10:244::1:5/122"));
    assert_eq!(
        block_on(ipam.release_by_handle("x"))
            .expect("release")
            .len(),
        2
    );
    assert!(
        block_on(ipam.assign_ip(&args("10.244.7.9", "y"))).is_ok(),
        "free again"
    );
    assert_consistent(&ipam);
}

#[test]
fn reservations_are_skipped() {
    let ipam = ipam_with(&[pool("p", "10.0.0.0/24", 29)]);
    let reserve = |cidrs: &[&str]| IpReservation {
        name: "r".into(),
        spec: IpReservationSpec {
            reserved_cidrs: cidrs.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        },
    };
    // Reserve everything but 10.0.0.0/29's last address... and whole other blocks.
    ipam.store().apply_reservation(reserve(&[
        "10.0.0.8/29",
        "10.0.0.0/30",
        "10.0.0.4",
        "10.0.0.5",
        "10.0.0.6",
    ]));
    let mut got = Vec::new();
    for h in 0..40 {
        match assign(&ipam, &AutoAssignArgs::new(format!("h{h}"), "node-a", 1, 0)) {
            Ok(r) => got.push(r.ipv4[0].addr()),
            Err(e) => panic!("{e}"),
        }
    }
    let reserved: Vec<IpNet> = [
        "10.0.0.8/29",
        "10.0.0.0/30",
        "10.0.0.4/32",
        "10.0.0.5/32",
        "10.0.0.6/32",
    ]
    .iter()
    .map(|s| net(s))
    .collect();
    assert!(
        got.iter().all(|a| !reserved.iter().any(|r| r.contains(a))),
        "{got:?}"
    );
    assert_consistent(&ipam);
}

#[test]
fn reclaims_another_hosts_old_empty_block() {
    let ipam = ipam_with(&[pool("p", "10.0.0.0/28", 28)]);
    let store = ipam.store();
    let r = assign(&ipam, &AutoAssignArgs::new("a", "node-a", 1, 0)).expect("owner");
    block_on(ipam.release_by_handle("a")).expect("release");
    // Fresh claim: not reclaimable yet, so node-b borrows instead.
    let b = assign(&ipam, &AutoAssignArgs::new("b", "node-b", 1, 0)).expect("borrow");
    assert_eq!(b.ipv4[0].trunc(), r.ipv4[0].trunc());
    block_on(ipam.release_by_handle("b")).expect("release");
    let cidr = r.ipv4[0].trunc();
    let mut block = block_on(store.get_block(&cidr)).expect("get").expect("b");
    block.value.affinity_claim_time = Some("2020-01-01T00:00:00Z".into());
    block_on(store.update_block(&block)).expect("age it");

    assign(&ipam, &AutoAssignArgs::new("c", "node-b", 1, 0)).expect("reclaim");
    let block = block_on(store.get_block(&cidr)).expect("get").expect("b");
    assert_eq!(block.value.affinity.as_deref(), Some("host:node-b"));
    assert!(
        block_on(store.get_affinity("node-a", &cidr))
            .expect("get")
            .is_none()
    );
    assert_consistent(&ipam);
}

/// Rewrites a block as a backend that prunes `affinityClaimTime` (Calico v3.31's IPAMBlock
/// CRD) or Calico before v3.32 would hold it: no claim time, and the sequence number of a block
/// created `age_secs` ago.
fn date_block(ipam: &Ipam<MemoryStore>, cidr: &IpNet, claim_time: Option<&str>, age_secs: u64) {
    let store = ipam.store();
    let mut block = block_on(store.get_block(cidr))
        .expect("get")
        .expect("block");
    block.value.affinity_claim_time = claim_time.map(str::to_owned);
    block.value.sequence_number = libipam::model::time::now_nanos() - age_secs * 1_000_000_000;
    block_on(store.update_block(&block)).expect("date it");
}

/// Issue 17, item 3: where the claim time is missing (pruned by the CRD, or never written by
/// Calico before v3.32), the block's sequence number, which starts at its creation time, says
/// when it was claimed. Strict affinity on, so the second node can only reclaim (Calico's
/// reclaim does not depend on strictAffinity), never borrow.
#[test]
fn a_block_without_a_claim_time_is_dated_by_its_sequence_number() {
    let ipam = ipam_with(&[pool("p", "10.0.0.0/28", 28)]);
    set_config(&ipam, |c| c.strict_affinity = true);
    let store = ipam.store();
    let r = assign(&ipam, &AutoAssignArgs::new("a", "node-a", 1, 0)).expect("owner");
    let cidr = r.ipv4[0].trunc();
    block_on(ipam.release_by_handle("a")).expect("release");

    let refused = |why: &str| {
        let e = assign(&ipam, &AutoAssignArgs::new("b", "node-b", 1, 0)).expect_err(why);
        assert_eq!(e.kind(), ErrorKind::Exhausted, "{why}: {e}");
        let block = block_on(store.get_block(&cidr))
            .expect("get")
            .expect("kept");
        assert_eq!(
            block.value.affinity.as_deref(),
            Some("host:node-a"),
            "{why}"
        );
        let aff = block_on(store.get_affinity("node-a", &cidr))
            .expect("get")
            .expect("kept");
        assert_eq!(aff.value.state, AffinityState::Confirmed, "{why}");
    };
    // Claimed a second ago, the claim time pruned: too young, as its sequence number says.
    date_block(&ipam, &cidr, None, 1);
    refused("no claim time, created a second ago");
    // Just under the minimum age.
    date_block(&ipam, &cidr, None, 50);
    refused("no claim time, created 50 s ago");
    // A claim time, when there is one, is what counts: a recent one protects an old block.
    let now = libipam::model::time::rfc3339(libipam::model::time::now_nanos());
    date_block(&ipam, &cidr, Some(&now), 3600);
    refused("claimed just now");
    // A claim time that does not parse is as good as none.
    date_block(&ipam, &cidr, Some("yesterday"), 1);
    refused("unreadable claim time, created a second ago");

    // Two minutes old by its sequence number, no claim time: node-b takes it over.
    date_block(&ipam, &cidr, None, 120);
    let got = assign(&ipam, &AutoAssignArgs::new("b", "node-b", 1, 0)).expect("reclaimed");
    assert_eq!(got.ipv4[0].trunc(), cidr);
    let block = block_on(store.get_block(&cidr)).expect("get").expect("b");
    assert_eq!(block.value.affinity.as_deref(), Some("host:node-b"));
    assert!(block.value.affinity_claim_time.is_some(), "claimed anew");
    assert!(
        block_on(store.get_affinity("node-a", &cidr))
            .expect("get")
            .is_none()
    );
    assert_consistent(&ipam);
}

/// Issue 17, item 1, the race with the old owner: between the reclaiming node's listing and its
/// delete, the owner writes the block. The delete loses, the block stays the owner's, and the
/// owner's affinity, marked `pendingDeletion` on the way, is given back confirmed (Calico
/// leaves it pending deletion, for the owner's next request to confirm again).
#[test]
fn a_reclaim_that_loses_to_the_owner_gives_the_affinity_back() {
    let ipam = ipam_with(&[pool("p", "10.0.0.0/28", 28)]);
    set_config(&ipam, |c| c.strict_affinity = true);
    let store = ipam.store();
    let r = assign(&ipam, &AutoAssignArgs::new("a", "node-a", 1, 0)).expect("owner");
    let cidr = r.ipv4[0].trunc();
    block_on(ipam.release_by_handle("a")).expect("release");
    date_block(&ipam, &cidr, Some("2020-01-01T00:00:00Z"), 3600);

    store.race_next_block_delete();
    let e = assign(&ipam, &AutoAssignArgs::new("b", "node-b", 1, 0)).expect_err("lost");
    assert_eq!(e.kind(), ErrorKind::Exhausted, "{e}");
    let block = block_on(store.get_block(&cidr))
        .expect("get")
        .expect("kept");
    assert_eq!(block.value.affinity.as_deref(), Some("host:node-a"));
    let aff = block_on(store.get_affinity("node-a", &cidr))
        .expect("get")
        .expect("kept");
    assert_eq!(aff.value.state, AffinityState::Confirmed);
    assert!(
        block_on(store.get_affinity("node-b", &cidr))
            .expect("get")
            .is_none()
    );
    // The owner goes on allocating from it at once.
    let again = assign(&ipam, &AutoAssignArgs::new("a2", "node-a", 1, 0)).expect("owner");
    assert_eq!(again.ipv4[0].trunc(), cidr);
    assert_consistent(&ipam);
}

/// Issue 17, item 4: a node that must borrow picks from one listing of the blocks with their
/// contents (the one the claim step made), not one read per block. 64 blocks of 4 addresses,
/// each claimed and filled by its own node.
#[test]
fn borrowing_reads_one_listing_not_every_block() {
    let ipam = ipam_with(&[pool("p", "10.0.0.0/24", 30)]);
    let store = ipam.store();
    let mut first = None;
    for i in 0..64 {
        let r = assign(
            &ipam,
            &AutoAssignArgs::new(format!("h{i}"), format!("node-{i}"), 4, 0),
        )
        .expect("fill");
        first.get_or_insert(r.ipv4[0].addr());
    }
    assert_eq!(block_on(store.list_blocks()).expect("list").len(), 64);

    // Every block full: the borrower finds nothing, from one listing and no block read.
    let before = store.stats();
    let e = assign(&ipam, &AutoAssignArgs::new("x", "borrower", 1, 0)).expect_err("full");
    assert_eq!(e.kind(), ErrorKind::Exhausted, "{e}");
    let after = store.stats();
    assert_eq!(after.full_block_lists - before.full_block_lists, 1);
    assert_eq!(after.block_reads - before.block_reads, 0);

    // One address free in one block: one listing, and no read of any block but for the
    // write (none here: the listed copy is current).
    let freed = first.expect("an address");
    block_on(ipam.release_ips(&[freed])).expect("free one");
    let before = store.stats();
    let got = assign(&ipam, &AutoAssignArgs::new("y", "borrower", 1, 0)).expect("borrow");
    assert_eq!(got.ipv4[0].addr(), freed);
    let after = store.stats();
    assert_eq!(after.full_block_lists - before.full_block_lists, 1);
    assert_eq!(after.block_reads - before.block_reads, 0);

    // A listed copy gone stale meanwhile costs a read of that block only.
    block_on(ipam.release_ips(&[freed])).expect("free it again");
    store.inject_conflicts(1);
    let before = store.stats();
    let got = assign(&ipam, &AutoAssignArgs::new("z", "borrower", 1, 0)).expect("borrow");
    assert_eq!(got.ipv4[0].addr(), freed);
    let after = store.stats();
    assert!(after.block_reads - before.block_reads <= 2, "{after:?}");
    assert_consistent(&ipam);
}

#[test]
fn conflicts_are_retried_and_bounded() {
    let ipam = dual_stack();
    ipam.store().conflict_randomly(7, 30);
    for i in 0..20 {
        assign(&ipam, &AutoAssignArgs::new(format!("h{i}"), "node-a", 1, 1)).expect("assign");
    }
    assert!(ipam.store().stats().injected_conflicts > 0);
    for i in 0..20 {
        assert_eq!(
            block_on(ipam.release_by_handle(&format!("h{i}")))
                .expect("release")
                .len(),
            2
        );
    }
    ipam.store().conflict_randomly(0, 0);
    assert_consistent(&ipam);

    ipam.store().inject_conflicts(10_000);
    let e = assign(&ipam, &AutoAssignArgs::new("x", "node-a", 1, 0)).expect_err("contended");
    assert_eq!(e.kind(), ErrorKind::Contended);
    assert!(e.to_string().contains("gave up after 100 attempts"), "{e}");
    ipam.store().inject_conflicts(0);
    // With every compare-and-swap failing even the handle increment could not be undone;
    // the handle over-counts (tolerated), and the DEL that follows a failed ADD cleans it up.
    assert_eq!(
        block_on(ipam.release_by_handle("x")).expect("del"),
        Vec::<IpAddr>::new()
    );
    assert_consistent(&ipam);
}

/// A block write that happened but whose answer was lost fails the ADD, and the handle still
/// names the block (it is not decremented on an answer that does not say "not applied"), so
/// the DEL that follows frees the address: nothing leaks. On the first ADD (a block created
/// holding its address) and on a steady-state one (a block update).
#[test]
fn a_lost_block_write_answer_leaves_the_address_to_del() {
    let ipam = ipam_with(&[pool("p", "10.0.0.0/24", 28)]);
    for id in ["first", "steady"] {
        if id == "steady" {
            // The first ADD's claim is still pending: this one finishes it, so the next one
            // allocates on the fast path from a confirmed block.
            assign(&ipam, &AutoAssignArgs::new("ok", "node-a", 1, 0)).expect("ADD");
        }
        ipam.store().lose_next_block_write_answer();
        let e = assign(&ipam, &AutoAssignArgs::new(id, "node-a", 1, 0)).expect_err("lost");
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{id}: {e}");
        let released = block_on(ipam.release_by_handle(id)).expect("del");
        assert_eq!(
            released.len(),
            1,
            "{id}: the DEL frees the address the block holds"
        );
        assert_consistent(&ipam);
    }
}

#[test]
fn datastore_outage_is_unavailable() {
    let ipam = dual_stack();
    ipam.store().set_unavailable(true);
    let e = assign(&ipam, &AutoAssignArgs::new("x", "node-a", 1, 0)).expect_err("down");
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    ipam.store().set_unavailable(false);
    ipam.store()
        .fail_next_writes(1, DatastoreError::Unavailable("flaky".into()));
    let e = assign(&ipam, &AutoAssignArgs::new("x", "node-a", 1, 0)).expect_err("down");
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(assign(&ipam, &AutoAssignArgs::new("x", "node-a", 1, 0)).is_ok());
    assert_consistent(&ipam);
}

#[test]
fn stale_affinity_is_dropped_and_dangling_one_reclaimed() {
    let ipam = ipam_with(&[pool("p", "10.0.0.0/24", 28)]);
    let store = ipam.store();
    let r = assign(&ipam, &AutoAssignArgs::new("a", "node-a", 1, 0)).expect("assign");
    let cidr = r.ipv4[0].trunc();
    // Someone gave node-a's block to node-b behind our back: node-a's affinity is stale.
    let mut block = block_on(store.get_block(&cidr)).expect("get").expect("b");
    block.value.affinity = Some("host:node-b".into());
    block_on(store.update_block(&block)).expect("steal");
    let b_aff = libipam::model::BlockAffinity::host("node-b", cidr, AffinityState::Confirmed);
    block_on(store.create_affinity(&b_aff)).expect("b affinity");
    let r2 = assign(&ipam, &AutoAssignArgs::new("a2", "node-a", 1, 0)).expect("assign");
    assert_ne!(r2.ipv4[0].trunc(), cidr, "node-a claimed another block");
    assert!(
        block_on(store.get_affinity("node-a", &cidr))
            .expect("get")
            .is_none()
    );

    // A pending affinity whose block vanished gets its block re-created.
    let cidr2 = r2.ipv4[0].trunc();
    block_on(ipam.release_by_handle("a2")).expect("release");
    let b2 = block_on(store.get_block(&cidr2)).expect("get").expect("b");
    block_on(store.delete_block(&b2)).expect("delete");
    let mut aff = block_on(store.get_affinity("node-a", &cidr2))
        .expect("get")
        .expect("a");
    aff.value.state = AffinityState::Pending;
    block_on(store.update_affinity(&aff)).expect("pending");
    let r3 = assign(&ipam, &AutoAssignArgs::new("a3", "node-a", 1, 0)).expect("assign");
    assert_eq!(r3.ipv4[0].trunc(), cidr2);
    let aff = block_on(store.get_affinity("node-a", &cidr2))
        .expect("get")
        .expect("a");
    assert_eq!(aff.value.state, AffinityState::Confirmed);
    assert_consistent(&ipam);
}

#[test]
fn a_hosts_first_dual_stack_add_lists_blocks_once_and_reads_no_node_without_a_selector() {
    let ipam = dual_stack();
    let before = ipam.store().stats();
    let r = assign(&ipam, &AutoAssignArgs::new("first", "node-a", 1, 1)).expect("assign");
    assert_eq!((r.ipv4.len(), r.ipv6.len()), (1, 1));
    let after = ipam.store().stats();
    assert_eq!(
        after.block_cidr_lists - before.block_cidr_lists,
        1,
        "one listing serves both families' claims"
    );
    assert_eq!(
        after.node_label_reads, before.node_label_reads,
        "every pool selects all(): the Node decides nothing"
    );
    // A pool that selects nodes needs the Node's labels.
    let mut pools = block_on(ipam.store().list_pools()).expect("pools").pools;
    let mut v4 = pools.remove(
        pools
            .iter()
            .position(|p| !p.spec.cidr.contains(':'))
            .expect("v4 pool"),
    );
    v4.spec.node_selector = Some("zone == 'a'".into());
    block_on(ipam.store().apply_pool(&v4)).expect("apply");
    ipam.store()
        .set_node_labels("node-b", labels(&[("zone", "a")]));
    let before = ipam.store().stats();
    assign(&ipam, &AutoAssignArgs::new("second", "node-b", 1, 1)).expect("assign");
    assert_eq!(
        ipam.store().stats().node_label_reads - before.node_label_reads,
        1
    );
    assert_consistent(&ipam);
}

#[test]
fn a_hosts_first_add_reads_no_handle_and_writes_it_once() {
    let ipam = dual_stack();
    let mut args = AutoAssignArgs::new("k8s-pod-network.first", "node-a", 1, 1);
    args.reuse_existing = true;
    let before = ipam.store().stats();
    let first = assign(&ipam, &args).expect("assign");
    let after = ipam.store().stats();
    assert_eq!(
        after.handle_reads, before.handle_reads,
        "a new attachment's handle is not read"
    );
    // Per family: affinity pending, the block created holding the allocation, affinity
    // confirmed; and one handle create announcing both families, before the blocks.
    assert_eq!(after.writes - before.writes, 7, "{after:?}");
    let handle = block_on(ipam.store().get_handle("k8s-pod-network.first"))
        .expect("get")
        .expect("handle");
    assert_eq!(handle.value.blocks().len(), 2);
    // A repeated ADD still returns what the handle holds, and claims nothing more.
    let again = assign(&ipam, &args).expect("again");
    assert_eq!(again, first);
    assert_eq!(block_on(ipam.store().list_blocks()).expect("list").len(), 2);
    // Another node's first ADD repeated (its handle exists, its node holds no block yet):
    // the handle's addresses, not new ones.
    let mut moved = args.clone();
    moved.hostname = "node-b".into();
    let on_b = assign(&ipam, &moved).expect("repeat on node-b");
    assert_eq!(on_b, first);
    assert_eq!(
        block_on(ipam.ips_by_handle("k8s-pod-network.first"))
            .expect("ips")
            .len(),
        2
    );
    assert_consistent(&ipam);
}

#[test]
fn steady_state_dual_stack_add_and_del_write_three_objects() {
    let ipam = dual_stack();
    assign(&ipam, &AutoAssignArgs::new("warm", "node-a", 1, 1)).expect("claims both blocks");
    let before = ipam.store().stats();
    assign(&ipam, &AutoAssignArgs::new("pod", "node-a", 1, 1)).expect("assign");
    let after_add = ipam.store().stats();
    assert_eq!(
        after_add.writes - before.writes,
        3,
        "one handle + two blocks"
    );
    assert_eq!(
        after_add.block_cidr_lists, before.block_cidr_lists,
        "no claim, no listing"
    );
    block_on(ipam.release_by_handle("pod")).expect("release");
    assert_eq!(
        ipam.store().stats().writes - after_add.writes,
        3,
        "two blocks + handle delete"
    );
    // Single stack: handle + block.
    let before = ipam.store().stats();
    assign(&ipam, &AutoAssignArgs::new("v4", "node-a", 1, 0)).expect("assign");
    assert_eq!(ipam.store().stats().writes - before.writes, 2);
    assert_consistent(&ipam);
}

#[test]
fn apply_pool_validates_and_defaults() {
    let ipam = dual_stack();
    let stored = block_on(ipam.apply_pool(libipam::model::IpPool::new("extra", "10.245.0.0/16")))
        .expect("apply");
    assert_eq!(stored.spec.block_size, Some(26));
    assert_eq!(stored.spec.node_selector.as_deref(), Some("all()"));
    let e = block_on(ipam.apply_pool(libipam::model::IpPool::new("clash", "10.244.128.0/17")))
        .expect_err("overlap");
    assert_eq!(e.kind(), ErrorKind::InvalidRequest);
    assert!(
        e.to_string()
            .contains("overlaps existing pool default-ipv4-ippool"),
        "{e}"
    );
    let e = block_on(ipam.apply_pool(libipam::model::IpPool::new("bad", "10.246.0.1/16")))
        .expect_err("host bits");
    assert!(e.to_string().contains("did you mean 10.246.0.0/16?"), "{e}");
    let usage = block_on(ipam.usage()).expect("usage");
    assert_eq!(
        usage.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        vec!["default-ipv4-ippool", "default-ipv6-ippool", "extra"]
    );
    assert_eq!(usage[2].total, 65536);
    assert_eq!(usage[1].total, 1u128 << 80);
}

#[test]
fn released_addresses_cool_down_when_configured() {
    let ipam = ipam_with(&[pool("tiny", "10.0.0.0/30", 30)]);
    set_config(&ipam, |c| c.ip_cooldown_seconds = 600);
    let r = assign(&ipam, &AutoAssignArgs::new("a", "node-a", 4, 0)).expect("all four");
    let first = r.ipv4[0].addr();
    block_on(ipam.release_ips(&[first])).expect("release");
    // Parked, not reusable yet: the pool is still full, the block not empty.
    let e = assign(&ipam, &AutoAssignArgs::new("b", "node-a", 1, 0)).expect_err("cooling");
    assert_eq!(e.kind(), ErrorKind::Exhausted);
    assert_eq!(
        block_on(ipam.release_ips(&[first])).expect("again"),
        vec![first],
        "already released"
    );
    assert_eq!(block_on(ipam.ips_by_handle("a")).expect("ips").len(), 3);
    assert_consistent(&ipam);
    // Cooldown turned off: the parked address is collected on the next allocation.
    set_config(&ipam, |_| {});
    let r = assign(&ipam, &AutoAssignArgs::new("b", "node-a", 1, 0)).expect("reusable");
    assert_eq!(r.ipv4[0].addr(), first);
    assert_consistent(&ipam);
}
