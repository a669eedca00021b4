//! The Kubernetes datastore (`datastore_type: kubernetes`): Calico's `crd.projectcalico.org/v1`
//! objects through a real API server, written exactly as libcalico-go writes them so that
//! calicoctl, Felix and kube-controllers read them as their own.
//!
//! - Names: IPAMBlock `CIDRToName(cidr)` (`10-244-1-0-26`), BlockAffinity `<node>-<block
//!   name>` (hashed at 253 characters) with its three `projectcalico.org/` labels, IPAMHandle
//!   the lower-cased handle ID. Every IPAM object carries the `projectcalico.org/metadata`
//!   annotation.
//! - Compare-and-swap: updates carry the `resourceVersion` that was read; the server answers
//!   409 Conflict when it is stale ([`DatastoreError::Conflict`]) and 409 AlreadyExists on a
//!   create of an existing name ([`DatastoreError::AlreadyExists`]). The allocator's one
//!   retry loop handles both.
//! - Deletes are compare-and-delete: a DELETE with a `resourceVersion` precondition (409 when
//!   stale). Calico deletes in two steps (a CAS update setting `spec.deleted`, then a DELETE);
//!   every read treats `deleted: true` as absent and finishes such a delete.
//! - Requests: writes return the stored object, so nothing just written is read back, and an
//!   optional node-local cache ([`CacheConfig`], see `cache.rs` for why it is safe) lets a
//!   steady-state allocation go straight to its compare-and-swap writes.
//!
//! This module is the only part of libipam that knows about kube.

pub mod api_group;
mod cache;
pub mod client;
pub mod decode;
mod inventory;
mod objects;
mod scan;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;

use crate::error::error_chain;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    Datastore, DatastoreError, DsResult, Inventory, PoolList, Revision, UnreadablePool, Versioned,
};
use crate::model::{
    AffinityType, BlockAffinity, IpPool, IpPoolSpec, IpReservation, IpReservationSpec, IpamBlock,
    IpamConfig, IpamHandle, time,
};
use crate::names;

pub use crate::datastore::api_group::ApiGroup;
pub use api_group::GroupCell;
pub use cache::{CacheConfig, NodeCache};
pub use client::ClientOptions;
use decode::{WithStatus, versioned};
pub use inventory::ClusterFacts;
use objects::{
    BLOCK_AFFINITY, CLUSTER_INFORMATION, ClusterInformationSpec, Crd, IP_POOL, IP_RESERVATION,
    IPAM_BLOCK, IPAM_CONFIG, IPAM_HANDLE, Kind, SINGLETON, SoftDelete,
};

/// How long a TCP connection to the API server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the API server may take to answer one request (kube's default is no limit).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for one API server, and its URL for messages.
#[derive(Clone)]
pub struct Connection {
    /// The kube client.
    pub client: Client,
    /// The API server's URL, e.g. `https://10.0.0.1:443`.
    pub server: String,
    /// The API group of Calico's objects (`api_group.rs`).
    pub group: GroupCell,
}

impl Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server)
            .field("group", &self.group.known())
            .finish()
    }
}

/// A client from a kubeconfig file (the CNI netconf's `kubernetes.kubeconfig`) with the default
/// [`ClientOptions`]: see [`connect_with`].
pub async fn connect(kubeconfig: &Path, user_agent: &str) -> DsResult<Connection> {
    connect_with(kubeconfig, user_agent, &ClientOptions::default()).await
}

/// A client from a kubeconfig file, with the timeouts above, `opts`' rate limit and bounded
/// retries of 429/503 (`client.rs`; nothing else is retried: a failing server is reported, as
/// code 11, and the runtime retries), and `user_agent` on every request so audit logs name the
/// plugin. Nothing is sent until the first request.
pub async fn connect_with(
    kubeconfig: &Path,
    user_agent: &str,
    opts: &ClientOptions,
) -> DsResult<Connection> {
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| {
        DatastoreError::Other(format!(
            "cannot read kubeconfig {}: {e}",
            kubeconfig.display()
        ))
    })?;
    let mut cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| {
            DatastoreError::Other(format!(
                "cannot use kubeconfig {}: {e}",
                kubeconfig.display()
            ))
        })?;
    let server = cfg.cluster_url.to_string().trim_end_matches('/').to_owned();
    cfg.connect_timeout = Some(CONNECT_TIMEOUT);
    cfg.read_timeout = Some(READ_TIMEOUT);
    cfg.write_timeout = Some(READ_TIMEOUT);
    cfg.reset_reader_on_write = true;
    cfg.default_retry = false;
    let agent = http::HeaderValue::from_str(user_agent)
        .map_err(|e| DatastoreError::Other(format!("user agent {user_agent:?}: {e}")))?;
    cfg.headers.push((http::header::USER_AGENT, agent));
    let client = client::client(cfg, opts)
        .map_err(|e| DatastoreError::Other(format!("cannot create a client for {server}: {e}")))?;
    Ok(Connection {
        client,
        server,
        group: GroupCell::new(opts.api_group),
    })
}

