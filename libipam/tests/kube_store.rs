//! `KubeStore` against the real kube-apiserver of scripts/kube-testenv (KUBE_TESTENV_DIR),
//! as the calico-cni user: the Datastore contract every backend passes (tests/contract: each
//! kind's CAS, AlreadyExists, NotFound, two-step deletes, soft-deleted objects read as absent,
//! listings; pools and the configuration as the admin) and Calico's names for long hostnames.

mod contract;

use std::path::PathBuf;

use contract::Run;

use ipnet::IpNet;
use libipam::datastore::kube::{ApiGroup, CacheConfig, KubeStore, connect};
use libipam::datastore::{Datastore, DatastoreError, Versioned};
use libipam::model::{AffinityState, BlockAffinity, IpamBlock, IpamHandle, host_affinity};
use libipam::names;

fn kubeconfig() -> PathBuf {
    let dir = std::env::var_os("KUBE_TESTENV_DIR").unwrap_or_else(|| {
        panic!(
            "KUBE_TESTENV_DIR is not set: these tests need a real kube-apiserver \
             (scripts/test.sh starts one; or scripts/kube-testenv up DIR)"
        )
    });
    PathBuf::from(dir).join("kubeconfig-cni")
}

fn run<F: Future>(f: impl FnOnce(KubeStore) -> F) -> F::Output {
    run_with(&kubeconfig(), f)
}

fn run_with<F: Future>(kubeconfig: &std::path::Path, f: impl FnOnce(KubeStore) -> F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let conn = connect(kubeconfig, "libipam-tests").await.expect("connect");
        f(KubeStore::new(conn)).await
    })
}

fn unique() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000)
        .unwrap_or(0);
    format!("{}x{t}", std::process::id())
}

/// A block CIDR of its own for each test run.
fn cidr(second_octet: u8) -> IpNet {
    let n = (std::process::id() % 250) as u8;
    format!("10.{second_octet}.{n}.0/28").parse().expect("cidr")
}

/// `f` with a store as the admin (system:masters): pools and the IPAM configuration are
/// an operator's to write, not the plugin's.
fn run_as_admin<F: Future>(f: impl FnOnce(KubeStore) -> F) -> F::Output {
    run_with(&kubeconfig().with_file_name("kubeconfig"), f)
}

/// The Datastore contract of every backend (tests/contract), as the calico-cni user: each
/// kind's compare-and-swap (a delete is one DELETE with a `resourceVersion` precondition),
/// soft-deleted objects (another writer's first half of a two-step delete) read as absent with
/// the delete finished by the read, the listings.
#[test]
fn contract_compare_and_swap_of_each_kind() {
    run(async |store| {
        let r = Run::new();
        contract::compare_and_swap::<contract::Blocks, _>(&store, &r).await;
        contract::compare_and_swap::<contract::Handles, _>(&store, &r).await;
        contract::compare_and_swap::<contract::Affinities, _>(&store, &r).await;
    });
}

#[test]
fn contract_soft_deleted_objects_read_as_absent_and_the_delete_is_finished() {
    run(async |store| {
        contract::soft_deleted_objects_read_as_absent(
            &store,
            &Run::new(),
            contract::Reads::FinishDeletes,
        )
        .await
    });
}

#[test]
fn contract_listings() {
    run(async |store| {
        let r = Run::new();
        contract::block_cidrs(&store, &r).await;
        contract::affinity_listings(&store, &r).await;
    });
}

/// Pools and the configuration, as the admin. The configuration is reset to what it was;
/// `ipCooldownSeconds` is ours and Calico's CRD prunes it, so it stays 0 here.
#[test]
fn contract_pools_and_config() {
    run_as_admin(async |store| {
        contract::pools(&store, &Run::new()).await;
        let before = store.get_config().await.expect("config");
        contract::config(&store, &before, 0).await;
    });
}

