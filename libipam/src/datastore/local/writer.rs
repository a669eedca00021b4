//! The writer of a local store: whoever holds the store lock (`<root>/.lock`). It appends
//! commits to the journal, makes them durable with one `fdatasync`, applies them to the
//! object files, and repairs what a writer killed or a power loss left behind.
//!
//! `journal.view` says how far the object files reflect the journal:
//! `v1 <boot id> <journal id> <applied length> <hash at that length>`. The writer rewrites it
//! after each commit and never syncs it: it is only trusted within the boot that wrote it
//! (the page cache is coherent across processes, so a killed process loses nothing written).
//! After a reboot, or whenever it does not match the journal, the object files are rebuilt
//! from the journal.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::files::{self, io_err};
use super::hooks;
use super::journal::{self, Change, HEADER_LEN, Hash};
use crate::datastore::{DatastoreError, DsResult};

pub(super) const JOURNAL: &str = "journal";
pub(super) const JOURNAL_NEW: &str = "journal.new";
const VIEW_STATE: &str = "journal.view";
const LOCK: &str = ".lock";
/// The journal is compacted once it is longer than this and twice its compacted size.
const COMPACT_MIN: u64 = 4 << 20;

/// This boot's id; where it cannot be read, a value no other process shares (the object
/// files are then rebuilt by every writer: slow, but never wrong).
pub(super) fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty() && !s.contains(' '))
        .unwrap_or_else(|| hex(&journal::new_id("unknown")))
}

fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What the object files reflect (the contents of `journal.view`).
#[derive(Debug, PartialEq)]
struct ViewState {
    boot: String,
    id: Hash,
    applied: u64,
    tail: Hash,
}

fn read_view_state(root: &Path) -> Option<ViewState> {
    let text = fs::read_to_string(root.join(VIEW_STATE)).ok()?;
    let mut words = text.split_whitespace();
    if words.next()? != "v1" {
        return None;
    }
    Some(ViewState {
        boot: words.next()?.to_owned(),
        id: unhex(words.next()?)?,
        applied: words.next()?.parse().ok()?,
        tail: unhex(words.next()?)?,
    })
}

fn write_view_state(root: &Path, s: &ViewState) -> DsResult<()> {
    // Fixed width, rewritten in place: one small write, no truncation.
    let line = format!(
        "v1 {} {} {:020} {}\n",
        s.boot,
        hex(&s.id),
        s.applied,
        hex(&s.tail)
    );
    let path = root.join(VIEW_STATE);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .and_then(|f| {
            f.write_all_at(line.as_bytes(), 0)?;
            f.set_len(line.len() as u64)
        })
        .map_err(|e| io_err(&path, e))
}

fn sync_dir(dir: &Path) -> DsResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

fn corrupt(path: &Path, what: &str) -> DatastoreError {
    DatastoreError::Other(format!(
        "{}: {what}; move it aside and the store is rebuilt from its object files",
        path.display()
    ))
}

/// How a store looks to a process that holds no lock.
pub(super) enum Status {
    /// The object files reflect the whole journal, in this boot.
    Clean,
    /// They may not: a writer died, is committing right now, or the machine rebooted.
    Dirty { same_boot: bool },
    /// There is no journal yet (a new store, or one written by an earlier version).
    Missing,
}

/// Whether the journal holds nothing (zeros, or its end) from `offset` on for a record head:
/// no record was started there.
fn nothing_at(journal: &File, offset: u64) -> bool {
    let mut head = [0u8; 4];
    match journal.read_at(&mut head, offset) {
        Ok(n) => head[..n].iter().all(|b| *b == 0),
        Err(_) => false,
    }
}

pub(super) fn status(root: &Path, boot: &str) -> DsResult<Status> {
    let path = root.join(JOURNAL);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Status::Missing),
        Err(e) => return Err(io_err(&path, e)),
    };
    let mut head = [0u8; HEADER_LEN as usize];
    let id = f
        .read_exact(&mut head)
        .ok()
        .and_then(|()| journal::decode_header(&head));
    Ok(match (read_view_state(root), id) {
        (Some(s), Some(id)) if s.boot == boot && s.id == id && nothing_at(&f, s.applied) => {
            Status::Clean
        }
        (Some(s), _) => Status::Dirty {
            same_boot: s.boot == boot,
        },
        (None, _) => Status::Dirty { same_boot: false },
    })
}

