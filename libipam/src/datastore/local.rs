//! The embedded datastore for a machine without a cluster: one JSON file per object.
//!
//! ```text
//! <root>/config.json                          IPAMConfig "default"
//! <root>/pools/<name>.json                    IPPool
//! <root>/nodes/<name>.json                    {"labels": {...}}
//! <root>/reservations/<name>.json             IPReservation
//! <root>/blocks/<cidrname>.json               IPAMBlock (10-244-104-64-26.json)
//! <root>/affinities/<host>/<cidrname>.json    BlockAffinity, one directory per host
//! <root>/handles/<lowercase handle>.json      IPAMHandle
//! ```
//! Every file is `{"revision": "<incarnation>.<generation>", "value": <spec>}`. The
//! incarnation is fixed when the object is created (time, pid, counter), the generation counts
//! writes, so a deleted and recreated object never reuses a revision.
//!
//! Durability: a write goes to `.<name>.tmp` in the same directory, is fsync'd, renamed over
//! the object and the directory is fsync'd, so a crash leaves either the old or the new
//! version and a reader never sees a partial file. Concurrency: writes (check revision,
//! write, rename) hold an exclusive `flock` on the directory's `.lock` file; readers take no
//! lock, so they never hold up writers. Names that are not safe as file names are escaped
//! (see [`file_stem`]).

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Datastore, DatastoreError, DsResult, Revision, Versioned};
use crate::model::{BlockAffinity, IpPool, IpReservation, IpamBlock, IpamConfig, IpamHandle, time};
use crate::names;

const LOCK_FILE: &str = ".lock";
const CONFIG_FILE: &str = "config.json";

/// A datastore in a local directory, safe for many processes at once.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    revision: &'a str,
    value: &'a T,
}

#[derive(Deserialize)]
struct EnvelopeIn<T> {
    revision: String,
    value: T,
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

fn io_err(path: &Path, e: io::Error) -> DatastoreError {
    DatastoreError::Unavailable(format!("{}: {e}", path.display()))
}

fn mkdir(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// A file name for an object name: kept as is when it is made of `[a-z0-9._-]` (plus
/// uppercase for hostnames), does not start with `.` and is short; otherwise escaped byte by
/// byte as `%xx`, and when still too long cut and suffixed with a hash.
pub fn file_stem(name: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let mut out = String::with_capacity(name.len());
    for (i, c) in name.chars().enumerate() {
        if safe(c) && !(i == 0 && c == '.') {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02x}"));
            }
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    const MAX: usize = 200;
    if out.len() > MAX {
        let digest = Sha256::digest(name.as_bytes());
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        out.truncate(MAX - 17);
        out.push('~');
        out.push_str(&hex);
    }
    out
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

/// An exclusive flock on `<dir>/.lock`, released on drop (the file is closed).
struct DirLock(#[allow(dead_code)] File);

impl DirLock {
    fn acquire(dir: &Path) -> DsResult<DirLock> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .or_else(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    mkdir(dir)?;
                    OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&path)
                } else {
                    Err(e)
                }
            })
            .map_err(|e| io_err(&path, e))?;
        file.lock().map_err(|e| io_err(&path, e))?;
        Ok(DirLock(file))
    }
}

fn sync_dir(dir: &Path) -> DsResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// Reads one object; `None` when the file does not exist.
fn read_file<T: DeserializeOwned>(path: &Path) -> DsResult<Option<(T, Revision)>> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    let env: EnvelopeIn<T> = serde_json::from_slice(&data)
        .map_err(|e| DatastoreError::Other(format!("{}: invalid object: {e}", path.display())))?;
    Ok(Some((env.value, Revision(env.revision))))
}