impl Connection {
    /// Maps a kube error to a datastore error naming the server. Unreachable, timed out,
    /// overloaded or failing (5xx, 429) servers are `Unavailable`.
    pub fn error(&self, what: &str, e: kube::Error) -> DatastoreError {
        Connection::map_error(&self.server, what, e)
    }

    /// [`Connection::error`] for the server at `server`.
    pub fn map_error(server: &str, what: &str, e: kube::Error) -> DatastoreError {
        match e {
            kube::Error::Api(s) if s.is_already_exists() => DatastoreError::AlreadyExists,
            kube::Error::Api(s) if s.is_conflict() => DatastoreError::Conflict,
            kube::Error::Api(s) if s.is_not_found() => DatastoreError::NotFound,
            kube::Error::Api(s) if s.code >= 500 || s.code == 429 => {
                DatastoreError::Unavailable(format!(
                    "{what}: API server {} answered {} {}: {}",
                    server, s.code, s.reason, s.message
                ))
            }
            kube::Error::Api(s) => DatastoreError::Other(format!(
                "{what}: API server {} answered {} {}: {}",
                server, s.code, s.reason, s.message
            )),
            kube::Error::SerdeError(e) => DatastoreError::Other(format!(
                "{what}: unexpected answer from API server {}: {e}",
                server
            )),
            other => DatastoreError::Unavailable(format!(
                "{what}: API server {} unreachable: {}",
                server,
                error_chain(&other)
            )),
        }
    }

    /// ClusterInformation `default`'s `spec.datastoreReady`: `None` when the object does not
    /// exist, `Some(false)` when the field is false or missing.
    pub async fn datastore_ready(&self) -> DsResult<Option<bool>> {
        let group = self.api_group().await?;
        let api: Api<Crd<ClusterInformationSpec>> =
            Api::all_with(self.client.clone(), &CLUSTER_INFORMATION.resource(group));
        match api.get_opt(SINGLETON).await {
            Ok(Some(ci)) => Ok(Some(ci.spec.datastore_ready.unwrap_or(false))),
            Ok(None) => Ok(None),
            Err(e) => Err(self.error("read ClusterInformation default", e)),
        }
    }
}

/// The Kubernetes datastore. With a node cache, the cache file is written back when the store
/// is dropped (callers drop it while still holding the host-wide IPAM lock).
#[derive(Debug)]
pub struct KubeStore {
    conn: Connection,
    cache: Option<Mutex<NodeCache>>,
}

impl Drop for KubeStore {
    fn drop(&mut self) {
        if let Some(c) = self.cache.as_mut() {
            match c.get_mut() {
                Ok(c) => c.save(),
                Err(poisoned) => poisoned.into_inner().save(),
            }
        }
    }
}

impl KubeStore {
    /// A store without a cache: every read goes to the API server (the operator CLI).
    pub fn new(conn: Connection) -> KubeStore {
        KubeStore { conn, cache: None }
    }

    /// A store with a node-local cache (the IPAM plugin, under the host-wide lock).
    pub fn with_cache(conn: Connection, cache: &CacheConfig) -> KubeStore {
        let loaded = NodeCache::load(cache, &conn.server);
        // The group found by an earlier process of this node, while fresh: no discovery
        // request in the steady state.
        if let Some(g) = loaded.api_group() {
            conn.group_cell().seed(g);
        }
        KubeStore {
            conn,
            cache: Some(Mutex::new(loaded)),
        }
    }

    /// The connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn cache(&self) -> Option<MutexGuard<'_, NodeCache>> {
        self.cache
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The API group of Calico's objects (found on first use, see `api_group.rs`); it is
    /// kept in the node cache until a request finds it not served (and a cache read from
    /// another group is dropped).
    pub async fn api_group(&self) -> DsResult<ApiGroup> {
        let g = self.conn.api_group().await?;
        if let Some(mut c) = self.cache() {
            c.set_api_group(g);
        }
        Ok(g)
    }

    async fn resource(&self, kind: &Kind) -> DsResult<ApiResource> {
        Ok(kind.resource(self.api_group().await?))
    }

    async fn api<S: Clone + DeserializeOwned + Debug>(&self, kind: &Kind) -> DsResult<Api<Crd<S>>> {
        Ok(Api::all_with(
            self.conn.client.clone(),
            &self.resource(kind).await?,
        ))
    }

