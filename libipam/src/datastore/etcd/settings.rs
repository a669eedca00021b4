//! What an allocation reads besides pools and IPAM objects: the IPAMConfig (Calico's
//! defaults when absent), the IPReservations and a Node's labels. The config and the
//! reservations may be the ones read ahead.

use std::collections::BTreeMap;

use super::kv::key_str;
use super::{EtcdStore, keys, segment};
use crate::datastore::DsResult;
use crate::model::{IpReservation, IpamConfig};

pub(super) async fn config(store: &EtcdStore) -> DsResult<IpamConfig> {
    match store.get_once(keys::CONFIG_KEY).await? {
        None => Ok(IpamConfig::default()),
        Some(kv) => {
            keys::decode_config(kv.value()).map_err(|e| store.undecodable(keys::CONFIG_KEY, e))
        }
    }
}

pub(super) async fn apply_config(store: &EtcdStore, config: &IpamConfig) -> DsResult<()> {
    store
        .put(keys::CONFIG_KEY, keys::encode_config(config))
        .await
}

pub(super) async fn node_labels(
    store: &EtcdStore,
    node: &str,
) -> DsResult<Option<BTreeMap<String, String>>> {
    segment("node name", node)?;
    let key = keys::resource_key(keys::NODE, node);
    match store.get(&key).await? {
        None => Ok(None),
        Some(kv) => keys::decode_node_labels(kv.value())
            .map(Some)
            .map_err(|e| store.undecodable(&key, e)),
    }
}

pub(super) async fn reservations(store: &EtcdStore) -> DsResult<Vec<IpReservation>> {
    let prefix = keys::resource_prefix(keys::IP_RESERVATION);
    let mut out = Vec::new();
    for kv in store.list_once(&prefix).await? {
        let key = key_str(&kv);
        let Some(name) = key.strip_prefix(&prefix).filter(|n| !n.contains('/')) else {
            continue;
        };
        out.push(
            keys::decode_reservation(name, kv.value()).map_err(|e| store.undecodable(&key, e))?,
        );
    }
    Ok(out)
}
