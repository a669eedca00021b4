//! `EtcdStore` against the real three-member etcd cluster of scripts/etcd-testenv
//! (ETCD_TESTENV_DIR), TLS with client certificates: the Datastore contract every backend
//! passes (tests/contract), Calico's keys as stored, what Calico writes read back, unreadable
//! pools, TLS refusals, a dead endpoint in the list, and the allocator from several simulated
//! nodes racing. The tests take turns with every etcd test (etcd_env::exclusive), as some wipe
//! `/calico/` and others kill members.

mod common;
mod contract;
mod etcd_env;

use std::collections::BTreeSet;

use common::assert_consistent_on;
use contract::Run;
use etcd_env::{etcdctl, var, wipe};
use ipnet::IpNet;
use libipam::datastore::etcd::{EtcdConfig, EtcdStore, connect, keys, put_resource};
use libipam::datastore::{Datastore, DatastoreError};
use libipam::model::{IpPool, IpamConfig};
use libipam::{AutoAssignArgs, Ipam, IpamError};
use serde_json::json;

fn turn() -> etcd_env::Turn {
    etcd_env::exclusive()
}

fn config() -> EtcdConfig {
    EtcdConfig {
        endpoints: EtcdConfig::parse_endpoints(&var("ETCD_ENDPOINTS")),
        ca_cert_file: Some(var("ETCD_CA_CERT_FILE").into()),
        cert_file: Some(var("ETCD_CERT_FILE").into()),
        key_file: Some(var("ETCD_KEY_FILE").into()),
    }
}

/// `f` on a runtime of its own (the client's connections live on the runtime that made them).
fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// `f` with a store connected to the cluster as `config` says.
fn run_with<F: Future>(config: &EtcdConfig, f: impl FnOnce(EtcdStore) -> F) -> F::Output {
    block_on(async {
        let store = EtcdStore::new(connect(config).await.expect("connect"));
        f(store).await
    })
}

/// `f` with a store connected to the test cluster.
fn run<F: Future>(f: impl FnOnce(EtcdStore) -> F) -> F::Output {
    run_with(&config(), f)
}

/// The value stored at `key`, raw.
fn raw_get(key: &str) -> Option<String> {
    let out = etcdctl(&["get", "--print-value-only", key]);
    let v = out.strip_suffix('\n').unwrap_or(&out);
    (!out.is_empty()).then(|| v.to_owned())
}

fn raw_put(key: &str, value: &str) {
    etcdctl(&["put", key, value]);
}

#[test]
fn contract_compare_and_swap_of_each_kind() {
    let _t = turn();
    run(async |store| {
        let r = Run::new();
        contract::compare_and_swap::<contract::Blocks, _>(&store, &r).await;
        contract::compare_and_swap::<contract::Handles, _>(&store, &r).await;
        contract::compare_and_swap::<contract::Affinities, _>(&store, &r).await;
    });
}

#[test]
fn contract_soft_deleted_objects_read_as_absent_and_are_deleted() {
    let _t = turn();
    let r = Run::new();
    run(async |store| {
        contract::soft_deleted_objects_read_as_absent(&store, &r, contract::Reads::FinishDeletes)
            .await
    });
    // The reads finished the deletes: nothing of this run is left in etcd.
    assert_eq!(raw_get(&keys::block_key(&r.cidr(2))), None);
}

#[test]
fn contract_listings() {
    let _t = turn();
    run(async |store| {
        let r = Run::new();
        contract::block_cidrs(&store, &r).await;
        contract::affinity_listings(&store, &r).await;
    });
}

#[test]
fn contract_pools() {
    let _t = turn();
    run(async |store| contract::pools(&store, &Run::new()).await);
}

#[test]
fn contract_config() {
    let _t = turn();
    run(async |store| contract::config(&store, &IpamConfig::default(), 30).await);
}

