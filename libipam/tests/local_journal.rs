//! The local store's journal, in process: a group is one commit, a power loss keeps exactly
//! the synced prefix of the journal whatever the object files hold, and a store of the
//! earlier one-durable-file-per-object layout is taken over on first use, its stale
//! temporary files removed. (Killed writer processes: calico-ipam/tests/crash.rs.)

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{assert_consistent, block_on, pool};
use libipam::datastore::local::LocalStore;
use libipam::model::{AffinityState, BlockAffinity, IpamBlock, IpamHandle};
use libipam::{AutoAssignArgs, Datastore, Ipam};

/// Every object file (`*.json`, no dotfiles) below `root`, by relative path, with its bytes.
fn objects(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).expect("readdir").flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                walk(root, &p, out);
            } else if name.ends_with(".json") && !name.starts_with('.') {
                let rel = p.strip_prefix(root).expect("below root").to_owned();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Where the journal's log ends (the file is longer: zero-filled ahead), as `journal.view`
/// records it after each commit.
fn log_end(root: &Path) -> u64 {
    let view = std::fs::read_to_string(root.join("journal.view")).expect("journal.view");
    view.split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .expect("applied length")
}

fn dual_stack_store(root: &Path) -> LocalStore {
    let store = LocalStore::open(root).expect("open");
    block_on(async {
        store
            .apply_pool(&pool("v4", "10.244.0.0/24", 28))
            .await
            .expect("pool");
        store
            .apply_pool(&pool("v6", "fd00:10:244::/48", 124))
            .await
            .expect("pool");
    });
    store
}

#[test]
fn a_group_is_one_commit_that_others_see_only_once_committed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = LocalStore::open(dir.path()).expect("open");
    let reader = LocalStore::open(dir.path()).expect("open");
    let journal = dir.path().join("journal");
    let journal_bytes = || std::fs::read(&journal).expect("journal");
    let before = journal_bytes();

    writer.begin();
    let cidr = "10.0.0.0/26".parse().expect("cidr");
    let block = IpamBlock::new(cidr, Some("host:a".into()), 1).expect("block");
    block_on(writer.create_block(&block)).expect("create block");
    block_on(writer.create_affinity(&BlockAffinity::host("a", cidr, AffinityState::Pending)))
        .expect("create affinity");
    block_on(writer.create_handle(&IpamHandle::new("h"))).expect("create handle");
    // The group reads its own writes, listings included; nobody else does yet.
    assert!(block_on(writer.get_block(&cidr)).expect("get").is_some());
    assert_eq!(
        block_on(writer.list_block_cidrs()).expect("list"),
        vec![cidr]
    );
    assert_eq!(block_on(writer.list_affinities()).expect("list").len(), 1);
    assert_eq!(
        block_on(writer.create_handle(&IpamHandle::new("h"))),
        Err(libipam::DatastoreError::AlreadyExists)
    );
    assert!(block_on(reader.get_block(&cidr)).expect("get").is_none());
    assert!(block_on(reader.list_handles()).expect("list").is_empty());
    assert_eq!(
        journal_bytes(),
        before,
        "nothing is written before the commit"
    );
    assert!(objects(dir.path()).is_empty());

    // Nested groups commit with the outermost.
    writer.begin();
    block_on(
        writer.delete_handle(
            &block_on(writer.get_handle("h"))
                .expect("get")
                .expect("some"),
        ),
    )
    .expect("delete in group");
    block_on(writer.commit()).expect("inner commit");
    assert!(
        block_on(reader.list_block_cidrs())
            .expect("list")
            .is_empty()
    );
    block_on(writer.commit()).expect("commit");

    assert_eq!(
        block_on(reader.list_block_cidrs()).expect("list"),
        vec![cidr]
    );
    assert!(block_on(reader.get_handle("h")).expect("get").is_none());
    assert_eq!(
        objects(dir.path()).keys().cloned().collect::<Vec<_>>(),
        vec![
            PathBuf::from("affinities/a/10-0-0-0-26.json"),
            PathBuf::from("blocks/10-0-0-0-26.json"),
        ]
    );
    // A handle created and deleted in one group leaves nothing; the group was one record.
    assert_ne!(journal_bytes(), before);
}

