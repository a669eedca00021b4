//! calico-ipam killed with SIGKILL at every step of a local-store commit, writers racing and
//! killed at random steps, and a power loss after such a race: `check` stays clean, no
//! acknowledged allocation or release is lost, no address is given twice, and temporary files
//! are swept only when nobody is writing them. The crash points are the debug build's hooks
//! (libipam/src/datastore/local/hooks.rs); DESIGN.md ("LocalStore: durability") says what each
//! one leaves behind.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::run::{spawn_with_stdin, wait_within};
use common::{BIN, Store, added_cidrs, cni, seed_pools, text};
use libipam::Ipam;
use libipam::datastore::local::LocalStore;

/// Every point a commit passes, in order (hooks.rs).
const POINTS: [&str; 8] = [
    "before-append",
    "mid-append",
    "after-append",
    "after-sync",
    "after-tmp-write",
    "mid-apply",
    "after-apply",
    "after-view-state",
];
const COMPACTION_POINTS: [&str; 2] = ["compact-written", "compact-renamed"];

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn handle(cid: &str) -> String {
    format!("k8s-pod-network.{cid}")
}

/// The addresses of a successful ADD's result.
fn addresses(out: &Output) -> Vec<IpAddr> {
    added_cidrs(out).iter().map(|c| c.addr()).collect()
}

fn assert_killed(out: &Output, what: &str) {
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{what} was to die with SIGKILL: {}",
        text(out)
    );
}

fn assert_check_clean(store: &Store) -> String {
    let out = store.cli(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("Check complete; found 0 problems."),
        "check: {}",
        text(&out)
    );
    stdout
}

/// What the store says a handle holds (fresh reads, from the test process).
fn held(root: &Path, cid: &str) -> BTreeSet<IpAddr> {
    let ipam = Ipam::new(LocalStore::open(root).expect("open"));
    block_on(ipam.ips_by_handle(&handle(cid)))
        .expect("ips")
        .iter()
        .map(|n| n.addr())
        .collect()
}

fn temporaries(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("readdir").flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                walk(&p, out);
            } else if name.ends_with(".tmp") || name == "journal.new" {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

/// One scenario of `killed_at_every_step`: a pod `a` acknowledged, then the operation under
/// test killed at `point`, then the runtime's retries and more pods, all checked.
fn kill_one(point: &str, verb: &str, first_on_node: bool, compact: bool) {
    let what = format!("{verb} killed at {point} (first on node: {first_on_node})");
    let store = Store::new();
    store.apply_pools(&seed_pools());
    let conf = store.netconf("1.0.0", "node-a").to_string();
    let add = |cid: &str, env: &[(&str, &str)]| cni("ADD", cid, env, conf.as_bytes());
    let crash: Vec<(&str, &str)> = {
        let mut e = vec![("CALICO_IPAM_CRASH_AT", point)];
        if compact {
            e.push(("CALICO_IPAM_COMPACT_BYTES", "1"));
        }
        e
    };

    let mut a = Vec::new();
    if !first_on_node {
        a = addresses(&add("a", &[]));
    }
    match verb {
        "ADD" => assert_killed(&add("b", &crash), &what),
        _ => {
            addresses(&add("b", &[]));
            assert_killed(&cni("DEL", "b", &crash, conf.as_bytes()), &what);
        }
    }
    assert_check_clean(&store);
    assert!(
        temporaries(&store.path()).is_empty(),
        "{what}: temporaries left after the next open: {:?}",
        temporaries(&store.path())
    );
    if first_on_node {
        a = addresses(&add("a", &[]));
    }
    // The acknowledged pod is intact: a repeated ADD returns what its handle holds.
    assert_eq!(addresses(&add("a", &[])), a, "{what}: pod a changed");
    assert_eq!(
        held(&store.path(), "a"),
        a.iter().copied().collect(),
        "{what}"
    );
    // The killed operation happened wholly or not at all (DESIGN.md's table: killed before
    // its record is whole in the journal, not at all; from then on, wholly, since the
    // repair syncs the record and applies it); the runtime retries it.
    let b_now = held(&store.path(), "b");
    let happened = !matches!(point, "before-append" | "mid-append");
    let b_expected = if happened == (verb == "ADD") { 2 } else { 0 };
    assert_eq!(
        b_now.len(),
        b_expected,
        "{what}: b holds {b_now:?}, not the state {} the operation",
        if happened { "after" } else { "before" }
    );
    let b = match verb {
        "ADD" => addresses(&add("b", &[])),
        _ => {
            let del = cni("DEL", "b", &[], conf.as_bytes());
            assert!(del.status.success(), "{what}: DEL b again: {}", text(&del));
            assert!(held(&store.path(), "b").is_empty(), "{what}");
            Vec::new()
        }
    };
    let c = addresses(&add("c", &[]));
    let all: Vec<IpAddr> = a.iter().chain(&b).chain(&c).copied().collect();
    let distinct: BTreeSet<IpAddr> = all.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        all.len(),
        "{what}: an address given twice: {all:?}"
    );
    for cid in ["a", "b", "c"] {
        let del = cni("DEL", cid, &[], conf.as_bytes());
        assert!(del.status.success(), "{what}: DEL {cid}: {}", text(&del));
    }
    assert_check_clean(&store);
    for pool in store.show()["pools"].as_array().expect("pools") {
        assert_eq!(pool["inUse"], 0, "{what}: {pool}");
    }
}

