//! The node-local cache of the Kubernetes datastore: what one node's IPAM requests read over
//! and over, kept in a file between the short-lived plugin processes.
//!
//! Three kinds of entries, with different correctness arguments:
//!
//! - **Versioned copies** (this node's blocks, its handles): each is exactly what the API
//!   server returned for one `resourceVersion`. They are only ever used as the base of a
//!   compare-and-swap write, which the server refuses (409, or 404 if the object is gone) when
//!   the copy is stale; the copy is then dropped and re-read. So they need no expiry and can
//!   never make an address be handed out twice.
//! - **This node's BlockAffinity list**, kept with no expiry and updated by this node's own
//!   affinity writes. It only says which blocks to try first: the block's `affinity` field
//!   decides (DESIGN.md invariant 8), and the allocator lists again before it concludes that
//!   the node has no block with room (so a stale list never makes it claim, borrow or refuse).
//!   It is dropped on evidence that it is wrong: a block it names as confirmed read as gone or
//!   another host's, a 404 writing such a block, an affinity write that failed, a change of
//!   API group or server.
//! - **Timed copies** (IPAMConfig, IPReservations, the Node's and namespaces' labels): served
//!   for at most the TTL after they were read, then read again. This is the staleness bound: a
//!   changed nodeSelector label, strictAffinity, block limit or reservation takes effect on
//!   this node at most TTL later. Nothing a request writes or reads shows that these changed,
//!   so they cannot be kept on evidence the way the list is.
//!
//! IPPools are not kept at all: every allocation lists them, so a pool deleted, disabled or
//! created is seen by the very next request (as in Calico). See `libipam/DESIGN.md`, "Node
//! cache", for why that one read is worth its request.
//!
//! The file is rewritten whole (temporary file + rename) and read without a lock; calico-ipam
//! holds the host-wide IPAM lock for its whole operation, so its processes take turns. A
//! missing, unreadable or foreign (other API server, other node) file is an empty cache.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::datastore::api_group::ApiGroup;
use crate::datastore::{Revision, Versioned};
use crate::model::{
    AffinityState, BlockAffinity, IpReservation, IpamBlock, IpamConfig, IpamHandle, host_affinity,
};

/// Bumped when the layout changes; other versions are ignored.
const FORMAT: u32 = 1;
/// How long a block whose write was refused (409: someone else wrote it) is read again before
/// each write, instead of being written from the kept copy: while another writer is active on
/// this node's blocks (calico-node's tunnel addresses, Calico's own IPAM during an upgrade) a
/// kept copy would be stale at every write and cost a refused write and a re-read. Extended by
/// every further conflict.
pub const CONTENDED_FOR: Duration = Duration::from_secs(60);
/// At most this many handles are kept (a node runs far fewer pods; entries of pods whose DEL
/// never came are dropped oldest-name-first).
const MAX_HANDLES: usize = 2048;

/// Where a node's cache lives and how long timed entries stay valid.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The cache file.
    pub path: PathBuf,
    /// The node whose requests use it.
    pub node: String,
    /// How long timed entries are served; zero disables them (versioned entries stay).
    pub ttl: Duration,
}

/// A value and when it was read (Unix milliseconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timed<T> {
    at: u64,
    value: T,
}

/// A versioned copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry<T> {
    revision: String,
    value: T,
}

impl<T: Clone> Entry<T> {
    fn of(v: &Versioned<T>) -> Entry<T> {
        Entry {
            revision: v.revision.0.clone(),
            value: v.value.clone(),
        }
    }

