//! IPAMHandles: reads, compare-and-swap writes and the listing. A handle ID is checked to be
//! one key segment before it goes into a key.

use super::{EtcdStore, keys, segment};
use crate::datastore::{DsResult, Revision, Versioned};
use crate::model::IpamHandle;

pub(super) async fn get(
    store: &EtcdStore,
    handle_id: &str,
) -> DsResult<Option<Versioned<IpamHandle>>> {
    segment("handle ID", handle_id)?;
    let Some(kv) = store.get_once(&keys::handle_key(handle_id)).await? else {
        return Ok(None);
    };
    match store.handle_of(&kv)? {
        Some(h) if h.value.deleted => {
            store.finish_delete(&kv).await;
            Ok(None)
        }
        other => Ok(other),
    }
}

pub(super) async fn create(store: &EtcdStore, handle: &IpamHandle) -> DsResult<Revision> {
    segment("handle ID", &handle.handle_id)?;
    store
        .create(
            &keys::handle_key(&handle.handle_id),
            keys::encode_handle(handle),
        )
        .await
}

pub(super) async fn update(
    store: &EtcdStore,
    handle: &Versioned<IpamHandle>,
) -> DsResult<Revision> {
    segment("handle ID", &handle.value.handle_id)?;
    store
        .update(
            &keys::handle_key(&handle.value.handle_id),
            &handle.revision,
            keys::encode_handle(&handle.value),
        )
        .await
}

pub(super) async fn delete(store: &EtcdStore, handle: &Versioned<IpamHandle>) -> DsResult<()> {
    segment("handle ID", &handle.value.handle_id)?;
    store
        .delete(&keys::handle_key(&handle.value.handle_id), &handle.revision)
        .await
}

pub(super) async fn list(store: &EtcdStore) -> DsResult<Vec<Versioned<IpamHandle>>> {
    let mut out = Vec::new();
    for kv in store.list(keys::HANDLE_PREFIX, false).await? {
        match store.handle_of(&kv)? {
            Some(h) if h.value.deleted => store.finish_delete(&kv).await,
            Some(h) => out.push(h),
            None => {}
        }
    }
    Ok(out)
}
