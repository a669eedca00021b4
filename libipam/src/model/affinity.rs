//! `BlockAffinity`: a host's claim on a block.
//!
//! State machine: `pending` (claim in progress; treat as absent for ownership) → `confirmed`
//! → `pendingDeletion` (release in progress). The block's own `affinity` field is the source of
//! truth; an affinity whose block says otherwise is stale.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Extra;
use crate::names;

/// `spec.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityState {
    /// Claim in progress.
    Pending,
    /// The host owns the block.
    Confirmed,
    /// Release in progress.
    PendingDeletion,
}

impl AffinityState {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AffinityState::Pending => "pending",
            AffinityState::Confirmed => "confirmed",
            AffinityState::PendingDeletion => "pendingDeletion",
        }
    }
}

impl Serialize for AffinityState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AffinityState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            // Data written before states existed has none; Calico treats it as confirmed.
            "confirmed" | "" => Ok(AffinityState::Confirmed),
            "pending" => Ok(AffinityState::Pending),
            "pendingDeletion" => Ok(AffinityState::PendingDeletion),
            other => Err(serde::de::Error::custom(format!(
                "unknown affinity state {other:?} (expected pending, confirmed or pendingDeletion)"
            ))),
        }
    }
}

/// `spec.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AffinityType {
    /// A node's block.
    #[default]
    Host,
    /// A virtual owner such as `load-balancer`.
    Virtual,
}

impl AffinityType {
    /// The wire spelling (also the `projectcalico.org/affinity-type` label).
    pub fn as_str(self) -> &'static str {
        match self {
            AffinityType::Host => "host",
            AffinityType::Virtual => "virtual",
        }
    }
}

/// The `spec` of a BlockAffinity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockAffinity {
    /// Claim state.
    pub state: AffinityState,
    /// The node (or virtual owner name).
    pub node: String,
    /// `host` (default when missing) or `virtual`.
    #[serde(rename = "type", default)]
    pub affinity_type: AffinityType,
    /// The block's CIDR.
    pub cidr: IpNet,
    /// Soft-delete marker, written as the string `"true"`/`"false"` in the v1 group.
    #[serde(with = "string_bool", default)]
    pub deleted: bool,
    /// Fields this code does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

impl BlockAffinity {
    /// A host affinity in the given state.
    pub fn host(node: impl Into<String>, cidr: IpNet, state: AffinityState) -> BlockAffinity {
        BlockAffinity {
            state,
            node: node.into(),
            affinity_type: AffinityType::Host,
            cidr,
            deleted: false,
            extra: Extra::new(),
        }
    }

    /// `metadata.name` (`<host>-<cidrname>`, hashed when too long).
    pub fn name(&self) -> String {
        names::affinity_name(&self.node, &self.cidr)
    }

    /// The three labels Calico v3.31+ selects affinities by.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let version = match self.cidr {
            IpNet::V4(_) => "4",
            IpNet::V6(_) => "6",
        };
        BTreeMap::from([
            (
                names::LABEL_AFFINITY_TYPE.to_owned(),
                self.affinity_type.as_str().to_owned(),
            ),
            (
                names::LABEL_HOSTNAME_HASH.to_owned(),
                names::hostname_hash(&self.node),
            ),
            (names::LABEL_IP_VERSION.to_owned(), version.to_owned()),
        ])
    }
}

/// Go's `strconv.ParseBool` over a string field; also accepts a JSON bool (the v3 group).
mod string_bool {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if *v { "true" } else { "false" })
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Str(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Bool(b) => Ok(b),
            Raw::Str(s) => match s.as_str() {
                "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
                "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
                other => Err(serde::de::Error::custom(format!(
                    "deleted: {other:?} is not a boolean"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let a = BlockAffinity::host(
            "node-a",
            "10.244.104.64/26".parse().expect("cidr"),
            AffinityState::Confirmed,
        );
        let v = serde_json::to_value(&a).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"state": "confirmed", "node": "node-a", "type": "host",
                               "cidr": "10.244.104.64/26", "deleted": "false"})
        );
        assert_eq!(a.name(), "node-a-10-244-104-64-26");
        assert_eq!(
            a.labels()["projectcalico.org/hostname-hash"],
            "PY3TQE2E3XMTETLM2MJO3UITKPFB27YUJ4T4E5XGPEJON3SM4QAA"
        );
        assert_eq!(a.labels()["projectcalico.org/ip-version"], "4");
    }

    #[test]
    fn lenient_read() {
        let a: BlockAffinity = serde_json::from_str(
            r#"{"state":"","node":"n","cidr":"fd00::/122","deleted":"true","extra":1}"#,
        )
        .expect("parse");
        assert_eq!(a.state, AffinityState::Confirmed);
        assert_eq!(a.affinity_type, AffinityType::Host);
        assert!(a.deleted);
        assert_eq!(a.extra["extra"], 1);
        let b: BlockAffinity = serde_json::from_str(
            r#"{"state":"pending","node":"n","cidr":"fd00::/122","deleted":false}"#,
        )
        .expect("parse");
        assert!(!b.deleted);
        assert_eq!(b.state, AffinityState::Pending);
    }
}