/// Lists `<name>.json` entries of a directory (no dotfiles, no temporaries).
fn list_dir(dir: &Path) -> DsResult<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        if let Some(stem) = name.strip_suffix(".json") {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

impl LocalStore {
    /// Opens (creating with mode 0700 where missing) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> DsResult<LocalStore> {
        let root = root.into();
        for sub in [
            "",
            "pools",
            "nodes",
            "reservations",
            "blocks",
            "affinities",
            "handles",
        ] {
            let dir = root.join(sub);
            mkdir(&dir).map_err(|e| io_err(&dir, e))?;
        }
        Ok(LocalStore { root })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, kind: &str) -> PathBuf {
        self.root.join(kind)
    }

    fn block_path(&self, cidr: &IpNet) -> (PathBuf, String) {
        (
            self.dir("blocks"),
            format!("{}.json", names::cidr_to_name(cidr)),
        )
    }

    fn host_dir(&self, host: &str) -> PathBuf {
        self.dir("affinities").join(file_stem(host))
    }

    fn affinity_path(&self, host: &str, cidr: &IpNet) -> (PathBuf, String) {
        (
            self.host_dir(host),
            format!("{}.json", names::cidr_to_name(cidr)),
        )
    }

    fn handle_path(&self, handle_id: &str) -> (PathBuf, String) {
        (
            self.dir("handles"),
            format!("{}.json", file_stem(&names::handle_object_name(handle_id))),
        )
    }

    /// The one write primitive: under the directory lock, check `expect` against the file,
    /// then replace it with `value` (or remove it when `value` is `None`). Returns the new
    /// revision.
    fn write<T: Serialize>(
        &self,
        dir: &Path,
        file: &str,
        expect: Expect<'_>,
        value: Option<&T>,
    ) -> DsResult<Revision> {
        let _lock = DirLock::acquire(dir)?;
        let path = dir.join(file);
        let current = read_file::<IgnoredAny>(&path)?.map(|(_, rev)| rev);
        match (&expect, &current) {
            (Expect::Absent, Some(_)) => return Err(DatastoreError::AlreadyExists),
            (Expect::At(_), None) => return Err(DatastoreError::NotFound),
            (Expect::At(want), Some(have)) if *want != have => {
                return Err(DatastoreError::Conflict);
            }
            _ => {}
        }
        let Some(value) = value else {
            if current.is_some() {
                fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
                sync_dir(dir)?;
            }
            return Ok(Revision(String::new()));
        };
        let revision = match &current {
            Some(rev) => next_revision(rev),
            None => first_revision(),
        };
        let data = serde_json::to_vec_pretty(&EnvelopeOut {
            revision: &revision.0,
            value,
        })
        .map_err(|e| DatastoreError::Other(format!("encode {}: {e}", path.display())))?;
        let tmp = dir.join(format!(".{file}.tmp"));
        let write_tmp = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&tmp)?;
            f.write_all(&data)?;
            f.write_all(b"\n")?;
            f.sync_all()
        };
        write_tmp().map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        sync_dir(dir)?;
        Ok(revision)
    }

    fn create_dir_for(&self, dir: &Path) -> DsResult<()> {
        if !dir.exists() {
            mkdir(dir).map_err(|e| io_err(dir, e))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(())
    }

    fn read<T: DeserializeOwned>(&self, dir: &Path, file: &str) -> DsResult<Option<Versioned<T>>> {
        Ok(read_file::<T>(&dir.join(file))?.map(|(value, revision)| Versioned { value, revision }))
    }

    /// Sets the labels of a node (creating the node), for pools' nodeSelector.
    pub fn set_node_labels(&self, node: &str, labels: BTreeMap<String, String>) -> DsResult<()> {
        let file = format!("{}.json", file_stem(node));
        self.write(
            &self.dir("nodes"),
            &file,
            Expect::Any,
            Some(&NodeFile { labels }),
        )
        .map(|_| ())
    }

    /// Adds or replaces an IP reservation.
    pub fn apply_reservation(&self, reservation: &IpReservation) -> DsResult<()> {
        let file = format!("{}.json", file_stem(&reservation.name));
        self.write(
            &self.dir("reservations"),
            &file,
            Expect::Any,
            Some(reservation),
        )
        .map(|_| ())
    }

    /// Deletes an IP reservation; `Ok(false)` when there was none.
    pub fn delete_reservation(&self, name: &str) -> DsResult<bool> {
        let dir = self.dir("reservations");
        let file = format!("{}.json", file_stem(name));
        let existed = dir.join(&file).exists();
        self.write::<()>(&dir, &file, Expect::Any, None)?;
        Ok(existed)
    }

    fn list_kind<T: DeserializeOwned>(&self, dir: &Path) -> DsResult<Vec<Versioned<T>>> {
        let mut out = Vec::new();
        for stem in list_dir(dir)? {
            if let Some(v) = self.read(dir, &format!("{stem}.json"))? {
                out.push(v);
            }
        }
        Ok(out)
    }
}

