//! The file-backed store: compare-and-swap semantics, crash-safe files, many writers.

mod common;
mod contract;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{assert_consistent, block_on, pool};
use ipnet::IpNet;
use libipam::datastore::local::LocalStore;
use libipam::datastore::{DatastoreError, Versioned};
use libipam::model::{AffinityState, BlockAffinity, IpamBlock, IpamConfig, IpamHandle};
use libipam::retry::retry_on_conflict;
use libipam::{AutoAssignArgs, Datastore, Ipam, IpamError};

fn net(s: &str) -> IpNet {
    s.parse().expect("cidr")
}

/// Every object file parses as JSON with a revision and a value; no temporaries are left.
fn assert_files_valid(root: &Path) {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("readdir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(root, &mut files);
    for f in files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        assert!(
            !name.ends_with(".tmp"),
            "leftover temporary {}",
            f.display()
        );
        if matches!(name.as_str(), ".lock" | "journal" | "journal.view") {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&f).expect("read")).expect("valid JSON");
        assert!(
            v["revision"].is_string() && v.get("value").is_some(),
            "{}",
            f.display()
        );
    }
}

/// The Datastore contract every backend passes (tests/contract; the etcd store runs it against
/// a real cluster in etcd_store.rs), on the local and the memory store.
#[test]
fn the_datastore_contract_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let local = LocalStore::open(dir.path()).expect("open");
    let run = contract::Run::new();
    block_on(contract::all(&local, &run, contract::Reads::LeaveDeletes));
    block_on(contract::config(&local, &IpamConfig::default(), 30));
    assert_files_valid(dir.path());
    let memory = libipam::datastore::memory::MemoryStore::new();
    block_on(contract::all(&memory, &run, contract::Reads::LeaveDeletes));
    block_on(contract::config(&memory, &IpamConfig::default(), 30));
}

#[test]
fn compare_and_swap_semantics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::open(dir.path()).expect("open");
    let cidr = net("10.0.0.0/26");
    let block = IpamBlock::new(cidr, Some("host:a".into()), 1).expect("block");
    let rev = block_on(store.create_block(&block)).expect("create");
    assert_eq!(
        block_on(store.create_block(&block)),
        Err(DatastoreError::AlreadyExists)
    );

    let read = block_on(store.get_block(&cidr))
        .expect("get")
        .expect("some");
    assert_eq!(read.revision, rev);
    assert_eq!(read.value, block);
    let mut v = read.clone();
    v.value.sequence_number += 1;
    let rev2 = block_on(store.update_block(&v)).expect("update");
    assert_ne!(rev2, rev);
    assert_eq!(
        block_on(store.update_block(&read)),
        Err(DatastoreError::Conflict),
        "stale"
    );
    assert_eq!(
        block_on(store.delete_block(&read)),
        Err(DatastoreError::Conflict),
        "stale"
    );
    v.revision = rev2;
    block_on(store.delete_block(&v)).expect("delete");
    assert_eq!(
        block_on(store.update_block(&v)),
        Err(DatastoreError::NotFound)
    );
    assert!(block_on(store.get_block(&cidr)).expect("get").is_none());

    // A recreated object never matches a revision from its previous life.
    let rev3 = block_on(store.create_block(&block)).expect("recreate");
    assert_ne!(rev3, rev);
    assert_eq!(
        block_on(store.update_block(&read)),
        Err(DatastoreError::Conflict)
    );

    // Affinities: per-host directories, one listing per host.
    let a = BlockAffinity::host("node-a", cidr, AffinityState::Pending);
    block_on(store.create_affinity(&a)).expect("affinity");
    block_on(store.create_affinity(&BlockAffinity::host(
        "node-b",
        net("fd00::/122"),
        AffinityState::Confirmed,
    )))
    .expect("affinity");
    assert_eq!(
        block_on(store.list_host_affinities("node-a"))
            .expect("list")
            .len(),
        1
    );
    assert_eq!(block_on(store.list_affinities()).expect("list").len(), 2);
    assert!(
        dir.path()
            .join("affinities/node-a/10-0-0-0-26.json")
            .exists()
    );
    assert_eq!(
        block_on(store.list_block_cidrs()).expect("cidrs"),
        vec![cidr]
    );

    // Handles are stored under their lowercase name.
    let h = IpamHandle::new("K8s-Pod-Network.ABC");
    block_on(store.create_handle(&h)).expect("handle");
    let got = block_on(store.get_handle("k8s-pod-network.abc"))
        .expect("get")
        .expect("some");
    assert_eq!(got.value.handle_id, "K8s-Pod-Network.ABC");
    assert!(dir.path().join("handles/k8s-pod-network.abc.json").exists());

    // Config: defaults when absent, not persisted by reading.
    assert_eq!(
        block_on(store.get_config()).expect("config"),
        IpamConfig::default()
    );
    assert!(!dir.path().join("config.json").exists());

    // Objects soft-deleted by a Kubernetes-style writer read as absent.
    let mut deleted = block_on(store.get_block(&cidr))
        .expect("get")
        .expect("some");
    deleted.value.deleted = true;
    block_on(store.update_block(&deleted)).expect("soft delete");
    assert!(block_on(store.get_block(&cidr)).expect("get").is_none());
    assert!(block_on(store.list_blocks()).expect("list").is_empty());
    assert_files_valid(dir.path());
}