#[test]
fn a_handle_dropped_with_an_open_group_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::open(dir.path()).expect("open");
    let journal = std::fs::read(dir.path().join("journal")).expect("journal");
    store.begin();
    block_on(store.create_handle(&IpamHandle::new("h"))).expect("create");
    drop(store); // like a process killed before its commit
    let again = LocalStore::open(dir.path()).expect("open");
    assert!(block_on(again.get_handle("h")).expect("get").is_none());
    assert_eq!(
        std::fs::read(dir.path().join("journal")).expect("journal"),
        journal
    );
    // The lock was released with the handle: the next writer is not blocked.
    block_on(again.create_handle(&IpamHandle::new("h2"))).expect("create");
}

/// Power loss: whatever the object files and `journal.view` hold afterwards, the store comes
/// back as exactly the state after the last synced commit. Every commit here is one record
/// synced on its own, so the log's end after operation `k` is what a power loss right
/// after `k` acknowledged keeps; the bytes after it (the next, unsynced record, cut anywhere,
/// or garbage) must be ignored.
#[test]
fn power_loss_keeps_exactly_the_synced_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("store");
    let ipam = Ipam::new(dual_stack_store(&root));
    let journal = root.join("journal");
    let view = || std::fs::read_to_string(root.join("journal.view")).expect("journal.view");
    let mut points = vec![(log_end(&root), objects(&root), view())];
    for i in 0..24 {
        if i % 3 == 2 {
            block_on(ipam.release_by_handle(&format!("h{}", i - 1))).expect("release");
        } else {
            let node = if i % 2 == 0 { "node-a" } else { "node-b" };
            block_on(ipam.auto_assign(&AutoAssignArgs::new(format!("h{i}"), node, 1, 1)))
                .expect("assign");
        }
        points.push((log_end(&root), objects(&root), view()));
    }
    let full = std::fs::read(&journal).expect("journal");
    let final_files = objects(&root);

    for (k, (len, expected, hint)) in points.iter().enumerate() {
        let len = *len as usize;
        let next = points
            .get(k + 1)
            .map(|p| p.0 as usize)
            .unwrap_or(full.len());
        // What the disk may hold after the crash: the synced prefix, then part of the
        // unsynced record or garbage.
        let tails: Vec<Vec<u8>> = vec![
            Vec::new(),
            full[len..(len + (next - len) / 2)].to_vec(),
            full[len..next.saturating_sub(1).max(len)].to_vec(),
            vec![0u8; 4096],
            (0..300u32).map(|x| (x * 7919 % 251) as u8).collect(),
        ];
        for (t, tail) in tails.iter().enumerate() {
            let crashed = dir.path().join(format!("crash-{k}-{t}"));
            std::fs::create_dir(&crashed).expect("mkdir");
            let mut bytes = full[..len].to_vec();
            bytes.extend_from_slice(tail);
            std::fs::write(crashed.join("journal"), &bytes).expect("journal");
            // The object files: newer than the journal, emptied, or missing, at random.
            for (n, (rel, data)) in final_files.iter().enumerate() {
                let path = crashed.join(rel);
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                match (n + t) % 3 {
                    0 => std::fs::write(&path, data).expect("write"),
                    1 => std::fs::write(&path, b"").expect("write"),
                    _ => {}
                }
            }
            // The hint the last commit wrote, from the boot before (it would be trusted in
            // this one: it names this journal and its length, and no record follows there
            // when the tail is empty), or one that does not parse.
            let stale_hint = if t % 2 == 0 {
                let mut words: Vec<&str> = hint.split_whitespace().collect();
                assert_ne!(words[1], "00000000-0000-0000-0000-000000000000");
                words[1] = "00000000-0000-0000-0000-000000000000";
                words.join(" ")
            } else {
                "v1 another-boot".to_owned()
            };
            std::fs::write(crashed.join("journal.view"), stale_hint).expect("view");

            let store = LocalStore::open(&crashed).expect("recover");
            assert_eq!(
                &objects(&crashed),
                expected,
                "after operation {k}, tail {t}: the synced prefix, no more, no less"
            );
            let ipam = Ipam::new(store);
            assert_consistent(&ipam);
            // The cut-off tail is gone: the next commit chains on the valid log.
            block_on(ipam.auto_assign(&AutoAssignArgs::new("after", "node-c", 1, 1)))
                .expect("assign after recovery");
            drop(ipam);
            std::fs::write(crashed.join("journal.view"), b"").expect("view");
            let again = Ipam::new(LocalStore::open(&crashed).expect("reopen"));
            assert_eq!(
                block_on(again.ips_by_handle("after")).expect("ips").len(),
                2,
                "a commit after recovery survives the next recovery"
            );
            std::fs::remove_dir_all(&crashed).expect("cleanup");
        }
    }
}