fn open_lock(root: &Path) -> DsResult<File> {
    let path = root.join(LOCK);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))
}

/// Takes the store lock (without waiting unless `wait`) and repairs the store. Returns the
/// temporaries removed, or `None` when the lock was busy: its holder repairs first.
pub(super) fn repair(root: &Path, boot: &str, wait: bool) -> DsResult<Option<Vec<PathBuf>>> {
    let lock = open_lock(root)?;
    if wait {
        lock.lock().map_err(|e| io_err(&root.join(LOCK), e))?;
    } else if lock.try_lock().is_err() {
        return Ok(None);
    }
    Writer::recover(lock, root, boot).map(|(_, swept)| Some(swept))
}

/// The store lock and the journal, current.
///
/// The journal file is longer than its log: it is extended with zeros [`CHUNK`] at a time,
/// so that a commit overwrites blocks that already exist and its `fdatasync` has no file
/// size or extent to record (on ext4, no journal commit of its own: about half the cost of
/// syncing an append). Everything after the log's end is zeros.
pub(super) struct Writer {
    _lock: File,
    journal: File,
    boot: String,
    id: Hash,
    /// Where the log ends (the next record goes here).
    end: u64,
    /// The file's length.
    size: u64,
    tail: Hash,
}

/// The journal grows by this much, zero-filled.
const CHUNK: u64 = 1 << 20;

impl Writer {
    /// Waits for the store lock, then repairs the store. Returns the temporaries removed.
    pub(super) fn acquire(root: &Path, boot: &str) -> DsResult<(Writer, Vec<PathBuf>)> {
        let lock = open_lock(root)?;
        lock.lock().map_err(|e| io_err(&root.join(LOCK), e))?;
        Writer::recover(lock, root, boot)
    }

