//! The object files of the local store (the "view" of the journal): paths, whole-file reads,
//! atomic replacement, listings and the sweep of temporary files.
//!
//! Object paths are relative to the store root: `config.json`, `<kind>/<stem>.json` for the
//! kinds in [`KINDS`], and `affinities/<host stem>/<cidr name>.json`.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::datastore::DatastoreError;

/// Directories of objects named by one file each.
pub(super) const KINDS: [&str; 5] = ["pools", "nodes", "reservations", "blocks", "handles"];
/// The directory of per-host affinity directories.
pub(super) const AFFINITIES: &str = "affinities";
pub(super) const CONFIG: &str = "config.json";
const OBJECT_SUFFIX: &str = ".json";
const TMP_SUFFIX: &str = ".tmp";

pub(super) fn io_err(path: &Path, e: io::Error) -> DatastoreError {
    DatastoreError::Unavailable(format!("{}: {e}", path.display()))
}

pub(super) fn mkdir(path: &Path) -> io::Result<()> {
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

/// The name whose [`file_stem`] is `stem`, when there is one (`%xx` escapes undone); a name
/// cut and hashed for length cannot be recovered.
pub(super) fn name_of_stem(stem: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(stem.len());
    let mut rest = stem.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    let name = String::from_utf8(bytes).ok()?;
    let name = if stem == "%00" { String::new() } else { name };
    (file_stem(&name) == stem).then_some(name)
}

/// A path component as [`file_stem`] makes them: not empty, not hidden, no separators.
fn valid_component(c: &str) -> bool {
    !c.is_empty()
        && !c.starts_with('.')
        && c.len() <= 255
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'%' | b'~'))
}

/// Whether `rel` is the path of an object file (the only paths the journal may name).
pub(super) fn valid_path(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    let object = |name: &str| name.ends_with(OBJECT_SUFFIX) && valid_component(name);
    match parts.as_slice() {
        [name] => *name == CONFIG,
        [kind, name] => KINDS.contains(kind) && object(name),
        [dir, host, name] => *dir == AFFINITIES && valid_component(host) && object(name),
        _ => false,
    }
}

/// The largest object file read. calico-ipam's largest objects are blocks: 4,096 addresses
/// at most (a /20 or /116 block), a few MiB with every attribute; a larger file was not
/// written by it, and is refused rather than read whole.
pub const MAX_OBJECT_FILE_BYTES: u64 = 16 << 20;

/// The bytes of one object file; `None` when it does not exist.
pub(super) fn read(root: &Path, rel: &str) -> Result<Option<Vec<u8>>, DatastoreError> {
    let path = root.join(rel);
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path, e)),
    };
    let mut data = Vec::new();
    file.take(MAX_OBJECT_FILE_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| io_err(&path, e))?;
    if data.len() as u64 > MAX_OBJECT_FILE_BYTES {
        return Err(DatastoreError::Other(format!(
            "{rel}: larger than {MAX_OBJECT_FILE_BYTES} bytes (16 MiB), the most an object file \
             may hold: it was not written by calico-ipam"
        )));
    }
    Ok(Some(data))
}

/// Replaces (or creates) one object file: the bytes go to `.<name>.tmp` beside it, which is
/// renamed over it, so a reader sees the old or the new file, never part of one. Not synced:
/// the journal is what survives power loss.
pub(super) fn put(root: &Path, rel: &str, data: &[u8]) -> io::Result<()> {
    let path = root.join(rel);
    let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(d), Some(n)) => (d.to_owned(), n.to_owned()),
        _ => return Err(io::Error::other(format!("bad object path {rel}"))),
    };
    let tmp = dir.join(format!(".{name}{TMP_SUFFIX}"));
    let create = || {
        OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)
    };
    let mut f = match create() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            mkdir(&dir)?;
            create()?
        }
        other => other?,
    };
    f.write_all(data)?;
    drop(f);
    super::hooks::point("after-tmp-write");
    fs::rename(&tmp, &path)
}

