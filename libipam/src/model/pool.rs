//! `IPPool` (crd.projectcalico.org/v1).
//!
//! The enum-like fields (`ipipMode`, `allowedUses`, ...) are kept as strings on the wire struct so
//! that a pool written by a newer Calico still loads, and so that [`crate::validate`] can reject a
//! bad value with a message listing the allowed ones. Typed views are available through the
//! accessors, which also apply Calico's defaults-on-read.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{Extra, IpFamily, is_false};

/// Default IPv4 block size.
pub const DEFAULT_V4_BLOCK_SIZE: u32 = 26;
/// Default IPv6 block size.
pub const DEFAULT_V6_BLOCK_SIZE: u32 = 122;

/// The `spec` of an IPPool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolSpec {
    /// The pool's CIDR, e.g. `10.244.0.0/16`.
    pub cidr: String,
    /// Prefix length of the blocks the pool is carved into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// `Never`, `Always` or `CrossSubnet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipip_mode: Option<String>,
    /// `Never`, `Always` or `CrossSubnet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_mode: Option<String>,
    /// SNAT traffic leaving the pool.
    #[serde(default, skip_serializing_if = "is_false")]
    pub nat_outgoing: bool,
    /// A disabled pool hands out no new addresses.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    /// Do not export the pool's routes over BGP.
    #[serde(default, rename = "disableBGPExport", skip_serializing_if = "is_false")]
    pub disable_bgp_export: bool,
    /// Calico selector over node labels; `all()` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// Calico selector over namespace labels; empty matches everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// Any of `Workload`, `Tunnel`, `LoadBalancer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_uses: Option<Vec<String>>,
    /// `Automatic` or `Manual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_mode: Option<String>,
    /// Fields this code does not model (e.g. the deprecated `ipip` block).
    #[serde(flatten)]
    pub extra: Extra,
}

/// Calico v3.31's `IPPoolSpec` field order (projectcalico.org/v3, `api/pkg/apis/projectcalico/v3`):
/// how a v3 document lists the fields, for calicoctl's output and the etcd datastore's values.
pub const V3_SPEC_FIELDS: &[&str] = &[
    "cidr",
    "vxlanMode",
    "ipipMode",
    "natOutgoing",
    "disabled",
    "disableBGPExport",
    "blockSize",
    "nodeSelector",
    "namespaceSelector",
    "ipip",
    "nat-outgoing",
    "allowedUses",
    "assignmentMode",
];

/// A named IP pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpPool {
    /// `metadata.name`.
    pub name: String,
    /// The spec.
    pub spec: IpPoolSpec,
}

impl IpPool {
    /// A pool with the given name and CIDR and every other field defaulted.
    pub fn new(name: impl Into<String>, cidr: impl Into<String>) -> IpPool {
        IpPool {
            name: name.into(),
            spec: IpPoolSpec {
                cidr: cidr.into(),
                ..IpPoolSpec::default()
            }
            .with_defaults(),
        }
    }

    /// The same pool with Calico's defaults filled in.
    pub fn with_defaults(mut self) -> IpPool {
        self.spec = self.spec.with_defaults();
        self
    }

    /// The parsed CIDR, if it parses.
    pub fn cidr(&self) -> Option<IpNet> {
        self.spec.cidr.trim().parse().ok()
    }

    /// The spec as a projectcalico.org/v3 JSON object: the fields it has, in Calico's order
    /// ([`V3_SPEC_FIELDS`]), fields Calico's struct lacks last. The one encoder of a v3 spec.
    pub fn v3_spec(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut fields = match serde_json::to_value(&self.spec) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let mut out = serde_json::Map::new();
        for f in V3_SPEC_FIELDS {
            if let Some(v) = fields.remove(*f) {
                out.insert((*f).to_owned(), v);
            }
        }
        out.extend(fields);
        out
    }

    /// The pool as a projectcalico.org/v3 document, as calicoctl prints one: `kind`,
    /// `apiVersion`, `metadata` (its name), `spec` ([`IpPool::v3_spec`]).
    pub fn v3_document(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "IPPool",
            "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": self.name},
            "spec": self.v3_spec(),
        })
    }
}