    /// With the lock held: open the journal (creating it from the object files if there is
    /// none) and bring the object files up to it.
    fn recover(lock: File, root: &Path, boot: &str) -> DsResult<(Writer, Vec<PathBuf>)> {
        let path = root.join(JOURNAL);
        let journal = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                migrate(root, boot)?;
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| io_err(&path, e))?
            }
            Err(e) => return Err(io_err(&path, e)),
        };
        let size = journal.metadata().map_err(|e| io_err(&path, e))?.len();
        let mut head = [0u8; HEADER_LEN as usize];
        let id = journal
            .read_exact_at(&mut head, 0)
            .ok()
            .and_then(|()| journal::decode_header(&head))
            .ok_or_else(|| corrupt(&path, "not a calico-rs IPAM journal"))?;
        let mut w = Writer {
            _lock: lock,
            journal,
            boot: boot.to_owned(),
            id,
            end: HEADER_LEN,
            size,
            tail: id,
        };
        let state =
            read_view_state(root).filter(|s| s.boot == boot && s.id == id && s.applied <= size);
        if let Some(s) = &state
            && nothing_at(&w.journal, s.applied)
        {
            w.end = s.applied;
            w.tail = s.tail;
            return Ok((w, Vec::new()));
        }
        // Whoever wrote these is dead (they are only written with the lock held).
        let swept = files::sweep(files::temporaries(root)?);
        if let Some(s) = state {
            // A writer died after appending: finish applying what it appended, if all of
            // it chains on from where the object files are and only zeros follow.
            let buf = w.read_from(s.applied)?;
            let scan = journal::scan(&buf, s.applied, s.tail);
            if only_zeros(&buf[(scan.end - s.applied) as usize..]) {
                w.end = scan.end;
                w.sync()?;
                for changes in &scan.records {
                    apply(root, changes)?;
                }
                w.tail = scan.tail;
                w.record_view(root)?;
                return Ok((w, swept));
            }
        }
        // After a reboot, or a journal the object files do not follow: the valid log decides.
        let buf = w.read_from(HEADER_LEN)?;
        let scan = journal::scan(&buf, HEADER_LEN, id);
        w.end = scan.end;
        // A torn or unsynced tail: zero it, so that the log ends where it is valid.
        let rest = &buf[(scan.end - HEADER_LEN) as usize..];
        if let Some(last) = rest.iter().rposition(|b| *b != 0) {
            w.journal
                .write_all_at(&vec![0u8; last + 1], scan.end)
                .map_err(|e| io_err(&path, e))?;
        }
        w.sync()?;
        w.tail = scan.tail;
        rebuild(root, &replay(scan.records))?;
        w.record_view(root)?;
        Ok((w, swept))
    }

    fn read_from(&self, offset: u64) -> DsResult<Vec<u8>> {
        let mut buf = vec![0u8; self.size.saturating_sub(offset) as usize];
        self.journal
            .read_exact_at(&mut buf, offset)
            .map_err(|e| io_err(Path::new(JOURNAL), e))?;
        Ok(buf)
    }

    fn sync(&self) -> DsResult<()> {
        self.journal
            .sync_data()
            .map_err(|e| io_err(Path::new(JOURNAL), e))?;
        hooks::synced(&hex(&self.id), self.end);
        Ok(())
    }

    fn record_view(&self, root: &Path) -> DsResult<()> {
        write_view_state(
            root,
            &ViewState {
                boot: self.boot.clone(),
                id: self.id,
                applied: self.end,
                tail: self.tail,
            },
        )
    }

    /// Writes `record` at the log's end, extending the file with zeros first if it does not
    /// fit; a crash point in the middle.
    fn append(&mut self, record: &[u8]) -> io::Result<()> {
        let need = self.end + record.len() as u64;
        if need > self.size {
            let size = need.div_ceil(CHUNK) * CHUNK;
            self.journal
                .write_all_at(&vec![0u8; (size - self.size) as usize], self.size)?;
            self.size = size;
        }
        let half = record.len() / 2;
        self.journal.write_all_at(&record[..half], self.end)?;
        hooks::point("mid-append");
        self.journal
            .write_all_at(&record[half..], self.end + half as u64)
    }

    /// Makes `changes` durable as one journal record (one `fdatasync`), then applies them to
    /// the object files. An error before the sync leaves nothing behind (the record is
    /// zeroed again); an error after it leaves a durable record that the next writer applies.
    pub(super) fn commit(&mut self, root: &Path, changes: &[Change]) -> DsResult<()> {
        let (record, tail) = journal::encode_record(&self.tail, changes);
        hooks::point("before-append");
        let start = self.end;
        let appended = self.append(&record);
        self.end += record.len() as u64;
        hooks::point("after-append");
        if let Err(e) = appended
            .map_err(|e| io_err(&root.join(JOURNAL), e))
            .and_then(|()| self.sync())
        {
            let _ = self.journal.write_all_at(&vec![0u8; record.len()], start);
            self.end = start;
            return Err(e);
        }
        hooks::point("after-sync");
        self.tail = tail;
        apply(root, changes)?;
        hooks::point("after-apply");
        if self.end > self.compact_threshold() {
            self.compact(root)?;
        }
        self.record_view(root)?;
        hooks::point("after-view-state");
        Ok(())
    }

    fn compact_threshold(&self) -> u64 {
        if let Some(n) = hooks::compact_bytes() {
            return n;
        }
        if self.end <= COMPACT_MIN {
            return COMPACT_MIN;
        }
        // The first record is the snapshot the last compaction wrote.
        let mut n = [0u8; 4];
        let base = match self.journal.read_exact_at(&mut n, HEADER_LEN) {
            Ok(()) => u64::from(u32::from_le_bytes(n)),
            Err(_) => 0,
        };
        COMPACT_MIN.max(2 * base)
    }

    /// Replaces the journal by one holding a single record: the current state. Two syncs
    /// (the new file, then the directory after the rename), once per compaction.
    fn compact(&mut self, root: &Path) -> DsResult<()> {
        let scan = journal::scan(&self.read_from(HEADER_LEN)?, HEADER_LEN, self.id);
        if scan.end != self.end {
            return Ok(()); // Not expected with the lock held; leave it for recovery.
        }
        let id = journal::new_id(&self.boot);
        let new = write_journal(root, id, &replay(scan.records))?;
        self.journal = new.file;
        self.id = id;
        self.end = new.end;
        self.size = new.size;
        self.tail = new.tail;
        Ok(())
    }
}

fn only_zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// A journal just written by [`write_journal`].
struct NewJournal {
    file: File,
    end: u64,
    size: u64,
    tail: Hash,
}

