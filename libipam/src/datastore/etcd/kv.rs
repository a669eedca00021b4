//! The requests this store sends, one round trip each. [`EtcdStore::call`] sends one to the
//! members in turn, from the preferred one (failover, not retries: see the module
//! documentation); on it are the plain reads (`get`, `list`), the last-writer-wins `put`, and
//! the compare-and-swap writes (`create`, `update`, `delete`), each one transaction whose
//! `Else` branch, when it has one, tells `Conflict` from `NotFound`.
//!
//! Invariant: every write drops what was read ahead for its key (`prefetch.rs`) before it is
//! sent, whether or not it is then applied.

use std::sync::atomic::Ordering;

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, KvClient, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};

use super::EtcdStore;
use super::connection::{REQUEST_TIMEOUT, error, is_unavailable, not_acted_on};
use crate::datastore::{DatastoreError, DsResult, Revision};

/// The largest answer read (a listing of every block of a large cluster): Calico's client
/// has no limit either.
const MAX_ANSWER_BYTES: usize = 1 << 30;

pub(super) fn revision(kv: &KeyValue) -> Revision {
    Revision(kv.mod_revision().to_string())
}

pub(super) fn parse_revision(r: &Revision) -> DsResult<i64> {
    r.0.parse::<i64>().map_err(|_| {
        DatastoreError::Other(format!(
            "revision {:?} is not an etcd revision (a decimal number)",
            r.0
        ))
    })
}

pub(super) fn key_str(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).into_owned()
}

impl EtcdStore {
    /// Sends one request (`call`, given a client of a member) to the members in turn, from
    /// the preferred one, until one acts on it (see the module documentation for when the
    /// next member is asked). `read`: the request changes nothing, so it may also be sent
    /// again when its answer was lost.
    pub(super) async fn call<T, F, Fut>(&self, what: &str, read: bool, call: F) -> DsResult<T>
    where
        F: Fn(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.conn.members.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..n {
            let m = (first + i) % n;
            let (endpoint, client) = &self.conn.members[m];
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let kv = client
                .kv_client()
                .max_decoding_message_size(MAX_ANSWER_BYTES);
            let e = match tokio::time::timeout(REQUEST_TIMEOUT, call(kv)).await {
                Ok(Ok(v)) => {
                    self.preferred.store(m, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(e)) => {
                    let next = not_acted_on(&e) || (read && is_unavailable(&e));
                    let e = error(endpoint, what, e);
                    if !next {
                        return Err(e);
                    }
                    e
                }
                Err(_) => {
                    let e = DatastoreError::Unavailable(format!(
                        "{endpoint}: {what}: no answer within {}s",
                        REQUEST_TIMEOUT.as_secs()
                    ));
                    if !read {
                        return Err(e);
                    }
                    e
                }
            };
            failures.push(e.to_string());
        }
        Err(DatastoreError::Unavailable(format!(
            "{}: {what}: no member could answer: {}",
            self.conn.server,
            failures.join("; ")
        )))
    }

    pub(super) async fn get(&self, key: &str) -> DsResult<Option<KeyValue>> {
        let mut resp = self
            .call(&format!("get {key}"), true, |mut kv| {
                let key = key.to_owned();
                async move { kv.get(key, None).await }
            })
            .await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    pub(super) async fn list(&self, prefix: &str, keys_only: bool) -> DsResult<Vec<KeyValue>> {
        let mut opts = GetOptions::new().with_prefix();
        if keys_only {
            opts = opts.with_keys_only();
        }
        let mut resp = self
            .call(&format!("list {prefix}"), true, |mut kv| {
                let (prefix, opts) = (prefix.to_owned(), opts.clone());
                async move { kv.get(prefix, Some(opts)).await }
            })
            .await?;
        Ok(resp.take_kvs())
    }

    pub(super) async fn put(&self, key: &str, value: Vec<u8>) -> DsResult<()> {
        self.forget_prefetched(key);
        self.call(&format!("put {key}"), false, |mut kv| {
            let (key, value) = (key.to_owned(), value.clone());
            async move { kv.put(key, value, None).await }
        })
        .await
        .map(|_| ())
    }

    async fn txn(&self, what: &str, txn: Txn) -> DsResult<TxnResponse> {
        self.call(what, false, |mut kv| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
    }

    fn txn_revision(resp: &TxnResponse) -> Revision {
        Revision(
            resp.header()
                .map(|h| h.revision())
                .unwrap_or_default()
                .to_string(),
        )
    }

    /// Writes `value` at `key` if the key does not exist.
    pub(super) async fn create(&self, key: &str, value: Vec<u8>) -> DsResult<Revision> {
        self.forget_prefetched(key);
        let txn = Txn::new()
            .when([Compare::version(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let resp = self.txn(&format!("create {key}"), txn).await?;
        if resp.succeeded() {
            Ok(Self::txn_revision(&resp))
        } else {
            Err(DatastoreError::AlreadyExists)
        }
    }

    /// Why a compare-and-swap on `key` failed: the `Else` branch read the key.
    fn cas_failure(resp: &TxnResponse) -> DatastoreError {
        let exists = resp.op_responses().iter().any(|r| match r {
            TxnOpResponse::Get(g) => !g.kvs().is_empty(),
            _ => false,
        });
        if exists {
            DatastoreError::Conflict
        } else {
            DatastoreError::NotFound
        }
    }

    /// Writes `value` at `key` if the key is still at `rev`.
    pub(super) async fn update(
        &self,
        key: &str,
        rev: &Revision,
        value: Vec<u8>,
    ) -> DsResult<Revision> {
        self.forget_prefetched(key);
        let rev = parse_revision(rev)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, Some(GetOptions::new().with_keys_only()))]);
        let resp = self.txn(&format!("update {key}"), txn).await?;
        if resp.succeeded() {
            Ok(Self::txn_revision(&resp))
        } else {
            Err(Self::cas_failure(&resp))
        }
    }

    /// Deletes `key` if it is still at `rev`.
    pub(super) async fn delete(&self, key: &str, rev: &Revision) -> DsResult<()> {
        self.forget_prefetched(key);
        let rev = parse_revision(rev)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
            .and_then([TxnOp::delete(key, None::<DeleteOptions>)])
            .or_else([TxnOp::get(key, Some(GetOptions::new().with_keys_only()))]);
        let resp = self.txn(&format!("delete {key}"), txn).await?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(Self::cas_failure(&resp))
        }
    }
}