    /// `obj` as its group stores it (`objects::wire_spec`), for a create or an update; the
    /// answer decoded back into the model.
    async fn wire<S>(&self, kind: &Kind, obj: &Crd<S>) -> DsResult<(Api<Crd<Value>>, Crd<Value>)>
    where
        S: Clone + Serialize + DeserializeOwned + Debug,
    {
        let group = self.api_group().await?;
        let spec = serde_json::to_value(&obj.spec)
            .map_err(|e| DatastoreError::Other(format!("encode {}: {e}", kind.kind)))?;
        let out = objects::object(
            group,
            kind,
            obj.metadata.clone(),
            objects::wire_spec(group, kind, spec),
        );
        Ok((
            Api::all_with(self.conn.client.clone(), &kind.resource(group)),
            out,
        ))
    }

    /// The error of a LIST or a create: a 404 there means that the server has no such
    /// resource in the group in use (the CRDs of that group are not installed), which is said
    /// so; anything else as [`Connection::error`].
    pub(super) fn list_or_create_error(
        &self,
        kind: &Kind,
        what: &str,
        e: kube::Error,
    ) -> DatastoreError {
        let kube::Error::Api(s) = &e else {
            return self.conn.error(what, e);
        };
        if s.code != 404 {
            return self.conn.error(what, e);
        }
        let group = self.conn.group_cell().known().unwrap_or_default();
        if !self.conn.group_cell().is_explicit() {
            // Found by discovery, and not served now: the next process asks again.
            api_group::forget(&self.conn.server);
            if let Some(mut c) = self.cache() {
                c.forget_api_group();
            }
        }
        let (_, plural) = kind.names(group);
        DatastoreError::Other(format!(
            "{what}: API server {} does not serve {plural}.{} ({group}): Calico's {group} CRDs \
             are not installed{}",
            self.conn.server,
            group.group(),
            if self.conn.group_cell().is_explicit() {
                "; calico_api_group (or CALICO_API_GROUP) names this group: is it the right one?"
            } else {
                ""
            }
        ))
    }