#[cfg(unix)]
/// Object files are JSON objects, and so is their `value`: serde alone would read
/// `["1.1", {...}]` field by field as a revision and a value. A read of such a file fails,
/// naming the file and what it holds.
#[test]
fn object_files_that_are_not_objects_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::open(dir.path()).expect("open");
    let cidr = net("10.0.0.0/30");
    let block = IpamBlock::new(cidr, None, 1).expect("block");
    block_on(store.create_block(&block)).expect("create");
    let path = dir.path().join("blocks/10-0-0-0-30.json");
    let good: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    assert_eq!(
        block_on(store.get_block(&cidr))
            .expect("read")
            .map(|b| b.value),
        Some(block)
    );
    let positional = serde_json::json!([good["revision"], good["value"]]);
    let value_as_array =
        serde_json::json!({"revision": good["revision"], "value": [good["value"]["cidr"]]});
    for (bad, says) in [
        (positional, "invalid type: sequence, expected a JSON object"),
        (
            value_as_array,
            "invalid type: sequence, expected a JSON object",
        ),
        (
            serde_json::json!(7),
            "invalid type: integer `7`, expected a JSON object",
        ),
        (
            serde_json::json!(null),
            "invalid type: null, expected a JSON object",
        ),
    ] {
        std::fs::write(&path, bad.to_string()).expect("write");
        let e = block_on(store.get_block(&cidr))
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("blocks/10-0-0-0-30.json: invalid object: ") && e.contains(says),
            "{bad}: {e}"
        );
    }
}

#[test]
fn directories_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("ipam");
    LocalStore::open(&root).expect("open");
    for sub in ["", "blocks", "handles", "affinities", "pools"] {
        let mode = std::fs::metadata(root.join(sub))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{sub}");
    }
}

/// Adds 1 to the count of a handle `n` times, with the retry loop.
fn increment_many(store: &LocalStore, n: u32) {
    let cidr = net("10.0.0.0/26");
    for _ in 0..n {
        block_on(retry_on_conflict(1000, "increment", async || {
            let mut h: Versioned<IpamHandle> = store
                .get_handle("counter")
                .await
                .map_err(|e| IpamError::Datastore {
                    op: "get".into(),
                    source: e,
                })?
                .ok_or_else(|| IpamError::Corrupt("counter missing".into()))?;
            h.value.increment(&cidr, 1);
            store
                .update_handle(&h)
                .await
                .map(|_| ())
                .map_err(|e| IpamError::Datastore {
                    op: "update".into(),
                    source: e,
                })
        }))
        .expect("increment");
    }
}

fn counter_value(store: &LocalStore) -> i64 {
    let h = block_on(store.get_handle("counter"))
        .expect("get")
        .expect("some");
    h.value.block.values().sum()
}

#[test]
fn concurrent_threads_never_lose_an_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::open(dir.path()).expect("open");
    block_on(store.create_handle(&IpamHandle::new("counter"))).expect("create");
    let threads: Vec<_> = (0..6)
        .map(|_| {
            // A handle is one writer: each thread opens its own.
            let root = dir.path().to_owned();
            std::thread::spawn(move || increment_many(&LocalStore::open(root).expect("open"), 30))
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(counter_value(&store), 180);
    assert_files_valid(dir.path());
}

const CHILD_ENV: &str = "LIBIPAM_LOCAL_STORE_CHILD";

/// Run by `concurrent_processes_never_lose_an_update` in child processes.
#[test]
#[ignore = "helper: runs only as a child process"]
fn child_process_increments() {
    let Ok(root) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = LocalStore::open(root).expect("open");
    increment_many(&store, 25);
}

#[test]
fn concurrent_processes_never_lose_an_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::open(dir.path()).expect("open");
    block_on(store.create_handle(&IpamHandle::new("counter"))).expect("create");
    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "child_process_increments",
                    "--ignored",
                    "--quiet",
                ])
                .env(CHILD_ENV, dir.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().expect("wait").success());
    }
    assert_eq!(counter_value(&store), 100);
    assert_files_valid(dir.path());
}