    fn versioned(&self) -> Versioned<T> {
        Versioned {
            value: self.value.clone(),
            revision: Revision(self.revision.clone()),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    format: u32,
    server: String,
    node: String,
    #[serde(default)]
    config: Option<Timed<Option<IpamConfig>>>,
    #[serde(default)]
    reservations: Option<Timed<Vec<IpReservation>>>,
    #[serde(default)]
    node_labels: Option<Timed<BTreeMap<String, String>>>,
    #[serde(default)]
    namespaces: BTreeMap<String, Timed<Option<BTreeMap<String, String>>>>,
    /// This node's affinities; `at` is when they were listed, not an expiry.
    #[serde(default)]
    affinities: Option<Timed<Vec<Entry<BlockAffinity>>>>,
    #[serde(default)]
    blocks: BTreeMap<String, Entry<IpamBlock>>,
    #[serde(default)]
    handles: BTreeMap<String, Entry<IpamHandle>>,
    /// Blocks written by someone else lately (CIDR → until, Unix ms): see [`CONTENDED_FOR`].
    #[serde(default)]
    contended: BTreeMap<String, u64>,
    /// The API group Calico's objects were found in (discovery), and so the group every entry
    /// above was read from. Kept until a request finds that group not served (see
    /// [`NodeCache::forget_api_group`]): a cluster moves its objects between groups once, if
    /// ever, so asking again every TTL would only add a request.
    #[serde(default)]
    api_group: Option<Timed<ApiGroup>>,
}

/// The loaded cache of one node. Changes are kept in memory until [`NodeCache::save`].
#[derive(Debug)]
pub struct NodeCache {
    path: PathBuf,
    ttl: Duration,
    file: File,
    dirty: bool,
}

pub(super) fn now_ms() -> u64 {
    crate::model::time::now_nanos() / 1_000_000
}

/// The largest cache file read: [`MAX_HANDLES`] handles and a node's blocks are far less; a
/// larger file was not written by calico-ipam and is ignored (the cache starts empty).
pub const MAX_CACHE_FILE_BYTES: u64 = 16 << 20;

fn read_bounded(path: &std::path::Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut data = Vec::new();
    fs::File::open(path)
        .ok()?
        .take(MAX_CACHE_FILE_BYTES + 1)
        .read_to_end(&mut data)
        .ok()?;
    (data.len() as u64 <= MAX_CACHE_FILE_BYTES).then_some(data)
}

impl NodeCache {
    /// Loads the cache for `cfg.node` on `server`; anything unusable starts empty.
    pub fn load(cfg: &CacheConfig, server: &str) -> NodeCache {
        let file = read_bounded(&cfg.path)
            .and_then(|data| serde_json::from_slice::<File>(&data).ok())
            .filter(|f| f.format == FORMAT && f.server == server && f.node == cfg.node)
            .unwrap_or_else(|| File {
                format: FORMAT,
                server: server.to_owned(),
                node: cfg.node.clone(),
                ..File::default()
            });
        NodeCache {
            path: cfg.path.clone(),
            ttl: cfg.ttl,
            file,
            dirty: false,
        }
    }

    /// The node this cache is for.
    pub fn node(&self) -> &str {
        &self.file.node
    }

    fn fresh<'a, T>(&self, t: &'a Option<Timed<T>>) -> Option<&'a T> {
        let t = t.as_ref()?;
        let age = now_ms().checked_sub(t.at)?; // a clock that went back: expired
        (age < self.ttl.as_millis() as u64).then_some(&t.value)
    }

    fn timed<T>(&mut self, value: T) -> Option<Timed<T>> {
        self.timed_at(value, now_ms())
    }

    fn timed_at<T>(&mut self, value: T, at: u64) -> Option<Timed<T>> {
        self.dirty = true;
        (!self.ttl.is_zero()).then_some(Timed { at, value })
    }

    /// The API group found by discovery (none with the cache turned off: a zero TTL).
    pub fn api_group(&self) -> Option<ApiGroup> {
        if self.ttl.is_zero() {
            return None;
        }
        self.file.api_group.as_ref().map(|t| t.value)
    }

    /// Drops the group, and with it every entry (a request found the group not served, so
    /// what was read from it is gone): the next process asks again.
    pub fn forget_api_group(&mut self) {
        if self.file.api_group.is_some() {
            self.reset();
        }
    }

