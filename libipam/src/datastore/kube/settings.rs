//! What an allocation reads besides pools and IPAM objects: the IPAMConfig, IPReservations,
//! the Node's and the Namespace's labels. All of them may be served from the node cache for
//! its TTL (DESIGN.md, "Node cache").

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, ListParams};

use super::KubeStore;
use super::objects::{self, Crd, IP_RESERVATION, IPAM_CONFIG, SINGLETON};
use crate::datastore::{DatastoreError, DsResult, Revision};
use crate::model::{IpReservation, IpReservationSpec, IpamConfig};

pub(super) async fn config(store: &KubeStore) -> DsResult<IpamConfig> {
    let found = if let Some((at, found)) = store.take_ahead(|a| a.config.take()) {
        if let Some(mut c) = store.cache() {
            c.set_config_read_at(found.clone(), at);
        }
        found
    } else if let Some(cached) = store.cache().and_then(|c| c.config()) {
        cached
    } else {
        let found = fetch_config(store).await?;
        if let Some(mut c) = store.cache() {
            c.set_config(found.clone());
        }
        found
    };
    // Absent: Calico's defaults, not persisted.
    Ok(found.unwrap_or_default())
}

/// The IPAMConfig from the API server (`None`: there is none).
pub(super) async fn fetch_config(store: &KubeStore) -> DsResult<Option<IpamConfig>> {
    // The request that finds the API group may read it (`api_group.rs`): ask for the group
    // first, then take what that read, if anything.
    store.api_group().await?;
    Ok(
        match super::api_group::take_probed_config(&store.conn.server) {
            Some(probed) => probed,
            None => store
                .get_obj::<IpamConfig>(&IPAM_CONFIG, SINGLETON)
                .await?
                .map(|o| o.spec),
        },
    )
}

pub(super) async fn apply_config(store: &KubeStore, config: &IpamConfig) -> DsResult<()> {
    let existing = store.get_obj::<IpamConfig>(&IPAM_CONFIG, SINGLETON).await?;
    let revision = existing
        .as_ref()
        .and_then(|o| o.metadata.resource_version.clone())
        .map(Revision);
    let group = store.api_group().await?;
    let obj = objects::object(
        group,
        &IPAM_CONFIG,
        objects::ipam_meta(group, SINGLETON, revision.as_ref(), None),
        config.clone(),
    );
    match existing {
        Some(_) => store.replace_obj(&IPAM_CONFIG, &obj).await?,
        None => store.create_obj(&IPAM_CONFIG, &obj).await?,
    };
    if let Some(mut c) = store.cache() {
        c.set_config(Some(config.clone()));
    }
    Ok(())
}

/// The Kubernetes Node's labels. A missing Node fails the request, as in Calico: the CNI's
/// node name must be the Node's name.
pub(super) async fn node_labels(
    store: &KubeStore,
    node: &str,
) -> DsResult<Option<BTreeMap<String, String>>> {
    let cached = store
        .cache()
        .filter(|c| c.node() == node)
        .and_then(|c| c.node_labels());
    if let Some(labels) = cached {
        return Ok(Some(labels));
    }
    let api: Api<Node> = Api::all(store.conn.client.clone());
    let meta = api
        .get_metadata_opt(node)
        .await
        .map_err(store.err(format!("read Node {node}")))?;
    let Some(meta) = meta else {
        return Err(DatastoreError::Other(format!(
            "node {node} does not exist in the Kubernetes API at {}: the CNI node name \
             (nodename, /var/lib/calico/nodename) must be this node's Kubernetes Node name",
            store.conn.server
        )));
    };
    let labels = meta.metadata.labels.unwrap_or_default();
    if let Some(mut c) = store.cache().filter(|c| c.node() == node) {
        c.set_node_labels(labels.clone());
    }
    Ok(Some(labels))
}

pub(super) async fn namespace_labels(
    store: &KubeStore,
    namespace: &str,
) -> DsResult<Option<BTreeMap<String, String>>> {
    if let Some(cached) = store.cache().and_then(|c| c.namespace_labels(namespace)) {
        return Ok(cached);
    }
    let api: Api<Namespace> = Api::all(store.conn.client.clone());
    let labels = api
        .get_metadata_opt(namespace)
        .await
        .map_err(store.err(format!("read Namespace {namespace}")))?
        .map(|m| m.metadata.labels.unwrap_or_default());
    if let Some(mut c) = store.cache() {
        c.set_namespace_labels(namespace, labels.clone());
    }
    Ok(labels)
}

pub(super) async fn reservations(store: &KubeStore) -> DsResult<Vec<IpReservation>> {
    if let Some((at, found)) = store.take_ahead(|a| a.reservations.take()) {
        if let Some(mut c) = store.cache() {
            c.set_reservations_read_at(found.clone(), at);
        }
        return Ok(found);
    }
    if let Some(cached) = store.cache().and_then(|c| c.reservations()) {
        return Ok(cached);
    }
    let reservations = fetch_reservations(store).await?;
    if let Some(mut c) = store.cache() {
        c.set_reservations(reservations.clone());
    }
    Ok(reservations)
}

/// The IPReservations from the API server.
pub(super) async fn fetch_reservations(store: &KubeStore) -> DsResult<Vec<IpReservation>> {
    let listed: Vec<Crd<IpReservationSpec>> = store
        .list_obj(&IP_RESERVATION, &ListParams::default())
        .await?;
    Ok(listed
        .into_iter()
        .map(|o| IpReservation {
            name: o.metadata.name.unwrap_or_default(),
            spec: o.spec,
        })
        .collect())
}