#[test]
fn handles_are_named_by_their_lowercase_id() {
    run(async |store| {
        let id = format!("K8s-Pod-Network.MixedCase{}", unique());
        let mut h = IpamHandle::new(&id);
        h.increment(&cidr(97), 1);
        let rev = store.create_handle(&h).await.expect("create");
        let got = store
            .get_handle(&id.to_lowercase())
            .await
            .expect("get")
            .expect("found by the lower-cased name");
        assert_eq!(got.value.handle_id, id, "spec.handleID keeps its case");
        assert_eq!(got.revision, rev);
        assert!(
            store
                .list_handles()
                .await
                .expect("list")
                .iter()
                .any(|x| x.value.handle_id == id)
        );
        store.delete_handle(&got).await.expect("delete");
        assert!(store.get_handle(&id).await.expect("get").is_none());
        assert_eq!(
            store.delete_handle(&got).await,
            Err(DatastoreError::NotFound)
        );
    });
}

#[test]
fn long_hostnames_get_calicos_hashed_affinity_names() {
    run(async |store| {
        let cidr = cidr(98);
        // Two hostnames that differ only past the cut: distinct objects, both listable by
        // the hostname-hash label.
        let base = "n".repeat(240);
        let hosts = [
            format!("{base}a{}", unique()),
            format!("{base}b{}", unique()),
        ];
        let mut written: Vec<Versioned<BlockAffinity>> = Vec::new();
        for host in &hosts {
            let a = BlockAffinity::host(host, cidr, AffinityState::Pending);
            let name = names::affinity_name(host, &cidr);
            assert!(name.len() < 253, "{}", name.len());
            let rev = store.create_affinity(&a).await.expect("create");
            written.push(Versioned {
                value: a,
                revision: rev,
            });
        }
        assert_ne!(
            names::affinity_name(&hosts[0], &cidr),
            names::affinity_name(&hosts[1], &cidr)
        );
        for (host, w) in hosts.iter().zip(&written) {
            let listed = store.list_host_affinities(host).await.expect("list");
            assert_eq!(listed.len(), 1, "{host}");
            assert_eq!(listed[0].value.node, *host);
            let got = store
                .get_affinity(host, &cidr)
                .await
                .expect("get")
                .expect("exists");
            assert_eq!(got.revision, w.revision);
        }
        let mut confirmed = written[0].clone();
        confirmed.value.state = AffinityState::Confirmed;
        confirmed.revision = store.update_affinity(&confirmed).await.expect("confirm");
        assert_eq!(
            store.update_affinity(&written[0]).await,
            Err(DatastoreError::Conflict)
        );
        store.delete_affinity(&confirmed).await.expect("delete");
        store.delete_affinity(&written[1]).await.expect("delete");
        for host in &hosts {
            assert!(
                store
                    .get_affinity(host, &cidr)
                    .await
                    .expect("get")
                    .is_none()
            );
        }
    });
}

