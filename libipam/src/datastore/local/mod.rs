//! The embedded datastore for a machine without a cluster: a journal, and one JSON file per
//! object that readers read.
//!
//! ```text
//! <root>/journal                              the durable truth: one record per commit
//! <root>/journal.view                         how far the object files follow the journal
//! <root>/.lock                                the store lock, held by the one writer
//! <root>/config.json                          IPAMConfig "default"
//! <root>/pools/<name>.json                    IPPool
//! <root>/nodes/<name>.json                    {"labels": {...}}
//! <root>/reservations/<name>.json             IPReservation
//! <root>/blocks/<cidrname>.json               IPAMBlock (10-244-104-64-26.json)
//! <root>/affinities/<host>/<cidrname>.json    BlockAffinity, one directory per host
//! <root>/handles/<lowercase handle>.json      IPAMHandle
//! ```
//! Every object file is `{"revision": "<incarnation>.<generation>", "value": <spec>}`. The
//! incarnation is fixed when the object is created (time, pid, counter), the generation counts
//! writes, so a deleted and recreated object never reuses a revision.
//!
//! Writes: the first write of a group ([`Datastore::begin`] .. [`Datastore::commit`]; a write
//! outside a group is a group of its own) takes the store lock; each write checks its
//! expected revision against the object files and the group's earlier writes and is held in
//! memory; the commit appends them to the journal as one record, makes it durable with one
//! `fdatasync`, then replaces the object files (temporary file + rename, not synced) and
//! releases the lock. Readers take no lock and see whole files of committed groups only. A
//! killed writer's group is either absent or whole; a power loss keeps every record that was
//! synced, and the object files are rebuilt from the journal after a reboot. The details and
//! their tests are in DESIGN.md ("LocalStore: durability").

mod files;
mod hooks;
mod inventory;
mod journal;
mod writer;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use super::{
    Datastore, DatastoreError, DsResult, Inventory, PoolList, Revision, UnreadablePool, Versioned,
};
use crate::model::{BlockAffinity, IpPool, IpReservation, IpamBlock, IpamConfig, IpamHandle, time};
use crate::names;
pub use files::file_stem;
use journal::Change;
use writer::{JOURNAL_NEW, Status, Writer};

/// A datastore in a local directory, safe for many processes at once.
///
/// One handle is one writer: its write groups belong to it, so it is not `Sync`; threads and
/// processes each open their own.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    boot: String,
    group: RefCell<Box<Group>>,
    swept: RefCell<Vec<PathBuf>>,
}

impl Clone for LocalStore {
    /// Another handle on the same store, with no group of its own open.
    fn clone(&self) -> Self {
        LocalStore {
            root: self.root.clone(),
            boot: self.boot.clone(),
            group: RefCell::default(),
            swept: RefCell::default(),
        }
    }
}

/// Writes held until their group commits.
#[derive(Default)]
struct Group {
    /// Open `begin`s.
    depth: u32,
    /// The store lock and journal, from the group's first write to its commit.
    writer: Option<Writer>,
    /// The group's changes, in order.
    changes: Vec<Change>,
    /// Each changed path's bytes after the group (`None`: deleted), for the group's own reads.
    overlay: HashMap<String, Option<Vec<u8>>>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("depth", &self.depth)
            .field("writing", &self.writer.is_some())
            .field("changes", &self.changes.len())
            .finish()
    }
}

/// Temporary files found by [`LocalStore::temporaries`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Temporaries {
    /// Left by killed writers, and removed.
    pub removed: Vec<PathBuf>,
    /// Being written by a live writer (it holds the store lock), left alone.
    pub in_use: Vec<PathBuf>,
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    revision: &'a str,
    value: &'a T,
}

/// An object file as read: a JSON object, its `value` a JSON object too (serde alone would take
/// `["1.1", {...}]` field by field).
#[derive(Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
struct EnvelopeIn<T> {
    revision: String,
    #[serde(deserialize_with = "crate::strict::object")]
    value: T,
}