impl Datastore for LocalStore {
    async fn get_config(&self) -> DsResult<IpamConfig> {
        Ok(self
            .read::<IpamConfig>(&self.root, CONFIG_FILE)?
            .map(|v| v.value)
            .unwrap_or_default())
    }

    async fn apply_config(&self, config: &IpamConfig) -> DsResult<()> {
        self.write(&self.root, CONFIG_FILE, Expect::Any, Some(config))
            .map(|_| ())
    }

    async fn list_pools(&self) -> DsResult<Vec<IpPool>> {
        let mut pools: Vec<IpPool> = self
            .list_kind::<IpPool>(&self.dir("pools"))?
            .into_iter()
            .map(|v| v.value)
            .collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pools)
    }

    async fn apply_pool(&self, pool: &IpPool) -> DsResult<()> {
        let file = format!("{}.json", file_stem(&pool.name));
        self.write(&self.dir("pools"), &file, Expect::Any, Some(pool))
            .map(|_| ())
    }

    async fn delete_pool(&self, name: &str) -> DsResult<bool> {
        let dir = self.dir("pools");
        let file = format!("{}.json", file_stem(name));
        let existed = dir.join(&file).exists();
        self.write::<()>(&dir, &file, Expect::Any, None)?;
        Ok(existed)
    }

    async fn node_labels(&self, node: &str) -> DsResult<Option<BTreeMap<String, String>>> {
        let file = format!("{}.json", file_stem(node));
        Ok(self
            .read::<NodeFile>(&self.dir("nodes"), &file)?
            .map(|v| v.value.labels))
    }

    async fn list_reservations(&self) -> DsResult<Vec<IpReservation>> {
        Ok(self
            .list_kind::<IpReservation>(&self.dir("reservations"))?
            .into_iter()
            .map(|v| v.value)
            .collect())
    }

    async fn get_block(&self, cidr: &IpNet) -> DsResult<Option<Versioned<IpamBlock>>> {
        let (dir, file) = self.block_path(cidr);
        Ok(self
            .read::<IpamBlock>(&dir, &file)?
            .filter(|b| !b.value.deleted))
    }

    async fn create_block(&self, block: &IpamBlock) -> DsResult<Revision> {
        let (dir, file) = self.block_path(&block.cidr);
        self.write(&dir, &file, Expect::Absent, Some(block))
    }

    async fn update_block(&self, block: &Versioned<IpamBlock>) -> DsResult<Revision> {
        let (dir, file) = self.block_path(&block.value.cidr);
        self.write(&dir, &file, Expect::At(&block.revision), Some(&block.value))
    }

    async fn delete_block(&self, block: &Versioned<IpamBlock>) -> DsResult<()> {
        let (dir, file) = self.block_path(&block.value.cidr);
        self.write::<()>(&dir, &file, Expect::At(&block.revision), None)
            .map(|_| ())
    }

    async fn list_block_cidrs(&self) -> DsResult<Vec<IpNet>> {
        // File names are the CIDRs: no block is read.
        Ok(list_dir(&self.dir("blocks"))?
            .iter()
            .filter_map(|stem| names::name_to_cidr(stem))
            .collect())
    }

    async fn list_blocks(&self) -> DsResult<Vec<Versioned<IpamBlock>>> {
        Ok(self
            .list_kind::<IpamBlock>(&self.dir("blocks"))?
            .into_iter()
            .filter(|b| !b.value.deleted)
            .collect())
    }

    async fn list_host_affinities(&self, host: &str) -> DsResult<Vec<Versioned<BlockAffinity>>> {
        Ok(self
            .list_kind::<BlockAffinity>(&self.host_dir(host))?
            .into_iter()
            .filter(|a| !a.value.deleted && a.value.node == host)
            .collect())
    }

    async fn list_affinities(&self) -> DsResult<Vec<Versioned<BlockAffinity>>> {
        let root = self.dir("affinities");
        let entries = fs::read_dir(&root).map_err(|e| io_err(&root, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&root, e))?;
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(
                    self.list_kind::<BlockAffinity>(&entry.path())?
                        .into_iter()
                        .filter(|a| !a.value.deleted),
                );
            }
        }
        Ok(out)
    }

    async fn get_affinity(
        &self,
        host: &str,
        cidr: &IpNet,
    ) -> DsResult<Option<Versioned<BlockAffinity>>> {
        let (dir, file) = self.affinity_path(host, cidr);
        Ok(self
            .read::<BlockAffinity>(&dir, &file)?
            .filter(|a| !a.value.deleted))
    }

    async fn create_affinity(&self, affinity: &BlockAffinity) -> DsResult<Revision> {
        let (dir, file) = self.affinity_path(&affinity.node, &affinity.cidr);
        self.create_dir_for(&dir)?;
        self.write(&dir, &file, Expect::Absent, Some(affinity))
    }

    async fn update_affinity(&self, affinity: &Versioned<BlockAffinity>) -> DsResult<Revision> {
        let (dir, file) = self.affinity_path(&affinity.value.node, &affinity.value.cidr);
        self.write(
            &dir,
            &file,
            Expect::At(&affinity.revision),
            Some(&affinity.value),
        )
    }

    async fn delete_affinity(&self, affinity: &Versioned<BlockAffinity>) -> DsResult<()> {
        let (dir, file) = self.affinity_path(&affinity.value.node, &affinity.value.cidr);
        self.write::<()>(&dir, &file, Expect::At(&affinity.revision), None)
            .map(|_| ())
    }

    async fn get_handle(&self, handle_id: &str) -> DsResult<Option<Versioned<IpamHandle>>> {
        let (dir, file) = self.handle_path(handle_id);
        Ok(self
            .read::<IpamHandle>(&dir, &file)?
            .filter(|h| !h.value.deleted))
    }

    async fn create_handle(&self, handle: &IpamHandle) -> DsResult<Revision> {
        let (dir, file) = self.handle_path(&handle.handle_id);
        self.write(&dir, &file, Expect::Absent, Some(handle))
    }

    async fn update_handle(&self, handle: &Versioned<IpamHandle>) -> DsResult<Revision> {
        let (dir, file) = self.handle_path(&handle.value.handle_id);
        self.write(
            &dir,
            &file,
            Expect::At(&handle.revision),
            Some(&handle.value),
        )
    }

    async fn delete_handle(&self, handle: &Versioned<IpamHandle>) -> DsResult<()> {
        let (dir, file) = self.handle_path(&handle.value.handle_id);
        self.write::<()>(&dir, &file, Expect::At(&handle.revision), None)
            .map(|_| ())
    }

    async fn list_handles(&self) -> DsResult<Vec<Versioned<IpamHandle>>> {
        Ok(self
            .list_kind::<IpamHandle>(&self.dir("handles"))?
            .into_iter()
            .filter(|h| !h.value.deleted)
            .collect())
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
    fn file_stems() {
        assert_eq!(file_stem("k8s-pod-network.abc"), "k8s-pod-network.abc");
        assert_eq!(file_stem("Node-A"), "Node-A");
        assert_eq!(file_stem("../x"), "%2e.%2fx");
        assert_eq!(file_stem(".hidden"), "%2ehidden");
        assert_eq!(file_stem(""), "%00");
        let long = "a".repeat(300);
        assert_eq!(file_stem(&long).len(), 200);
        assert_ne!(file_stem(&long), file_stem(&format!("{long}b")));
    }

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
