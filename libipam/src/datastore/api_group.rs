//! Which API group holds Calico's objects in the Kubernetes datastore.
//!
//! Calico keeps its API as CRDs of `crd.projectcalico.org/v1`; from v3.32 (tech preview,
//! calico#10447) it can instead keep them as CRDs of `projectcalico.org/v3`, the group of its
//! public API. The objects are the same with a few differences of shape (see
//! `kube/objects.rs`). Calico chooses (libcalico-go `UsingV3CRDs`):
//!
//! - an explicit choice, the CNI netconf's `calico_api_group` or else `CALICO_API_GROUP`:
//!   `projectcalico.org/v3` (any case) means v3, any other value means v1;
//! - otherwise API discovery: v3 when the server has the group `projectcalico.org` and not
//!   `crd.projectcalico.org` (when both exist, `projectcalico.org` is the aggregated API server
//!   of the v1 mode, and the CRDs are v1).
//!
//! The choice is pure and lives here; the discovery request is `kube/discovery.rs`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The group (and version) Calico's objects are read and written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ApiGroup {
    /// `crd.projectcalico.org/v1`: Calico's CRDs up to v3.31, and v3.32's default.
    #[default]
    V1,
    /// `projectcalico.org/v3`: Calico v3.32's tech-preview CRDs.
    V3,
}

/// The group name of the v1 CRDs.
pub const V1_GROUP: &str = "crd.projectcalico.org";
/// The group name of the v3 CRDs (and of Calico's aggregated API server).
pub const V3_GROUP: &str = "projectcalico.org";

impl ApiGroup {
    /// The group name: `crd.projectcalico.org` or `projectcalico.org`.
    pub fn group(self) -> &'static str {
        match self {
            ApiGroup::V1 => V1_GROUP,
            ApiGroup::V3 => V3_GROUP,
        }
    }

    /// The version: `v1` or `v3`.
    pub fn version(self) -> &'static str {
        match self {
            ApiGroup::V1 => "v1",
            ApiGroup::V3 => "v3",
        }
    }

    /// `apiVersion` of its objects: `crd.projectcalico.org/v1` or `projectcalico.org/v3`.
    pub fn api_version(self) -> &'static str {
        match self {
            ApiGroup::V1 => "crd.projectcalico.org/v1",
            ApiGroup::V3 => "projectcalico.org/v3",
        }
    }

    /// Calico's discovery rule over the group names an API server lists: v3 when
    /// `projectcalico.org` is there and `crd.projectcalico.org` is not.
    pub fn from_server_groups<'a>(names: impl IntoIterator<Item = &'a str>) -> ApiGroup {
        let (mut v1, mut v3) = (false, false);
        for n in names {
            v1 |= n == V1_GROUP;
            v3 |= n == V3_GROUP;
        }
        if v3 && !v1 {
            ApiGroup::V3
        } else {
            ApiGroup::V1
        }
    }
}

impl fmt::Display for ApiGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.api_version())
    }
}

/// Why a `calico_api_group` value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadApiGroup(pub String);

impl fmt::Display for BadApiGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "calico_api_group {:?} is not a Calico API group: use \"projectcalico.org/v3\" or \
             \"crd.projectcalico.org/v1\" (or leave it unset to ask the API server)",
            self.0
        )
    }
}

impl std::error::Error for BadApiGroup {}

impl FromStr for ApiGroup {
    type Err = BadApiGroup;

    /// `projectcalico.org/v3` (any case, as Calico compares) is v3; `crd.projectcalico.org/v1`
    /// and `crd.projectcalico.org` (the group name Calico's documentation gives as the
    /// default) are v1. Anything else is refused: Calico would silently take it as v1, which
    /// for a mistyped v3 would write objects into a group nothing else reads.
    fn from_str(s: &str) -> Result<ApiGroup, BadApiGroup> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("projectcalico.org/v3") {
            Ok(ApiGroup::V3)
        } else if t.eq_ignore_ascii_case("crd.projectcalico.org/v1")
            || t.eq_ignore_ascii_case(V1_GROUP)
        {
            Ok(ApiGroup::V1)
        } else {
            Err(BadApiGroup(s.to_owned()))
        }
    }
}

impl Serialize for ApiGroup {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.api_version())
    }
}

impl<'de> Deserialize<'de> for ApiGroup {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_values_as_calico_compares_them() {
        for v3 in [
            "projectcalico.org/v3",
            "ProjectCalico.org/V3",
            " projectcalico.org/v3",
        ] {
            assert_eq!(v3.parse(), Ok(ApiGroup::V3), "{v3:?}");
        }
        for v1 in [
            "crd.projectcalico.org/v1",
            "crd.projectcalico.org",
            "CRD.projectcalico.org/v1",
        ] {
            assert_eq!(v1.parse(), Ok(ApiGroup::V1), "{v1:?}");
        }
        for bad in [
            "projectcalico.org",
            "v3",
            "projectcalico.org/v1",
            "crd.projectcalico.org/v3",
        ] {
            let err = bad.parse::<ApiGroup>().expect_err(bad);
            assert!(err.to_string().contains("projectcalico.org/v3"), "{err}");
        }
        assert_eq!(ApiGroup::V3.to_string(), "projectcalico.org/v3");
        assert_eq!(
            serde_json::to_string(&ApiGroup::V1).expect("json"),
            "\"crd.projectcalico.org/v1\""
        );
    }

    #[test]
    fn discovery_rule_is_calicos() {
        let pick = |names: &[&str]| ApiGroup::from_server_groups(names.iter().copied());
        assert_eq!(pick(&["apps", "projectcalico.org"]), ApiGroup::V3);
        assert_eq!(pick(&["crd.projectcalico.org"]), ApiGroup::V1);
        // The v1 CRDs with Calico's aggregated API server in front: v1.
        assert_eq!(
            pick(&["projectcalico.org", "crd.projectcalico.org"]),
            ApiGroup::V1
        );
        // Neither (no Calico CRDs installed yet): v1, as Calico defaults.
        assert_eq!(pick(&["apps", "batch"]), ApiGroup::V1);
    }
}
