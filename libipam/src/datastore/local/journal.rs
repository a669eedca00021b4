//! The local store's journal: an append-only log that is the durable truth of the store.
//!
//! ```text
//! journal = header record*
//! header  = magic[32] id[32]                 written once, with the file, and synced
//! record  = len:u32le hash[32] payload[len]
//! hash    = SHA-256(previous hash ‖ len ‖ payload); before the first record it is `id`
//! payload = count:u32le change*
//! change  = 1:u8 path_len:u16le path data_len:u32le data    put: the object file's new bytes
//!         | 0:u8 path_len:u16le path                        delete
//! ```
//!
//! A record counts only if its hash chains to the record before it. So replay stops at the
//! first record that is torn, garbage, or stale (left beyond a truncation: its predecessor was
//! a different record), and everything before that point is exactly what was appended.
//! `id` is new for every journal file (creation, compaction), so records of an older file can
//! never chain into a newer one.

use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::files;
use crate::model::time;

/// A chain hash, and a journal's id.
pub(super) type Hash = [u8; 32];

const MAGIC: &[u8; 32] = b"calico-rs local IPAM journal v1\n";
/// Bytes before the first record.
pub(super) const HEADER_LEN: u64 = 64;
const RECORD_HEAD: usize = 4 + 32;

const PUT: u8 = 1;
const DELETE: u8 = 0;

/// One change to one object file: its path below the store root and its new bytes (`None`:
/// removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Change {
    pub path: String,
    pub data: Option<Vec<u8>>,
}

/// A fresh journal id: unique per file (time, process, counter, boot).
pub(super) fn new_id(boot: &str) -> Hash {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = Sha256::new();
    h.update(time::now_nanos().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.update(boot.as_bytes());
    h.finalize().into()
}

pub(super) fn encode_header(id: &Hash) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(id);
    out
}

/// The id of a journal whose first bytes are `bytes`; `None` if it is not one.
pub(super) fn decode_header(bytes: &[u8]) -> Option<Hash> {
    if bytes.len() < HEADER_LEN as usize || &bytes[..32] != MAGIC {
        return None;
    }
    bytes[32..64].try_into().ok()
}

fn chain(prev: &Hash, len: u32, payload: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(len.to_le_bytes());
    h.update(payload);
    h.finalize().into()
}

/// The bytes of one record holding `changes`, and its hash (the next record's predecessor).
pub(super) fn encode_record(prev: &Hash, changes: &[Change]) -> (Vec<u8>, Hash) {
    let mut payload = Vec::new();
    payload.extend_from_slice(&(changes.len() as u32).to_le_bytes());
    for c in changes {
        payload.push(if c.data.is_some() { PUT } else { DELETE });
        payload.extend_from_slice(&(c.path.len() as u16).to_le_bytes());
        payload.extend_from_slice(c.path.as_bytes());
        if let Some(data) = &c.data {
            payload.extend_from_slice(&(data.len() as u32).to_le_bytes());
            payload.extend_from_slice(data);
        }
    }
    let len = payload.len() as u32;
    let hash = chain(prev, len, &payload);
    let mut out = Vec::with_capacity(RECORD_HEAD + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&hash);
    out.extend_from_slice(&payload);
    (out, hash)
}

/// What [`scan`] found: the valid records, where the valid log ends and its last hash.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// Each valid record's changes, in order.
    pub records: Vec<Vec<Change>>,
    /// Offset just after the last valid record.
    pub end: u64,
    /// Hash of the last valid record (`prev` when there is none).
    pub tail: Hash,
}

/// Reads the records in `buf`, which holds the journal from `offset` on; `prev` is the hash
/// of the record before `offset` (the id at [`HEADER_LEN`]). Stops at the first record that
/// does not chain or whose changes do not decode.
pub(super) fn scan(buf: &[u8], offset: u64, prev: Hash) -> Scan {
    let mut scan = Scan {
        records: Vec::new(),
        end: offset,
        tail: prev,
    };
    let mut at = 0usize;
    while let Some((changes, hash, next)) = record_at(buf, at, &scan.tail) {
        scan.records.push(changes);
        scan.tail = hash;
        scan.end = offset + next as u64;
        at = next;
    }
    scan
}

fn record_at(buf: &[u8], at: usize, prev: &Hash) -> Option<(Vec<Change>, Hash, usize)> {
    let head = buf.get(at..at.checked_add(RECORD_HEAD)?)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?);
    let stored: Hash = head[4..].try_into().ok()?;
    let start = at + RECORD_HEAD;
    let end = start.checked_add(len as usize)?;
    let payload = buf.get(start..end)?;
    if chain(prev, len, payload) != stored {
        return None;
    }
    Some((decode_payload(payload)?, stored, end))
}

