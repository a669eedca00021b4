//! The etcd v3 datastore (`datastore_type: etcdv3`): Calico's own keys and JSON values
//! ([`keys`]) in an etcd v3 cluster, so that calicoctl, Felix and Calico's IPAM in etcd mode read
//! what this writes and the other way round.
//!
//! - **Compare-and-swap in one transaction per write**, as libcalico-go's etcdv3 backend does:
//!   a create is `If(version(key) = 0) Then(put)`, an update `If(mod_revision(key) = rev)
//!   Then(put) Else(get key)` (the `Else` tells `Conflict` from `NotFound`), a delete the same
//!   with `delete`. A revision is the key's mod revision in decimal; a write returns the
//!   transaction's revision, which is the written key's new mod revision.
//! - **Deletes are atomic** (no two-step as in Kubernetes); an object another writer marked
//!   `deleted: true` reads as absent and is deleted (at the revision read) by the read.
//! - **Connections**: one client per endpoint, TLS with a client certificate when the files
//!   are given; a process starts with the member its pid picks, so the nodes' requests spread
//!   over the cluster. No request waits more than [`REQUEST_TIMEOUT`] (connecting at most
//!   [`CONNECT_TIMEOUT`]), and a member without a leader answers at once (`require_leader`).
//! - **Failover, not retries**: a request goes to the next member (each member once at most)
//!   when the one asked cannot have acted on it: the connection was refused or could not be
//!   made, or the member has no leader; a read also when the answer was lost. A write whose
//!   answer was lost is not sent again (it may have been applied): it is `Unavailable`, as is
//!   a request no member took (a cluster that lost its majority): CNI code 11. Conflicts are
//!   only ever retried by the allocator's one loop.
//! - **Read ahead**: an allocation's first reads (config, pools, reservations, the host's
//!   affinities) are one transaction of range reads, and the fast path's affine blocks another
//!   ([`Datastore::prefetch_request`], [`Datastore::prefetch_blocks`]). Each answer is taken
//!   once, dropped first by any write of this store to a key it covers, and dropped at the end
//!   of the request ([`Datastore::end_request`]).
//!
//! This module is the only part of libipam that knows about the etcd client.

pub mod keys;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    KeyValue, KvClient, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use ipnet::IpNet;
use serde_json::{Map, Value};

use super::{
    Datastore, DatastoreError, DsResult, Inventory, PoolList, Revision, UnreadablePool, Unusable,
    Versioned, unreadable_consequence, unusable_pools,
};
use crate::model::{
    AffinityType, BlockAffinity, IpPool, IpReservation, IpamBlock, IpamConfig, IpamHandle, time,
};

/// How long connecting to one member may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take, whatever it waits for (a connection, a leader, an answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read (a listing of every block of a large cluster): Calico's client
/// has no limit either.
const MAX_ANSWER_BYTES: usize = 1 << 30;
/// The most blocks [`Datastore::prefetch_blocks`] reads in its transaction (the first ones
/// asked for; etcd refuses a transaction of more than 128 operations by default).
const MAX_PREFETCHED_BLOCKS: usize = 16;

/// Where the cluster is and how to prove who we are: Calico's `etcd_endpoints`,
/// `etcd_ca_cert_file`, `etcd_cert_file`, `etcd_key_file` (or `ETCD_ENDPOINTS`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `https://host:port` (or `http://`) of each member; at least one.
    pub endpoints: Vec<String>,
    /// The CA that signed the members' certificates (PEM).
    pub ca_cert_file: Option<PathBuf>,
    /// This client's certificate (PEM); with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// This client's private key (PEM); with `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl EtcdConfig {
    /// The endpoints of Calico's comma-separated `etcd_endpoints`.
    pub fn parse_endpoints(list: &str) -> Vec<String> {
        list.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The endpoints as one string, for messages.
    pub fn describe(&self) -> String {
        format!("etcd {}", self.endpoints.join(","))
    }
}

/// Clients for one etcd cluster: one per member.
#[derive(Clone)]
pub struct Connection {
    members: Vec<(String, Client)>,
    /// The endpoints, for messages: `etcd https://127.0.0.1:2379,...`.
    pub server: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server)
            .finish()
    }
}