#[test]
fn allocator_on_local_store_from_many_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::open(dir.path()).expect("open");
    block_on(async {
        store
            .apply_pool(&pool("v4", "10.244.0.0/24", 28))
            .await
            .expect("pool");
        store
            .apply_pool(&pool("v6", "fd00:10:244::/48", 122))
            .await
            .expect("pool");
    });
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let root = dir.path().to_owned();
            std::thread::spawn(move || {
                // Each thread is its own "process": its own store handle and allocator.
                let ipam = Ipam::new(LocalStore::open(root).expect("open"));
                let host = format!("node-{}", t % 2);
                (0..10)
                    .map(|i| {
                        let args = AutoAssignArgs::new(format!("h-{t}-{i}"), &host, 1, 1);
                        block_on(ipam.auto_assign(&args)).expect("assign").all()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().expect("thread").into_iter().flatten());
    }
    assert_eq!(all.len(), 80);
    let distinct: BTreeSet<_> = all.iter().map(IpNet::addr).collect();
    assert_eq!(distinct.len(), 80, "no address handed out twice");
    let ipam = Ipam::new(LocalStore::open(dir.path()).expect("open"));
    assert_consistent(&ipam);
    for t in 0..4 {
        for i in 0..10 {
            let released =
                block_on(ipam.release_by_handle(&format!("h-{t}-{i}"))).expect("release");
            assert_eq!(released.len(), 2);
        }
    }
    assert_consistent(&ipam);
    assert!(
        block_on(ipam.store().list_handles())
            .expect("handles")
            .is_empty()
    );
    assert_files_valid(dir.path());
}

/// Steady-state ADD/DEL cost with an empty store vs. 5,000 blocks of 1,000 simulated nodes.
/// ADDs alternate between the two stores so that disk-latency drift hits both equally.
/// `cargo test -p libipam --test local_store -- --ignored --nocapture bench_`
#[test]
#[ignore = "benchmark"]
fn bench_add_cost_is_flat_in_store_size() {
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let setup = |prefill: u32| {
        let dir = tempfile::tempdir_in(&base).expect("tempdir");
        let store = LocalStore::open(dir.path()).expect("open");
        block_on(async {
            store
                .apply_pool(&pool("v4", "10.0.0.0/8", 26))
                .await
                .expect("pool");
            store
                .apply_pool(&pool("v6", "fd00:10:244::/48", 122))
                .await
                .expect("pool");
        });
        // Other nodes' blocks and affinities, in one commit.
        store.begin();
        for i in 0..prefill {
            let host = format!("sim-{}", i % 1000);
            let v4 = IpNet::new(
                std::net::Ipv4Addr::from(0x0a80_0000u32 + (i << 6)).into(),
                26,
            )
            .expect("cidr");
            let b = IpamBlock::new(v4, Some(format!("host:{host}")), 1).expect("block");
            let a = BlockAffinity::host(&host, v4, AffinityState::Confirmed);
            block_on(store.create_block(&b)).expect("block");
            block_on(store.create_affinity(&a)).expect("affinity");
        }
        block_on(store.commit()).expect("commit");
        let ipam = Ipam::new(store);
        block_on(ipam.auto_assign(&AutoAssignArgs::new("warm", "node-x", 1, 1))).expect("warm");
        (dir, ipam)
    };
    let (_d0, empty) = setup(0);
    let (_d1, full) = setup(5000);
    let n = 40;
    let (mut add0, mut add5k, mut del0, mut del5k) = (vec![], vec![], vec![], vec![]);
    let timed = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64() * 1000.0
    };
    for i in 0..n {
        let args = AutoAssignArgs::new(format!("h{i}"), "node-x", 1, 1);
        add0.push(timed(&mut || {
            block_on(empty.auto_assign(&args)).expect("add");
        }));
        add5k.push(timed(&mut || {
            block_on(full.auto_assign(&args)).expect("add");
        }));
    }
    for i in 0..n {
        let h = format!("h{i}");
        del0.push(timed(&mut || {
            block_on(empty.release_by_handle(&h)).expect("del");
        }));
        del5k.push(timed(&mut || {
            block_on(full.release_by_handle(&h)).expect("del");
        }));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "dual-stack median: empty store ADD {:.2} ms DEL {:.2} ms; 5000 blocks ADD {:.2} ms DEL {:.2} ms",
        median(&mut add0),
        median(&mut del0),
        median(&mut add5k),
        median(&mut del5k)
    );
}

/// Cost of one local-store commit (one journal record, one `fdatasync`) beside a bare write +
/// `fsync` of a small file.
#[test]
#[ignore = "benchmark"]
fn bench_fsync_cost() {
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .expect("tempdir");
    let store = LocalStore::open(dir.path()).expect("open");
    let h = IpamHandle::new("bench");
    let mut v = Versioned {
        revision: block_on(store.create_handle(&h)).expect("create"),
        value: h,
    };
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        v.revision = block_on(store.update_handle(&v)).expect("update");
    }
    println!(
        "commit: {:.3} ms each",
        t.elapsed().as_secs_f64() * 1000.0 / f64::from(n)
    );
    let f = dir.path().join("raw");
    let t = Instant::now();
    for _ in 0..n {
        std::fs::write(&f, b"x").expect("write");
        std::fs::File::open(&f)
            .and_then(|f| f.sync_all())
            .expect("fsync");
    }
    println!(
        "bare fsync: {:.3} ms each",
        t.elapsed().as_secs_f64() * 1000.0 / f64::from(n)
    );
}