    /// Empties the cache, keeping whose it is.
    fn reset(&mut self) {
        self.file = File {
            format: self.file.format,
            server: std::mem::take(&mut self.file.server),
            node: std::mem::take(&mut self.file.node),
            ..File::default()
        };
        self.dirty = true;
    }

    /// Records the group in use. When it is not the one the entries were read from (the
    /// cluster moved its objects between `crd.projectcalico.org/v1` and
    /// `projectcalico.org/v3`), every entry is dropped first.
    pub fn set_api_group(&mut self, group: ApiGroup) {
        match self.file.api_group.as_ref().map(|t| t.value) {
            Some(g) if g == group => return,
            Some(_) => self.reset(),
            None => {}
        }
        self.file.api_group = Some(Timed {
            at: now_ms(),
            value: group,
        });
        self.dirty = true;
    }

    /// The IPAMConfig (`Some(None)`: known to be absent).
    pub fn config(&self) -> Option<Option<IpamConfig>> {
        self.fresh(&self.file.config).cloned()
    }
    pub fn set_config(&mut self, v: Option<IpamConfig>) {
        self.file.config = self.timed(v);
    }
    /// [`NodeCache::set_config`] for a read that began at `at` (ms): its TTL counts from then.
    pub fn set_config_read_at(&mut self, v: Option<IpamConfig>, at: u64) {
        self.file.config = self.timed_at(v, at);
    }

    pub fn reservations(&self) -> Option<Vec<IpReservation>> {
        self.fresh(&self.file.reservations).cloned()
    }
    pub fn set_reservations(&mut self, v: Vec<IpReservation>) {
        self.file.reservations = self.timed(v);
    }
    /// [`NodeCache::set_reservations`] for a read that began at `at` (ms).
    pub fn set_reservations_read_at(&mut self, v: Vec<IpReservation>, at: u64) {
        self.file.reservations = self.timed_at(v, at);
    }

    /// Labels of this cache's node.
    pub fn node_labels(&self) -> Option<BTreeMap<String, String>> {
        self.fresh(&self.file.node_labels).cloned()
    }
    pub fn set_node_labels(&mut self, v: BTreeMap<String, String>) {
        self.file.node_labels = self.timed(v);
    }

    /// Labels of a namespace (`Some(None)`: known not to exist).
    pub fn namespace_labels(&self, ns: &str) -> Option<Option<BTreeMap<String, String>>> {
        let t = self.file.namespaces.get(ns).cloned();
        self.fresh(&t).cloned()
    }
    pub fn set_namespace_labels(&mut self, ns: &str, v: Option<BTreeMap<String, String>>) {
        match self.timed(v) {
            Some(t) => {
                self.file.namespaces.insert(ns.to_owned(), t);
            }
            None => {
                self.file.namespaces.remove(ns);
            }
        }
    }

    /// This node's affinities as last listed and written here, however long ago (no
    /// expiry, also with a zero TTL: see the module comment).
    pub fn affinities(&self) -> Option<Vec<Versioned<BlockAffinity>>> {
        self.file
            .affinities
            .as_ref()
            .map(|t| t.value.iter().map(Entry::versioned).collect())
    }
    pub fn set_affinities(&mut self, v: &[Versioned<BlockAffinity>]) {
        self.file.affinities = Some(Timed {
            at: now_ms(),
            value: v.iter().map(Entry::of).collect(),
        });
        self.dirty = true;
    }
    /// Drops the cached list (a write failed, or a read contradicted it): the next request
    /// lists again.
    pub fn forget_affinities(&mut self) {
        if self.file.affinities.take().is_some() {
            self.dirty = true;
        }
    }

    /// Evidence about a block that was just read or refused: `owned` is whether it exists
    /// and is affine to this node. A block the list names as this node's confirmed affinity
    /// that is gone or someone else's (taken over by another node, calico#11149; deleted)
    /// makes the list wrong, so it is dropped. Pending affinities name claims in progress,
    /// which the allocator settles itself.
    pub fn block_seen(&mut self, cidr: &str, owned: bool) {
        if owned {
            return;
        }
        let named = self.file.affinities.as_ref().is_some_and(|l| {
            l.value.iter().any(|e| {
                e.value.cidr.to_string() == cidr && e.value.state == AffinityState::Confirmed
            })
        });
        if named {
            self.forget_affinities();
        }
    }

