//! The request read-ahead: an allocation's first reads (config, pools, reservations, the
//! host's affinities; [`request`]) are one transaction of range reads, and the fast path's
//! affine blocks another ([`blocks`]); a release by handle reads the handle and the config
//! in one ([`release`]) and then the handle's blocks ([`blocks`]). Each answer is kept in a one-shot [`Slot`] for the next
//! call that reads the same key or prefix (`get_once`, `list_once`) to take.
//!
//! Invariants: every slot was read after the request started ([`end`] empties them all), and
//! none is older than a write of this store to a key it covers (`forget_prefetched`, which
//! every write calls before it is sent). What a slot holds is decoded by the call that takes
//! it, so an object that does not decode fails that call, as a read would.

use etcd_client::{GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use ipnet::IpNet;

use super::{EtcdStore, keys};
use crate::datastore::{DatastoreError, DsResult};

/// The most blocks [`Datastore::prefetch_blocks`] reads in its transaction (the first ones
/// asked for; etcd refuses a transaction of more than 128 operations by default).
///
/// [`Datastore::prefetch_blocks`]: crate::datastore::Datastore::prefetch_blocks
const MAX_PREFETCHED_BLOCKS: usize = 16;

/// An answer read ahead ([`Datastore::prefetch_request`], [`Datastore::prefetch_blocks`]),
/// for the next call that reads `key` (with `prefix`: every key under it) to take.
///
/// [`Datastore::prefetch_request`]: crate::datastore::Datastore::prefetch_request
/// [`Datastore::prefetch_blocks`]: crate::datastore::Datastore::prefetch_blocks
#[derive(Debug)]
pub(super) struct Slot {
    key: String,
    prefix: bool,
    kvs: Vec<KeyValue>,
}

impl Slot {
    /// Whether writing `key` may change the answer.
    fn covers(&self, key: &str) -> bool {
        if self.prefix {
            key.starts_with(&self.key)
        } else {
            key == self.key
        }
    }
}

impl EtcdStore {
    /// Reads `ranges` (a key, or with `true` every key under it) in one transaction of range
    /// reads: one etcd revision, one round trip. Answers in the order asked.
    async fn read_together(&self, what: &str, ranges: Vec<(String, bool)>) -> DsResult<Vec<Slot>> {
        let ops: Vec<TxnOp> = ranges
            .iter()
            .map(|(key, prefix)| {
                TxnOp::get(
                    key.as_str(),
                    prefix.then(|| GetOptions::new().with_prefix()),
                )
            })
            .collect();
        let txn = Txn::new().and_then(ops);
        // A transaction of reads only changes nothing: it may be sent again.
        let resp = self
            .call(what, true, |mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        let answers = resp.op_responses();
        if answers.len() != ranges.len() {
            return Err(DatastoreError::Other(format!(
                "{}: {what}: {} answers to {} reads",
                self.conn.server,
                answers.len(),
                ranges.len()
            )));
        }
        ranges
            .into_iter()
            .zip(answers)
            .map(|((key, prefix), answer)| match answer {
                TxnOpResponse::Get(mut got) => Ok(Slot {
                    key,
                    prefix,
                    kvs: got.take_kvs(),
                }),
                _ => Err(DatastoreError::Other(format!(
                    "{}: {what}: the read of {key} was answered by something else",
                    self.conn.server
                ))),
            })
            .collect()
    }

    /// Keeps answers read ahead, replacing older ones for the same reads.
    fn keep_prefetched(&self, new: Vec<Slot>) {
        if let Ok(mut slots) = self.prefetched.lock() {
            slots.retain(|s| !new.iter().any(|n| n.key == s.key && n.prefix == s.prefix));
            slots.extend(new);
        }
    }

    /// Takes the answer read ahead for `key` (`prefix`), if there is one. (A poisoned lock
    /// serves nothing: the caller reads.)
    fn take_prefetched(&self, key: &str, prefix: bool) -> Option<Vec<KeyValue>> {
        let mut slots = self.prefetched.lock().ok()?;
        let i = slots
            .iter()
            .position(|s| s.key == key && s.prefix == prefix)?;
        Some(slots.swap_remove(i).kvs)
    }

    /// Drops every answer read ahead that a write of `key` may change. Called before the
    /// write is sent: whether or not it is applied, the copy may no longer be current.
    pub(super) fn forget_prefetched(&self, key: &str) {
        if let Ok(mut slots) = self.prefetched.lock() {
            slots.retain(|s| !s.covers(key));
        }
    }

    /// `key`, from the answer read ahead for it if there is one, else read.
    pub(super) async fn get_once(&self, key: &str) -> DsResult<Option<KeyValue>> {
        match self.take_prefetched(key, false) {
            Some(kvs) => Ok(kvs.into_iter().next()),
            None => self.get(key).await,
        }
    }

    /// Everything under `prefix`, from the answer read ahead for it if there is one, else read.
    pub(super) async fn list_once(&self, prefix: &str) -> DsResult<Vec<KeyValue>> {
        match self.take_prefetched(prefix, true) {
            Some(kvs) => Ok(kvs),
            None => self.list(prefix, false).await,
        }
    }
}

pub(super) async fn request(store: &EtcdStore, host: &str) -> DsResult<()> {
    let mut ranges = vec![
        (keys::CONFIG_KEY.to_owned(), false),
        (keys::resource_prefix(keys::IP_POOL), true),
        (keys::resource_prefix(keys::IP_RESERVATION), true),
    ];
    // A host name that is no key segment is left to list_host_affinities to refuse.
    if keys::check_segment("node name", host).is_ok() {
        ranges.push((keys::host_affinity_prefix(host), true));
    }
    let slots = store
        .read_together(
            &format!("read config, pools, reservations and affinities of {host}"),
            ranges,
        )
        .await?;
    store.keep_prefetched(slots);
    Ok(())
}

pub(super) async fn release(store: &EtcdStore, handle_id: &str) -> DsResult<()> {
    // A handle ID that is no key segment is left to the handle read to refuse.
    if keys::check_segment("handle ID", handle_id).is_err() {
        return Ok(());
    }
    let slots = store
        .read_together(
            &format!("read config and handle {handle_id}"),
            vec![
                (keys::CONFIG_KEY.to_owned(), false),
                (keys::handle_key(handle_id), false),
            ],
        )
        .await?;
    store.keep_prefetched(slots);
    Ok(())
}

pub(super) async fn blocks(store: &EtcdStore, cidrs: &[IpNet]) -> DsResult<()> {
    let mut ranges: Vec<(String, bool)> = Vec::new();
    for cidr in cidrs {
        let key = keys::block_key(cidr);
        if !ranges.iter().any(|(k, _)| *k == key) {
            ranges.push((key, false));
        }
    }
    ranges.truncate(MAX_PREFETCHED_BLOCKS);
    if ranges.len() < 2 {
        return Ok(());
    }
    let slots = store
        .read_together(&format!("read {} blocks", ranges.len()), ranges)
        .await?;
    store.keep_prefetched(slots);
    Ok(())
}

pub(super) fn end(store: &EtcdStore) {
    if let Ok(mut slots) = store.prefetched.lock() {
        slots.clear();
    }
}
