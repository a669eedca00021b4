//! The order in which a host tries a pool's blocks when it needs a new one (Calico's
//! `randomBlockGenerator`): sequential with wrap-around from a start index that is fixed per
//! hostname, so a host's blocks tend to be contiguous and two hosts start apart.
//!
//! Nothing is enumerated up front. A /48 pool of /122 blocks has 2^74 blocks; the walk is
//! lazy and its indices are `u128`, so finding the first unclaimed block costs one step per
//! block that already exists.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::block::{ip_to_u128, u128_to_ip};
use crate::model::time;

/// A lazy walk over the block CIDRs of one pool.
#[derive(Debug, Clone)]
pub(crate) struct BlockWalk {
    base: u128,
    /// log2 of the number of addresses per block.
    shift: u32,
    /// Number of blocks minus one (all ones: block counts are powers of two).
    mask: u128,
    start: u128,
    offset: u128,
    /// Blocks still to yield, minus one; `None` once finished.
    left: Option<u128>,
    block_size: u8,
    v6: bool,
}

impl BlockWalk {
    /// The walk over `pool` (with blocks of prefix `block_size`) for `host`.
    pub(crate) fn new(pool: IpNet, block_size: u8, host: &str) -> BlockWalk {
        let pool = pool.trunc();
        let block_size = block_size.clamp(pool.prefix_len(), pool.max_prefix_len());
        let index_bits = u32::from(block_size - pool.prefix_len());
        let mask = if index_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << index_bits) - 1
        };
        // /32 and /128 blocks use a time seed, as Calico does: with one address per block a
        // fixed start would make every allocation of a host walk past all its earlier ones.
        let seed = if block_size == pool.max_prefix_len() {
            time::now_nanos()
        } else {
            u64::from(fnv1_32(host.as_bytes()))
        };
        let mut rng = SplitMix64(seed);
        let start = ((u128::from(rng.next()) << 64) | u128::from(rng.next())) & mask;
        BlockWalk {
            base: ip_to_u128(pool.network()),
            shift: u32::from(pool.max_prefix_len() - block_size),
            mask,
            start,
            offset: 0,
            left: Some(mask),
            block_size,
            v6: matches!(pool, IpNet::V6(_)),
        }
    }

    /// The index the walk starts at.
    #[cfg(test)]
    pub(crate) fn start(&self) -> u128 {
        self.start
    }

    fn block_at(&self, index: u128) -> IpNet {
        let addr = self.base + (index << self.shift);
        // block_size is within the family's range by construction.
        IpNet::new(u128_to_ip(addr, self.v6), self.block_size)
            .unwrap_or_else(|_| IpNet::from(u128_to_ip(addr, self.v6)))
    }

    fn index_of_addr(&self, ip: IpAddr) -> u128 {
        (ip_to_u128(ip).wrapping_sub(self.base) >> self.shift) & self.mask
    }

    /// Position of `block` in this walk (0 = first yielded), for ordering existing blocks.
    pub(crate) fn position(&self, block: &IpNet) -> u128 {
        self.index_of_addr(block.network()).wrapping_sub(self.start) & self.mask
    }

    /// Having just yielded `block`, skips every further block inside `reserved` (which
    /// contains `block`), so a large reservation costs one step instead of one per block.
    pub(crate) fn skip_reserved(&mut self, block: &IpNet, reserved: &IpNet) {
        let idx = self.index_of_addr(block.network());
        let last_addr = ip_to_u128(reserved.broadcast());
        let block_span = 1u128.checked_shl(self.shift).map_or(u128::MAX, |v| v - 1);
        let pool_last = self
            .base
            .saturating_add((self.mask << self.shift) | block_span);
        let last_idx = self.index_of_addr(u128_to_ip(last_addr.min(pool_last), self.v6));
        // The walk never wraps inside a reservation except at the pool's end, where the
        // reservation stops too.
        let skip = last_idx.saturating_sub(idx);
        self.offset = self.offset.wrapping_add(skip);
        self.left = self.left.and_then(|l| l.checked_sub(skip));
    }
}

impl Iterator for BlockWalk {
    type Item = IpNet;

    fn next(&mut self) -> Option<IpNet> {
        let left = self.left?;
        let index = self.start.wrapping_add(self.offset) & self.mask;
        self.offset = self.offset.wrapping_add(1);
        self.left = left.checked_sub(1);
        Some(self.block_at(index))
    }
}

/// FNV-1 (not FNV-1a), 32 bit: Go's `hash/fnv.New32`.
pub(crate) fn fnv1_32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, b| {
        h.wrapping_mul(0x0100_0193) ^ u32::from(*b)
    })
}

/// A small, well-mixed PRNG; any generator would do (Go's `math/rand` stream cannot be
/// reproduced and interop does not need it).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    #[test]
    fn fnv1_matches_go() {
        // Go: fnv.New32(); Write([]byte("node-a")) — FNV-1 reference values.
        assert_eq!(fnv1_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1_32(b"a"), 0x050c_5d7e);
        assert_eq!(fnv1_32(b"foobar"), 0x31f0_b262);
    }

    #[test]
    fn covers_every_block_once() {
        for (pool, size, count) in [
            ("10.0.0.0/22", 26u8, 16usize),
            ("10.0.0.0/24", 32, 256),
            ("10.0.0.0/16", 20, 16),
            ("fd00::/112", 116, 16),
            ("fd00::/120", 128, 256),
            ("fd00::/116", 122, 64),
            ("10.0.0.0/26", 26, 1),
        ] {
            let walk = BlockWalk::new(net(pool), size, "node-a");
            let blocks: Vec<IpNet> = walk.clone().collect();
            assert_eq!(blocks.len(), count, "{pool}/{size}");
            let distinct: BTreeSet<_> = blocks.iter().collect();
            assert_eq!(distinct.len(), count);
            assert!(
                blocks
                    .iter()
                    .all(|b| net(pool).contains(b) && b.prefix_len() == size)
            );
            // Sequential with wrap-around: consecutive positions.
            for (i, b) in blocks.iter().enumerate() {
                assert_eq!(walk.position(b), i as u128);
            }
        }
    }

    #[test]
    fn deterministic_per_host_and_lazy_for_huge_pools() {
        let pool = net("fd00:10:244::/48");
        let a1 = BlockWalk::new(pool, 122, "node-a");
        let a2 = BlockWalk::new(pool, 122, "node-a");
        let b = BlockWalk::new(pool, 122, "node-b");
        assert_eq!(a1.start(), a2.start());
        assert_ne!(a1.start(), b.start());
        assert!(a1.start() < 1u128 << 74);
        let first: Vec<IpNet> = a1.take(3).collect();
        assert_eq!(first[0], a2.clone().next().expect("block"));
        assert_eq!(first[0].prefix_len(), 122);
        // Successive blocks are adjacent (unless the walk wrapped).
        let step = 1u128 << 6;
        assert_eq!(
            ip_to_u128(first[1].network()) - ip_to_u128(first[0].network()),
            step
        );
    }

    #[test]
    fn skips_reservations_in_one_step() {
        let pool = net("fd00::/48");
        let mut walk = BlockWalk::new(pool, 122, "h");
        let first = walk.next().expect("block");
        // Reserve a /64 containing the first block: the next block is the first past it.
        let reserved = IpNet::new(first.network(), 64).expect("net").trunc();
        walk.skip_reserved(&first, &reserved);
        let next = walk.next().expect("block");
        assert!(!reserved.contains(&next) || reserved.contains(&pool));
    }
}