impl<T: DeserializeOwned> EnvelopeIn<T> {
    fn decode(data: &[u8]) -> serde_json::Result<EnvelopeIn<T>> {
        serde_json::from_slice::<crate::strict::Object<EnvelopeIn<T>>>(data).map(|o| o.0)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct NodeFile {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// What a write expects to find.
enum Expect<'a> {
    /// The object must not exist (create).
    Absent,
    /// The object must be at this revision (compare-and-swap).
    At(&'a Revision),
    /// Anything (last writer wins; admin objects such as pools).
    Any,
}

/// A new revision for a newly created object.
fn first_revision() -> Revision {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Revision(format!(
        "{:x}{:x}{n:x}.1",
        time::now_nanos(),
        std::process::id()
    ))
}

fn next_revision(current: &Revision) -> Revision {
    match current.0.rsplit_once('.') {
        Some((inc, generation)) => match generation.parse::<u64>() {
            Ok(g) => Revision(format!("{inc}.{}", g + 1)),
            Err(_) => first_revision(),
        },
        None => first_revision(),
    }
}

fn decode<T: DeserializeOwned>(rel: &str, data: &[u8]) -> DsResult<(T, Revision)> {
    let env = EnvelopeIn::<T>::decode(data)
        .map_err(|e| DatastoreError::Other(format!("{rel}: invalid object: {e}")))?;
    Ok((env.value, Revision(env.revision)))
}

/// A pool file that does not decode, with what can still be read of it: its name (the one
/// whose file it is, so that `apply_pool` and `delete_pool` of that name reach it) and the
/// CIDR in `value.spec.cidr`.
fn unreadable_pool(stem: &str, rel: &str, data: Option<&[u8]>, reason: String) -> UnreadablePool {
    let raw = data.and_then(|d| serde_json::from_slice::<serde_json::Value>(d).ok());
    let value = raw.as_ref().and_then(|r| r.get("value"));
    let name = value
        .and_then(|v| v.get("name"))
        .and_then(serde_json::Value::as_str)
        .filter(|n| file_stem(n) == stem)
        .map(str::to_owned)
        .or_else(|| files::name_of_stem(stem))
        .unwrap_or_else(|| stem.to_owned());
    UnreadablePool {
        name,
        object: format!("IPPool file {rel}"),
        cidr: super::cidr_of_raw_pool(value.and_then(|v| v.get("spec"))),
        reason: reason
            .strip_prefix(&format!("{rel}: "))
            .map(str::to_owned)
            .unwrap_or(reason),
    }
}

fn kind_path(kind: &str, name: &str) -> String {
    format!("{kind}/{}.json", file_stem(name))
}

fn block_path(cidr: &IpNet) -> String {
    format!("blocks/{}.json", names::cidr_to_name(cidr))
}

fn host_dir(host: &str) -> String {
    format!("{}/{}", files::AFFINITIES, file_stem(host))
}

fn affinity_path(host: &str, cidr: &IpNet) -> String {
    format!("{}/{}.json", host_dir(host), names::cidr_to_name(cidr))
}

fn handle_path(handle_id: &str) -> String {
    kind_path("handles", &names::handle_object_name(handle_id))
}

impl LocalStore {
    /// Opens (creating with mode 0700 where missing) the store at `root`. The first use of a
    /// store without a journal creates one from its object files; a store left by a killed
    /// writer or a reboot is repaired first.
    pub fn open(root: impl Into<PathBuf>) -> DsResult<LocalStore> {
        let root = root.into();
        let mut dirs = vec![String::new(), files::AFFINITIES.to_owned()];
        dirs.extend(files::KINDS.iter().map(|k| (*k).to_owned()));
        for sub in dirs {
            let dir = root.join(sub);
            files::mkdir(&dir).map_err(|e| files::io_err(&dir, e))?;
        }
        let boot = writer::boot_id();
        let swept = match writer::status(&root, &boot)? {
            Status::Clean => None,
            // A live writer may be in the middle of a commit: only repair if nobody is.
            Status::Dirty { same_boot: true } => writer::repair(&root, &boot, false)?,
            // After a reboot the object files cannot be trusted until they are rebuilt.
            Status::Dirty { same_boot: false } | Status::Missing => {
                writer::repair(&root, &boot, true)?
            }
        };
        Ok(LocalStore {
            root,
            boot,
            group: RefCell::default(),
            swept: RefCell::new(swept.unwrap_or_default()),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Temporary files in the store: with the store lock free, every one was left by a killed
    /// writer and is removed (with those this handle's repairs removed); with the lock held by
    /// a live writer, they are listed and left alone.
    pub fn temporaries(&self) -> DsResult<Temporaries> {
        let mut out = Temporaries {
            removed: self.swept.borrow_mut().drain(..).collect(),
            in_use: Vec::new(),
        };
        let found = files::temporaries(&self.root)?;
        if found.is_empty() {
            return Ok(out);
        }
        match writer::repair(&self.root, &self.boot, false)? {
            Some(swept) => {
                out.removed.extend(swept);
                // Repair only sweeps after a crash; with the lock held, any left are stale.
                out.removed
                    .extend(files::sweep(files::temporaries(&self.root)?));
            }
            None => out.in_use = found,
        }
        Ok(out)
    }

    /// The current bytes of one object: the open group's, else the file's.
    fn bytes(&self, rel: &str) -> DsResult<Option<Vec<u8>>> {
        if let Some(staged) = self.group.borrow().overlay.get(rel) {
            return Ok(staged.clone());
        }
        files::read(&self.root, rel)
    }

    fn read<T: DeserializeOwned>(&self, rel: &str) -> DsResult<Option<Versioned<T>>> {
        self.bytes(rel)?
            .map(|data| {
                decode::<T>(rel, &data).map(|(value, revision)| Versioned { value, revision })
            })
            .transpose()
    }

    /// The object stems in `dir`, with the open group's creations and deletions.
    fn list_dir(&self, dir: &str) -> DsResult<Vec<String>> {
        let mut stems: BTreeSet<String> = files::list_dir(&self.root, dir)?.into_iter().collect();
        for (path, data) in &self.group.borrow().overlay {
            if let Some(stem) = path
                .strip_prefix(dir)
                .and_then(|p| p.strip_prefix('/'))
                .and_then(|p| p.strip_suffix(".json"))
                .filter(|p| !p.contains('/'))
            {
                match data {
                    Some(_) => stems.insert(stem.to_owned()),
                    None => stems.remove(stem),
                };
            }
        }
        Ok(stems.into_iter().collect())
    }

    fn list_kind<T: DeserializeOwned>(&self, dir: &str) -> DsResult<Vec<Versioned<T>>> {
        let mut out = Vec::new();
        for stem in self.list_dir(dir)? {
            if let Some(v) = self.read(&format!("{dir}/{stem}.json"))? {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// The one write primitive: check `expect` against the current object, then record the
    /// change (`value` `None` removes it) in the open group, or commit it at once outside
    /// one. Returns the new revision.
    fn write<T: Serialize>(
        &self,
        rel: &str,
        expect: Expect<'_>,
        value: Option<&T>,
    ) -> DsResult<Revision> {
        let staged = self.stage(rel, expect, value);
        if self.group.borrow().depth == 0 {
            let committed = self.finish();
            let revision = staged?;
            committed?;
            return Ok(revision);
        }
        staged
    }

    fn stage<T: Serialize>(
        &self,
        rel: &str,
        expect: Expect<'_>,
        value: Option<&T>,
    ) -> DsResult<Revision> {
        if self.group.borrow().writer.is_none() {
            let (writer, swept) = Writer::acquire(&self.root, &self.boot)?;
            self.swept.borrow_mut().extend(swept);
            self.group.borrow_mut().writer = Some(writer);
        }
        let current = match (self.bytes(rel), &expect) {
            (Ok(None), _) => None,
            (Ok(Some(data)), _) => match decode::<IgnoredAny>(rel, &data) {
                Ok((_, rev)) => Some(rev),
                // A file that does not decode (or is too large to read) is still replaced or
                // removed by a write that expects nothing of it: admin objects, last writer
                // wins, so a corrupt pool can be repaired by name.
                Err(_) if matches!(expect, Expect::Any) => Some(Revision(String::new())),
                Err(e) => return Err(e),
            },
            (Err(DatastoreError::Other(_)), Expect::Any) => Some(Revision(String::new())),
            (Err(e), _) => return Err(e),
        };
        match (&expect, &current) {
            (Expect::Absent, Some(_)) => return Err(DatastoreError::AlreadyExists),
            (Expect::At(_), None) => return Err(DatastoreError::NotFound),
            (Expect::At(want), Some(have)) if *want != have => {
                return Err(DatastoreError::Conflict);
            }
            _ => {}
        }
        let (revision, data) = match value {
            None => (Revision(String::new()), None),
            Some(value) => {
                let revision = match &current {
                    Some(rev) => next_revision(rev),
                    None => first_revision(),
                };
                let mut data = serde_json::to_vec_pretty(&EnvelopeOut {
                    revision: &revision.0,
                    value,
                })
                .map_err(|e| DatastoreError::Other(format!("encode {rel}: {e}")))?;
                data.push(b'\n');
                (revision, Some(data))
            }
        };
        if data.is_none() && current.is_none() {
            return Ok(revision); // Nothing to delete.
        }
        let mut group = self.group.borrow_mut();
        group.overlay.insert(rel.to_owned(), data.clone());
        group.changes.push(Change {
            path: rel.to_owned(),
            data,
        });
        Ok(revision)
    }

    /// Commits the group's changes (if any) and releases the store lock.
    fn finish(&self) -> DsResult<()> {
        let (writer, changes) = {
            let mut group = self.group.borrow_mut();
            group.overlay.clear();
            (group.writer.take(), std::mem::take(&mut group.changes))
        };
        match writer {
            Some(mut w) if !changes.is_empty() => w.commit(&self.root, &changes),
            _ => Ok(()),
        }
    }

    /// Sets the labels of a node (creating the node), for pools' nodeSelector.
    pub fn set_node_labels(&self, node: &str, labels: BTreeMap<String, String>) -> DsResult<()> {
        self.write(
            &kind_path("nodes", node),
            Expect::Any,
            Some(&NodeFile { labels }),
        )
        .map(|_| ())
    }

    /// Adds or replaces an IP reservation.
    pub fn apply_reservation(&self, reservation: &IpReservation) -> DsResult<()> {
        self.write(
            &kind_path("reservations", &reservation.name),
            Expect::Any,
            Some(reservation),
        )
        .map(|_| ())
    }

    /// Deletes an IP reservation; `Ok(false)` when there was none.
    pub fn delete_reservation(&self, name: &str) -> DsResult<bool> {
        self.delete_any(&kind_path("reservations", name))
    }

    fn delete_any(&self, rel: &str) -> DsResult<bool> {
        let existed = match self.bytes(rel) {
            Ok(found) => found.is_some(),
            // There, but too large to read: removed like any other.
            Err(DatastoreError::Other(_)) => true,
            Err(e) => return Err(e),
        };
        self.write::<()>(rel, Expect::Any, None)?;
        Ok(existed)
    }
}

impl Datastore for LocalStore {
    fn begin(&self) {
        self.group.borrow_mut().depth += 1;
    }

    async fn commit(&self) -> DsResult<()> {
        let depth = {
            let mut group = self.group.borrow_mut();
            group.depth = group.depth.saturating_sub(1);
            group.depth
        };
        if depth == 0 { self.finish() } else { Ok(()) }
    }

    async fn get_config(&self) -> DsResult<IpamConfig> {
        Ok(self
            .read::<IpamConfig>(files::CONFIG)?
            .map(|v| v.value)
            .unwrap_or_default())
    }

    async fn apply_config(&self, config: &IpamConfig) -> DsResult<()> {
        self.write(files::CONFIG, Expect::Any, Some(config))
            .map(|_| ())
    }

    /// Every pool file; one that does not decode (or is too large to read) is listed as
    /// unreadable instead of failing the listing.
    async fn list_pools(&self) -> DsResult<PoolList> {
        let mut out = PoolList::default();
        for stem in self.list_dir("pools")? {
            let rel = format!("pools/{stem}.json");
            let decoded = match self.bytes(&rel) {
                Ok(None) => continue, // removed since it was listed
                Ok(Some(data)) => EnvelopeIn::<IpPool>::decode(&data)
                    .map(|env| env.value)
                    .map_err(|e| (e.to_string(), Some(data))),
                Err(DatastoreError::Other(why)) => Err((why, None)),
                Err(e) => return Err(e),
            };
            match decoded {
                Ok(pool) => out.pools.push(pool),
                Err((reason, data)) => {
                    out.unreadable
                        .push(unreadable_pool(&stem, &rel, data.as_deref(), reason));
                }
            }
        }
        out.pools.sort_by(|a, b| a.name.cmp(&b.name));
        out.unreadable.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn apply_pool(&self, pool: &IpPool) -> DsResult<()> {
        self.write(&kind_path("pools", &pool.name), Expect::Any, Some(pool))
            .map(|_| ())
    }

    async fn delete_pool(&self, name: &str) -> DsResult<bool> {
        self.delete_any(&kind_path("pools", name))
    }

    async fn node_labels(&self, node: &str) -> DsResult<Option<BTreeMap<String, String>>> {
        Ok(self
            .read::<NodeFile>(&kind_path("nodes", node))?
            .map(|v| v.value.labels))
    }

    async fn list_reservations(&self) -> DsResult<Vec<IpReservation>> {
        Ok(self
            .list_kind::<IpReservation>("reservations")?
            .into_iter()
            .map(|v| v.value)
            .collect())
    }

    async fn get_block(&self, cidr: &IpNet) -> DsResult<Option<Versioned<IpamBlock>>> {
        Ok(self
            .read::<IpamBlock>(&block_path(cidr))?
            .filter(|b| !b.value.deleted))
    }

    async fn create_block(&self, block: &IpamBlock) -> DsResult<Revision> {
        self.write(&block_path(&block.cidr), Expect::Absent, Some(block))
    }

    async fn update_block(&self, block: &Versioned<IpamBlock>) -> DsResult<Revision> {
        self.write(
            &block_path(&block.value.cidr),
            Expect::At(&block.revision),
            Some(&block.value),
        )
    }

    async fn delete_block(&self, block: &Versioned<IpamBlock>) -> DsResult<()> {
        self.write::<()>(
            &block_path(&block.value.cidr),
            Expect::At(&block.revision),
            None,
        )
        .map(|_| ())
    }

    async fn list_block_cidrs(&self) -> DsResult<Vec<IpNet>> {
        // File names are the CIDRs: no block is read.
        Ok(self
            .list_dir("blocks")?
            .iter()
            .filter_map(|stem| names::name_to_cidr(stem))
            .collect())
    }

    async fn list_blocks(&self) -> DsResult<Vec<Versioned<IpamBlock>>> {
        Ok(self
            .list_kind::<IpamBlock>("blocks")?
            .into_iter()
            .filter(|b| !b.value.deleted)
            .collect())
    }

    async fn list_host_affinities(&self, host: &str) -> DsResult<Vec<Versioned<BlockAffinity>>> {
        Ok(self
            .list_kind::<BlockAffinity>(&host_dir(host))?
            .into_iter()
            .filter(|a| !a.value.deleted && a.value.node == host)
            .collect())
    }

    async fn list_affinities(&self) -> DsResult<Vec<Versioned<BlockAffinity>>> {
        let mut hosts: BTreeSet<String> = files::affinity_hosts(&self.root)?.into_iter().collect();
        for path in self.group.borrow().overlay.keys() {
            if let Some(host) = path
                .strip_prefix(files::AFFINITIES)
                .and_then(|p| p.strip_prefix('/'))
                .and_then(|p| p.split_once('/'))
            {
                hosts.insert(host.0.to_owned());
            }
        }
        let mut out = Vec::new();
        for host in hosts {
            out.extend(
                self.list_kind::<BlockAffinity>(&format!("{}/{host}", files::AFFINITIES))?
                    .into_iter()
                    .filter(|a| !a.value.deleted),
            );
        }
        Ok(out)
    }

    async fn get_affinity(
        &self,
        host: &str,
        cidr: &IpNet,
    ) -> DsResult<Option<Versioned<BlockAffinity>>> {
        Ok(self
            .read::<BlockAffinity>(&affinity_path(host, cidr))?
            .filter(|a| !a.value.deleted))
    }

    async fn create_affinity(&self, affinity: &BlockAffinity) -> DsResult<Revision> {
        self.write(
            &affinity_path(&affinity.node, &affinity.cidr),
            Expect::Absent,
            Some(affinity),
        )
    }

    async fn update_affinity(&self, affinity: &Versioned<BlockAffinity>) -> DsResult<Revision> {
        self.write(
            &affinity_path(&affinity.value.node, &affinity.value.cidr),
            Expect::At(&affinity.revision),
            Some(&affinity.value),
        )
    }

    async fn delete_affinity(&self, affinity: &Versioned<BlockAffinity>) -> DsResult<()> {
        self.write::<()>(
            &affinity_path(&affinity.value.node, &affinity.value.cidr),
            Expect::At(&affinity.revision),
            None,
        )
        .map(|_| ())
    }

    async fn get_handle(&self, handle_id: &str) -> DsResult<Option<Versioned<IpamHandle>>> {
        Ok(self
            .read::<IpamHandle>(&handle_path(handle_id))?
            .filter(|h| !h.value.deleted))
    }

    async fn create_handle(&self, handle: &IpamHandle) -> DsResult<Revision> {
        self.write(
            &handle_path(&handle.handle_id),
            Expect::Absent,
            Some(handle),
        )
    }

    async fn update_handle(&self, handle: &Versioned<IpamHandle>) -> DsResult<Revision> {
        self.write(
            &handle_path(&handle.value.handle_id),
            Expect::At(&handle.revision),
            Some(&handle.value),
        )
    }

    async fn delete_handle(&self, handle: &Versioned<IpamHandle>) -> DsResult<()> {
        self.write::<()>(
            &handle_path(&handle.value.handle_id),
            Expect::At(&handle.revision),
            None,
        )
        .map(|_| ())
    }

    async fn list_handles(&self) -> DsResult<Vec<Versioned<IpamHandle>>> {
        Ok(self
            .list_kind::<IpamHandle>("handles")?
            .into_iter()
            .filter(|h| !h.value.deleted)
            .collect())
    }

    async fn inventory(&self) -> DsResult<Inventory> {
        self.read_inventory()
    }
}

const _: fn() = || {
    fn implements<T: Datastore>() {}
    implements::<LocalStore>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions() {
        let r = first_revision();
        assert!(r.0.ends_with(".1"));
        let n = next_revision(&r);
        assert!(n.0.ends_with(".2"));
        assert_eq!(
            n.0.rsplit_once('.').map(|x| x.0),
            r.0.rsplit_once('.').map(|x| x.0)
        );
        assert_ne!(
            first_revision(),
            r,
            "a recreated object gets a new incarnation"
        );
    }
}