    fn err(&self, what: impl AsRef<str>) -> impl FnOnce(kube::Error) -> DatastoreError + '_ {
        let what = what.as_ref().to_owned();
        move |e| self.conn.error(&what, e)
    }

    async fn get_obj<S>(&self, kind: &Kind, name: &str) -> DsResult<Option<Crd<S>>>
    where
        S: Clone + Serialize + DeserializeOwned + Debug,
    {
        self.api::<S>(kind)
            .await?
            .get_opt(name)
            .await
            .map_err(self.err(format!("read {} {name}", kind.kind)))
    }

    async fn create_obj<S>(&self, kind: &Kind, obj: &Crd<S>) -> DsResult<Crd<S>>
    where
        S: Clone + Serialize + DeserializeOwned + Debug,
    {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let (api, body) = self.wire(kind, obj).await?;
        let created = match api.create(&PostParams::default(), &body).await {
            Ok(c) => c,
            Err(e) => {
                return Err(self.list_or_create_error(
                    kind,
                    &format!("create {} {name}", kind.kind),
                    e,
                ));
            }
        };
        decoded(kind, created)
    }

    /// PUT; carries `obj.metadata.resourceVersion`, so a stale copy fails with `Conflict`.
    async fn replace_obj<S>(&self, kind: &Kind, obj: &Crd<S>) -> DsResult<Crd<S>>
    where
        S: Clone + Serialize + DeserializeOwned + Debug,
    {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let (api, body) = self.wire(kind, obj).await?;
        let written = api
            .replace(&name, &PostParams::default(), &body)
            .await
            .map_err(self.err(format!("update {} {name}", kind.kind)))?;
        decoded(kind, written)
    }

    async fn list_obj<S>(&self, kind: &Kind, lp: &ListParams) -> DsResult<Vec<Crd<S>>>
    where
        S: Clone + Serialize + DeserializeOwned + Debug,
    {
        match self.api::<S>(kind).await?.list(lp).await {
            Ok(l) => Ok(l.items),
            Err(e) => Err(self.list_or_create_error(kind, &format!("list {}", kind.plural), e)),
        }
    }

    /// The second half of a two-step delete: DELETE guarded by the UID, so a recreated object
    /// of the same name is never removed. Already gone (or already replaced) is fine.
    async fn delete_uid<S>(&self, kind: &Kind, name: &str, uid: Option<String>) -> DsResult<()>
    where
        S: Clone + Serialize + DeserializeOwned + Debug,
    {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.api::<S>(kind).await?.delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(e) => match self.conn.error(&format!("delete {} {name}", kind.kind), e) {
                DatastoreError::NotFound | DatastoreError::Conflict => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Compare-and-delete: a DELETE with a `resourceVersion` precondition, refused with
    /// `Conflict` when `revision` is stale and `NotFound` when the object is gone, like a
    /// compare-and-swap update. One request (Calico marks the object `deleted` first, then
    /// deletes it; its readers, and ours, see an object deleted either way as absent).
    async fn delete_at<S>(&self, kind: &Kind, name: &str, revision: &Revision) -> DsResult<()>
    where
        S: Clone + Serialize + DeserializeOwned + Debug,
    {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: None,
                resource_version: Some(revision.0.clone()),
            }),
            ..DeleteParams::default()
        };
        self.api::<S>(kind)
            .await?
            .delete(name, &dp)
            .await
            .map(|_| ())
            .map_err(self.err(format!("delete {} {name}", kind.kind)))
    }

    /// A read of an IPAM object: `deleted: true` counts as absent, and the delete it started
    /// is finished.
    async fn get_live<S>(&self, kind: &Kind, name: &str) -> DsResult<Option<Versioned<S>>>
    where
        S: SoftDelete + Clone + Serialize + DeserializeOwned + Debug,
    {
        match self.get_obj::<S>(kind, name).await? {
            Some(obj) if obj.spec.is_deleted() => {
                self.delete_uid::<S>(kind, name, obj.metadata.uid).await?;
                Ok(None)
            }
            Some(obj) => Ok(Some(versioned(obj))),
            None => Ok(None),
        }
    }

    fn remember_block(&self, cidr: &IpNet, b: Option<&Versioned<IpamBlock>>) {
        if let Some(mut c) = self.cache() {
            let node = c.node().to_owned();
            match b {
                Some(b) if b.value.is_affine_to(&node) => c.put_block(&cidr.to_string(), Some(b)),
                _ => c.put_block(&cidr.to_string(), None),
            }
        }
    }

    fn remember_handle(&self, handle_id: &str, h: Option<&Versioned<IpamHandle>>) {
        if let Some(mut c) = self.cache() {
            c.put_handle(&names::handle_object_name(handle_id), h);
        }
    }

    /// Keeps the cached affinity list in step with a write of one of its affinities: the
    /// written version (`Ok(Some)`), gone (`Ok(None)`), or unknown after a failure (the list is
    /// dropped and read again next time).
    fn remember_affinity(
        &self,
        a: &BlockAffinity,
        outcome: Result<Option<&Versioned<BlockAffinity>>, &DatastoreError>,
    ) {
        if let Some(mut c) = self.cache() {
            match outcome {
                Ok(written) => c.put_affinity(a, written),
                Err(_) => c.forget_affinities(),
            }
        }
    }

    /// Forgets a cached copy after a failed write (it was stale, or the write's outcome is
    /// unknown), so the retry reads the object again.
    fn forget_on_error<T>(&self, r: &DsResult<T>, forget: impl FnOnce()) {
        if r.is_err() {
            forget();
        }
    }

    /// IPPools as raw objects, whatever their spec holds.
    async fn raw_pools(&self) -> DsResult<Api<DynamicObject>> {
        Ok(Api::all_with(
            self.conn.client.clone(),
            &self.resource(&IP_POOL).await?,
        ))
    }

    async fn list_raw_pools(&self) -> DsResult<Vec<DynamicObject>> {
        match self.raw_pools().await?.list(&ListParams::default()).await {
            Ok(l) => Ok(l.items),
            Err(e) => Err(self.list_or_create_error(&IP_POOL, "list ippools", e)),
        }
    }

    /// Calico's `UpgradeHost`: gives `host`'s BlockAffinities written before Calico v3.31 (no
    /// `projectcalico.org/affinity-type` label) the three labels the label-selected listing
    /// needs, leaving other labels alone. Only `host`'s own affinities are touched, so nodes
    /// doing this at the same time do not fight. A write that loses a race re-lists and tries
    /// again (a few times); an affinity deleted meanwhile needs nothing. Returns how many were
    /// labelled.
    ///
    /// The IPAM plugin runs this once per node and records that it did (see calico-ipam).
    pub async fn upgrade_host(&self, host: &str) -> DsResult<usize> {
        const ATTEMPTS: usize = 5;
        let selector = format!("!{}", names::LABEL_AFFINITY_TYPE);
        let group = self.api_group().await?;
        let mut upgraded = 0;
        for _ in 0..ATTEMPTS {
            let unlabeled: Vec<Crd<BlockAffinity>> = self
                .list_obj(&BLOCK_AFFINITY, &ListParams::default().labels(&selector))
                .await?;
            let mut lost_race = false;
            for obj in unlabeled {
                if obj.spec.node != host || obj.spec.deleted {
                    continue;
                }
                let mut meta = obj.metadata.clone();
                let mut labels = meta.labels.take().unwrap_or_default();
                labels.extend(obj.spec.labels());
                meta.labels = Some(labels);
                let updated = objects::object(group, &BLOCK_AFFINITY, meta, obj.spec.clone());
                match self.replace_obj(&BLOCK_AFFINITY, &updated).await {
                    Ok(_) => upgraded += 1,
                    Err(DatastoreError::NotFound) => {}
                    Err(DatastoreError::Conflict) => lost_race = true,
                    Err(e) => return Err(e),
                }
            }
            if !lost_race {
                if upgraded > 0
                    && let Some(mut c) = self.cache()
                {
                    // The labelled listing the cache holds may lack them.
                    c.forget_affinities();
                }
                return Ok(upgraded);
            }
        }
        Err(DatastoreError::Conflict)
    }
}