/// A store written by the earlier layout (each object file synced on its own, per-directory
/// locks, a `.<file>.tmp` per write, never removed when the writer was killed).
#[test]
fn an_earlier_store_is_taken_over_and_its_stale_temporaries_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("store");
    // Build the old layout by hand.
    let old = |rel: &str, value: serde_json::Value| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let env = serde_json::json!({"revision": "18f0c1.3", "value": value});
        std::fs::write(&path, serde_json::to_vec_pretty(&env).expect("json")).expect("write");
    };
    let cidr = "10.244.0.0/28".parse().expect("cidr");
    let mut block = IpamBlock::new(cidr, Some("host:node-a".into()), 1).expect("block");
    let attrs = BTreeMap::new();
    let got = block.auto_assign(1, Some("k8s-pod-network.old"), &attrs, |_| false);
    assert_eq!(got.len(), 1);
    let mut handle = IpamHandle::new("k8s-pod-network.old");
    handle.increment(&cidr, 1);
    old(
        "pools/v4.json",
        serde_json::to_value(pool("v4", "10.244.0.0/24", 28)).expect("json"),
    );
    old(
        "blocks/10-244-0-0-28.json",
        serde_json::to_value(&block).expect("json"),
    );
    old(
        "affinities/node-a/10-244-0-0-28.json",
        serde_json::to_value(BlockAffinity::host(
            "node-a",
            cidr,
            AffinityState::Confirmed,
        ))
        .expect("json"),
    );
    old(
        "handles/k8s-pod-network.old.json",
        serde_json::to_value(&handle).expect("json"),
    );
    for dir in ["", "pools", "blocks", "handles", "affinities/node-a"] {
        std::fs::write(root.join(dir).join(".lock"), b"").expect("lock");
    }
    // 53 temporaries of killed writers, as after issue 10's two kill runs.
    for i in 0..52 {
        std::fs::write(
            root.join(format!("handles/.k8s-pod-network.c{i}.json.tmp")),
            b"{\"revision\": \"1.1\", \"value\": {\"handleI",
        )
        .expect("tmp");
    }
    std::fs::write(root.join("blocks/.10-244-0-0-28.json.tmp"), b"").expect("tmp");
    let before = objects(&root);

    let store = LocalStore::open(&root).expect("open");
    assert!(root.join("journal").exists());
    assert_eq!(objects(&root), before, "the objects are kept as they are");
    let temps = store.temporaries().expect("temporaries");
    assert_eq!(temps.removed.len(), 53, "{temps:?}");
    assert!(temps.in_use.is_empty());
    assert!(
        temps
            .removed
            .iter()
            .all(|p| !p.exists() && p.to_string_lossy().ends_with(".tmp"))
    );
    assert_eq!(store.temporaries().expect("again"), Default::default());

    let ipam = Ipam::new(store);
    assert_consistent(&ipam);
    let held = block_on(ipam.ips_by_handle("k8s-pod-network.old")).expect("ips");
    assert_eq!(held.len(), 1);
    let new =
        block_on(ipam.auto_assign(&AutoAssignArgs::new("new", "node-a", 1, 0))).expect("assign");
    assert_ne!(new.ipv4[0].addr(), held[0].addr());
    drop(ipam);

    // The migrated objects are in the journal: they survive the loss of every object file.
    for rel in objects(&root).keys() {
        std::fs::remove_file(root.join(rel)).expect("remove");
    }
    std::fs::write(root.join("journal.view"), b"").expect("view");
    let ipam = Ipam::new(LocalStore::open(&root).expect("reopen"));
    assert_eq!(
        block_on(ipam.ips_by_handle("k8s-pod-network.old")).expect("ips"),
        held
    );
    assert_eq!(block_on(ipam.ips_by_handle("new")).expect("ips").len(), 1);
    assert_consistent(&ipam);
}

#[test]
fn a_journal_that_is_not_one_is_refused_with_the_way_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    LocalStore::open(dir.path()).expect("open");
    std::fs::write(
        dir.path().join("journal"),
        b"something else entirely, and long enough to be read as a header",
    )
    .expect("write");
    std::fs::write(dir.path().join("journal.view"), b"").expect("view");
    let err = LocalStore::open(dir.path()).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("journal") && msg.contains("move it aside"),
        "{msg}"
    );
}