/// Removes one object file (absent is fine).
pub(super) fn remove(root: &Path, rel: &str) -> io::Result<()> {
    match fs::remove_file(root.join(rel)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Names in `dir` (relative to the root); empty when it does not exist.
fn entries(root: &Path, dir: &str) -> Result<Vec<(String, bool)>, DatastoreError> {
    let path = root.join(dir);
    let rd = match fs::read_dir(&path) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&path, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| io_err(&path, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        out.push((name, is_dir));
    }
    out.sort();
    Ok(out)
}

/// The stems of the object files in `dir` (no dotfiles, no temporaries).
pub(super) fn list_dir(root: &Path, dir: &str) -> Result<Vec<String>, DatastoreError> {
    Ok(entries(root, dir)?
        .into_iter()
        .filter(|(name, is_dir)| !is_dir && !name.starts_with('.'))
        .filter_map(|(name, _)| name.strip_suffix(OBJECT_SUFFIX).map(str::to_owned))
        .collect())
}

/// The per-host directories under `affinities/` (their names are host stems).
pub(super) fn affinity_hosts(root: &Path) -> Result<Vec<String>, DatastoreError> {
    Ok(entries(root, AFFINITIES)?
        .into_iter()
        .filter(|(name, is_dir)| *is_dir && valid_component(name))
        .map(|(name, _)| name)
        .collect())
}

/// Every directory that holds object files.
fn object_dirs(root: &Path) -> Result<Vec<String>, DatastoreError> {
    let mut dirs = vec![String::new()];
    dirs.extend(KINDS.iter().map(|k| (*k).to_owned()));
    dirs.extend(
        affinity_hosts(root)?
            .into_iter()
            .map(|h| format!("{AFFINITIES}/{h}")),
    );
    Ok(dirs)
}

/// The path of every object file there is.
pub(super) fn all_objects(root: &Path) -> Result<Vec<String>, DatastoreError> {
    let mut out = Vec::new();
    for dir in object_dirs(root)? {
        for stem in list_dir(root, &dir)? {
            let rel = if dir.is_empty() {
                format!("{stem}{OBJECT_SUFFIX}")
            } else {
                format!("{dir}/{stem}{OBJECT_SUFFIX}")
            };
            if valid_path(&rel) {
                out.push(rel);
            }
        }
    }
    Ok(out)
}

/// Every temporary file in the store's directories: `.<name>.tmp` from an interrupted
/// object write (including the per-write names of earlier versions of this store) and
/// `journal.new` from an interrupted compaction.
pub(super) fn temporaries(root: &Path) -> Result<Vec<PathBuf>, DatastoreError> {
    let mut out = Vec::new();
    for dir in object_dirs(root)? {
        for (name, is_dir) in entries(root, &dir)? {
            let tmp = name.starts_with('.') && name.ends_with(TMP_SUFFIX);
            let new_journal = dir.is_empty() && name == super::JOURNAL_NEW;
            if !is_dir && (tmp || new_journal) {
                out.push(root.join(&dir).join(name));
            }
        }
    }
    Ok(out)
}

/// Removes the given temporaries; only the holder of the store lock may call this (every
/// writer of a temporary holds it, so none of them is in use). Returns those removed.
pub(super) fn sweep(found: Vec<PathBuf>) -> Vec<PathBuf> {
    found
        .into_iter()
        .filter(|p| fs::remove_file(p).is_ok())
        .collect()
}

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
        for name in ["../x", ".hidden", "", &long, "é/ü", "a b"] {
            assert!(
                valid_path(&format!("handles/{}.json", file_stem(name))),
                "{name:?}"
            );
            let back = name_of_stem(&file_stem(name));
            if name.len() < 100 {
                assert_eq!(back.as_deref(), Some(name), "{name:?}");
            } else {
                assert_eq!(back, None, "a hashed name cannot be recovered");
            }
        }
        assert_eq!(
            name_of_stem("default-ipv4-ippool").as_deref(),
            Some("default-ipv4-ippool")
        );
        assert_eq!(name_of_stem("%zz"), None);
        assert_eq!(name_of_stem("%2"), None);
    }

    #[test]
    fn object_paths() {
        for ok in [
            "config.json",
            "blocks/10-0-0-0-26.json",
            "handles/k8s-pod-network.abc.json",
            "affinities/node-a/10-0-0-0-26.json",
            "nodes/Node-A.json",
        ] {
            assert!(valid_path(ok), "{ok}");
        }
        for bad in [
            "",
            "journal",
            "blocks",
            "blocks/x",
            "blocks/.x.json",
            "blocks/../x.json",
            "other/x.json",
            "affinities/x.json",
            "affinities/../x.json",
            "affinities/a/b/c.json",
            "/config.json",
            "blocks//x.json",
        ] {
            assert!(!valid_path(bad), "{bad}");
        }
    }
}