/// Which CRDs the test apiserver was started with (`KUBE_TESTENV_CRDS` in its env file; the
/// project's own when absent).
fn installed_crds() -> String {
    let dir = kubeconfig().parent().map(PathBuf::from).unwrap_or_default();
    std::fs::read_to_string(dir.join("env"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("KUBE_TESTENV_CRDS="))
        .unwrap_or_default()
        .to_string()
}

/// scripts/test.sh runs the Kubernetes-datastore tests twice: with the project's CRDs and with
/// Calico v3.31.7's own `crds.yaml`. Calico's schema has no `affinityClaimTime` on IPAMBlock,
/// so the API server prunes it; this test proves the pruning really happens in that run (and
/// not in the other), so the rest of the suite passing there shows nothing relies on the field.
#[test]
fn calicos_v3_31_schema_prunes_the_block_claim_time() {
    let calicos = installed_crds().contains("v3.31");
    run(async |store| {
        let cidr = cidr(96);
        if let Some(old) = store.get_block(&cidr).await.expect("get") {
            store.delete_block(&old).await.expect("clean up");
        }
        let block = IpamBlock::new(cidr, Some(host_affinity("n1")), 1).expect("block");
        assert!(block.affinity_claim_time.is_some(), "a new block has one");
        store.create_block(&block).await.expect("create");
        let read = store.get_block(&cidr).await.expect("get").expect("exists");
        if calicos {
            assert_eq!(
                read.value.affinity_claim_time, None,
                "Calico v3.31's IPAMBlock schema should have pruned affinityClaimTime"
            );
        } else {
            assert_eq!(read.value.affinity_claim_time, block.affinity_claim_time);
        }
        // Everything else came back as written.
        let mut expected = block.clone();
        expected.affinity_claim_time = read.value.affinity_claim_time.clone();
        assert_eq!(read.value, expected);
        store.delete_block(&read).await.expect("delete");
    });
}

/// The API group is the one Calico would choose on this server: `projectcalico.org/v3` where
/// only Calico v3.32's v3 CRDs are installed (scripts/test.sh's `calico-v3-crds.yaml` run),
/// `crd.projectcalico.org/v1` everywhere else. An affinity's soft delete (a boolean `deleted`
/// in v3, a string in v1) is written, read as absent and finished in either.
#[test]
fn the_api_group_is_found_as_calico_finds_it() {
    let v3 = installed_crds().contains("calico-v3-crds");
    run(async |store| {
        let group = store.api_group().await.expect("discovery");
        assert_eq!(group, if v3 { ApiGroup::V3 } else { ApiGroup::V1 });
        let cidr = cidr(97);
        let host = format!("grp{}", unique());
        let a = BlockAffinity::host(&host, cidr, AffinityState::Confirmed);
        let rev = store.create_affinity(&a).await.expect("create");
        let mut marked = Versioned {
            value: a.clone(),
            revision: rev,
        };
        marked.value.deleted = true;
        store.update_affinity(&marked).await.expect("mark deleted");
        assert!(
            store
                .get_affinity(&host, &cidr)
                .await
                .expect("get")
                .is_none()
        );
        // The read finished the delete: the name is free again.
        let rev = store.create_affinity(&a).await.expect("recreate");
        store
            .delete_affinity(&Versioned {
                value: a,
                revision: rev,
            })
            .await
            .expect("delete");
    });
}

/// The `requestURI`s of the LISTs of IPAMBlocks that the user agent `agent` made, from the
/// test apiserver's audit log (waiting a little for the log to catch up).
fn block_lists_by(agent: &str, want: usize) -> Vec<String> {
    let log = kubeconfig().with_file_name("audit.log");
    let mut found = Vec::new();
    for _ in 0..50 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| {
                e["stage"] == "ResponseComplete"
                    && e["userAgent"] == agent
                    && e["verb"] == "list"
                    && e["requestURI"]
                        .as_str()
                        .is_some_and(|u| u.contains("/ipamblocks"))
            })
            .filter_map(|e| e["requestURI"].as_str().map(str::to_owned))
            .collect();
        if found.len() >= want {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    found
}

/// The block names a claim walks are listed from the API server's watch cache
/// (`resourceVersion=0`: no etcd read, no wait for the cache), and consistently once a block
/// create found its name taken (the cached listing had missed that block).
#[test]
fn block_names_come_from_the_watch_cache_until_a_create_finds_one_missing() {
    let agent = format!("libipam-tests-blocklist-{}", unique());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = KubeStore::new(connect(&kubeconfig(), &agent).await.expect("connect"));
        let cidr = cidr(95);
        let block = IpamBlock::new(cidr, Some(host_affinity("n1")), 1).expect("block");
        let rev = store.create_block(&block).await.expect("create");
        store.list_block_cidrs().await.expect("cached list");
        assert_eq!(
            store.create_block(&block).await,
            Err(DatastoreError::AlreadyExists)
        );
        let listed = store.list_block_cidrs().await.expect("consistent list");
        assert!(listed.contains(&cidr), "{listed:?}");
        store.list_block_cidrs().await.expect("cached again");
        store
            .delete_block(&Versioned {
                value: block,
                revision: rev,
            })
            .await
            .expect("delete");
    });
    let lists = block_lists_by(&agent, 3);
    assert_eq!(lists.len(), 3, "{lists:?}");
    assert!(lists[0].contains("resourceVersion=0"), "{lists:?}");
    assert!(!lists[1].contains("resourceVersion"), "{lists:?}");
    assert!(lists[2].contains("resourceVersion=0"), "{lists:?}");
}