fn read_file(what: &str, path: &std::path::Path) -> DsResult<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| DatastoreError::Other(format!("cannot read {what} {}: {e}", path.display())))
}

/// Clients for the cluster of `config`. Nothing is sent until the first request.
pub async fn connect(config: &EtcdConfig) -> DsResult<Connection> {
    let server = config.describe();
    if config.endpoints.is_empty() {
        return Err(DatastoreError::Other(
            "datastore_type etcdv3 needs etcd_endpoints (or ETCD_ENDPOINTS): no endpoint given"
                .into(),
        ));
    }
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_require_leader(true);
    let tls_files = (&config.ca_cert_file, &config.cert_file, &config.key_file);
    if !matches!(tls_files, (None, None, None)) {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &config.ca_cert_file {
            tls = tls.ca_certificate(Certificate::from_pem(read_file("etcd_ca_cert_file", ca)?));
        }
        match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read_file("etcd_cert_file", cert)?,
                    read_file("etcd_key_file", key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(DatastoreError::Other(
                    "etcd_cert_file and etcd_key_file go together: give both or neither".into(),
                ));
            }
        }
        options = options.with_tls(tls);
    }
    let mut members = Vec::new();
    for endpoint in &config.endpoints {
        let client = tokio::time::timeout(
            REQUEST_TIMEOUT,
            Client::connect([endpoint.as_str()], Some(options.clone())),
        )
        .await
        .map_err(|_| DatastoreError::Unavailable(format!("{server}: connecting timed out")))?
        .map_err(|e| error(&server, &format!("endpoint {endpoint}"), e))?;
        members.push((endpoint.clone(), client));
    }
    Ok(Connection { members, server })
}

/// Whether an etcd client error means the cluster (or the member asked) could not be reached,
/// has no leader, or did not answer in time.
fn is_unavailable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) | E::EndpointError(_) => true,
        // gRPC codes: 1 Cancelled, 2 Unknown, 4 DeadlineExceeded, 8 ResourceExhausted,
        // 10 Aborted, 13 Internal, 14 Unavailable (etcd's "no leader", "request timed out").
        E::GRpcStatus(s) => matches!(s.code() as i32, 1 | 2 | 4 | 8 | 10 | 13 | 14),
        _ => false,
    }
}

/// An etcd client error as a datastore error naming the cluster or member: see
/// [`is_unavailable`] for what is `Unavailable`.
fn error(server: &str, what: &str, e: etcd_client::Error) -> DatastoreError {
    let msg = format!("{server}: {what}: {e}");
    if is_unavailable(&e) {
        DatastoreError::Unavailable(msg)
    } else {
        DatastoreError::Other(msg)
    }
}

/// Whether the member asked cannot have acted on the request: it was never delivered (the
/// connection was refused, timed out or failed its handshake), or the member refused it for
/// want of a leader.
fn not_acted_on(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::EndpointError(_) => true,
        E::GRpcStatus(s) => {
            let msg = s.message();
            if msg.contains("no leader") || msg.contains("not capable") {
                return true;
            }
            let mut source = std::error::Error::source(s);
            while let Some(err) = source {
                let text = err.to_string();
                if text.contains("connect error") || text.contains("tcp connect") {
                    return true;
                }
                if let Some(io) = err.downcast_ref::<std::io::Error>()
                    && matches!(
                        io.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::AddrNotAvailable
                            | std::io::ErrorKind::NotConnected
                    )
                {
                    return true;
                }
                source = err.source();
            }
            false
        }
        _ => false,
    }
}

/// Counters of what this store asked the cluster, for benchmarks.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
}

/// An answer read ahead ([`Datastore::prefetch_request`], [`Datastore::prefetch_blocks`]),
/// for the next call that reads `key` (with `prefix`: every key under it) to take.
#[derive(Debug)]
struct Slot {
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

/// Calico's IPAM objects in etcd. See the module documentation.
#[derive(Debug)]
pub struct EtcdStore {
    conn: Connection,
    /// The member asked first: the last one that answered.
    preferred: AtomicUsize,
    counters: Counters,
    /// Answers read ahead for the current request, each taken at most once. Invariants: every
    /// slot was read after the request started (`end_request` empties this), and none is
    /// older than a write of this store to a key it covers (each write drops those first).
    /// A store serves one request at a time (each plugin process makes one): a caller running
    /// beside a request on the same store could take what that request read ahead.
    prefetched: Mutex<Vec<Slot>>,
}

fn revision(kv: &KeyValue) -> Revision {
    Revision(kv.mod_revision().to_string())
}

fn parse_revision(r: &Revision) -> DsResult<i64> {
    r.0.parse::<i64>().map_err(|_| {
        DatastoreError::Other(format!(
            "revision {:?} is not an etcd revision (a decimal number)",
            r.0
        ))
    })
}

fn key_str(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).into_owned()
}

