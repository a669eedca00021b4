//! `IPAMConfig` (singleton `default`).

use serde::{Deserialize, Serialize};

use super::{Extra, is_zero_u32};

/// Block limit per host and family when neither the config nor the request sets one.
pub const DEFAULT_MAX_BLOCKS_PER_HOST: u32 = 20;

/// The `spec` of IPAMConfig. `Default` gives Calico's defaults, used when the object is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IpamConfig {
    /// Never borrow addresses from other hosts' blocks.
    pub strict_affinity: bool,
    /// Claim new blocks when the host's blocks are full.
    pub auto_allocate_blocks: bool,
    /// Blocks per host and family; 0 means [`DEFAULT_MAX_BLOCKS_PER_HOST`].
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub max_blocks_per_host: u32,
    /// `Enabled` or `Disabled` (KubeVirt VM address persistence).
    #[serde(
        rename = "kubeVirtVMAddressPersistence",
        skip_serializing_if = "Option::is_none"
    )]
    pub kube_virt_vm_address_persistence: Option<String>,
    /// How long a released address stays unusable (0–1200).
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ip_cooldown_seconds: u32,
    /// Fields this code does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig {
            strict_affinity: false,
            auto_allocate_blocks: true,
            max_blocks_per_host: 0,
            kube_virt_vm_address_persistence: None,
            ip_cooldown_seconds: 0,
            extra: Extra::new(),
        }
    }
}

impl IpamConfig {
    /// The block limit for one request: the more restrictive of the request's and the config's
    /// values, where 0 means "not set"; 20 when neither is set.
    pub fn block_limit(&self, requested: u32) -> u32 {
        match (requested, self.max_blocks_per_host) {
            (0, 0) => DEFAULT_MAX_BLOCKS_PER_HOST,
            (0, c) => c,
            (r, 0) => r,
            (r, c) => r.min(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_limits() {
        let c: IpamConfig = serde_json::from_str("{}").expect("parse");
        assert!(c.auto_allocate_blocks && !c.strict_affinity);
        assert_eq!(
            serde_json::to_value(&c).expect("json"),
            serde_json::json!({"strictAffinity": false, "autoAllocateBlocks": true})
        );
        assert_eq!(c.block_limit(0), 20);
        assert_eq!(c.block_limit(1), 1);
        let c = IpamConfig {
            max_blocks_per_host: 3,
            ..IpamConfig::default()
        };
        assert_eq!(c.block_limit(0), 3);
        assert_eq!(c.block_limit(5), 3);
        assert_eq!(c.block_limit(2), 2);
    }
}
