//! What `check` reads ([`Datastore::inventory`]): every object listed and decoded one by one,
//! so that one that does not decode is reported as unusable instead of failing its kind's
//! listing.

use etcd_client::KeyValue;

use super::kv::key_str;
use super::{EtcdStore, keys};
use crate::datastore::{
    Datastore, DatastoreError, DsResult, Inventory, Unusable, Versioned, unreadable_consequence,
    unusable_pools,
};
use crate::model::{AffinityType, BlockAffinity, IpamBlock, IpamHandle};

impl EtcdStore {
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

pub(super) async fn read(store: &EtcdStore) -> DsResult<Inventory> {
    let listed = store.list_pools().await?;
    let mut unusable = unusable_pools(listed.unreadable);
    let config = match store.get_config().await {
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
    let blocks = store
        .scan(
            keys::BLOCK_PREFIX,
            "IPAMBlock",
            |kv| {
                if keys::parse_block_key(&key_str(kv)).is_none() {
                    return Ok(None);
                }
                store.block_of(kv).map(Some)
            },
            |b: &IpamBlock| b.deleted,
            &mut unusable,
        )
        .await?;
    let mut affinities = Vec::new();
    for t in [AffinityType::Host, AffinityType::Virtual] {
        affinities.extend(
            store
                .scan(
                    &keys::affinity_type_prefix(t),
                    "BlockAffinity",
                    |kv| store.affinity_of(kv),
                    |a: &BlockAffinity| a.deleted,
                    &mut unusable,
                )
                .await?,
        );
    }
    let handles = store
        .scan(
            keys::HANDLE_PREFIX,
            "IPAMHandle",
            |kv| store.handle_of(kv),
            |h: &IpamHandle| h.deleted,
            &mut unusable,
        )
        .await?;
    Ok(Inventory {
        config,
        pools: listed.pools,
        reservations: store.list_reservations().await?,
        blocks,
        affinities,
        handles,
        unusable,
    })
}
