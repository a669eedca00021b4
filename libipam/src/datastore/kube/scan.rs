//! `check`'s read of the Kubernetes datastore: every IPAM object listed as raw JSON and
//! decoded on its own, so that one object the allocator cannot decode (an IPPool whose spec
//! has the wrong type, written past a CRD schema that allows it) is reported by name instead
//! of failing the listing of its kind. The conversions are `decode`'s, the allocator's own.

use kube::api::{Api, DynamicObject, ListParams};

use super::KubeStore;
use super::decode;
use super::objects::{
    BLOCK_AFFINITY, IP_POOL, IP_RESERVATION, IPAM_BLOCK, IPAM_CONFIG, IPAM_HANDLE, Kind, SINGLETON,
};
use crate::datastore::{DsResult, Inventory, Unusable, Versioned, unreadable_consequence};
use crate::model::{BlockAffinity, IpamBlock, IpamHandle};
use crate::names;

/// Every object of `kind`: its name and its body.
async fn list_raw(store: &KubeStore, kind: &Kind) -> DsResult<Vec<(String, Vec<u8>)>> {
    let api: Api<DynamicObject> =
        Api::all_with(store.conn.client.clone(), &store.resource(kind).await?);
    let listed = match api.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(e) => {
            return Err(store.list_or_create_error(kind, &format!("list {}", kind.plural), e));
        }
    };
    Ok(listed
        .items
        .into_iter()
        .map(|o| {
            let name = o.metadata.name.clone().unwrap_or_default();
            // Re-encoding a decoded JSON object cannot fail.
            (name, serde_json::to_vec(&o).unwrap_or_default())
        })
        .collect())
}

/// Decodes each object of `kind` with `decode`; those that fail are reported.
async fn read_kind<T>(
    store: &KubeStore,
    kind: &Kind,
    unusable: &mut Vec<Unusable>,
    decode: impl Fn(&[u8]) -> serde_json::Result<T>,
) -> DsResult<Vec<(String, T)>> {
    let mut out = Vec::new();
    for (name, body) in list_raw(store, kind).await? {
        match decode(&body) {
            Ok(v) => out.push((name, v)),
            Err(e) => unusable.push(Unusable {
                object: format!("{} {name}", kind.kind),
                reason: format!(
                    "cannot be decoded ({e}): {}",
                    unreadable_consequence(kind.kind)
                ),
            }),
        }
    }
    Ok(out)
}

/// Keeps a keyed object only when its name is the one lookups by its key use.
fn placed<T>(
    kind: &Kind,
    unusable: &mut Vec<Unusable>,
    (name, v): (String, Option<Versioned<T>>),
    key: impl Fn(&T) -> (String, String),
) -> Option<Versioned<T>> {
    let v = v?;
    let (expected, what) = key(&v.value);
    if name == expected {
        return Some(v);
    }
    unusable.push(Unusable {
        object: format!("{} {name}", kind.kind),
        reason: format!(
            "holds {what}, whose object is named {expected}: lookups of it never find this one"
        ),
    });
    None
}

impl KubeStore {
    pub(super) async fn read_inventory(&self) -> DsResult<Inventory> {
        let mut unusable = Vec::new();
        let config = read_kind(self, &IPAM_CONFIG, &mut unusable, decode::config)
            .await?
            .into_iter()
            .find(|(name, _)| name == SINGLETON)
            .map(|(_, c)| c);
        let mut pools: Vec<_> = read_kind(self, &IP_POOL, &mut unusable, decode::pool)
            .await?
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        let reservations = read_kind(self, &IP_RESERVATION, &mut unusable, decode::reservation)
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        let blocks = read_kind(self, &IPAM_BLOCK, &mut unusable, decode::block).await?;
        let blocks = blocks
            .into_iter()
            .filter_map(|b| {
                placed(&IPAM_BLOCK, &mut unusable, b, |b: &IpamBlock| {
                    (names::cidr_to_name(&b.cidr), format!("block {}", b.cidr))
                })
            })
            .collect();
        let affinities = read_kind(self, &BLOCK_AFFINITY, &mut unusable, decode::affinity).await?;
        let affinities = affinities
            .into_iter()
            .filter_map(|a| {
                placed(&BLOCK_AFFINITY, &mut unusable, a, |a: &BlockAffinity| {
                    (
                        a.name(),
                        format!("the affinity of {} for {}", a.node, a.cidr),
                    )
                })
            })
            .collect();
        let handles = read_kind(self, &IPAM_HANDLE, &mut unusable, decode::handle).await?;
        let handles = handles
            .into_iter()
            .filter_map(|h| {
                placed(&IPAM_HANDLE, &mut unusable, h, |h: &IpamHandle| {
                    (
                        names::handle_object_name(&h.handle_id),
                        format!("handle {}", h.handle_id),
                    )
                })
            })
            .collect();
        Ok(Inventory {
            config,
            pools,
            reservations,
            blocks,
            affinities,
            handles,
            unusable,
        })
    }
}
