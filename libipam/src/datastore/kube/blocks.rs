//! IPAMBlocks: reads (a copy for update may come from the node cache, DESIGN.md 3a), CAS
//! writes that keep the cache in step, and the listings.

use std::sync::atomic::Ordering;

use ipnet::IpNet;
use kube::api::{Api, ListParams};

use super::KubeStore;
use super::decode::versioned;
use super::objects::{self, Crd, IPAM_BLOCK};
use crate::datastore::{DatastoreError, DsResult, Revision, Versioned};
use crate::model::IpamBlock;
use crate::names;

impl KubeStore {
    /// A read of the block (`b`: what the server holds): kept when it is this node's, and
    /// checked against the cached affinity list (`NodeCache::block_seen`).
    fn saw_block(&self, cidr: &IpNet, b: Option<&Versioned<IpamBlock>>) {
        if let Some(mut c) = self.cache() {
            let owned = b.is_some_and(|b| b.value.is_affine_to(c.node()));
            c.block_seen(&cidr.to_string(), owned);
        }
        self.remember_block(cidr, b);
    }

    pub(super) fn remember_block(&self, cidr: &IpNet, b: Option<&Versioned<IpamBlock>>) {
        if let Some(mut c) = self.cache() {
            let node = c.node().to_owned();
            match b {
                Some(b) if b.value.is_affine_to(&node) => c.put_block(&cidr.to_string(), Some(b)),
                _ => c.put_block(&cidr.to_string(), None),
            }
        }
    }
}

pub(super) async fn get(store: &KubeStore, cidr: &IpNet) -> DsResult<Option<Versioned<IpamBlock>>> {
    let found = store
        .get_live::<IpamBlock>(&IPAM_BLOCK, &names::cidr_to_name(cidr))
        .await?;
    store.saw_block(cidr, found.as_ref());
    Ok(found)
}

pub(super) async fn get_for_update(
    store: &KubeStore,
    cidr: &IpNet,
) -> DsResult<Option<Versioned<IpamBlock>>> {
    if let Some(b) = store.cache().and_then(|c| c.block(&cidr.to_string())) {
        return Ok(Some(b));
    }
    get(store, cidr).await
}

pub(super) async fn create(store: &KubeStore, block: &IpamBlock) -> DsResult<Revision> {
    let group = store.api_group().await?;
    let obj = objects::object(
        group,
        &IPAM_BLOCK,
        objects::ipam_meta(group, &names::cidr_to_name(&block.cidr), None, None),
        block.clone(),
    );
    let created = store.create_obj(&IPAM_BLOCK, &obj).await.map(versioned);
    if let Err(DatastoreError::AlreadyExists) = created {
        // The listing that chose this name did not have it: read the next one from etcd.
        store.block_list_stale.store(true, Ordering::Relaxed);
    }
    let created = created?;
    store.remember_block(&block.cidr, Some(&created));
    Ok(created.revision)
}

pub(super) async fn update(store: &KubeStore, block: &Versioned<IpamBlock>) -> DsResult<Revision> {
    let cidr = block.value.cidr;
    let group = store.api_group().await?;
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
    let written = store.replace_obj(&IPAM_BLOCK, &obj).await.map(versioned);
    match &written {
        // Someone else wrote it since our copy: read it before writing for a while
        // (`cache::CONTENDED_FOR`), so the next write does not fail the same way.
        Err(DatastoreError::Conflict) => {
            if let Some(mut c) = store.cache() {
                c.mark_contended(&cidr.to_string());
            }
        }
        // Gone: a block the affinity list names as ours no longer is.
        Err(DatastoreError::NotFound) => store.saw_block(&cidr, None),
        Err(_) => store.remember_block(&cidr, None),
        Ok(_) => {}
    }
    let written = written?;
    store.remember_block(&cidr, Some(&written));
    Ok(written.revision)
}

pub(super) async fn delete(store: &KubeStore, block: &Versioned<IpamBlock>) -> DsResult<()> {
    let cidr = block.value.cidr;
    store.remember_block(&cidr, None);
    store
        .delete_at::<IpamBlock>(&IPAM_BLOCK, &names::cidr_to_name(&cidr), &block.revision)
        .await
}

/// Only the names are listed (metadata only): a block's name is its CIDR.
///
/// From the API server's watch cache (`resourceVersion=0`, any version not older than the
/// cache's), not a consistent read: the server neither asks etcd for its current revision nor
/// waits for the cache to catch up with it. The list may miss blocks created in the last
/// moments (the cache lags etcd by its watch latency). For a claim that costs at most a lost
/// race: the walk picks a name that exists, its create answers `AlreadyExists`, and the retry
/// lists again, then consistently. It keeps invariant 13 (DESIGN.md): the overlaps it
/// protects against are old blocks, long in the cache; a block of another size created at the
/// same moment needs two overlapping pools claiming at once, the misconfiguration `check`
/// names.
pub(super) async fn list_cidrs(store: &KubeStore) -> DsResult<Vec<IpNet>> {
    let api: Api<Crd<IpamBlock>> = store.api(&IPAM_BLOCK).await?;
    let lp = if store.block_list_stale.swap(false, Ordering::Relaxed) {
        ListParams::default()
    } else {
        ListParams::default().at("0")
    };
    let listed = match api.list_metadata(&lp).await {
        Ok(l) => l,
        Err(e) => return Err(store.list_or_create_error(&IPAM_BLOCK, "list ipamblocks", e)),
    };
    Ok(listed
        .items
        .iter()
        .filter_map(|m| names::name_to_cidr(m.metadata.name.as_deref()?))
        .collect())
}

pub(super) async fn list(store: &KubeStore) -> DsResult<Vec<Versioned<IpamBlock>>> {
    let listed: Vec<Crd<IpamBlock>> = store.list_obj(&IPAM_BLOCK, &ListParams::default()).await?;
    Ok(listed
        .into_iter()
        .filter(|o| !o.spec.deleted)
        .map(versioned)
        .collect())
}