impl IpPoolSpec {
    /// Fills in Calico's defaults-on-read (`convertIpPoolFromStorage`): blockSize 26/122,
    /// ipip/vxlan `Never`, nodeSelector `all()`, allowedUses `[Workload, Tunnel]`,
    /// assignmentMode `Automatic`.
    pub fn with_defaults(mut self) -> IpPoolSpec {
        if self.block_size.is_none() {
            self.block_size = match self.cidr.trim().parse::<IpNet>() {
                Ok(IpNet::V4(_)) => Some(DEFAULT_V4_BLOCK_SIZE),
                Ok(IpNet::V6(_)) => Some(DEFAULT_V6_BLOCK_SIZE),
                Err(_) => None,
            };
        }
        let fill = |v: &mut Option<String>, d: &str| {
            if v.as_deref().is_none_or(str::is_empty) {
                *v = Some(d.to_owned());
            }
        };
        fill(&mut self.ipip_mode, EncapMode::Never.as_str());
        fill(&mut self.vxlan_mode, EncapMode::Never.as_str());
        fill(&mut self.node_selector, "all()");
        fill(
            &mut self.assignment_mode,
            AssignmentMode::Automatic.as_str(),
        );
        if self.allowed_uses.as_ref().is_none_or(Vec::is_empty) {
            self.allowed_uses = Some(vec![
                AllowedUse::Workload.as_str().to_owned(),
                AllowedUse::Tunnel.as_str().to_owned(),
            ]);
        }
        self
    }

    /// The address family, if the CIDR parses.
    pub fn family(&self) -> Option<IpFamily> {
        self.cidr
            .trim()
            .parse::<IpNet>()
            .ok()
            .map(|n| IpFamily::of_net(&n))
    }

    /// The allowed uses that parse (defaults when absent).
    pub fn allowed_uses(&self) -> Vec<AllowedUse> {
        match &self.allowed_uses {
            Some(v) if !v.is_empty() => v.iter().filter_map(|s| s.parse().ok()).collect(),
            _ => vec![AllowedUse::Workload, AllowedUse::Tunnel],
        }
    }

    /// The assignment mode (`Automatic` when absent or unknown).
    pub fn assignment_mode(&self) -> AssignmentMode {
        self.assignment_mode
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or(AssignmentMode::Automatic)
    }
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident, $what:literal { $($(#[$vm:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* $variant),+
        }

        impl $name {
            /// Every value, in Calico's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant)),+
                }
            }

            /// The allowed spellings joined with `|`, for error messages.
            pub fn allowed() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join("|")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!("{} {s:?} is not one of {}", $what, Self::allowed()))
            }
        }
    };
}

string_enum!(
    /// `ipipMode` / `vxlanMode`.
    EncapMode, "encapsulation mode" {
        /// No encapsulation.
        Never,
        /// Always encapsulate.
        Always,
        /// Encapsulate only across subnets.
        CrossSubnet,
    }
);

string_enum!(
    /// What an address from a pool may be used for (`allowedUses`, and the allocator's `intended_use`).
    AllowedUse, "allowed use" {
        /// Pod addresses.
        Workload,
        /// Node tunnel addresses.
        Tunnel,
        /// Service LoadBalancer addresses.
        LoadBalancer,
    }
);

string_enum!(
    /// `assignmentMode`.
    AssignmentMode, "assignment mode" {
        /// The pool is used when no pool is requested explicitly.
        Automatic,
        /// The pool is used only when requested by name or CIDR.
        Manual,
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_on_read_and_round_trip() {
        let raw = r#"{"cidr":"fd00:10:244::/48","natOutgoing":true,"ipip":{"enabled":false}}"#;
        let spec: IpPoolSpec = serde_json::from_str(raw).expect("parse");
        assert!(spec.extra.contains_key("ipip"));
        let spec = spec.with_defaults();
        assert_eq!(spec.block_size, Some(122));
        assert_eq!(spec.node_selector.as_deref(), Some("all()"));
        assert_eq!(
            spec.allowed_uses(),
            vec![AllowedUse::Workload, AllowedUse::Tunnel]
        );
        let out = serde_json::to_value(&spec).expect("serialize");
        assert_eq!(out["blockSize"], 122);
        assert_eq!(out["ipipMode"], "Never");
        assert_eq!(out["assignmentMode"], "Automatic");
        assert_eq!(out["ipip"]["enabled"], false);
        assert_eq!(out["natOutgoing"], true);
        assert!(out.get("disableBGPExport").is_none());
        let p = IpPool::new("p", "10.0.0.0/16");
        assert_eq!(p.spec.block_size, Some(26));
    }

    #[test]
    fn enum_errors_list_allowed_values() {
        let e = "Sometimes".parse::<EncapMode>().expect_err("invalid");
        assert!(e.contains("Never|Always|CrossSubnet"), "{e}");
    }
}
