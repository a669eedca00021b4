//! The `crd.projectcalico.org/v1` kinds and how Calico lays out their metadata.
//!
//! Specs are the model structs themselves (`model::IpamBlock` is exactly an IPAMBlock's
//! `spec`); this file only adds what Kubernetes needs around them: the API resource, the
//! object name, the labels and the `projectcalico.org/metadata` annotation.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{ApiResource, GroupVersionKind, NotUsed, Object};
use serde::{Deserialize, Serialize};

use crate::datastore::Revision;
use crate::model::{BlockAffinity, IpamBlock, IpamHandle};

/// Calico's API group for the objects it keeps as CRDs.
pub const GROUP: &str = "crd.projectcalico.org";
/// Its version.
pub const VERSION: &str = "v1";
/// The annotation Calico writes with the object's Calico-side metadata.
pub const METADATA_ANNOTATION: &str = "projectcalico.org/metadata";

/// One of Calico's kinds: its `kind` and REST plural.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// `kind`, e.g. `IPAMBlock`.
    pub kind: &'static str,
    /// The REST path segment, e.g. `ipamblocks`.
    pub plural: &'static str,
}

impl Kind {
    /// The kube `ApiResource` for this kind.
    pub fn resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(GROUP, VERSION, self.kind),
            self.plural,
        )
    }
}

pub const IPAM_BLOCK: Kind = Kind {
    kind: "IPAMBlock",
    plural: "ipamblocks",
};
pub const BLOCK_AFFINITY: Kind = Kind {
    kind: "BlockAffinity",
    plural: "blockaffinities",
};
pub const IPAM_HANDLE: Kind = Kind {
    kind: "IPAMHandle",
    plural: "ipamhandles",
};
pub const IPAM_CONFIG: Kind = Kind {
    kind: "IPAMConfig",
    plural: "ipamconfigs",
};
pub const IP_POOL: Kind = Kind {
    kind: "IPPool",
    plural: "ippools",
};
pub const IP_RESERVATION: Kind = Kind {
    kind: "IPReservation",
    plural: "ipreservations",
};
pub const CLUSTER_INFORMATION: Kind = Kind {
    kind: "ClusterInformation",
    plural: "clusterinformations",
};

/// Name of the IPAMConfig and ClusterInformation singletons.
pub const SINGLETON: &str = "default";

/// A Calico CR with a typed spec and no status we care about.
pub type Crd<S> = Object<S, NotUsed>;

/// `spec` of a ClusterInformation (only what the CNI reads).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInformationSpec {
    /// Calico refuses to serve CNI requests unless this is true.
    #[serde(default)]
    pub datastore_ready: Option<bool>,
    /// Everything else (calicoVersion, clusterGUID, ...).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Metadata as Calico writes it for IPAM objects: the name, the revision to compare against
/// (none for a create), Calico's own labels, and the `projectcalico.org/metadata` annotation
/// holding the Calico-side ObjectMeta minus name, namespace, resourceVersion and uid — for
/// objects written by the IPAM code that is `{"creationTimestamp":null}`, plus the labels
/// when there are any (`ConvertCalicoResourceToK8sResource` in libcalico-go).
pub fn ipam_meta(
    name: &str,
    revision: Option<&Revision>,
    labels: Option<BTreeMap<String, String>>,
) -> ObjectMeta {
    let mut calico_meta = serde_json::Map::new();
    calico_meta.insert("creationTimestamp".into(), serde_json::Value::Null);
    if let Some(l) = &labels {
        calico_meta.insert("labels".into(), serde_json::to_value(l).unwrap_or_default());
    }
    ObjectMeta {
        name: Some(name.to_owned()),
        resource_version: revision.map(|r| r.0.clone()),
        labels,
        annotations: Some(BTreeMap::from([(
            METADATA_ANNOTATION.to_owned(),
            serde_json::Value::Object(calico_meta).to_string(),
        )])),
        ..ObjectMeta::default()
    }
}

/// A new object of `kind` with the given metadata and spec.
pub fn object<S: Clone>(kind: &Kind, metadata: ObjectMeta, spec: S) -> Crd<S> {
    let name = metadata.name.clone().unwrap_or_default();
    let mut obj = Object::new(&name, &kind.resource(), spec);
    obj.metadata = metadata;
    obj
}

/// Specs with the soft-delete marker of the Kubernetes two-step delete.
pub trait SoftDelete {
    /// The `deleted` flag.
    fn is_deleted(&self) -> bool;
}

impl SoftDelete for IpamBlock {
    fn is_deleted(&self) -> bool {
        self.deleted
    }
}

impl SoftDelete for IpamHandle {
    fn is_deleted(&self) -> bool {
        self.deleted
    }
}

impl SoftDelete for BlockAffinity {
    fn is_deleted(&self) -> bool {
        self.deleted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AffinityState;

    #[test]
    fn affinity_object_is_laid_out_like_calicos() {
        let a = BlockAffinity::host(
            "node-a",
            "10.244.104.64/26".parse().expect("cidr"),
            AffinityState::Confirmed,
        );
        let obj = object(
            &BLOCK_AFFINITY,
            ipam_meta(&a.name(), None, Some(a.labels())),
            a,
        );
        let v = serde_json::to_value(&obj).expect("json");
        assert_eq!(v["apiVersion"], "crd.projectcalico.org/v1");
        assert_eq!(v["kind"], "BlockAffinity");
        assert_eq!(v["metadata"]["name"], "node-a-10-244-104-64-26");
        assert_eq!(
            v["metadata"]["labels"]["projectcalico.org/hostname-hash"],
            "PY3TQE2E3XMTETLM2MJO3UITKPFB27YUJ4T4E5XGPEJON3SM4QAA"
        );
        assert_eq!(
            v["metadata"]["annotations"][METADATA_ANNOTATION],
            "{\"creationTimestamp\":null,\"labels\":{\"projectcalico.org/affinity-type\":\"host\",\
             \"projectcalico.org/hostname-hash\":\"PY3TQE2E3XMTETLM2MJO3UITKPFB27YUJ4T4E5XGPEJON3SM4QAA\",\
             \"projectcalico.org/ip-version\":\"4\"}}"
        );
        assert_eq!(v["spec"]["deleted"], "false");
        assert!(v.get("status").is_none());
    }

    #[test]
    fn block_metadata_annotation() {
        let m = ipam_meta("10-244-1-0-26", Some(&Revision("42".into())), None);
        assert_eq!(m.resource_version.as_deref(), Some("42"));
        assert_eq!(
            m.annotations.expect("annotations")[METADATA_ANNOTATION],
            "{\"creationTimestamp\":null}"
        );
        assert!(m.labels.is_none());
    }
}
