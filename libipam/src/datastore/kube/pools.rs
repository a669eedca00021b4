//! IPPools, always read raw from the API server (never cached) and decoded one by one, so one
//! pool whose spec does not decode is listed apart instead of failing every ADD.

use std::collections::BTreeMap;

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};

use super::decode::{self, WithStatus};
use super::objects::{self, IP_POOL};
use super::{ApiGroup, Connection, KubeStore, api_group};
use crate::datastore::{DatastoreError, DsResult, PoolList, UnreadablePool};
use crate::model::{IpPool, IpPoolSpec, time};

impl KubeStore {
    /// IPPools as raw objects, whatever their spec holds.
    pub(super) async fn raw_pools(&self) -> DsResult<Api<DynamicObject>> {
        Ok(Api::all_with(
            self.conn.client.clone(),
            &self.resource(&IP_POOL).await?,
        ))
    }

    pub(super) async fn list_raw_pools(&self) -> DsResult<Vec<DynamicObject>> {
        match self.raw_pools().await?.list(&ListParams::default()).await {
            Ok(l) => Ok(l.items),
            Err(e) => Err(self.list_or_create_error(&IP_POOL, "list ippools", e)),
        }
    }
}

/// Always a LIST, never the node cache: a pool deleted, disabled or created must be seen by
/// the next allocation (DESIGN.md, "Node cache"). The objects are listed raw and decoded one
/// by one, so one whose spec does not decode is listed as unreadable instead of failing the
/// listing (and with it every ADD on every node).
pub(super) async fn list(store: &KubeStore) -> DsResult<PoolList> {
    Ok(decode_all(store.list_raw_pools().await?))
}

/// The IPPools of `crd.projectcalico.org/v1` when that LIST succeeds, which shows v1 served,
/// and v1 is the group Calico chooses whenever it is served (`api_group.rs`): the connection
/// learns it. When the server says the kind is not served (404), the group is discovered
/// (`GET /apis`) and `None` returned, as after the IPAMConfig probe's 404; on 401 or 403
/// `None` (the caller's read goes the usual way). An unreachable or failing server is an
/// error.
pub(super) async fn list_if_v1_served(conn: &Connection) -> DsResult<Option<PoolList>> {
    let api: Api<DynamicObject> =
        Api::all_with(conn.client.clone(), &IP_POOL.resource(ApiGroup::V1));
    match api.list(&ListParams::default()).await {
        Ok(l) => {
            api_group::learned(conn, ApiGroup::V1, "it lists its IPPools");
            Ok(Some(decode_all(l.items)))
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let g = api_group::discover(&conn.client, &conn.server).await?;
            api_group::learned(conn, g, "discovery");
            Ok(None)
        }
        Err(kube::Error::Api(s)) if matches!(s.code, 401 | 403) => Ok(None),
        Err(e) => Err(conn.error("list ippools", e)),
    }
}

fn decode_all(objects: Vec<DynamicObject>) -> PoolList {
    let mut out = PoolList::default();
    for obj in objects {
        let name = obj.metadata.name.clone().unwrap_or_default();
        match decode::pool_object(&obj) {
            Ok(pool) => out.pools.push(pool),
            Err(e) => out.unreadable.push(UnreadablePool {
                object: format!("IPPool {name}"),
                cidr: crate::datastore::cidr_of_raw_pool(obj.data.get("spec")),
                reason: e.to_string(),
                name,
            }),
        }
    }
    out.pools.sort_by(|a, b| a.name.cmp(&b.name));
    out.unreadable.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Creates or replaces the pool. The existing object is read raw, so one whose spec does
/// not decode is replaced like any other (its metadata and status kept).
pub(super) async fn apply(store: &KubeStore, pool: &IpPool) -> DsResult<()> {
    let api = store.raw_pools().await?;
    let group = store.api_group().await?;
    let what = format!("apply IPPool {}", pool.name);
    let spec = serde_json::to_value(&pool.spec)
        .map_err(|e| DatastoreError::Other(format!("{what}: encode: {e}")))?;
    // Last writer wins for admin objects; a concurrent edit between our read and write is
    // retried a few times.
    for _ in 0..5 {
        let existing = api.get_opt(&pool.name).await.map_err(store.err(&what))?;
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
                    Api::all_with(store.conn.client.clone(), &IP_POOL.resource(group));
                typed.create(&PostParams::default(), &obj).await.map(|_| ())
            }
        };
        match result.map_err(store.err(&what)) {
            Ok(()) => return Ok(()),
            Err(DatastoreError::Conflict | DatastoreError::AlreadyExists) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(DatastoreError::Conflict)
}

/// Deletes the pool, read raw: the answer (the deleted object) need not decode.
pub(super) async fn delete(store: &KubeStore, name: &str) -> DsResult<bool> {
    match store
        .raw_pools()
        .await?
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(true),
        Err(e) => match store.conn.error(&format!("delete IPPool {name}"), e) {
            DatastoreError::NotFound => Ok(false),
            other => Err(other),
        },
    }
}