#[test]
fn killed_at_every_step_of_a_commit() {
    for point in POINTS {
        for (verb, first) in [("ADD", false), ("ADD", true), ("DEL", false)] {
            kill_one(point, verb, first, false);
        }
    }
    for point in COMPACTION_POINTS {
        kill_one(point, "ADD", false, true);
        kill_one(point, "DEL", false, true);
    }
}

/// The syncs one plugin call made: `CALICO_IPAM_SYNC_LOG` gets a line per journal sync
/// (`fdatasync` of a commit or a repair, and the syncs of a compaction or migration).
fn syncs_of(conf: &str, verb: &str, cid: &str, log: &Path) -> (Output, usize) {
    let _ = std::fs::remove_file(log);
    let env = [("CALICO_IPAM_SYNC_LOG", log.to_str().expect("utf8"))];
    let out = cni(verb, cid, &env, conf.as_bytes());
    let n = std::fs::read_to_string(log)
        .map(|s| s.lines().count())
        .unwrap_or(0);
    (out, n)
}

/// DESIGN.md "So an ADD or a DEL makes exactly one `fdatasync`": the first dual-stack ADD on
/// a node (two affinities and two blocks claimed, a handle), a steady-state one (two blocks,
/// a handle), a DEL; a repeated ADD and the DEL of an unknown container write nothing and
/// sync nothing.
#[test]
fn an_add_and_a_del_make_one_journal_sync_each() {
    let store = Store::new();
    store.apply_pools(&seed_pools());
    let conf = store.netconf("1.0.0", "node-a").to_string();
    let log = store.dir.path().join("sync.log");
    let blocks = || store.show()["blocks"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(blocks(), 0);
    let cases = [
        ("ADD", "a", 1, "first ADD on the node"),
        ("ADD", "b", 1, "steady-state ADD"),
        ("ADD", "b", 0, "repeated ADD"),
        ("DEL", "a", 1, "DEL"),
        ("DEL", "never-added", 0, "DEL of an unknown container"),
        ("DEL", "b", 1, "DEL of the last pod"),
    ];
    for (verb, cid, want, what) in cases {
        let (out, n) = syncs_of(&conf, verb, cid, &log);
        assert!(out.status.success(), "{what}: {}", text(&out));
        assert_eq!(n, want, "{what}: journal syncs");
        if what == "first ADD on the node" {
            assert_eq!(blocks(), 2, "the first ADD claimed a block per family");
        }
    }
    assert_check_clean(&store);
}

/// A deterministic stream of small numbers.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// What a race acknowledged.
#[derive(Default)]
struct Acked {
    /// Pods whose ADD was acknowledged and never DELed since, with their addresses.
    live: BTreeMap<String, Vec<IpAddr>>,
    /// Pods whose DEL was acknowledged after their ADD (and not ADDed again).
    deleted: BTreeSet<String>,
}

/// `workers` threads, each running ADDs and DELs as processes with its own host lock file (so
/// only the store lock orders them), about a third killed at a random point. Returns what was
/// acknowledged; the last operation is an ADD killed after its append (an unsynced tail).
fn race(store: &Store, workers: u64, rounds: u64, extra_env: &[(&str, &str)]) -> Acked {
    let acked = Arc::new(Mutex::new(Acked::default()));
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let mut conf = store.netconf("1.0.0", if w % 2 == 0 { "node-a" } else { "node-b" });
            conf["ipam_lock_file"] = store
                .dir
                .path()
                .join(format!("lock-{w}"))
                .to_str()
                .expect("utf8")
                .into();
            let conf = conf.to_string();
            let acked = acked.clone();
            let extra: Vec<(String, String)> = extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            std::thread::spawn(move || {
                let mut rng = Lcg(w + 1);
                let mut mine: Vec<String> = Vec::new();
                for i in 0..rounds {
                    let crash = (rng.next(3) == 0).then(|| {
                        let all: Vec<&str> =
                            POINTS.iter().chain(&COMPACTION_POINTS).copied().collect();
                        format!(
                            "{}:{}",
                            all[rng.next(all.len() as u64) as usize],
                            1 + rng.next(2)
                        )
                    });
                    let mut env: Vec<(&str, &str)> = extra
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    if let Some(c) = &crash {
                        env.push(("CALICO_IPAM_CRASH_AT", c));
                    }
                    let del = !mine.is_empty() && rng.next(3) == 0;
                    if del {
                        let cid = mine.remove(rng.next(mine.len() as u64) as usize);
                        let out = cni("DEL", &cid, &env, conf.as_bytes());
                        let mut a = acked.lock().expect("acked");
                        a.live.remove(&cid);
                        if out.status.success() {
                            a.deleted.insert(cid);
                        } else {
                            assert_eq!(out.status.signal(), Some(9), "DEL {cid}: {}", text(&out));
                        }
                    } else {
                        let cid = format!("w{w}-{i}");
                        let out = cni("ADD", &cid, &env, conf.as_bytes());
                        if out.status.success() {
                            acked
                                .lock()
                                .expect("acked")
                                .live
                                .insert(cid.clone(), addresses(&out));
                            mine.push(cid);
                        } else {
                            // Killed before a point it never reached (a compaction point
                            // without compaction) would have succeeded: so it was killed.
                            assert_eq!(out.status.signal(), Some(9), "ADD {cid}: {}", text(&out));
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("worker");
    }
    // Leave an unsynced record at the end of the journal.
    let conf = store.netconf("1.0.0", "node-a").to_string();
    let mut env: Vec<(&str, &str)> = extra_env.to_vec();
    env.push(("CALICO_IPAM_CRASH_AT", "after-append"));
    assert_killed(
        &cni("ADD", "unsynced", &env, conf.as_bytes()),
        "the last ADD",
    );
    Arc::try_unwrap(acked)
        .map_err(|_| "shared")
        .expect("acked")
        .into_inner()
        .expect("acked")
}

/// Every acknowledged ADD still holds exactly its addresses, no two hold the same one, and
/// every acknowledged DEL holds nothing.
fn assert_acked_intact(root: &Path, acked: &Acked) {
    let mut seen = BTreeSet::new();
    for (cid, ips) in &acked.live {
        assert_eq!(
            held(root, cid),
            ips.iter().copied().collect(),
            "acknowledged ADD {cid} lost or changed"
        );
        for ip in ips {
            assert!(seen.insert(*ip), "{ip} given twice");
        }
    }
    for cid in &acked.deleted {
        assert!(held(root, cid).is_empty(), "acknowledged DEL {cid} undone");
    }
}

#[test]
fn racing_writers_killed_at_random_steps() {
    let store = Store::new();
    store.apply_pools(&seed_pools());
    let acked = race(&store, 6, 14, &[("CALICO_IPAM_COMPACT_BYTES", "200000")]);
    assert!(acked.live.len() > 10 && !acked.deleted.is_empty());
    assert_check_clean(&store);
    assert_acked_intact(&store.path(), &acked);
    assert!(temporaries(&store.path()).is_empty());
}

/// A journal's id, from its header (bytes 32..64), as the sync log writes it.
fn journal_id(journal: &[u8]) -> String {
    journal[32..64].iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn power_loss_after_a_race_keeps_every_acknowledged_operation() {
    let store = Store::new();
    store.apply_pools(&seed_pools());
    let log = store.dir.path().join("sync.log");
    let log_env = log.to_str().expect("utf8").to_owned();
    let acked = race(
        &store,
        4,
        12,
        &[
            ("CALICO_IPAM_SYNC_LOG", &log_env),
            ("CALICO_IPAM_COMPACT_BYTES", "150000"),
        ],
    );

    // The power fails now: the disk keeps the journal up to its last sync, and nothing else
    // this boot wrote (object files, journal.view, the unsynced record) can be relied on.
    let journal = std::fs::read(store.path().join("journal")).expect("journal");
    let id = journal_id(&journal);
    let synced: u64 = std::fs::read_to_string(&log)
        .expect("sync log")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(i, _)| *i == id)
        .map(|(_, n)| n.parse::<u64>().expect("length"))
        .max()
        .expect("the current journal was synced");
    assert!(
        journal[synced as usize..synced as usize + 4] != [0; 4],
        "the last ADD left an unsynced record after the synced log"
    );
    let lost = Store::new();
    std::fs::create_dir(lost.path()).expect("mkdir");
    std::fs::write(lost.path().join("journal"), &journal[..synced as usize]).expect("journal");
    std::fs::write(lost.path().join("journal.view"), b"v1 the-boot-before").expect("view");

    let out = assert_check_clean(&lost);
    assert!(out.contains("Found 0 inconsistencies."), "{out}");
    assert_acked_intact(&lost.path(), &acked);
    // And it takes new pods without giving an address twice.
    let conf = lost.netconf("1.0.0", "node-c").to_string();
    let fresh = addresses(&cni("ADD", "after", &[], conf.as_bytes()));
    for ips in acked.live.values() {
        assert!(ips.iter().all(|ip| !fresh.contains(ip)), "{fresh:?} reused");
    }
}

/// The plugin as a child process that the test can stop, continue and kill.
fn spawn_plugin(store: &Store, command: &str, cid: &str, env: &[(&str, &str)]) -> Child {
    let conf = store.netconf("1.0.0", "node-a").to_string();
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", common::live_netns())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn_with_stdin(&mut cmd, conf.as_bytes())
}

/// Waits until the process is stopped (SIGSTOP at its hook).
fn wait_stopped(child: &Child) {
    let stat = format!("/proc/{}/stat", child.id());
    let start = Instant::now();
    loop {
        let s = std::fs::read_to_string(&stat).expect("the writer is alive");
        // pid (comm) STATE ...
        if s.rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('T'))
            == Some(true)
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the writer never reached its stop point"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

#[test]
fn a_live_writers_temporary_is_never_swept_and_a_dead_ones_is() {
    let store = Store::new();
    store.apply_pools(&seed_pools());
    let conf = store.netconf("1.0.0", "node-a").to_string();
    let a = addresses(&cni("ADD", "a", &[], conf.as_bytes()));

    // A writer stopped between writing an object's temporary file and renaming it.
    let child = spawn_plugin(
        &store,
        "ADD",
        "b",
        &[("CALICO_IPAM_STOP_AT", "after-tmp-write")],
    );
    wait_stopped(&child);
    let tmps = temporaries(&store.path());
    assert_eq!(tmps.len(), 1, "{tmps:?}");
    let out = store.cli(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("being written by a live writer (left alone)")
            && stdout.contains(&*tmps[0].to_string_lossy()),
        "{}",
        text(&out)
    );
    assert!(tmps[0].exists(), "check removed a live writer's temporary");
    // Another writer waits for the lock instead of touching it.
    signal(&child, "-CONT");
    let b = addresses(&wait_within(child));
    assert!(temporaries(&store.path()).is_empty());
    assert_eq!(held(&store.path(), "b"), b.iter().copied().collect());

    // The same, killed while stopped: its temporary is stale, and the next opener removes it.
    let child = spawn_plugin(
        &store,
        "ADD",
        "c",
        &[("CALICO_IPAM_STOP_AT", "after-tmp-write")],
    );
    wait_stopped(&child);
    let stale = temporaries(&store.path());
    assert_eq!(stale.len(), 1);
    signal(&child, "-KILL");
    assert_eq!(wait_within(child).status.signal(), Some(9));
    assert!(stale[0].exists());
    let out = assert_check_clean(&store);
    assert!(
        out.contains("Removed 1 stale temporary file(s) left by killed writers")
            && out.contains(&*stale[0].to_string_lossy()),
        "{out}"
    );
    assert!(!stale[0].exists());
    assert_eq!(held(&store.path(), "a"), a.iter().copied().collect());
    // c's commit was synced before it was stopped: the repair finished it.
    assert_eq!(held(&store.path(), "c").len(), 2);
}