impl Datastore for KubeStore {
    async fn get_config(&self) -> DsResult<IpamConfig> {
        if let Some(cached) = self.cache().and_then(|c| c.config()) {
            return Ok(cached.unwrap_or_default());
        }
        let found = self
            .get_obj::<IpamConfig>(&IPAM_CONFIG, SINGLETON)
            .await?
            .map(|o| o.spec);
        if let Some(mut c) = self.cache() {
            c.set_config(found.clone());
        }
        // Absent: Calico's defaults, not persisted.
        Ok(found.unwrap_or_default())
    }

    async fn apply_config(&self, config: &IpamConfig) -> DsResult<()> {
        let existing = self.get_obj::<IpamConfig>(&IPAM_CONFIG, SINGLETON).await?;
        let revision = existing
            .as_ref()
            .and_then(|o| o.metadata.resource_version.clone())
            .map(Revision);
        let group = self.api_group().await?;
        let obj = objects::object(
            group,
            &IPAM_CONFIG,
            objects::ipam_meta(group, SINGLETON, revision.as_ref(), None),
            config.clone(),
        );
        match existing {
            Some(_) => self.replace_obj(&IPAM_CONFIG, &obj).await?,
            None => self.create_obj(&IPAM_CONFIG, &obj).await?,
        };
        if let Some(mut c) = self.cache() {
            c.set_config(Some(config.clone()));
        }
        Ok(())
    }

