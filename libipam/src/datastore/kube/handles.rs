//! IPAMHandles, named by the lower-cased handle ID: reads, a copy for update from the node
//! cache, CAS writes that keep it in step.

use kube::api::ListParams;

use super::KubeStore;
use super::decode::versioned;
use super::objects::{self, Crd, IPAM_HANDLE};
use crate::datastore::{DsResult, Revision, Versioned};
use crate::model::IpamHandle;
use crate::names;

impl KubeStore {
    pub(super) fn remember_handle(&self, handle_id: &str, h: Option<&Versioned<IpamHandle>>) {
        if let Some(mut c) = self.cache() {
            c.put_handle(&names::handle_object_name(handle_id), h);
        }
    }
}

pub(super) async fn get(
    store: &KubeStore,
    handle_id: &str,
) -> DsResult<Option<Versioned<IpamHandle>>> {
    let found = store
        .get_live::<IpamHandle>(&IPAM_HANDLE, &names::handle_object_name(handle_id))
        .await?;
    store.remember_handle(handle_id, found.as_ref());
    Ok(found)
}

pub(super) async fn get_for_update(
    store: &KubeStore,
    handle_id: &str,
) -> DsResult<Option<Versioned<IpamHandle>>> {
    let name = names::handle_object_name(handle_id);
    if let Some(h) = store.cache().and_then(|c| c.handle(&name)) {
        return Ok(Some(h));
    }
    get(store, handle_id).await
}

pub(super) async fn create(store: &KubeStore, handle: &IpamHandle) -> DsResult<Revision> {
    let name = names::handle_object_name(&handle.handle_id);
    let group = store.api_group().await?;
    let obj = objects::object(
        group,
        &IPAM_HANDLE,
        objects::ipam_meta(group, &name, None, None),
        handle.clone(),
    );
    let created = store.create_obj(&IPAM_HANDLE, &obj).await.map(versioned);
    store.forget_on_error(&created, || store.remember_handle(&handle.handle_id, None));
    let created = created?;
    store.remember_handle(&handle.handle_id, Some(&created));
    Ok(created.revision)
}

pub(super) async fn update(
    store: &KubeStore,
    handle: &Versioned<IpamHandle>,
) -> DsResult<Revision> {
    let id = &handle.value.handle_id;
    let group = store.api_group().await?;
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
    let written = store.replace_obj(&IPAM_HANDLE, &obj).await.map(versioned);
    store.forget_on_error(&written, || store.remember_handle(id, None));
    let written = written?;
    store.remember_handle(id, Some(&written));
    Ok(written.revision)
}

pub(super) async fn delete(store: &KubeStore, handle: &Versioned<IpamHandle>) -> DsResult<()> {
    let id = &handle.value.handle_id;
    store.remember_handle(id, None);
    store
        .delete_at::<IpamHandle>(
            &IPAM_HANDLE,
            &names::handle_object_name(id),
            &handle.revision,
        )
        .await
}

pub(super) async fn list(store: &KubeStore) -> DsResult<Vec<Versioned<IpamHandle>>> {
    let listed: Vec<Crd<IpamHandle>> = store.list_obj(&IPAM_HANDLE, &ListParams::default()).await?;
    Ok(listed
        .into_iter()
        .filter(|o| !o.spec.deleted)
        .map(versioned)
        .collect())
}
