//! IPAMBlocks: reads (the copy for update may be the one read ahead), compare-and-swap writes,
//! and the listings.

use ipnet::IpNet;

use super::kv::key_str;
use super::{EtcdStore, keys};
use crate::datastore::{DsResult, Revision, Versioned};
use crate::model::IpamBlock;

pub(super) async fn get(store: &EtcdStore, cidr: &IpNet) -> DsResult<Option<Versioned<IpamBlock>>> {
    let kv = store.get(&keys::block_key(cidr)).await?;
    store.live_block(kv).await
}

pub(super) async fn get_for_update(
    store: &EtcdStore,
    cidr: &IpNet,
) -> DsResult<Option<Versioned<IpamBlock>>> {
    let kv = store.get_once(&keys::block_key(cidr)).await?;
    store.live_block(kv).await
}

pub(super) async fn create(store: &EtcdStore, block: &IpamBlock) -> DsResult<Revision> {
    store
        .create(&keys::block_key(&block.cidr), keys::encode_block(block))
        .await
}

pub(super) async fn update(store: &EtcdStore, block: &Versioned<IpamBlock>) -> DsResult<Revision> {
    store
        .update(
            &keys::block_key(&block.value.cidr),
            &block.revision,
            keys::encode_block(&block.value),
        )
        .await
}

pub(super) async fn delete(store: &EtcdStore, block: &Versioned<IpamBlock>) -> DsResult<()> {
    store
        .delete(&keys::block_key(&block.value.cidr), &block.revision)
        .await
}

pub(super) async fn list_cidrs(store: &EtcdStore) -> DsResult<Vec<IpNet>> {
    Ok(store
        .list(keys::BLOCK_PREFIX, true)
        .await?
        .iter()
        .filter_map(|kv| keys::parse_block_key(&key_str(kv)))
        .collect())
}

pub(super) async fn list(store: &EtcdStore) -> DsResult<Vec<Versioned<IpamBlock>>> {
    let mut out = Vec::new();
    for kv in store.list(keys::BLOCK_PREFIX, false).await? {
        if keys::parse_block_key(&key_str(&kv)).is_none() {
            continue;
        }
        let block = store.block_of(&kv)?;
        if block.value.deleted {
            store.finish_delete(&kv).await;
        } else {
            out.push(block);
        }
    }
    Ok(out)
}
