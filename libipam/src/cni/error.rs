//! The CNI error result: the one table of codes both binaries print.

use serde::Serialize;
use std::fmt;

use super::SpecVersion;

/// Error codes. 1–99 are the specification's; 100 and up are ours.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (reading stdin).
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: a transient condition (datastore unreachable, contention).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Our own: an internal failure (datastore or kernel) that retrying will not fix by itself.
    pub const INTERNAL: u32 = 100;
    /// Our own: no free address in the pools the request may use.
    pub const POOL_EXHAUSTED: u32 = 101;
    /// Our own: the requested address is taken or outside every pool.
    pub const ADDRESS_UNAVAILABLE: u32 = 102;
    /// Our own: the pod netns does not exist or cannot be entered.
    pub const NETNS: u32 = 103;
    /// Our own: the pod already has an interface with CNI_IFNAME.
    pub const INTERFACE_EXISTS: u32 = 104;
    /// Our own: the dataplane (netlink, sysctl) refused a change.
    pub const DATAPLANE: u32 = 105;
    /// Our own: the delegated IPAM plugin failed without a CNI error of its own.
    pub const IPAM_PLUGIN: u32 = 106;
    /// Our own: CHECK found the attachment differs from prevResult.
    pub const CHECK_FAILED: u32 = 107;
}

/// A CNI error: printed as JSON on stdout with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    cni_version: &'a str,
    code: u32,
    msg: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    details: &'a str,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn invalid_env(details: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, "invalid environment variables", details)
    }

    pub fn decode(details: impl Into<String>) -> Self {
        Self::new(
            code::DECODE,
            "failed to decode the network configuration",
            details,
        )
    }

    pub fn invalid_config(details: impl Into<String>) -> Self {
        Self::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            details,
        )
    }

    pub fn try_again(details: impl Into<String>) -> Self {
        Self::new(code::TRY_AGAIN_LATER, "try again later", details)
    }

    pub fn internal(details: impl Into<String>) -> Self {
        Self::new(code::INTERNAL, "internal error", details)
    }

    /// The JSON error object in the given version.
    pub fn to_json(&self, version: SpecVersion) -> String {
        let wire = Wire {
            cni_version: version.as_str(),
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        };
        serde_json::to_string(&wire).unwrap_or_else(|_| {
            format!(
                "{{\"cniVersion\":\"{}\",\"code\":{},\"msg\":\"internal error\"}}",
                version, self.code
            )
        })
    }

    /// Parse an error printed by another plugin (the delegated IPAM).
    pub fn from_json(bytes: &[u8]) -> Option<CniError> {
        #[derive(serde::Deserialize)]
        struct In {
            code: u32,
            #[serde(default)]
            msg: String,
            #[serde(default)]
            details: String,
        }
        let e: In = serde_json::from_slice(bytes).ok()?;
        Some(CniError::new(e.code, e.msg, e.details))
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "{}", self.msg)
        } else {
            write!(f, "{}: {}", self.msg, self.details)
        }
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_spec_shape_and_round_trips() {
        let e = CniError::invalid_config("ipv4_pools: fd00::/48 is an IPv6 CIDR");
        let json = e.to_json(SpecVersion::V1_0_0);
        assert_eq!(
            json,
            r#"{"cniVersion":"1.0.0","code":7,"msg":"invalid network configuration","details":"ipv4_pools: fd00::/48 is an IPv6 CIDR"}"#
        );
        assert_eq!(CniError::from_json(json.as_bytes()), Some(e));
    }

    #[test]
    fn omits_empty_details() {
        let e = CniError::new(11, "try again later", "");
        assert!(!e.to_json(SpecVersion::V0_4_0).contains("details"));
    }
}