    /// Records a write of one of this node's affinities in the cached list (`None`: deleted).
    pub fn put_affinity(&mut self, a: &BlockAffinity, written: Option<&Versioned<BlockAffinity>>) {
        if a.node != self.file.node {
            return;
        }
        if let Some(list) = self.file.affinities.as_mut() {
            list.value.retain(|e| e.value.cidr != a.cidr);
            if let Some(w) = written {
                list.value.push(Entry::of(w));
            }
            self.dirty = true;
        }
    }

    /// The copy of a block to write from, if one is kept and the block is not contended.
    pub fn block(&self, cidr: &str) -> Option<Versioned<IpamBlock>> {
        if self.is_contended(cidr) {
            return None;
        }
        self.file.blocks.get(cidr).map(Entry::versioned)
    }

    /// Whether another writer changed the block lately (its kept copy is not written from).
    pub fn is_contended(&self, cidr: &str) -> bool {
        self.file
            .contended
            .get(cidr)
            .is_some_and(|until| now_ms() < *until)
    }

    /// Records that a write of the block was refused because someone else wrote it: for
    /// [`CONTENDED_FOR`] it is read before every write. The kept copy is dropped.
    pub fn mark_contended(&mut self, cidr: &str) {
        let until = now_ms().saturating_add(CONTENDED_FOR.as_millis() as u64);
        self.file.contended.insert(cidr.to_owned(), until);
        self.file.blocks.remove(cidr);
        self.dirty = true;
    }
    /// Keeps (or with `None` forgets) the copy of a block.
    pub fn put_block(&mut self, cidr: &str, v: Option<&Versioned<IpamBlock>>) {
        match v {
            Some(b) => {
                self.file.blocks.insert(cidr.to_owned(), Entry::of(b));
            }
            None => {
                self.file.blocks.remove(cidr);
            }
        }
        self.dirty = true;
    }

    /// The copy of a handle (by object name), if one is kept.
    pub fn handle(&self, name: &str) -> Option<Versioned<IpamHandle>> {
        self.file.handles.get(name).map(Entry::versioned)
    }
    /// Keeps (or with `None` forgets) the copy of a handle.
    pub fn put_handle(&mut self, name: &str, v: Option<&Versioned<IpamHandle>>) {
        match v {
            Some(h) => {
                self.file.handles.insert(name.to_owned(), Entry::of(h));
            }
            None => {
                self.file.handles.remove(name);
            }
        }
        self.dirty = true;
    }

    /// Writes the cache back if it changed. Keeps only this node's blocks and a bounded
    /// number of handles. Failures are ignored: the cache is an optimisation.
    pub fn save(&mut self) {
        if !self.dirty {
            return;
        }
        let mine = host_affinity(&self.file.node);
        self.file
            .blocks
            .retain(|_, b| b.value.affinity.as_deref() == Some(mine.as_str()));
        while self.file.handles.len() > MAX_HANDLES {
            self.file.handles.pop_first();
        }
        let now = now_ms();
        self.file.contended.retain(|_, until| *until > now);
        if write_atomically(&self.path, &self.file).is_ok() {
            self.dirty = false;
        }
    }
}

fn write_atomically(path: &Path, file: &File) -> std::io::Result<()> {
    let data = serde_json::to_vec(file).map_err(std::io::Error::other)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("cache");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&data)?;
    drop(f);
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    sweep_dead_temporaries(dir, &format!(".{name}."));
    Ok(())
}

