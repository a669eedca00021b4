//! IPPools: the listing (possibly read ahead; a pool that does not decode is listed as
//! unreadable, not an error), and the admin writes, last writer wins.

use serde_json::Value;

use super::kv::key_str;
use super::resources::new_uid;
use super::{EtcdStore, keys, segment};
use crate::datastore::{DsResult, PoolList, UnreadablePool};
use crate::model::{IpPool, time};

pub(super) async fn list(store: &EtcdStore) -> DsResult<PoolList> {
    let prefix = keys::resource_prefix(keys::IP_POOL);
    let mut out = PoolList::default();
    for kv in store.list_once(&prefix).await? {
        let key = key_str(&kv);
        let Some(name) = key.strip_prefix(&prefix).filter(|n| !n.contains('/')) else {
            continue;
        };
        match keys::decode_pool(name, kv.value()) {
            Ok(pool) => out.pools.push(pool),
            Err((spec, reason)) => out.unreadable.push(UnreadablePool {
                name: name.to_owned(),
                object: format!("IPPool {name}"),
                cidr: crate::datastore::cidr_of_raw_pool(spec.as_ref()),
                reason,
            }),
        }
    }
    out.pools.sort_by(|a, b| a.name.cmp(&b.name));
    out.unreadable.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub(super) async fn apply(store: &EtcdStore, pool: &IpPool) -> DsResult<()> {
    segment("IPPool name", &pool.name)?;
    let key = keys::resource_key(keys::IP_POOL, &pool.name);
    let existing = store
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
    store.put(&key, keys::encode_pool(pool, metadata)).await
}

pub(super) async fn delete(store: &EtcdStore, name: &str) -> DsResult<bool> {
    segment("IPPool name", name)?;
    let key = keys::resource_key(keys::IP_POOL, name);
    store.forget_prefetched(&key);
    let resp = store
        .call(&format!("delete {key}"), false, |mut kv| {
            let key = key.clone();
            async move { kv.delete(key, None).await }
        })
        .await?;
    Ok(resp.deleted() > 0)
}