/// What the store writes is at Calico's keys with Calico's values, byte for byte for what
/// Calico's structs hold (tests/etcd_keys.rs has the vectors from Calico's source).
#[test]
fn objects_are_stored_at_calicos_keys() {
    let _t = turn();
    let run_ = Run::new();
    let cidr = run_.cidr(6);
    let host = run_.name("keys-node");
    run(async |store| {
        let run = &run_;
        let mut block = libipam::model::IpamBlock::new(cidr, None, 42).expect("block");
        block.affinity_claim_time = None;
        let rev = store.create_block(&block).await.expect("block");
        let key = format!(
            "/calico/ipam/v2/assignment/ipv4/block/{}",
            cidr.to_string().replace('/', "-")
        );
        assert_eq!(
            raw_get(&key).as_deref(),
            Some(
                String::from_utf8(keys::encode_block(&block))
                    .expect("utf8")
                    .as_str()
            )
        );
        let a = libipam::model::BlockAffinity::host(
            &host,
            cidr,
            libipam::model::AffinityState::Confirmed,
        );
        let arev = store.create_affinity(&a).await.expect("affinity");
        assert_eq!(
            raw_get(&format!(
                "/calico/ipam/v2/host/{host}/ipv4/block/{}",
                cidr.to_string().replace('/', "-")
            ))
            .as_deref(),
            Some(r#"{"state":"confirmed","deleted":false}"#)
        );
        let id = format!("k8s-pod-network.{}", run.name("Keys"));
        let mut h = libipam::model::IpamHandle::new(&id);
        h.increment(&cidr, 1);
        let hrev = store.create_handle(&h).await.expect("handle");
        assert_eq!(
            raw_get(&format!("/calico/ipam/v2/handle/{id}")).as_deref(),
            Some(format!(r#"{{"block":{{"{cidr}":1}},"deleted":false}}"#).as_str())
        );
        let pool = run.name("keys-pool");
        store
            .apply_pool(&IpPool::new(&pool, "10.77.0.0/16"))
            .await
            .expect("pool");
        let stored: serde_json::Value = serde_json::from_str(
            &raw_get(&format!(
                "/calico/resources/v3/projectcalico.org/ippools/{pool}"
            ))
            .expect("pool stored"),
        )
        .expect("json");
        assert_eq!(stored["kind"], "IPPool");
        assert_eq!(stored["apiVersion"], "projectcalico.org/v3");
        assert_eq!(stored["metadata"]["name"], pool.as_str());
        assert!(stored["metadata"]["uid"].is_string());
        assert!(stored["metadata"]["creationTimestamp"].is_string());
        assert_eq!(stored["spec"]["cidr"], "10.77.0.0/16");
        assert_eq!(stored["spec"]["blockSize"], 26);
        // Re-applying keeps the metadata calicoctl gave it.
        store
            .apply_pool(&IpPool::new(&pool, "10.77.0.0/16"))
            .await
            .expect("pool");
        let again: serde_json::Value = serde_json::from_str(
            &raw_get(&format!(
                "/calico/resources/v3/projectcalico.org/ippools/{pool}"
            ))
            .expect("pool stored"),
        )
        .expect("json");
        assert_eq!(again["metadata"], stored["metadata"]);
        // Clean up.
        store.delete_pool(&pool).await.expect("delete pool");
        store
            .delete_handle(&libipam::datastore::Versioned {
                value: h,
                revision: hrev,
            })
            .await
            .expect("delete handle");
        store
            .delete_affinity(&libipam::datastore::Versioned {
                value: a,
                revision: arev,
            })
            .await
            .expect("delete affinity");
        store
            .delete_block(&libipam::datastore::Versioned {
                value: block,
                revision: rev,
            })
            .await
            .expect("delete block");
    });
}

/// What Calico writes is read: a block as `newBlock` makes it (nil attributes), an affinity
/// without a state, a handle, the config with Go's omitted fields, a node's labels.
#[test]
fn what_calico_writes_is_read() {
    let _t = turn();
    let r = Run::new();
    let cidr: IpNet = r.cidr(7);
    let seg = cidr.to_string().replace('/', "-");
    let mut allocations = vec!["null"; 16];
    allocations[0] = "0";
    raw_put(
        &format!("/calico/ipam/v2/assignment/ipv4/block/{seg}"),
        &format!(
            r#"{{"cidr":"{cidr}","affinity":"host:calico-node","allocations":[{}],"unallocated":[{}],"attributes":[{{"handle_id":"k8s-pod-network.abc","secondary":{{"namespace":"default","node":"calico-node","pod":"p","timestamp":"2026-01-01 00:00:00 +0000 UTC"}}}}],"sequenceNumber":1767225600000000000,"sequenceNumberForAllocation":{{"0":1767225600000000000}},"deleted":false}}"#,
            allocations.join(","),
            (1..16).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
        ),
    );
    raw_put(
        &format!("/calico/ipam/v2/host/calico-node/ipv4/block/{seg}"),
        r#"{"state":"","deleted":false}"#,
    );
    run(async |store| {
        let run = &r;
        let b = store.get_block(&cidr).await.expect("get").expect("exists");
        assert_eq!(b.value.affinity.as_deref(), Some("host:calico-node"));
        assert_eq!(b.value.allocations[0], Some(0));
        assert_eq!(b.value.unallocated.len(), 15);
        assert_eq!(b.value.attributes[0].handle(), Some("k8s-pod-network.abc"));
        let a = store
            .get_affinity("calico-node", &cidr)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(a.value.state, libipam::model::AffinityState::Confirmed);
        store.delete_block(&b).await.expect("delete");
        store.delete_affinity(&a).await.expect("delete");

        // A fresh block as Calico's newBlock writes it: nil attributes and no affinity.
        let fresh = run.cidr(8);
        raw_put(
            &keys::block_key(&fresh),
            &format!(
                r#"{{"cidr":"{fresh}","affinity":null,"allocations":[{}],"unallocated":[{}],"attributes":null,"sequenceNumber":5,"sequenceNumberForAllocation":{{}},"deleted":false}}"#,
                vec!["null"; 16].join(","),
                (0..16).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
            ),
        );
        let b = store.get_block(&fresh).await.expect("get").expect("exists");
        assert!(b.value.attributes.is_empty() && b.value.affinity.is_none());
        store.delete_block(&b).await.expect("delete");

        // Calico writes the config's flags only when true.
        raw_put(
            keys::CONFIG_KEY,
            r#"{"strict_affinity":true,"maxBlocksPerHost":3}"#,
        );
        let c = store.get_config().await.expect("config");
        assert!(c.strict_affinity && !c.auto_allocate_blocks);
        assert_eq!(c.max_blocks_per_host, 3);
        store
            .apply_config(&IpamConfig::default())
            .await
            .expect("reset");
        assert_eq!(
            raw_get(keys::CONFIG_KEY).as_deref(),
            Some(r#"{"auto_allocate_blocks":true}"#)
        );

        let node = run.name("labelled");
        put_resource(
            &store,
            keys::NODE,
            &node,
            serde_json::from_value(json!({"labels": {"rack": "r1"}})).expect("map"),
            serde_json::Map::new(),
        )
        .await
        .expect("node");
        let labels = store
            .node_labels(&node)
            .await
            .expect("labels")
            .expect("node");
        assert_eq!(labels.get("rack").map(String::as_str), Some("r1"));
        assert_eq!(
            store.node_labels("no-such-node").await.expect("labels"),
            None
        );
        etcdctl(&["del", &keys::resource_key(keys::NODE, &node)]);
    });
}

/// A pool that does not decode is listed apart, with its CIDR; `check` reports it; applying a
/// good definition of that name repairs it.
#[test]
fn an_unreadable_pool_is_listed_apart_and_repaired_by_name() {
    let _t = turn();
    let name = Run::new().name("torn-pool");
    let key = keys::resource_key(keys::IP_POOL, &name);
    raw_put(
        &key,
        r#"{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"x"},"spec":{"cidr":"10.88.0.0/16","blockSize":"big"}}"#,
    );
    run(async |store| {
        let listed = store.list_pools().await.expect("list");
        let u = listed.unreadable(&name).expect("listed apart");
        assert_eq!(u.cidr, Some("10.88.0.0/16".parse().expect("cidr")));
        assert!(u.reason.contains("blockSize"), "{}", u.reason);
        assert!(!listed.pools.iter().any(|p| p.name == name));
        let inv = store.inventory().await.expect("inventory");
        assert!(
            inv.unusable
                .iter()
                .any(|x| x.object == format!("IPPool {name}"))
        );
        store
            .apply_pool(&IpPool::new(&name, "10.88.0.0/16"))
            .await
            .expect("repair");
        let listed = store.list_pools().await.expect("list");
        assert!(listed.unreadable(&name).is_none());
        assert!(listed.pools.iter().any(|p| p.name == name));
        assert!(store.delete_pool(&name).await.expect("delete"));
    });
}

/// The cluster refuses a client without a certificate it trusts, and the error names it.
#[test]
fn tls_client_certificates_are_required() {
    let _t = turn();
    let good = config();
    for (what, cert, key) in [
        (
            "a certificate of another CA",
            Some(var("ETCD_TESTENV_UNTRUSTED_CERT_FILE").into()),
            Some(var("ETCD_TESTENV_UNTRUSTED_KEY_FILE").into()),
        ),
        ("no certificate", None, None),
    ] {
        let c = EtcdConfig {
            cert_file: cert,
            key_file: key,
            ..good.clone()
        };
        let err = block_on(async {
            let store = EtcdStore::new(connect(&c).await?);
            store.list_pools().await
        })
        .expect_err(what);
        assert!(
            matches!(err, DatastoreError::Unavailable(ref m) if m.contains(&good.endpoints[0][..8])),
            "{what}: {err:?}"
        );
    }
    // Half an identity is refused before anything is sent.
    let half = EtcdConfig {
        key_file: None,
        ..good
    };
    assert!(matches!(
        block_on(connect(&half)),
        Err(DatastoreError::Other(m)) if m.contains("etcd_key_file")
    ));
}

/// Endpoints where nothing listens cost nothing: wherever the live member is in the list
/// (a store starts at the member its pid picks), every request is answered. With no live
/// member at all, the error names every endpoint.
#[test]
fn dead_endpoints_in_the_list_are_passed_over() {
    let _t = turn();
    let live = config().endpoints[0].clone();
    for at in 0..3 {
        let mut c = config();
        c.endpoints = vec!["https://127.0.0.1:1".into(), "https://127.0.0.1:2".into()];
        c.endpoints.insert(at, live.clone());
        run_with(&c, async |store| {
            for _ in 0..3 {
                store
                    .list_pools()
                    .await
                    .expect("list through the live member");
            }
        });
    }
    let mut c = config();
    c.endpoints = vec!["https://127.0.0.1:1".into(), "https://127.0.0.1:2".into()];
    let err = run_with(&c, async |store| store.list_pools().await).expect_err("no member");
    assert!(
        matches!(&err, DatastoreError::Unavailable(m)
            if m.contains("127.0.0.1:1") && m.contains("127.0.0.1:2")),
        "{err:?}"
    );
}

/// Four simulated nodes, two threads each (each thread its own client and allocator, as each
/// CNI ADD is its own process), allocate dual-stack addresses at once: none is handed out
/// twice, `check` finds nothing, and releasing by handle frees everything.
#[test]
fn nodes_racing_never_share_an_address() {
    let _t = turn();
    wipe();
    run(async |store| {
        let mut v4 = IpPool::new("race-v4", "10.244.0.0/22");
        v4.spec.block_size = Some(28);
        let mut v6 = IpPool::new("race-v6", "fd00:10:244::/112");
        v6.spec.block_size = Some(124);
        store.apply_pool(&v4).await.expect("pool");
        store.apply_pool(&v6).await.expect("pool");
    });
    const NODES: usize = 4;
    const THREADS_PER_NODE: usize = 2;
    const ADDS: usize = 12;
    let threads: Vec<_> = (0..NODES * THREADS_PER_NODE)
        .map(|t| {
            std::thread::spawn(move || {
                run(async |store| {
                    let ipam = Ipam::new(store);
                    let host = format!("race-node-{}", t % NODES);
                    let mut out = Vec::new();
                    for i in 0..ADDS {
                        let args = AutoAssignArgs::new(format!("race-{t}-{i}"), &host, 1, 1);
                        out.push(ipam.auto_assign(&args).await.expect("assign").all());
                    }
                    out
                })
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().expect("thread").into_iter().flatten());
    }
    let total = NODES * THREADS_PER_NODE * ADDS * 2;
    assert_eq!(all.len(), total);
    let distinct: BTreeSet<_> = all.iter().map(IpNet::addr).collect();
    assert_eq!(distinct.len(), total, "no address handed out twice");
    run(async |store| {
        let ipam = Ipam::new(store);
        assert_consistent_on(&ipam).await;
        for t in 0..NODES * THREADS_PER_NODE {
            for i in 0..ADDS {
                let released = ipam
                    .release_by_handle(&format!("race-{t}-{i}"))
                    .await
                    .expect("release");
                assert_eq!(released.len(), 2);
            }
        }
        assert_consistent_on(&ipam).await;
        assert!(
            ipam.store()
                .list_handles()
                .await
                .expect("handles")
                .is_empty()
        );
        let blocks = ipam.store().list_blocks().await.expect("blocks");
        assert!(
            blocks
                .iter()
                .all(|b| b.value.allocations.iter().all(Option::is_none)),
            "every address free"
        );
    });
    wipe();
}

/// A steady-state dual-stack ADD costs 5 etcd round trips (it cost 9: 6 reads and 3 writes):
/// one transaction reads the config, pools, reservations and the host's affinities, one the
/// two affine blocks, then the handle and the two blocks are written. Nothing read ahead
/// outlives its request: what another writer changes between two requests (a reservation, a
/// pool disabled) is seen by the next one.
#[test]
fn a_steady_state_add_reads_in_two_round_trips() {
    let _t = turn();
    wipe();
    let host = "prefetch-node";
    run(async |store| {
        store
            .apply_pool(&IpPool::new("prefetch-v4", "10.245.0.0/24"))
            .await
            .expect("pool");
        store
            .apply_pool(&IpPool::new("prefetch-v6", "fd00:10:245::/120"))
            .await
            .expect("pool");
    });
    run(async |store| {
        let ipam = Ipam::new(store);
        let other = EtcdStore::new(connect(&config()).await.expect("connect"));
        let add = async |id: &str| {
            let before = ipam.store().requests();
            let got = ipam.auto_assign(&AutoAssignArgs::new(id, host, 1, 1)).await;
            (got, ipam.store().requests() - before)
        };
        // The first ADD claims a block per family.
        let (first, _) = add("prefetch-0").await;
        let first = first.expect("first ADD");
        let (got, requests) = add("prefetch-1").await;
        let got = got.expect("steady-state ADD");
        assert_eq!(requests, 5, "etcd round trips of a steady-state ADD");
        assert_eq!(
            got.ipv4,
            vec!["10.245.0.1/26".parse::<IpNet>().expect("net")]
        );
        assert_eq!(got.ipv6.len(), 1);
        assert_ne!(got.ipv6, first.ipv6);

        // Another writer reserves the next IPv4 address: the next ADD passes over it.
        put_resource(
            &other,
            keys::IP_RESERVATION,
            "prefetch-reserved",
            serde_json::Map::new(),
            serde_json::from_value(json!({"reservedCIDRs": ["10.245.0.2/32"]})).expect("spec"),
        )
        .await
        .expect("reservation");
        let (got, requests) = add("prefetch-2").await;
        assert_eq!(
            got.expect("ADD after the reservation").ipv4,
            vec!["10.245.0.3/26".parse::<IpNet>().expect("net")]
        );
        assert_eq!(requests, 5);

        // Another writer disables the IPv6 pool: the next dual-stack ADD finds no IPv6 pool.
        let mut v6 = IpPool::new("prefetch-v6", "fd00:10:245::/120");
        v6.spec.disabled = true;
        other.apply_pool(&v6).await.expect("disable");
        for id in ["prefetch-3", "prefetch-4"] {
            let (got, _) = add(id).await;
            assert!(
                matches!(&got, Err(IpamError::NoQualifiedPool { reason }) if reason.contains("IPv6")),
                "{got:?}"
            );
        }
    });
    wipe();
}

/// A dual-stack release by handle (DEL) reads the handle and the config in one transaction
/// and both blocks in another: 5 round trips with its 3 writes (it was 7: 4 reads). What it
/// released is free in its block, and a DEL of an unknown handle is one round trip.
#[test]
fn a_release_by_handle_reads_in_two_round_trips() {
    let _t = turn();
    wipe();
    let host = "release-node";
    run(async |store| {
        store
            .apply_pool(&IpPool::new("release-v4", "10.247.0.0/24"))
            .await
            .expect("pool");
        store
            .apply_pool(&IpPool::new("release-v6", "fd00:10:247::/120"))
            .await
            .expect("pool");
        let ipam = Ipam::new(store);
        ipam.auto_assign(&AutoAssignArgs::new("release-0", host, 1, 1))
            .await
            .expect("first ADD");
        let got = ipam
            .auto_assign(&AutoAssignArgs::new("release-1", host, 1, 1))
            .await
            .expect("ADD");
        let before = ipam.store().requests();
        let released = ipam.release_by_handle("release-1").await.expect("DEL");
        assert_eq!(
            ipam.store().requests() - before,
            5,
            "etcd round trips of a dual-stack DEL"
        );
        let mut want: Vec<std::net::IpAddr> =
            got.ipv4.iter().chain(&got.ipv6).map(IpNet::addr).collect();
        let mut released = released;
        want.sort();
        released.sort();
        assert_eq!(released, want);
        assert!(
            ipam.store()
                .get_handle("release-1")
                .await
                .expect("read")
                .is_none()
        );
        // Free in its block (a released ordinal goes to the end of the free list, as in
        // Calico, so the next ADD takes another one first).
        for net in got.ipv4.iter().chain(&got.ipv6) {
            let block = ipam
                .store()
                .get_block(&net.trunc())
                .await
                .expect("read")
                .expect("block");
            let ord = block.value.ordinal(net.addr()).expect("in its block");
            assert_eq!(
                block.value.allocations[ord as usize], None,
                "{net} still held"
            );
            assert!(block.value.unallocated.contains(&ord), "{net} not free");
        }

        let before = ipam.store().requests();
        assert!(
            ipam.release_by_handle("release-unknown")
                .await
                .expect("DEL of an unknown handle")
                .is_empty()
        );
        assert_eq!(ipam.store().requests() - before, 1);
    });
    wipe();
}

/// What `prefetch_request` read is taken once, by the first call of each kind; a write of the
/// store's own drops the copies it may change, and `end_request` drops the rest.
#[test]
fn what_is_read_ahead_is_taken_once_and_dropped_by_writes() {
    let _t = turn();
    wipe();
    run(async |store| {
        store
            .prefetch_request("ahead-node")
            .await
            .expect("prefetch");
        let n = store.requests();
        store.get_config().await.expect("config");
        store.list_reservations().await.expect("reservations");
        store.list_pools().await.expect("pools");
        store
            .list_host_affinities("ahead-node")
            .await
            .expect("affinities");
        assert_eq!(store.requests() - n, 0, "four answers from one transaction");
        store.list_pools().await.expect("pools again");
        assert_eq!(store.requests() - n, 1, "a second listing reads");

        // Another host's affinities are not this request's.
        store
            .prefetch_request("ahead-node")
            .await
            .expect("prefetch");
        let n = store.requests();
        store
            .list_host_affinities("other-node")
            .await
            .expect("list");
        assert_eq!(store.requests() - n, 1);

        // The store's own write drops the copy it changes (and only that one).
        store
            .apply_pool(&IpPool::new("ahead-v4", "10.246.0.0/24"))
            .await
            .expect("pool");
        let n = store.requests();
        let pools = store.list_pools().await.expect("pools");
        assert_eq!(store.requests() - n, 1, "the pools are read again");
        assert!(pools.pools.iter().any(|p| p.name == "ahead-v4"));
        store.get_config().await.expect("config");
        assert_eq!(store.requests() - n, 1, "the config copy stands");

        // The end of the request drops the rest.
        store.end_request();
        let n = store.requests();
        store.list_reservations().await.expect("reservations");
        assert_eq!(store.requests() - n, 1);
    });
    wipe();
}
