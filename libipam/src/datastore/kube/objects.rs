//! Calico's kinds and how Calico lays out their metadata, in either API group
//! (`crd.projectcalico.org/v1`, or Calico v3.32's `projectcalico.org/v3`).
//!
//! Specs are the model structs themselves (`model::IpamBlock` is exactly an IPAMBlock's
//! `spec`); this file only adds what Kubernetes needs around them: the API resource, the
//! object name, the labels and (v1 only) the `projectcalico.org/metadata` annotation.
//!
//! What differs in the v3 group, as libcalico-go v3.32 writes it (`resources/ipam_*.go`,
//! `api/pkg/apis/projectcalico/v3`):
//! - IPAMConfig is `IPAMConfiguration` (`ipamconfigurations`), still named `default`;
//! - a BlockAffinity's `spec.deleted` is a JSON boolean (a string in v1);
//! - objects carry their labels as they are and no `projectcalico.org/metadata` annotation
//!   (v1 objects repeat the Calico-side metadata there);
//! - every other spec (IPAMBlock, IPAMHandle, IPPool, IPReservation, ClusterInformation) has
//!   the same fields and values.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{ApiResource, GroupVersionKind, NotUsed, Object};
use serde::{Deserialize, Serialize};

use crate::datastore::Revision;
use crate::datastore::api_group::ApiGroup;
use crate::model::{BlockAffinity, IpamBlock, IpamHandle};

/// The annotation Calico writes with the object's Calico-side metadata.
pub const METADATA_ANNOTATION: &str = "projectcalico.org/metadata";

/// One of Calico's kinds: its `kind` and REST plural (in the v1 group; see [`Kind::names`]).
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// `kind`, e.g. `IPAMBlock`.
    pub kind: &'static str,
    /// The REST path segment, e.g. `ipamblocks`.
    pub plural: &'static str,
}

impl Kind {
    /// `kind` and plural in `group`: the same but for IPAMConfig, `IPAMConfiguration` and
    /// `ipamconfigurations` in v3.
    pub fn names(&self, group: ApiGroup) -> (&'static str, &'static str) {
        match (group, self.kind) {
            (ApiGroup::V3, "IPAMConfig") => ("IPAMConfiguration", "ipamconfigurations"),
            _ => (self.kind, self.plural),
        }
    }

