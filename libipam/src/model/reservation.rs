//! `IPReservation`: addresses the allocator must not hand out.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::Extra;

/// The `spec` of an IPReservation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpReservationSpec {
    /// CIDRs or bare addresses.
    #[serde(rename = "reservedCIDRs", default)]
    pub reserved_cidrs: Vec<String>,
    /// Fields this code does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A named reservation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpReservation {
    /// `metadata.name`.
    pub name: String,
    /// The spec.
    pub spec: IpReservationSpec,
}

impl IpReservationSpec {
    /// The entries as networks: CIDRs as given, bare addresses as /32 or /128. Entries that
    /// parse as neither are ignored, as Calico does.
    pub fn networks(&self) -> Vec<IpNet> {
        self.reserved_cidrs
            .iter()
            .filter_map(|s| {
                let s = s.trim();
                s.parse::<IpNet>()
                    .ok()
                    .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs_and_addresses() {
        let s: IpReservationSpec =
            serde_json::from_str(r#"{"reservedCIDRs":["10.244.0.0/30","fd00:10:244::1","junk"]}"#)
                .expect("parse");
        assert_eq!(
            s.networks(),
            vec![
                "10.244.0.0/30".parse::<IpNet>().expect("cidr"),
                "fd00:10:244::1/128".parse().expect("cidr")
            ]
        );
    }
}