/// Writes `journal.new` holding `state` as one record (zero-padded to a whole chunk), syncs
/// it and renames it over the journal.
fn write_journal(root: &Path, id: Hash, state: &BTreeMap<String, Vec<u8>>) -> DsResult<NewJournal> {
    let new = root.join(JOURNAL_NEW);
    let mut bytes = journal::encode_header(&id);
    let mut tail = id;
    if !state.is_empty() {
        let changes: Vec<Change> = state
            .iter()
            .map(|(path, data)| Change {
                path: path.clone(),
                data: Some(data.clone()),
            })
            .collect();
        let (record, hash) = journal::encode_record(&id, &changes);
        bytes.extend_from_slice(&record);
        tail = hash;
    }
    let end = bytes.len() as u64;
    let size = (end + 1).div_ceil(CHUNK) * CHUNK;
    bytes.resize(size as usize, 0);
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&new)
        .and_then(|f| {
            f.write_all_at(&bytes, 0)?;
            f.sync_all()?;
            Ok(f)
        })
        .map_err(|e| io_err(&new, e))?;
    hooks::point("compact-written");
    fs::rename(&new, root.join(JOURNAL)).map_err(|e| io_err(&new, e))?;
    hooks::point("compact-renamed");
    sync_dir(root)?;
    hooks::synced(&hex(&id), end);
    Ok(NewJournal {
        file,
        end,
        size,
        tail,
    })
}

/// First use of a store without a journal (new, or written by an earlier version, whose
/// writes were each synced): its object files, as they are, become the journal's first record.
/// The directories above the store are synced too, once: `LocalStore::open` may just have
/// created them, and the journal is only found after a power loss if their entries are.
fn migrate(root: &Path, boot: &str) -> DsResult<()> {
    let mut state = BTreeMap::new();
    for rel in files::all_objects(root)? {
        if let Some(data) = files::read(root, &rel)? {
            state.insert(rel, data);
        }
    }
    write_journal(root, journal::new_id(boot), &state)?;
    sync_ancestors(root)
}

/// Syncs every directory above `root`, up to `/`; stops quietly at the first one this process
/// cannot open for reading.
fn sync_ancestors(root: &Path) -> DsResult<()> {
    let root = fs::canonicalize(root).map_err(|e| io_err(root, e))?;
    for dir in root.ancestors().skip(1) {
        let Ok(d) = File::open(dir) else {
            break;
        };
        d.sync_all().map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}

/// The state the records leave, from nothing.
fn replay(records: Vec<Vec<Change>>) -> BTreeMap<String, Vec<u8>> {
    let mut state = BTreeMap::new();
    for change in records.into_iter().flatten() {
        match change.data {
            Some(data) => state.insert(change.path, data),
            None => state.remove(&change.path),
        };
    }
    state
}

fn apply(root: &Path, changes: &[Change]) -> DsResult<()> {
    for (i, c) in changes.iter().enumerate() {
        match &c.data {
            Some(data) => files::put(root, &c.path, data),
            None => files::remove(root, &c.path),
        }
        .map_err(|e| io_err(&root.join(&c.path), e))?;
        if i == 0 {
            hooks::point("mid-apply");
        }
    }
    Ok(())
}

/// Makes the object files exactly `state`: files it does not hold are removed, files that
/// differ are rewritten.
fn rebuild(root: &Path, state: &BTreeMap<String, Vec<u8>>) -> DsResult<()> {
    for rel in files::all_objects(root)? {
        if !state.contains_key(&rel) {
            files::remove(root, &rel).map_err(|e| io_err(&root.join(&rel), e))?;
        }
    }
    for (rel, data) in state {
        // A file that cannot be read (too large, say) is replaced like one that differs.
        if files::read(root, rel).ok().flatten().as_ref() != Some(data) {
            files::put(root, rel, data).map_err(|e| io_err(&root.join(rel), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_state_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = ViewState {
            boot: boot_id(),
            id: journal::new_id("x"),
            applied: 12345,
            tail: journal::new_id("y"),
        };
        write_view_state(dir.path(), &s).expect("write");
        assert_eq!(read_view_state(dir.path()), Some(s));
        fs::write(dir.path().join(VIEW_STATE), "garbage").expect("write");
        assert_eq!(read_view_state(dir.path()), None);
        assert_eq!(boot_id(), boot_id(), "stable within a boot");
    }
}
