//! BlockAffinities: the host's (possibly read ahead), all of them, one, and compare-and-swap
//! writes. A node name is checked to be one key segment before it goes into a key.

use ipnet::IpNet;

use super::{EtcdStore, keys, segment};
use crate::datastore::{DsResult, Revision, Versioned};
use crate::model::{AffinityType, BlockAffinity};

pub(super) async fn list_host(
    store: &EtcdStore,
    host: &str,
) -> DsResult<Vec<Versioned<BlockAffinity>>> {
    segment("node name", host)?;
    let listed = store.list_once(&keys::host_affinity_prefix(host)).await?;
    store.live_affinities(listed).await
}

pub(super) async fn list(store: &EtcdStore) -> DsResult<Vec<Versioned<BlockAffinity>>> {
    let mut out = store
        .affinities_under(&keys::affinity_type_prefix(AffinityType::Host))
        .await?;
    out.extend(
        store
            .affinities_under(&keys::affinity_type_prefix(AffinityType::Virtual))
            .await?,
    );
    Ok(out)
}

pub(super) async fn get(
    store: &EtcdStore,
    host: &str,
    cidr: &IpNet,
) -> DsResult<Option<Versioned<BlockAffinity>>> {
    segment("node name", host)?;
    let Some(kv) = store
        .get(&keys::affinity_key(AffinityType::Host, host, cidr))
        .await?
    else {
        return Ok(None);
    };
    match store.affinity_of(&kv)? {
        Some(a) if a.value.deleted => {
            store.finish_delete(&kv).await;
            Ok(None)
        }
        other => Ok(other),
    }
}

pub(super) async fn create(store: &EtcdStore, affinity: &BlockAffinity) -> DsResult<Revision> {
    segment("node name", &affinity.node)?;
    let key = keys::affinity_key(affinity.affinity_type, &affinity.node, &affinity.cidr);
    store.create(&key, keys::encode_affinity(affinity)).await
}

pub(super) async fn update(
    store: &EtcdStore,
    affinity: &Versioned<BlockAffinity>,
) -> DsResult<Revision> {
    let a = &affinity.value;
    segment("node name", &a.node)?;
    let key = keys::affinity_key(a.affinity_type, &a.node, &a.cidr);
    store
        .update(&key, &affinity.revision, keys::encode_affinity(a))
        .await
}

pub(super) async fn delete(store: &EtcdStore, affinity: &Versioned<BlockAffinity>) -> DsResult<()> {
    let a = &affinity.value;
    segment("node name", &a.node)?;
    let key = keys::affinity_key(a.affinity_type, &a.node, &a.cidr);
    store.delete(&key, &affinity.revision).await
}
