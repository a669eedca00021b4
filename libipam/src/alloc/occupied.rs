//! Which address ranges existing blocks cover, for the one question a claim must answer before
//! it creates a block: does a block of another size already hold any of these addresses?
//!
//! A block is the only record of which of its addresses are allocated, and a claim is a create
//! of the object named by its CIDR, which no compare-and-swap relates to a block of another
//! CIDR. Two pools of different block sizes over the same range (written past validation, or a
//! pool that can no longer be read, whose blocks remain, under a pool applied since) would
//! otherwise let `10.0.0.0/26` be created beside an existing `10.0.0.0/28`, and the same
//! address be handed out from both. So no block is created that overlaps one that exists.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use ipnet::IpNet;

use crate::model::block::ip_to_u128;

/// The existing blocks, indexed for overlap queries.
#[derive(Debug, Default)]
pub(super) struct Occupied {
    exact: HashSet<IpNet>,
    /// (IPv6?, first address) → block.
    starts: BTreeMap<(bool, u128), IpNet>,
    /// (IPv6?, prefix length) of every existing block.
    prefixes: BTreeSet<(bool, u8)>,
}

impl Occupied {
    pub(super) fn new(blocks: impl IntoIterator<Item = IpNet>) -> Occupied {
        let mut o = Occupied::default();
        for b in blocks {
            let b = b.trunc();
            let v6 = matches!(b, IpNet::V6(_));
            o.starts.insert((v6, ip_to_u128(b.network())), b);
            o.prefixes.insert((v6, b.prefix_len()));
            o.exact.insert(b);
        }
        o
    }

    /// Whether a block exists at exactly `cidr`.
    pub(super) fn contains(&self, cidr: &IpNet) -> bool {
        self.exact.contains(cidr)
    }

    /// An existing block that shares an address with `cidr`, other than a block at exactly
    /// `cidr`: first one containing it, else one inside it.
    pub(super) fn other_overlapping(&self, cidr: &IpNet) -> Option<IpNet> {
        let v6 = matches!(cidr, IpNet::V6(_));
        // Two CIDRs overlap only if one contains the other. One containing `cidr` has a
        // shorter prefix and is `cidr`'s network truncated to it.
        let containing = self
            .prefixes
            .range((v6, 0)..(v6, cidr.prefix_len()))
            .filter_map(|(_, len)| IpNet::new(cidr.network(), *len).ok().map(|n| n.trunc()))
            .find(|n| self.exact.contains(n));
        if containing.is_some() {
            return containing;
        }
        let (first, last) = (ip_to_u128(cidr.network()), ip_to_u128(cidr.broadcast()));
        self.starts
            .range((v6, first)..=(v6, last))
            .map(|(_, b)| *b)
            .find(|b| b != cidr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    #[test]
    fn overlaps_are_found_both_ways_and_per_family() {
        let o = Occupied::new([net("10.0.0.0/28"), net("10.0.1.0/24"), net("fd00::/122")]);
        assert!(o.contains(&net("10.0.0.0/28")));
        assert_eq!(o.other_overlapping(&net("10.0.0.0/28")), None);
        // A larger block over an existing smaller one.
        assert_eq!(
            o.other_overlapping(&net("10.0.0.0/26")),
            Some(net("10.0.0.0/28"))
        );
        // A smaller block inside an existing larger one.
        assert_eq!(
            o.other_overlapping(&net("10.0.1.64/26")),
            Some(net("10.0.1.0/24"))
        );
        assert_eq!(
            o.other_overlapping(&net("10.0.1.255/32")),
            Some(net("10.0.1.0/24"))
        );
        // Beside them.
        assert_eq!(o.other_overlapping(&net("10.0.0.16/28")), None);
        assert_eq!(o.other_overlapping(&net("10.0.2.0/26")), None);
        assert_eq!(o.other_overlapping(&net("fd00::40/122")), None);
        assert_eq!(
            o.other_overlapping(&net("fd00::/116")),
            Some(net("fd00::/122"))
        );
        // The same numbers in the other family are no overlap.
        assert_eq!(o.other_overlapping(&net("::a00:0/122")), None);
    }
}