/// Removes `<prefix><pid>.tmp` files in `dir` whose writer is no longer running (killed
/// between writing and renaming). A file whose pid is alive is never touched: it may be in
/// use (or the pid was reused; it goes once that process is gone).
fn sweep_dead_temporaries(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, ttl: u64) -> CacheConfig {
        CacheConfig {
            path: dir.join("sub").join("node-a.json"),
            node: "node-a".into(),
            ttl: Duration::from_secs(ttl),
        }
    }

    #[test]
    fn the_api_group_is_kept_until_forgotten_and_a_change_of_group_drops_every_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = cfg(dir.path(), 60);
        let mut cache = NodeCache::load(&c, "https://a:6443");
        assert_eq!(cache.api_group(), None);
        cache.set_api_group(ApiGroup::V1);
        cache.set_config(Some(IpamConfig::default()));
        cache.save();
        let mut cache = NodeCache::load(&c, "https://a:6443");
        assert_eq!(cache.api_group(), Some(ApiGroup::V1));
        assert!(cache.config().is_some());
        cache.set_api_group(ApiGroup::V1);
        assert!(cache.config().is_some(), "the same group keeps the entries");
        cache.set_api_group(ApiGroup::V3);
        assert_eq!(cache.api_group(), Some(ApiGroup::V3));
        assert!(
            cache.config().is_none(),
            "read from the other group: dropped"
        );
        assert_eq!(cache.node(), "node-a");
        cache.save();
        assert_eq!(
            NodeCache::load(&c, "https://a:6443").api_group(),
            Some(ApiGroup::V3)
        );
        // With no TTL the group is never served from the file.
        let c0 = cfg(dir.path(), 0);
        assert_eq!(NodeCache::load(&c0, "https://a:6443").api_group(), None);
        // Forgotten (the group was not served): asked again next time.
        let mut cache = NodeCache::load(&c, "https://a:6443");
        cache.forget_api_group();
        cache.save();
        assert_eq!(NodeCache::load(&c, "https://a:6443").api_group(), None);
    }

    #[test]
    fn a_cache_file_over_the_bound_is_ignored_unread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = cfg(dir.path(), 60);
        let mut cache = NodeCache::load(&c, "https://a:6443");
        cache.set_config(Some(IpamConfig::default()));
        cache.save();
        assert!(NodeCache::load(&c, "https://a:6443").config().is_some());
        // The same file, padded past the bound with whitespace (still valid JSON).
        let mut big = fs::read(&c.path).expect("cache");
        big.resize(MAX_CACHE_FILE_BYTES as usize + 1, b' ');
        fs::write(&c.path, big).expect("write");
        assert!(NodeCache::load(&c, "https://a:6443").config().is_none());
    }

    #[test]
    fn temporaries_of_dead_writers_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = cfg(dir.path(), 60);
        let sub = dir.path().join("sub");
        fs::create_dir_all(&sub).expect("mkdir");
        // A pid above the kernel's limit (4194304) never runs; pid 1 always does.
        let dead = sub.join(".node-a.json.4194400.tmp");
        let live = sub.join(".node-a.json.1.tmp");
        let other = sub.join(".other.json.4194400.tmp");
        for f in [&dead, &live, &other] {
            fs::write(f, b"{").expect("write");
        }
        let mut cache = NodeCache::load(&c, "https://a:6443");
        cache.set_config(None);
        cache.save();
        assert!(c.path.exists());
        assert!(!dead.exists(), "a dead writer's temporary is removed");
        assert!(live.exists(), "a live writer's temporary is kept");
        assert!(other.exists(), "another file's temporaries are not ours");
        let own = sub.join(format!(".node-a.json.{}.tmp", std::process::id()));
        assert!(!own.exists(), "ours was renamed into place");
    }

    #[test]
    fn a_contended_block_is_read_before_each_write_for_a_while() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = cfg(dir.path(), 60);
        let mut cache = NodeCache::load(&c, "https://a:6443");
        let b = Versioned {
            value: IpamBlock::new(
                "10.0.0.0/26".parse().expect("cidr"),
                Some(host_affinity("node-a")),
                1,
            )
            .expect("block"),
            revision: Revision("7".into()),
        };
        cache.put_block("10.0.0.0/26", Some(&b));
        assert!(cache.block("10.0.0.0/26").is_some());
        cache.mark_contended("10.0.0.0/26");
        assert!(cache.block("10.0.0.0/26").is_none(), "the copy is dropped");
        // A fresh read is kept (for check and release) but not written from.
        cache.put_block("10.0.0.0/26", Some(&b));
        assert!(cache.block("10.0.0.0/26").is_none());
        cache.save();
        let mut again = NodeCache::load(&c, "https://a:6443");
        assert!(again.is_contended("10.0.0.0/26"), "kept between processes");
        // Once the mark runs out, the copy is written from again.
        again
            .file
            .contended
            .insert("10.0.0.0/26".into(), now_ms() - 1);
        again.put_block("10.0.0.0/26", Some(&b));
        assert!(again.block("10.0.0.0/26").is_some());
        again.save();
        assert!(
            NodeCache::load(&c, "https://a:6443")
                .file
                .contended
                .is_empty(),
            "expired marks are dropped"
        );
    }

    #[test]
    fn round_trip_prune_and_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = NodeCache::load(&cfg(dir.path(), 60), "https://a:6443");
        let mine = IpamBlock::new(
            "10.0.0.0/26".parse().expect("cidr"),
            Some(host_affinity("node-a")),
            1,
        )
        .expect("block");
        let other = IpamBlock::new(
            "10.0.0.64/26".parse().expect("cidr"),
            Some(host_affinity("node-b")),
            1,
        )
        .expect("block");
        for b in [&mine, &other] {
            c.put_block(
                &b.cidr.to_string(),
                Some(&Versioned {
                    value: b.clone(),
                    revision: Revision("7".into()),
                }),
            );
        }
        c.set_reservations(Vec::new());
        c.set_affinities(&[Versioned {
            value: BlockAffinity::host("node-a", mine.cidr, AffinityState::Confirmed),
            revision: Revision("3".into()),
        }]);
        c.save();

        let c = NodeCache::load(&cfg(dir.path(), 60), "https://a:6443");
        assert_eq!(
            c.block("10.0.0.0/26").map(|b| b.revision),
            Some(Revision("7".into()))
        );
        assert!(
            c.block("10.0.0.64/26").is_none(),
            "other nodes' blocks are pruned"
        );
        assert_eq!(c.reservations().map(|r| r.len()), Some(0));
        assert_eq!(c.affinities().map(|a| a.len()), Some(1));

        let other_server = NodeCache::load(&cfg(dir.path(), 60), "https://b:6443");
        assert!(other_server.block("10.0.0.0/26").is_none());
        let expired = NodeCache::load(&cfg(dir.path(), 0), "https://a:6443");
        assert!(
            expired.reservations().is_none(),
            "TTL 0: timed entries are never served"
        );
        assert!(
            expired.block("10.0.0.0/26").is_some(),
            "versioned entries do not expire"
        );
        assert_eq!(
            expired.affinities().map(|a| a.len()),
            Some(1),
            "nor does the affinity list"
        );
    }

    #[test]
    fn the_affinity_list_is_dropped_on_evidence_about_a_confirmed_block_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = NodeCache::load(&cfg(dir.path(), 60), "https://a:6443");
        let aff = |cidr: &str, state| Versioned {
            value: BlockAffinity::host("node-a", cidr.parse().expect("cidr"), state),
            revision: Revision("3".into()),
        };
        let list = [
            aff("10.0.0.0/26", AffinityState::Confirmed),
            aff("10.0.0.64/26", AffinityState::Pending),
        ];
        c.set_affinities(&list);
        c.block_seen("10.0.0.0/26", true);
        c.block_seen("10.0.0.128/26", false);
        c.block_seen("10.0.0.64/26", false);
        assert_eq!(
            c.affinities().map(|a| a.len()),
            Some(2),
            "ours as listed, not listed, or a claim in progress: kept"
        );
        c.block_seen("10.0.0.0/26", false);
        assert!(c.affinities().is_none(), "a listed block that is not ours");
        c.set_affinities(&list);
        c.forget_affinities();
        assert!(c.affinities().is_none());
    }
}
