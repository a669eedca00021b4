//! How an object body from the API server becomes what the allocator sees: the JSON decode
//! kube's `Api::get`/`list` performs, then this backend's conversion (a soft-deleted IPAM
//! object counts as absent; a pool being deleted or not `Allocatable` counts as disabled).
//!
//! [`KubeStore`](super::KubeStore) converts with the same functions. They are pure, so the
//! fuzz harness feeds them arbitrary bytes in-process.

use serde::de::DeserializeOwned;

use super::objects::{ClusterInformationSpec, Crd, SoftDelete};
use crate::datastore::{Revision, Versioned};
use crate::model::{
    BlockAffinity, IpPool, IpPoolSpec, IpReservation, IpReservationSpec, IpamBlock, IpamConfig,
    IpamHandle,
};

/// A Calico CR with its `status` kept (IPPools carry conditions there).
pub(super) type WithStatus<S> = kube::core::Object<S, serde_json::Value>;

/// The object with the revision it was read at.
pub(super) fn versioned<S: Clone>(obj: Crd<S>) -> Versioned<S> {
    Versioned {
        revision: Revision(obj.metadata.resource_version.unwrap_or_default()),
        value: obj.spec,
    }
}

/// The pool as stored, treated as disabled when it is being deleted or its status says it is
/// not allocatable (Calico's `filterIPPool`).
pub(super) fn pool_from(obj: WithStatus<IpPoolSpec>) -> IpPool {
    let status = obj.status.as_ref();
    let mut spec = obj.spec;
    let not_allocatable = status
        .and_then(|s| s.get("conditions"))
        .and_then(|c| c.as_array())
        .is_some_and(|conds| {
            conds.iter().any(|c| {
                c.get("type").and_then(|t| t.as_str()) == Some("Allocatable")
                    && c.get("status").and_then(|t| t.as_str()) == Some("False")
            })
        });
    if obj.metadata.deletion_timestamp.is_some() || not_allocatable {
        spec.disabled = true;
    }
    IpPool {
        name: obj.metadata.name.unwrap_or_default(),
        spec,
    }
}

fn live<S: SoftDelete + Clone + DeserializeOwned>(
    body: &[u8],
) -> serde_json::Result<Option<Versioned<S>>> {
    let obj: Crd<S> = serde_json::from_slice(body)?;
    Ok((!obj.spec.is_deleted()).then(|| versioned(obj)))
}

/// An IPAMBlock; `None` when it is soft-deleted.
pub fn block(body: &[u8]) -> serde_json::Result<Option<Versioned<IpamBlock>>> {
    live(body)
}

/// A BlockAffinity; `None` when it is soft-deleted.
pub fn affinity(body: &[u8]) -> serde_json::Result<Option<Versioned<BlockAffinity>>> {
    live(body)
}

/// An IPAMHandle; `None` when it is soft-deleted.
pub fn handle(body: &[u8]) -> serde_json::Result<Option<Versioned<IpamHandle>>> {
    live(body)
}

/// An IPPool as the allocator sees it.
pub fn pool(body: &[u8]) -> serde_json::Result<IpPool> {
    serde_json::from_slice(body).map(pool_from)
}

/// An IPPool listed raw (`DynamicObject`), as the allocator sees it.
pub fn pool_object(obj: &kube::api::DynamicObject) -> serde_json::Result<IpPool> {
    serde_json::to_value(obj)
        .and_then(serde_json::from_value::<WithStatus<IpPoolSpec>>)
        .map(pool_from)
}

/// The IPAMConfig singleton's spec.
pub fn config(body: &[u8]) -> serde_json::Result<IpamConfig> {
    serde_json::from_slice::<Crd<IpamConfig>>(body).map(|o| o.spec)
}

/// An IPReservation.
pub fn reservation(body: &[u8]) -> serde_json::Result<IpReservation> {
    serde_json::from_slice::<Crd<IpReservationSpec>>(body).map(|o| IpReservation {
        name: o.metadata.name.unwrap_or_default(),
        spec: o.spec,
    })
}

/// ClusterInformation's `datastoreReady` (missing means not ready).
pub fn datastore_ready(body: &[u8]) -> serde_json::Result<bool> {
    serde_json::from_slice::<Crd<ClusterInformationSpec>>(body)
        .map(|o| o.spec.datastore_ready.unwrap_or(false))
}