fn segment(what: &str, name: &str) -> DsResult<()> {
    keys::check_segment(what, name).map_err(DatastoreError::Other)
}

/// A random version 4 UUID (the `uid` calicoctl gives a resource it creates).
fn new_uid() -> String {
    let mut b = [0u8; 16];
    let seeded = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    if !seeded {
        let n = time::now_nanos().to_le_bytes();
        b[..8].copy_from_slice(&n);
        b[8..].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl EtcdStore {
    /// A store over `conn`.
    pub fn new(conn: Connection) -> EtcdStore {
        let first = std::process::id() as usize % conn.members.len().max(1);
        EtcdStore {
            conn,
            preferred: AtomicUsize::new(first),
            counters: Counters::default(),
            prefetched: Mutex::default(),
        }
    }

    /// The connection's endpoints, for messages.
    pub fn server(&self) -> &str {
        &self.conn.server
    }

    /// How many requests this store sent so far.
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::Relaxed)
    }

    /// Sends one request (`call`, given a client of a member) to the members in turn, from
    /// the preferred one, until one acts on it (see the module documentation for when the
    /// next member is asked). `read`: the request changes nothing, so it may also be sent
    /// again when its answer was lost.
    async fn call<T, F, Fut>(&self, what: &str, read: bool, call: F) -> DsResult<T>
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

    async fn get(&self, key: &str) -> DsResult<Option<KeyValue>> {
        let mut resp = self
            .call(&format!("get {key}"), true, |mut kv| {
                let key = key.to_owned();
                async move { kv.get(key, None).await }
            })
            .await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    async fn list(&self, prefix: &str, keys_only: bool) -> DsResult<Vec<KeyValue>> {
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
    fn forget_prefetched(&self, key: &str) {
        if let Ok(mut slots) = self.prefetched.lock() {
            slots.retain(|s| !s.covers(key));
        }
    }

    /// `key`, from the answer read ahead for it if there is one, else read.
    async fn get_once(&self, key: &str) -> DsResult<Option<KeyValue>> {
        match self.take_prefetched(key, false) {
            Some(kvs) => Ok(kvs.into_iter().next()),
            None => self.get(key).await,
        }
    }

    /// Everything under `prefix`, from the answer read ahead for it if there is one, else read.
    async fn list_once(&self, prefix: &str) -> DsResult<Vec<KeyValue>> {
        match self.take_prefetched(prefix, true) {
            Some(kvs) => Ok(kvs),
            None => self.list(prefix, false).await,
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> DsResult<()> {
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
    async fn create(&self, key: &str, value: Vec<u8>) -> DsResult<Revision> {
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
    async fn update(&self, key: &str, rev: &Revision, value: Vec<u8>) -> DsResult<Revision> {
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
    async fn delete(&self, key: &str, rev: &Revision) -> DsResult<()> {
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

    /// Finishes another writer's soft delete: deletes the key at the revision it was read at.
    /// Whether that works does not matter to the reader (the object is absent to it either way).
    async fn finish_delete(&self, kv: &KeyValue) {
        let key = key_str(kv);
        if let Err(e) = self.delete(&key, &revision(kv)).await {
            tracing::debug!("finishing the delete of {key}: {e}");
        }
    }

    fn undecodable(&self, key: &str, e: String) -> DatastoreError {
        DatastoreError::Other(format!(
            "{}: {key} cannot be decoded: {e}",
            self.conn.server
        ))
    }

    fn block_of(&self, kv: &KeyValue) -> DsResult<Versioned<IpamBlock>> {
        let key = key_str(kv);
        let value = keys::decode_block(kv.value()).map_err(|e| self.undecodable(&key, e))?;
        Ok(Versioned {
            value,
            revision: revision(kv),
        })
    }

    /// The block read, unless absent or soft-deleted (then deleted).
    async fn live_block(&self, kv: Option<KeyValue>) -> DsResult<Option<Versioned<IpamBlock>>> {
        let Some(kv) = kv else {
            return Ok(None);
        };
        let block = self.block_of(&kv)?;
        if block.value.deleted {
            self.finish_delete(&kv).await;
            return Ok(None);
        }
        Ok(Some(block))
    }

    fn affinity_of(&self, kv: &KeyValue) -> DsResult<Option<Versioned<BlockAffinity>>> {
        let key = key_str(kv);
        let Some((t, node, cidr)) = keys::parse_affinity_key(&key) else {
            return Ok(None);
        };
        let value = keys::decode_affinity(t, &node, cidr, kv.value())
            .map_err(|e| self.undecodable(&key, e))?;
        Ok(Some(Versioned {
            value,
            revision: revision(kv),
        }))
    }

    fn handle_of(&self, kv: &KeyValue) -> DsResult<Option<Versioned<IpamHandle>>> {
        let key = key_str(kv);
        let Some(id) = keys::parse_handle_key(&key) else {
            return Ok(None);
        };
        let value = keys::decode_handle(id, kv.value()).map_err(|e| self.undecodable(&key, e))?;
        Ok(Some(Versioned {
            value,
            revision: revision(kv),
        }))
    }

    /// The live affinities under `prefix`; soft-deleted ones are deleted.
    async fn affinities_under(&self, prefix: &str) -> DsResult<Vec<Versioned<BlockAffinity>>> {
        self.live_affinities(self.list(prefix, false).await?).await
    }

    /// The live affinities of a listing; soft-deleted ones are deleted.
    async fn live_affinities(&self, kvs: Vec<KeyValue>) -> DsResult<Vec<Versioned<BlockAffinity>>> {
        let mut out = Vec::new();
        for kv in kvs {
            if let Some(a) = self.affinity_of(&kv)? {
                if a.value.deleted {
                    self.finish_delete(&kv).await;
                } else {
                    out.push(a);
                }
            }
        }
        Ok(out)
    }

    /// Every key under `prefix` with a value, for `check`: what does not decode is reported.
    async fn scan<T>(
        &self,
        prefix: &str,
        kind: &str,
        decode: impl Fn(&KeyValue) -> DsResult<Option<Versioned<T>>>,
        deleted: impl Fn(&T) -> bool,
        unusable: &mut Vec<Unusable>,
    ) -> DsResult<Vec<Versioned<T>>> {
        let mut out = Vec::new();
        for kv in self.list(prefix, false).await? {
            match decode(&kv) {
                Ok(Some(v)) if !deleted(&v.value) => out.push(v),
                Ok(_) => {}
                Err(e) => unusable.push(Unusable {
                    object: format!("{kind} {}", key_str(&kv)),
                    reason: format!("cannot be decoded ({e}): {}", unreadable_consequence(kind)),
                }),
            }
        }
        Ok(out)
    }
}

impl Datastore for EtcdStore {
    /// Reads the request's first objects in one transaction (see the trait). An error is
    /// returned, not ignored: it is what the first of the reads it replaces would have
    /// returned (the same failover and mapping, `Unavailable` when no member answers: CNI code
    /// 11), and asking a failing cluster again read by read would only make the ADD fail later,
    /// each read waiting for every member in turn. What it reads is decoded by the call that
    /// takes it, so an object that does not decode fails that call, as before.
    async fn prefetch_request(&self, host: &str) -> DsResult<()> {
        let mut ranges = vec![
            (keys::CONFIG_KEY.to_owned(), false),
            (keys::resource_prefix(keys::IP_POOL), true),
            (keys::resource_prefix(keys::IP_RESERVATION), true),
        ];
        // A host name that is no key segment is left to list_host_affinities to refuse.
        if keys::check_segment("node name", host).is_ok() {
            ranges.push((keys::host_affinity_prefix(host), true));
        }
        let slots = self
            .read_together(
                &format!("read config, pools, reservations and affinities of {host}"),
                ranges,
            )
            .await?;
        self.keep_prefetched(slots);
        Ok(())
    }

    /// Reads the blocks in one transaction, unless there is only one (a read costs the same).
    async fn prefetch_blocks(&self, cidrs: &[IpNet]) -> DsResult<()> {
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
        let slots = self
            .read_together(&format!("read {} blocks", ranges.len()), ranges)
            .await?;
        self.keep_prefetched(slots);
        Ok(())
    }

    fn end_request(&self) {
        if let Ok(mut slots) = self.prefetched.lock() {
            slots.clear();
        }
    }

    async fn get_config(&self) -> DsResult<IpamConfig> {
        match self.get_once(keys::CONFIG_KEY).await? {
            None => Ok(IpamConfig::default()),
            Some(kv) => {
                keys::decode_config(kv.value()).map_err(|e| self.undecodable(keys::CONFIG_KEY, e))
            }
        }
    }

    async fn apply_config(&self, config: &IpamConfig) -> DsResult<()> {
        self.put(keys::CONFIG_KEY, keys::encode_config(config))
            .await
    }

    async fn list_pools(&self) -> DsResult<PoolList> {
        let prefix = keys::resource_prefix(keys::IP_POOL);
        let mut out = PoolList::default();
        for kv in self.list_once(&prefix).await? {
            let key = key_str(&kv);
            let Some(name) = key.strip_prefix(&prefix).filter(|n| !n.contains('/')) else {
                continue;
            };
            match keys::decode_pool(name, kv.value()) {
                Ok(pool) => out.pools.push(pool),
                Err((spec, reason)) => out.unreadable.push(UnreadablePool {
                    name: name.to_owned(),
                    object: format!("IPPool {name}"),
                    cidr: super::cidr_of_raw_pool(spec.as_ref()),
                    reason,
                }),
            }
        }
        out.pools.sort_by(|a, b| a.name.cmp(&b.name));
        out.unreadable.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Creates or replaces the pool, keeping the metadata of the one stored (also of one that
    /// does not decode). Last writer wins, as for every admin object.
    async fn apply_pool(&self, pool: &IpPool) -> DsResult<()> {
        segment("IPPool name", &pool.name)?;
        let key = keys::resource_key(keys::IP_POOL, &pool.name);
        let existing = self
            .get(&key)
            .await?
            .and_then(|kv| keys::decode_resource(kv.value()).ok())
            .map(|r| r.metadata);
        let mut metadata = existing.unwrap_or_default();
        if !metadata.get("uid").is_some_and(Value::is_string) {
            metadata.insert("uid".into(), new_uid().into());
        }
        if !metadata
            .get("creationTimestamp")
            .is_some_and(Value::is_string)
        {
            metadata.insert(
                "creationTimestamp".into(),
                time::rfc3339(time::now_nanos()).into(),
            );
        }
        self.put(&key, keys::encode_pool(pool, metadata)).await
    }

    async fn delete_pool(&self, name: &str) -> DsResult<bool> {
        segment("IPPool name", name)?;
        let key = keys::resource_key(keys::IP_POOL, name);
        self.forget_prefetched(&key);
        let resp = self
            .call(&format!("delete {key}"), false, |mut kv| {
                let key = key.clone();
                async move { kv.delete(key, None).await }
            })
            .await?;
        Ok(resp.deleted() > 0)
    }

    async fn node_labels(&self, node: &str) -> DsResult<Option<BTreeMap<String, String>>> {
        segment("node name", node)?;
        let key = keys::resource_key(keys::NODE, node);
        match self.get(&key).await? {
            None => Ok(None),
            Some(kv) => keys::decode_node_labels(kv.value())
                .map(Some)
                .map_err(|e| self.undecodable(&key, e)),
        }
    }

    async fn list_reservations(&self) -> DsResult<Vec<IpReservation>> {
        let prefix = keys::resource_prefix(keys::IP_RESERVATION);
        let mut out = Vec::new();
        for kv in self.list_once(&prefix).await? {
            let key = key_str(&kv);
            let Some(name) = key.strip_prefix(&prefix).filter(|n| !n.contains('/')) else {
                continue;
            };
            out.push(
                keys::decode_reservation(name, kv.value())
                    .map_err(|e| self.undecodable(&key, e))?,
            );
        }
        Ok(out)
    }

    async fn get_block(&self, cidr: &IpNet) -> DsResult<Option<Versioned<IpamBlock>>> {
        let kv = self.get(&keys::block_key(cidr)).await?;
        self.live_block(kv).await
    }

    /// The copy read ahead by `prefetch_blocks` if there is one (a compare-and-swap base,
    /// read during this request and not older than this store's last write of it).
    async fn get_block_for_update(&self, cidr: &IpNet) -> DsResult<Option<Versioned<IpamBlock>>> {
        let kv = self.get_once(&keys::block_key(cidr)).await?;
        self.live_block(kv).await
    }

    async fn create_block(&self, block: &IpamBlock) -> DsResult<Revision> {
        self.create(&keys::block_key(&block.cidr), keys::encode_block(block))
            .await
    }

    async fn update_block(&self, block: &Versioned<IpamBlock>) -> DsResult<Revision> {
        self.update(
            &keys::block_key(&block.value.cidr),
            &block.revision,
            keys::encode_block(&block.value),
        )
        .await
    }

    async fn delete_block(&self, block: &Versioned<IpamBlock>) -> DsResult<()> {
        self.delete(&keys::block_key(&block.value.cidr), &block.revision)
            .await
    }

    async fn list_block_cidrs(&self) -> DsResult<Vec<IpNet>> {
        Ok(self
            .list(keys::BLOCK_PREFIX, true)
            .await?
            .iter()
            .filter_map(|kv| keys::parse_block_key(&key_str(kv)))
            .collect())
    }

    async fn list_blocks(&self) -> DsResult<Vec<Versioned<IpamBlock>>> {
        let mut out = Vec::new();
        for kv in self.list(keys::BLOCK_PREFIX, false).await? {
            if keys::parse_block_key(&key_str(&kv)).is_none() {
                continue;
            }
            let block = self.block_of(&kv)?;
            if block.value.deleted {
                self.finish_delete(&kv).await;
            } else {
                out.push(block);
            }
        }
        Ok(out)
    }

    async fn list_host_affinities(&self, host: &str) -> DsResult<Vec<Versioned<BlockAffinity>>> {
        segment("node name", host)?;
        let listed = self.list_once(&keys::host_affinity_prefix(host)).await?;
        self.live_affinities(listed).await
    }

    async fn list_affinities(&self) -> DsResult<Vec<Versioned<BlockAffinity>>> {
        let mut out = self
            .affinities_under(&keys::affinity_type_prefix(AffinityType::Host))
            .await?;
        out.extend(
            self.affinities_under(&keys::affinity_type_prefix(AffinityType::Virtual))
                .await?,
        );
        Ok(out)
    }

    async fn get_affinity(
        &self,
        host: &str,
        cidr: &IpNet,
    ) -> DsResult<Option<Versioned<BlockAffinity>>> {
        segment("node name", host)?;
        let Some(kv) = self
            .get(&keys::affinity_key(AffinityType::Host, host, cidr))
            .await?
        else {
            return Ok(None);
        };
        match self.affinity_of(&kv)? {
            Some(a) if a.value.deleted => {
                self.finish_delete(&kv).await;
                Ok(None)
            }
            other => Ok(other),
        }
    }

    async fn create_affinity(&self, affinity: &BlockAffinity) -> DsResult<Revision> {
        segment("node name", &affinity.node)?;
        let key = keys::affinity_key(affinity.affinity_type, &affinity.node, &affinity.cidr);
        self.create(&key, keys::encode_affinity(affinity)).await
    }

    async fn update_affinity(&self, affinity: &Versioned<BlockAffinity>) -> DsResult<Revision> {
        let a = &affinity.value;
        segment("node name", &a.node)?;
        let key = keys::affinity_key(a.affinity_type, &a.node, &a.cidr);
        self.update(&key, &affinity.revision, keys::encode_affinity(a))
            .await
    }

    async fn delete_affinity(&self, affinity: &Versioned<BlockAffinity>) -> DsResult<()> {
        let a = &affinity.value;
        segment("node name", &a.node)?;
        let key = keys::affinity_key(a.affinity_type, &a.node, &a.cidr);
        self.delete(&key, &affinity.revision).await
    }

    async fn get_handle(&self, handle_id: &str) -> DsResult<Option<Versioned<IpamHandle>>> {
        segment("handle ID", handle_id)?;
        let Some(kv) = self.get(&keys::handle_key(handle_id)).await? else {
            return Ok(None);
        };
        match self.handle_of(&kv)? {
            Some(h) if h.value.deleted => {
                self.finish_delete(&kv).await;
                Ok(None)
            }
            other => Ok(other),
        }
    }

    async fn create_handle(&self, handle: &IpamHandle) -> DsResult<Revision> {
        segment("handle ID", &handle.handle_id)?;
        self.create(
            &keys::handle_key(&handle.handle_id),
            keys::encode_handle(handle),
        )
        .await
    }

    async fn update_handle(&self, handle: &Versioned<IpamHandle>) -> DsResult<Revision> {
        segment("handle ID", &handle.value.handle_id)?;
        self.update(
            &keys::handle_key(&handle.value.handle_id),
            &handle.revision,
            keys::encode_handle(&handle.value),
        )
        .await
    }

    async fn delete_handle(&self, handle: &Versioned<IpamHandle>) -> DsResult<()> {
        segment("handle ID", &handle.value.handle_id)?;
        self.delete(&keys::handle_key(&handle.value.handle_id), &handle.revision)
            .await
    }

    async fn list_handles(&self) -> DsResult<Vec<Versioned<IpamHandle>>> {
        let mut out = Vec::new();
        for kv in self.list(keys::HANDLE_PREFIX, false).await? {
            match self.handle_of(&kv)? {
                Some(h) if h.value.deleted => self.finish_delete(&kv).await,
                Some(h) => out.push(h),
                None => {}
            }
        }
        Ok(out)
    }

    /// Everything `check` reads, object by object: one that does not decode is reported
    /// instead of failing its kind's listing.
    async fn inventory(&self) -> DsResult<Inventory> {
        let listed = self.list_pools().await?;
        let mut unusable = unusable_pools(listed.unreadable);
        let config = match self.get_config().await {
            Ok(c) => Some(c),
            Err(DatastoreError::Other(e)) => {
                unusable.push(Unusable {
                    object: format!("IPAMConfig {}", keys::CONFIG_KEY),
                    reason: format!("{e}: {}", unreadable_consequence("IPAMConfig")),
                });
                None
            }
            Err(e) => return Err(e),
        };
        let blocks = self
            .scan(
                keys::BLOCK_PREFIX,
                "IPAMBlock",
                |kv| {
                    if keys::parse_block_key(&key_str(kv)).is_none() {
                        return Ok(None);
                    }
                    self.block_of(kv).map(Some)
                },
                |b: &IpamBlock| b.deleted,
                &mut unusable,
            )
            .await?;
        let mut affinities = Vec::new();
        for t in [AffinityType::Host, AffinityType::Virtual] {
            affinities.extend(
                self.scan(
                    &keys::affinity_type_prefix(t),
                    "BlockAffinity",
                    |kv| self.affinity_of(kv),
                    |a: &BlockAffinity| a.deleted,
                    &mut unusable,
                )
                .await?,
            );
        }
        let handles = self
            .scan(
                keys::HANDLE_PREFIX,
                "IPAMHandle",
                |kv| self.handle_of(kv),
                |h: &IpamHandle| h.deleted,
                &mut unusable,
            )
            .await?;
        Ok(Inventory {
            config,
            pools: listed.pools,
            reservations: self.list_reservations().await?,
            blocks,
            affinities,
            handles,
            unusable,
        })
    }
}

/// Writes a Calico v3 resource as calicoctl would (for tests and tools that seed a cluster:
/// nodes, reservations). Last writer wins.
pub async fn put_resource(
    store: &EtcdStore,
    kind: (&str, &str),
    name: &str,
    metadata: Map<String, Value>,
    spec: Map<String, Value>,
) -> DsResult<()> {
    segment(kind.0, name)?;
    let key = keys::resource_key(kind, name);
    let mut metadata = metadata;
    metadata.insert("name".into(), name.into());
    metadata
        .entry("uid")
        .or_insert_with(|| Value::String(new_uid()));
    metadata
        .entry("creationTimestamp")
        .or_insert_with(|| Value::String(time::rfc3339(time::now_nanos())));
    store
        .put(&key, keys::encode_resource(kind.0, metadata, spec))
        .await
}

const _: fn() = || {
    fn implements<T: Datastore>() {}
    implements::<EtcdStore>();
};