    /// Always a LIST, never the node cache: a pool deleted, disabled or created must be seen by
    /// the next allocation (DESIGN.md, "Node cache"). The objects are listed raw and decoded one
    /// by one, so one whose spec does not decode is listed as unreadable instead of failing the
    /// listing (and with it every ADD on every node).
    async fn list_pools(&self) -> DsResult<PoolList> {
        let mut out = PoolList::default();
        for obj in self.list_raw_pools().await? {
            let name = obj.metadata.name.clone().unwrap_or_default();
            match decode::pool_object(&obj) {
                Ok(pool) => out.pools.push(pool),
                Err(e) => out.unreadable.push(UnreadablePool {
                    object: format!("IPPool {name}"),
                    cidr: super::cidr_of_raw_pool(obj.data.get("spec")),
                    reason: e.to_string(),
                    name,
                }),
            }
        }
        out.pools.sort_by(|a, b| a.name.cmp(&b.name));
        out.unreadable.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Creates or replaces the pool. The existing object is read raw, so one whose spec does
    /// not decode is replaced like any other (its metadata and status kept).
    async fn apply_pool(&self, pool: &IpPool) -> DsResult<()> {
        let api = self.raw_pools().await?;
        let group = self.api_group().await?;
        let what = format!("apply IPPool {}", pool.name);
        let spec = serde_json::to_value(&pool.spec)
            .map_err(|e| DatastoreError::Other(format!("{what}: encode: {e}")))?;
        // Last writer wins for admin objects; a concurrent edit between our read and write is
        // retried a few times.
        for _ in 0..5 {
            let existing = api.get_opt(&pool.name).await.map_err(self.err(&what))?;
            let result = match existing {
                Some(mut obj) => {
                    obj.data["spec"] = spec.clone();
                    api.replace(&pool.name, &PostParams::default(), &obj)
                        .await
                        .map(|_| ())
                }
                None => {
                    let mut meta = objects::ipam_meta(group, &pool.name, None, None);
                    // Written through calicoctl a pool's Calico metadata has its creation time
                    // (v1: in the annotation; v3 objects have none).
                    if group == ApiGroup::V1 {
                        meta.annotations = Some(BTreeMap::from([(
                            objects::METADATA_ANNOTATION.to_owned(),
                            serde_json::json!({"creationTimestamp": time::rfc3339(time::now_nanos())})
                                .to_string(),
                        )]));
                    }
                    let mut obj = kube::core::Object::new(
                        &pool.name,
                        &IP_POOL.resource(group),
                        pool.spec.clone(),
                    );
                    obj.metadata = meta;
                    let typed: Api<WithStatus<IpPoolSpec>> =
                        Api::all_with(self.conn.client.clone(), &IP_POOL.resource(group));
                    typed.create(&PostParams::default(), &obj).await.map(|_| ())
                }
            };
            match result.map_err(self.err(&what)) {
                Ok(()) => return Ok(()),
                Err(DatastoreError::Conflict | DatastoreError::AlreadyExists) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(DatastoreError::Conflict)
    }

    /// Deletes the pool, read raw: the answer (the deleted object) need not decode.
    async fn delete_pool(&self, name: &str) -> DsResult<bool> {
        match self
            .raw_pools()
            .await?
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match self.conn.error(&format!("delete IPPool {name}"), e) {
                DatastoreError::NotFound => Ok(false),
                other => Err(other),
            },
        }
    }

    /// The Kubernetes Node's labels. A missing Node fails the request, as in Calico: the CNI's
    /// node name must be the Node's name.
    async fn node_labels(&self, node: &str) -> DsResult<Option<BTreeMap<String, String>>> {
        let cached = self
            .cache()
            .filter(|c| c.node() == node)
            .and_then(|c| c.node_labels());
        if let Some(labels) = cached {
            return Ok(Some(labels));
        }
        let api: Api<Node> = Api::all(self.conn.client.clone());
        let meta = api
            .get_metadata_opt(node)
            .await
            .map_err(self.err(format!("read Node {node}")))?;
        let Some(meta) = meta else {
            return Err(DatastoreError::Other(format!(
                "node {node} does not exist in the Kubernetes API at {}: the CNI node name \
                 (nodename, /var/lib/calico/nodename) must be this node's Kubernetes Node name",
                self.conn.server
            )));
        };
        let labels = meta.metadata.labels.unwrap_or_default();
        if let Some(mut c) = self.cache().filter(|c| c.node() == node) {
            c.set_node_labels(labels.clone());
        }
        Ok(Some(labels))
    }

    async fn namespace_labels(
        &self,
        namespace: &str,
    ) -> DsResult<Option<BTreeMap<String, String>>> {
        if let Some(cached) = self.cache().and_then(|c| c.namespace_labels(namespace)) {
            return Ok(cached);
        }
        let api: Api<Namespace> = Api::all(self.conn.client.clone());
        let labels = api
            .get_metadata_opt(namespace)
            .await
            .map_err(self.err(format!("read Namespace {namespace}")))?
            .map(|m| m.metadata.labels.unwrap_or_default());
        if let Some(mut c) = self.cache() {
            c.set_namespace_labels(namespace, labels.clone());
        }
        Ok(labels)
    }

    async fn list_reservations(&self) -> DsResult<Vec<IpReservation>> {
        if let Some(cached) = self.cache().and_then(|c| c.reservations()) {
            return Ok(cached);
        }
        let listed: Vec<Crd<IpReservationSpec>> = self
            .list_obj(&IP_RESERVATION, &ListParams::default())
            .await?;
        let reservations: Vec<IpReservation> = listed
            .into_iter()
            .map(|o| IpReservation {
                name: o.metadata.name.unwrap_or_default(),
                spec: o.spec,
            })
            .collect();
        if let Some(mut c) = self.cache() {
            c.set_reservations(reservations.clone());
        }
        Ok(reservations)
    }

    async fn get_block(&self, cidr: &IpNet) -> DsResult<Option<Versioned<IpamBlock>>> {
        let found = self
            .get_live::<IpamBlock>(&IPAM_BLOCK, &names::cidr_to_name(cidr))
            .await?;
        self.remember_block(cidr, found.as_ref());
        Ok(found)
    }

    async fn get_block_for_update(&self, cidr: &IpNet) -> DsResult<Option<Versioned<IpamBlock>>> {
        if let Some(b) = self.cache().and_then(|c| c.block(&cidr.to_string())) {
            return Ok(Some(b));
        }
        self.get_block(cidr).await
    }

    async fn create_block(&self, block: &IpamBlock) -> DsResult<Revision> {
        let group = self.api_group().await?;
        let obj = objects::object(
            group,
            &IPAM_BLOCK,
            objects::ipam_meta(group, &names::cidr_to_name(&block.cidr), None, None),
            block.clone(),
        );
        let created = self.create_obj(&IPAM_BLOCK, &obj).await.map(versioned)?;
        self.remember_block(&block.cidr, Some(&created));
        Ok(created.revision)
    }

    async fn update_block(&self, block: &Versioned<IpamBlock>) -> DsResult<Revision> {
        let cidr = block.value.cidr;
        let group = self.api_group().await?;
        let obj = objects::object(
            group,
            &IPAM_BLOCK,
            objects::ipam_meta(
                group,
                &names::cidr_to_name(&cidr),
                Some(&block.revision),
                None,
            ),
            block.value.clone(),
        );
        let written = self.replace_obj(&IPAM_BLOCK, &obj).await.map(versioned);
        match &written {
            // Someone else wrote it since our copy: read it before writing for a while
            // (`cache::CONTENDED_FOR`), so the next write does not fail the same way.
            Err(DatastoreError::Conflict) => {
                if let Some(mut c) = self.cache() {
                    c.mark_contended(&cidr.to_string());
                }
            }
            Err(_) => self.remember_block(&cidr, None),
            Ok(_) => {}
        }
        let written = written?;
        self.remember_block(&cidr, Some(&written));
        Ok(written.revision)
    }

    async fn delete_block(&self, block: &Versioned<IpamBlock>) -> DsResult<()> {
        let cidr = block.value.cidr;
        self.remember_block(&cidr, None);
        self.delete_at::<IpamBlock>(&IPAM_BLOCK, &names::cidr_to_name(&cidr), &block.revision)
            .await
    }

    /// Only the names are listed (metadata only): a block's name is its CIDR.
    async fn list_block_cidrs(&self) -> DsResult<Vec<IpNet>> {
        let api: Api<Crd<IpamBlock>> = self.api(&IPAM_BLOCK).await?;
        let listed = match api.list_metadata(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) => return Err(self.list_or_create_error(&IPAM_BLOCK, "list ipamblocks", e)),
        };
        Ok(listed
            .items
            .iter()
            .filter_map(|m| names::name_to_cidr(m.metadata.name.as_deref()?))
            .collect())
    }

    async fn list_blocks(&self) -> DsResult<Vec<Versioned<IpamBlock>>> {
        let listed: Vec<Crd<IpamBlock>> =
            self.list_obj(&IPAM_BLOCK, &ListParams::default()).await?;
        Ok(listed
            .into_iter()
            .filter(|o| !o.spec.deleted)
            .map(versioned)
            .collect())
    }

    /// One label-selected LIST (`projectcalico.org/hostname-hash`, type `host`) for both
    /// families, as Calico v3.31+ selects them; cached for the TTL.
    async fn list_host_affinities(&self, host: &str) -> DsResult<Vec<Versioned<BlockAffinity>>> {
        let cache_is_for_host = self.cache().is_some_and(|c| c.node() == host);
        if cache_is_for_host && let Some(cached) = self.cache().and_then(|c| c.affinities()) {
            return Ok(cached);
        }
        let selector = format!(
            "{}={},{}={}",
            names::LABEL_HOSTNAME_HASH,
            names::hostname_hash(host),
            names::LABEL_AFFINITY_TYPE,
            AffinityType::Host.as_str()
        );
        let listed: Vec<Crd<BlockAffinity>> = self
            .list_obj(&BLOCK_AFFINITY, &ListParams::default().labels(&selector))
            .await?;
        let mine: Vec<Versioned<BlockAffinity>> = listed
            .into_iter()
            .filter(|o| {
                o.spec.node == host && o.spec.affinity_type == AffinityType::Host && !o.spec.deleted
            })
            .map(versioned)
            .collect();
        if cache_is_for_host && let Some(mut c) = self.cache() {
            c.set_affinities(&mine);
        }
        Ok(mine)
    }

    async fn list_affinities(&self) -> DsResult<Vec<Versioned<BlockAffinity>>> {
        let listed: Vec<Crd<BlockAffinity>> = self
            .list_obj(&BLOCK_AFFINITY, &ListParams::default())
            .await?;
        Ok(listed
            .into_iter()
            .filter(|o| !o.spec.deleted)
            .map(versioned)
            .collect())
    }

    async fn get_affinity(
        &self,
        host: &str,
        cidr: &IpNet,
    ) -> DsResult<Option<Versioned<BlockAffinity>>> {
        self.get_live::<BlockAffinity>(&BLOCK_AFFINITY, &names::affinity_name(host, cidr))
            .await
    }

    async fn create_affinity(&self, affinity: &BlockAffinity) -> DsResult<Revision> {
        let group = self.api_group().await?;
        let obj = objects::object(
            group,
            &BLOCK_AFFINITY,
            objects::ipam_meta(group, &affinity.name(), None, Some(affinity.labels())),
            affinity.clone(),
        );
        let created = self.create_obj(&BLOCK_AFFINITY, &obj).await.map(versioned);
        self.remember_affinity(affinity, created.as_ref().map(Some));
        Ok(created?.revision)
    }

    async fn update_affinity(&self, affinity: &Versioned<BlockAffinity>) -> DsResult<Revision> {
        let a = &affinity.value;
        let group = self.api_group().await?;
        let obj = objects::object(
            group,
            &BLOCK_AFFINITY,
            objects::ipam_meta(group, &a.name(), Some(&affinity.revision), Some(a.labels())),
            a.clone(),
        );
        let written = self.replace_obj(&BLOCK_AFFINITY, &obj).await.map(versioned);
        self.remember_affinity(a, written.as_ref().map(Some));
        Ok(written?.revision)
    }

    async fn delete_affinity(&self, affinity: &Versioned<BlockAffinity>) -> DsResult<()> {
        let a = &affinity.value;
        let deleted = self
            .delete_at::<BlockAffinity>(&BLOCK_AFFINITY, &a.name(), &affinity.revision)
            .await;
        self.remember_affinity(a, deleted.as_ref().map(|()| None));
        deleted
    }

    async fn get_handle(&self, handle_id: &str) -> DsResult<Option<Versioned<IpamHandle>>> {
        let found = self
            .get_live::<IpamHandle>(&IPAM_HANDLE, &names::handle_object_name(handle_id))
            .await?;
        self.remember_handle(handle_id, found.as_ref());
        Ok(found)
    }

    async fn get_handle_for_update(
        &self,
        handle_id: &str,
    ) -> DsResult<Option<Versioned<IpamHandle>>> {
        let name = names::handle_object_name(handle_id);
        if let Some(h) = self.cache().and_then(|c| c.handle(&name)) {
            return Ok(Some(h));
        }
        self.get_handle(handle_id).await
    }

    async fn create_handle(&self, handle: &IpamHandle) -> DsResult<Revision> {
        let name = names::handle_object_name(&handle.handle_id);
        let group = self.api_group().await?;
        let obj = objects::object(
            group,
            &IPAM_HANDLE,
            objects::ipam_meta(group, &name, None, None),
            handle.clone(),
        );
        let created = self.create_obj(&IPAM_HANDLE, &obj).await.map(versioned);
        self.forget_on_error(&created, || self.remember_handle(&handle.handle_id, None));
        let created = created?;
        self.remember_handle(&handle.handle_id, Some(&created));
        Ok(created.revision)
    }

    async fn update_handle(&self, handle: &Versioned<IpamHandle>) -> DsResult<Revision> {
        let id = &handle.value.handle_id;
        let group = self.api_group().await?;
        let obj = objects::object(
            group,
            &IPAM_HANDLE,
            objects::ipam_meta(
                group,
                &names::handle_object_name(id),
                Some(&handle.revision),
                None,
            ),
            handle.value.clone(),
        );
        let written = self.replace_obj(&IPAM_HANDLE, &obj).await.map(versioned);
        self.forget_on_error(&written, || self.remember_handle(id, None));
        let written = written?;
        self.remember_handle(id, Some(&written));
        Ok(written.revision)
    }

    async fn delete_handle(&self, handle: &Versioned<IpamHandle>) -> DsResult<()> {
        let id = &handle.value.handle_id;
        self.remember_handle(id, None);
        self.delete_at::<IpamHandle>(
            &IPAM_HANDLE,
            &names::handle_object_name(id),
            &handle.revision,
        )
        .await
    }

    async fn list_handles(&self) -> DsResult<Vec<Versioned<IpamHandle>>> {
        let listed: Vec<Crd<IpamHandle>> =
            self.list_obj(&IPAM_HANDLE, &ListParams::default()).await?;
        Ok(listed
            .into_iter()
            .filter(|o| !o.spec.deleted)
            .map(versioned)
            .collect())
    }

    /// Every object listed raw and decoded one by one (`scan.rs`); never from the cache.
    async fn inventory(&self) -> DsResult<Inventory> {
        self.read_inventory().await
    }
}

/// An object as the server answered a write, decoded into the model (`Crd<S>`).
fn decoded<S: DeserializeOwned + Clone>(kind: &Kind, obj: Crd<Value>) -> DsResult<Crd<S>> {
    let spec = serde_json::from_value(obj.spec).map_err(|e| {
        DatastoreError::Other(format!("unexpected {} from the API server: {e}", kind.kind))
    })?;
    Ok(Crd {
        types: obj.types,
        metadata: obj.metadata,
        spec,
        status: obj.status,
    })
}

const _: fn() = || {
    fn implements<T: Datastore>() {}
    implements::<KubeStore>();
};