    /// The kube `ApiResource` for this kind in `group`.
    pub fn resource(&self, group: ApiGroup) -> ApiResource {
        let (kind, plural) = self.names(group);
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group.group(), group.version(), kind),
            plural,
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
/// (none for a create), Calico's own labels, and in the v1 group the
/// `projectcalico.org/metadata` annotation holding the Calico-side ObjectMeta minus name,
/// namespace, resourceVersion and uid — for objects written by the IPAM code that is
/// `{"creationTimestamp":null}`, plus the labels when there are any
/// (`ConvertCalicoResourceToK8sResource` in libcalico-go). In the v3 group the object is sent
/// as it is: no annotation.
pub fn ipam_meta(
    group: ApiGroup,
    name: &str,
    revision: Option<&Revision>,
    labels: Option<BTreeMap<String, String>>,
) -> ObjectMeta {
    if group == ApiGroup::V3 {
        return ObjectMeta {
            name: Some(name.to_owned()),
            resource_version: revision.map(|r| r.0.clone()),
            labels,
            ..ObjectMeta::default()
        };
    }
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

/// A new object of `kind` in `group` with the given metadata and spec.
pub fn object<S: Clone>(group: ApiGroup, kind: &Kind, metadata: ObjectMeta, spec: S) -> Crd<S> {
    let name = metadata.name.clone().unwrap_or_default();
    let mut obj = Object::new(&name, &kind.resource(group), spec);
    obj.metadata = metadata;
    obj
}

/// The spec as `group` stores it, from the model's JSON (which is the v1 shape): in v3 a
/// BlockAffinity's `deleted` is a boolean.
pub fn wire_spec(group: ApiGroup, kind: &Kind, mut spec: serde_json::Value) -> serde_json::Value {
    if group == ApiGroup::V3
        && kind.kind == BLOCK_AFFINITY.kind
        && let Some(d) = spec.get_mut("deleted")
        && let Some(s) = d.as_str()
    {
        *d = serde_json::Value::Bool(s == "true");
    }
    spec
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
            ApiGroup::V1,
            &BLOCK_AFFINITY,
            ipam_meta(ApiGroup::V1, &a.name(), None, Some(a.labels())),
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

    /// What libcalico-go v3.32 sends for a new host affinity in the v3 group (`buildCRD` with
    /// `EnsureBlockAffinityLabelsV3`, marshalled by Go; the server drops the null
    /// `creationTimestamp`): no annotation, `deleted` a boolean.
    const CALICO_V3_AFFINITY: &str = r#"{"kind":"BlockAffinity","apiVersion":"projectcalico.org/v3","metadata":{"name":"node-a-10-244-104-64-26","creationTimestamp":null,"labels":{"projectcalico.org/affinity-type":"host","projectcalico.org/hostname-hash":"PY3TQE2E3XMTETLM2MJO3UITKPFB27YUJ4T4E5XGPEJON3SM4QAA","projectcalico.org/ip-version":"4"}},"spec":{"state":"confirmed","node":"node-a","type":"host","cidr":"10.244.104.64/26","deleted":false}}"#;

    #[test]
    fn v3_affinity_is_laid_out_like_calicos() {
        let a = BlockAffinity::host(
            "node-a",
            "10.244.104.64/26".parse().expect("cidr"),
            AffinityState::Confirmed,
        );
        let obj = object(
            ApiGroup::V3,
            &BLOCK_AFFINITY,
            ipam_meta(ApiGroup::V3, &a.name(), None, Some(a.labels())),
            a.clone(),
        );
        let mut v = serde_json::to_value(&obj).expect("json");
        v["spec"] = wire_spec(ApiGroup::V3, &BLOCK_AFFINITY, v["spec"].take());
        let mut calico: serde_json::Value =
            serde_json::from_str(CALICO_V3_AFFINITY).expect("vector");
        calico["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("creationTimestamp");
        assert_eq!(v, calico);
        // And it reads back as the same affinity.
        let back: Crd<BlockAffinity> = serde_json::from_str(CALICO_V3_AFFINITY).expect("decode");
        assert_eq!(back.spec, a);
        // v1 is unchanged by wire_spec.
        let v1 = serde_json::to_value(&a).expect("json");
        assert_eq!(
            wire_spec(ApiGroup::V1, &BLOCK_AFFINITY, v1.clone()),
            v1,
            "v1 keeps the string"
        );
    }

    /// What libcalico-go v3.32's IPAM writes for the IPAM configuration in the v3 group
    /// (`v1IPAMConfigClient.toCRD`, marshalled by Go).
    const CALICO_V3_IPAM_CONFIG: &str = r#"{"kind":"IPAMConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default","creationTimestamp":null},"spec":{"strictAffinity":true,"maxBlocksPerHost":4,"autoAllocateBlocks":true}}"#;

    #[test]
    fn v3_ipam_configuration_is_laid_out_like_calicos() {
        let config = crate::model::IpamConfig {
            strict_affinity: true,
            max_blocks_per_host: 4,
            ..crate::model::IpamConfig::default()
        };
        let obj = object(
            ApiGroup::V3,
            &IPAM_CONFIG,
            ipam_meta(ApiGroup::V3, SINGLETON, None, None),
            config.clone(),
        );
        let mut v = serde_json::to_value(&obj).expect("json");
        v["spec"] = wire_spec(ApiGroup::V3, &IPAM_CONFIG, v["spec"].take());
        let mut calico: serde_json::Value =
            serde_json::from_str(CALICO_V3_IPAM_CONFIG).expect("vector");
        calico["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("creationTimestamp");
        assert_eq!(v, calico);
        let back: Crd<crate::model::IpamConfig> =
            serde_json::from_str(CALICO_V3_IPAM_CONFIG).expect("decode");
        assert_eq!(back.spec, config);
    }

    /// An IPAMBlock and an IPAMHandle as libcalico-go v3.32 writes them in the v3 group
    /// (`IPAMBlockV1toV3`, `ipamHandleClient.toV3`; Go's field order, `creationTimestamp`
    /// dropped by the server): read into the model and written back, they are the same
    /// objects.
    const CALICO_V3_BLOCK: &str = r#"{"kind":"IPAMBlock","apiVersion":"projectcalico.org/v3","metadata":{"name":"10-244-1-0-30"},"spec":{"cidr":"10.244.1.0/30","affinity":"host:node-a","affinityClaimTime":"2026-12-03T10:00:00Z","allocations":[0,null,1,null],"unallocated":[1,3],"attributes":[{"handle_id":"k8s-pod-network.abc","secondary":{"namespace":"default","node":"node-a","pod":"web","timestamp":"2026-12-03 10:00:01.5 +0000 UTC"}},{"handle_id":"ipip-tunnel-addr-node-a","secondary":{"node":"node-a","type":"ipipTunnelAddress"}}],"sequenceNumber":1764756000000000003,"sequenceNumberForAllocation":{"0":1764756000000000000,"2":1764756000000000002},"deleted":false,"strictAffinity":false}}"#;
    const CALICO_V3_HANDLE: &str = r#"{"kind":"IPAMHandle","apiVersion":"projectcalico.org/v3","metadata":{"name":"k8s-pod-network.abc"},"spec":{"handleID":"k8s-pod-network.abc","block":{"10.244.1.0/30":1},"deleted":false}}"#;

    fn round_trip<S>(kind: &Kind, calico: &str)
    where
        S: Clone + Serialize + serde::de::DeserializeOwned,
    {
        let read: Crd<S> = serde_json::from_str(calico).expect("decode");
        let name = read.metadata.name.clone().expect("name");
        let obj = object(
            ApiGroup::V3,
            kind,
            ipam_meta(ApiGroup::V3, &name, None, None),
            read.spec,
        );
        let mut v = serde_json::to_value(&obj).expect("json");
        v["spec"] = wire_spec(ApiGroup::V3, kind, v["spec"].take());
        let want: serde_json::Value = serde_json::from_str(calico).expect("vector");
        assert_eq!(v, want, "{}", kind.kind);
    }

    #[test]
    fn v3_blocks_and_handles_are_calicos() {
        round_trip::<IpamBlock>(&IPAM_BLOCK, CALICO_V3_BLOCK);
        round_trip::<IpamHandle>(&IPAM_HANDLE, CALICO_V3_HANDLE);
    }

    #[test]
    fn kinds_in_each_group() {
        let r = IPAM_CONFIG.resource(ApiGroup::V3);
        assert_eq!(
            (r.api_version.as_str(), r.kind.as_str(), r.plural.as_str()),
            (
                "projectcalico.org/v3",
                "IPAMConfiguration",
                "ipamconfigurations"
            )
        );
        let r = IPAM_CONFIG.resource(ApiGroup::V1);
        assert_eq!(
            (r.api_version.as_str(), r.kind.as_str(), r.plural.as_str()),
            ("crd.projectcalico.org/v1", "IPAMConfig", "ipamconfigs")
        );
        for k in [
            IPAM_BLOCK,
            BLOCK_AFFINITY,
            IPAM_HANDLE,
            IP_POOL,
            IP_RESERVATION,
            CLUSTER_INFORMATION,
        ] {
            let r = k.resource(ApiGroup::V3);
            assert_eq!((r.kind.as_str(), r.plural.as_str()), (k.kind, k.plural));
            assert_eq!(r.group, "projectcalico.org");
        }
        let m = ipam_meta(ApiGroup::V3, "x", None, None);
        assert!(m.annotations.is_none() && m.labels.is_none());
    }

    #[test]
    fn block_metadata_annotation() {
        let m = ipam_meta(
            ApiGroup::V1,
            "10-244-1-0-26",
            Some(&Revision("42".into())),
            None,
        );
        assert_eq!(m.resource_version.as_deref(), Some("42"));
        assert_eq!(
            m.annotations.expect("annotations")[METADATA_ANNOTATION],
            "{\"creationTimestamp\":null}"
        );
        assert!(m.labels.is_none());
    }
}