/// A store with the node cache of `node` in `path`.
async fn cached_store(path: &std::path::Path, node: &str) -> KubeStore {
    let conn = connect(&kubeconfig(), "libipam-tests")
        .await
        .expect("connect");
    KubeStore::with_cache(
        conn,
        &CacheConfig {
            path: path.to_path_buf(),
            node: node.to_owned(),
            // Zero: no timed entry is served; the affinity list is kept all the same.
            ttl: std::time::Duration::ZERO,
        },
    )
}

/// The node cache keeps this host's affinity list with no expiry (also between processes, and
/// with a zero TTL), and drops it on evidence that it is wrong: a block it names as confirmed
/// read as another host's, or refused with 404 (gone). A fresh listing puts it back.
#[test]
fn the_kept_affinity_list_is_dropped_when_a_block_it_names_is_someone_elses_or_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.json");
    let host = format!("keep{}", unique());
    let cidr = cidr(95);
    run(async |admin| {
        if let Some(old) = admin.get_block(&cidr).await.expect("get") {
            admin.delete_block(&old).await.expect("clean up");
        }
        let store = cached_store(&path, &host).await;
        let aff = BlockAffinity::host(&host, cidr, AffinityState::Confirmed);
        let aff_rev = store.create_affinity(&aff).await.expect("affinity");
        let mine = IpamBlock::new(cidr, Some(host_affinity(&host)), 1).expect("block");
        store.create_block(&mine).await.expect("block");
        assert_eq!(
            store.list_host_affinities(&host).await.expect("list").len(),
            1
        );
        drop(store);

        // Another process of the node: the list is served from the file.
        let store = cached_store(&path, &host).await;
        let kept = store
            .cached_host_affinities(&host)
            .expect("kept with no expiry");
        assert_eq!(kept.len(), 1);
        assert!(store.cached_host_affinities("another-node").is_none());
        let stale = store
            .get_block_for_update(&cidr)
            .await
            .expect("copy")
            .expect("kept block");

        // Taken over by another host (deleted and claimed again, as calico#11149 does).
        let now = admin.get_block(&cidr).await.expect("get").expect("block");
        admin.delete_block(&now).await.expect("delete");
        let theirs = IpamBlock::new(cidr, Some(host_affinity("someone-else")), 1).expect("b");
        admin.create_block(&theirs).await.expect("recreate");
        let read = store.get_block(&cidr).await.expect("get").expect("block");
        assert!(!read.value.is_affine_to(&host));
        assert!(
            store.cached_host_affinities(&host).is_none(),
            "a listed block read as another host's drops the list"
        );

        // Listed again; then the block is deleted and a write from the old copy gets 404.
        assert_eq!(
            store.list_host_affinities(&host).await.expect("list").len(),
            1
        );
        assert!(store.cached_host_affinities(&host).is_some());
        admin.delete_block(&read).await.expect("delete");
        assert_eq!(
            store.update_block(&stale).await,
            Err(DatastoreError::NotFound)
        );
        assert!(
            store.cached_host_affinities(&host).is_none(),
            "a 404 writing a listed block drops the list"
        );
        store
            .delete_affinity(&Versioned {
                value: aff,
                revision: aff_rev,
            })
            .await
            .expect("clean up");
    });
}
