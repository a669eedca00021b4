//! `IPAMHandle`: the secondary index from an allocation handle to the blocks holding its
//! addresses, used by release-by-handle.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::Extra;

/// The `spec` of an IPAMHandle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpamHandle {
    /// The handle as given (the object name is its lowercase form).
    #[serde(rename = "handleID")]
    pub handle_id: String,
    /// Block CIDR → number of addresses the handle holds there.
    #[serde(default)]
    pub block: BTreeMap<String, i64>,
    /// Soft-delete marker (Kubernetes two-step delete). A deleted handle is treated as absent.
    #[serde(default)]
    pub deleted: bool,
    /// Fields this code does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

impl IpamHandle {
    /// A handle holding nothing yet.
    pub fn new(handle_id: impl Into<String>) -> IpamHandle {
        IpamHandle {
            handle_id: handle_id.into(),
            block: BTreeMap::new(),
            deleted: false,
            extra: Extra::new(),
        }
    }

    /// Adds `n` addresses in `block`.
    /// Counts come from the datastore and may be anything an i64 holds, hence saturating.
    pub fn increment(&mut self, block: &IpNet, n: u32) {
        let c = self.block.entry(block.to_string()).or_default();
        *c = c.saturating_add(i64::from(n));
    }

    /// Removes `n` addresses in `block`; the entry goes away at zero.
    pub fn decrement(&mut self, block: &IpNet, n: u32) {
        let key = block.to_string();
        if let Some(c) = self.block.get_mut(&key) {
            *c = c.saturating_sub(i64::from(n));
            if *c <= 0 {
                self.block.remove(&key);
            }
        }
    }

    /// The blocks listed, parsed (entries that do not parse are skipped).
    pub fn blocks(&self) -> Vec<IpNet> {
        self.block.keys().filter_map(|k| k.parse().ok()).collect()
    }

    /// True when the handle holds nothing and should be deleted.
    pub fn is_empty(&self) -> bool {
        self.block.values().all(|c| *c <= 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_the_datastore_at_the_i64_ends_do_not_overflow() {
        let b: IpNet = "10.0.0.0/26".parse().expect("cidr");
        let mut h = IpamHandle::new("h");
        h.block.insert(b.to_string(), i64::MIN);
        h.decrement(&b, 1);
        assert!(h.block.is_empty(), "a count at or below zero goes away");
        h.block.insert(b.to_string(), i64::MAX);
        h.increment(&b, 1);
        assert_eq!(h.block.get(&b.to_string()), Some(&i64::MAX));
    }

    #[test]
    fn counts_and_wire_format() {
        let v4: IpNet = "10.244.104.64/26".parse().expect("cidr");
        let v6: IpNet = "fd00:10:244:0:9a2b:c3d4:e5f6:1c0/122"
            .parse()
            .expect("cidr");
        let mut h = IpamHandle::new("k8s-pod-network.4f1c9e0a7b3d");
        h.increment(&v4, 1);
        h.increment(&v6, 1);
        assert_eq!(
            serde_json::to_value(&h).expect("json"),
            serde_json::json!({"handleID": "k8s-pod-network.4f1c9e0a7b3d",
                "block": {"10.244.104.64/26": 1, "fd00:10:244:0:9a2b:c3d4:e5f6:1c0/122": 1},
                "deleted": false})
        );
        h.decrement(&v4, 1);
        assert_eq!(h.blocks(), vec![v6]);
        h.decrement(&v6, 5);
        assert!(h.is_empty());
    }
}