fn decode_payload(p: &[u8]) -> Option<Vec<Change>> {
    let mut r = Reader { buf: p, at: 0 };
    let count = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
    let mut changes = Vec::new();
    for _ in 0..count {
        let kind = r.take(1)?[0];
        let path_len = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        let path = std::str::from_utf8(r.take(usize::from(path_len))?).ok()?;
        if !files::valid_path(path) {
            return None;
        }
        let data = match kind {
            PUT => {
                let n = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
                Some(r.take(n as usize)?.to_vec())
            }
            DELETE => None,
            _ => return None,
        };
        changes.push(Change {
            path: path.to_owned(),
            data,
        });
    }
    (r.at == p.len()).then_some(changes)
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.buf.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(path: &str, data: &str) -> Change {
        Change {
            path: path.into(),
            data: Some(data.as_bytes().to_vec()),
        }
    }

    fn log(id: &Hash, records: &[Vec<Change>]) -> (Vec<u8>, Vec<u64>) {
        let mut out = encode_header(id);
        let mut ends = Vec::new();
        let mut prev = *id;
        for r in records {
            let (bytes, hash) = encode_record(&prev, r);
            out.extend_from_slice(&bytes);
            ends.push(out.len() as u64);
            prev = hash;
        }
        (out, ends)
    }

    #[test]
    fn records_round_trip_and_chain() {
        let id = new_id("boot");
        let records = vec![
            vec![
                put("blocks/10-0-0-0-26.json", "{}"),
                put("handles/h.json", "x"),
            ],
            vec![Change {
                path: "handles/h.json".into(),
                data: None,
            }],
            vec![],
        ];
        let (bytes, ends) = log(&id, &records);
        assert_eq!(decode_header(&bytes), Some(id));
        let s = scan(&bytes[HEADER_LEN as usize..], HEADER_LEN, id);
        assert_eq!(s.records, records);
        assert_eq!(s.end, *ends.last().expect("end"));

        // Resuming in the middle needs the hash before that point.
        let mid = ends[0] as usize;
        let (_, h0) = encode_record(&id, &records[0]);
        let s = scan(&bytes[mid..], mid as u64, h0);
        assert_eq!(s.records, records[1..]);
        assert!(scan(&bytes[mid..], mid as u64, id).records.is_empty());

        // Another journal's id does not validate these records.
        assert!(
            scan(&bytes[HEADER_LEN as usize..], HEADER_LEN, new_id("boot"))
                .records
                .is_empty()
        );
    }

    #[test]
    fn a_torn_or_stale_tail_ends_the_log() {
        let id = new_id("boot");
        let a = vec![put("pools/a.json", "1")];
        let b = vec![put("pools/b.json", "2")];
        let (bytes, ends) = log(&id, &[a.clone(), b.clone()]);
        let body = |b: &[u8]| scan(&b[HEADER_LEN as usize..], HEADER_LEN, id);
        // Every cut inside the second record keeps exactly the first.
        for cut in ends[0]..ends[1] {
            let s = body(&bytes[..cut as usize]);
            assert_eq!(s.records, vec![a.clone()], "cut at {cut}");
            assert_eq!(s.end, ends[0]);
        }
        // A flipped byte anywhere in a record invalidates it and what follows.
        for i in ends[0] as usize..ends[1] as usize {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert_eq!(body(&bad).records, vec![a.clone()], "flip at {i}");
        }
        // A stale record beyond a truncation: the log was cut after `a`, `c` appended in `b`'s
        // place, and the old `b` bytes survived after it. `b` does not chain to `c`.
        let c = vec![put("pools/c.json", "3")];
        let (_, ha) = encode_record(&id, &a);
        let (rc, _) = encode_record(&ha, &c);
        let mut mixed = bytes[..ends[0] as usize].to_vec();
        mixed.extend_from_slice(&rc);
        mixed.extend_from_slice(&bytes[ends[0] as usize..]);
        assert_eq!(body(&mixed).records, vec![a, c]);
    }

    #[test]
    fn unsafe_paths_are_not_replayed() {
        let id = new_id("boot");
        for path in [
            "../etc/passwd",
            "/etc/passwd",
            "blocks/.x.json",
            "blocks/a/b.json",
            "x.json",
        ] {
            let (bytes, _) = log(&id, &[vec![put(path, "x")]]);
            assert!(
                scan(&bytes[HEADER_LEN as usize..], HEADER_LEN, id)
                    .records
                    .is_empty(),
                "{path}"
            );
        }
        assert_eq!(decode_header(b"not a journal"), None);
    }
}
