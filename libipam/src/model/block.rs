//! `IPAMBlock`: the allocation state of one block of a pool, and the pure operations on it.
//!
//! Addresses are mapped to ordinals (offsets from the block's first address) with `u128`
//! arithmetic, which covers IPv4 (`u32`) and IPv6 alike. Blocks are at most 4096 addresses
//! (/20, /116), so an ordinal always fits in a `u32`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{Extra, host_affinity, time};

/// Handle of the addresses Calico reserves at both ends of a block on Windows; they do not
/// make a block non-empty.
pub const WINDOWS_RESERVED_HANDLE: &str = "windows-reserved-ipam-handle";

/// Attribute key marking an ordinal released but still cooling down.
const RELEASED_AT: &str = "releasedAt";

/// When released addresses may be handed out again (`ipCooldownSeconds`). With 0 seconds
/// (the default) an address is reusable as soon as it is released.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cooldown {
    /// `ipCooldownSeconds`.
    pub seconds: u32,
    /// The current time in Unix nanoseconds.
    pub now_nanos: u64,
}

/// Largest number of host bits a block may have (blockSize /20 or /116).
const MAX_BLOCK_HOST_BITS: u8 = 12;

/// One entry of `attributes`: who owns the allocations that point at it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocationAttribute {
    /// The allocation handle.
    #[serde(rename = "handle_id", default, skip_serializing_if = "Option::is_none")]
    pub handle_id: Option<String>,
    /// Free-form owner attributes (`node`, `pod`, `namespace`, `timestamp`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<BTreeMap<String, String>>,
    /// `alternateOwnerAttrs`, `releasedAt`, ... kept as they are.
    #[serde(flatten)]
    pub extra: Extra,
}

impl AllocationAttribute {
    /// The handle, cut at the first `\r` as Calico does (a legacy host-local migration bug
    /// wrote handles with a trailing carriage return).
    pub fn handle(&self) -> Option<&str> {
        self.handle_id
            .as_deref()
            .map(|h| h.split('\r').next().unwrap_or(h))
    }

    /// When the ordinal pointing here was released, for an address in cooldown.
    pub fn released_at(&self) -> Option<&str> {
        self.extra.get(RELEASED_AT).and_then(|v| v.as_str())
    }
}

/// The `spec` of an IPAMBlock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamBlock {
    /// The block's CIDR.
    pub cidr: IpNet,
    /// `host:<node>`, `virtual:<name>`, or absent for a block nobody owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// When the affinity was claimed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_claim_time: Option<String>,
    /// One entry per address: index into `attributes`, or null when free.
    pub allocations: Vec<Option<u32>>,
    /// Free ordinals, handed out from the front and returned to the back.
    pub unallocated: Vec<u32>,
    /// Owners of allocations.
    pub attributes: Vec<AllocationAttribute>,
    /// Incremented on every write; starts at the creation time in Unix nanoseconds.
    #[serde(default)]
    pub sequence_number: u64,
    /// Sequence number of the write that allocated each ordinal (key: ordinal in decimal).
    #[serde(default)]
    pub sequence_number_for_allocation: BTreeMap<String, u64>,
    /// Soft-delete marker (Kubernetes two-step delete). A deleted block is treated as absent.
    #[serde(default)]
    pub deleted: bool,
    /// Deprecated; always written `false` (the CRD requires it).
    #[serde(default)]
    pub strict_affinity: bool,
    /// Fields this code does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// What [`IpamBlock::release`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReleaseOutcome {
    /// Addresses that were allocated and are now free.
    pub released: Vec<IpAddr>,
    /// Addresses that were not allocated in this block (or not in it at all).
    pub unallocated: Vec<IpAddr>,
    /// How many released addresses each handle held.
    pub handles: BTreeMap<String, u32>,
}

/// Why a specific address could not be assigned in a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignError {
    /// The address is not inside the block.
    NotInBlock,
    /// The address is already allocated.
    InUse,
}

/// Address as an integer, for IPv4 and IPv6 alike.
pub(crate) fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of the given family for an integer (truncated to 32 bits for IPv4).
pub(crate) fn u128_to_ip(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

impl IpamBlock {
    /// A fresh, empty block: every ordinal free in order, `sequenceNumber` = `now_nanos` (so a
    /// recreated block never reuses sequence numbers), claim time set when there is an affinity.
    ///
    /// Fails when the CIDR has more than 12 host bits (blocks are /20–/32 or /116–/128).
    pub fn new(cidr: IpNet, affinity: Option<String>, now_nanos: u64) -> Result<IpamBlock, String> {
        let cidr = cidr.trunc();
        let host_bits = cidr.max_prefix_len() - cidr.prefix_len();
        if host_bits > MAX_BLOCK_HOST_BITS {
            return Err(format!(
                "block {cidr} is too large: a block has at most {MAX_BLOCK_HOST_BITS} host bits"
            ));
        }
        let size = 1u32 << host_bits;
        Ok(IpamBlock {
            cidr,
            affinity_claim_time: affinity.as_ref().map(|_| time::rfc3339(now_nanos)),
            affinity,
            allocations: vec![None; size as usize],
            unallocated: (0..size).collect(),
            attributes: Vec::new(),
            sequence_number: now_nanos,
            sequence_number_for_allocation: BTreeMap::new(),
            deleted: false,
            strict_affinity: false,
            extra: Extra::new(),
        })
    }

    /// Number of addresses the block covers.
    pub fn size(&self) -> u32 {
        let host_bits = self.cidr.max_prefix_len() - self.cidr.prefix_len();
        1u32.checked_shl(u32::from(host_bits)).unwrap_or(u32::MAX)
    }

    /// The ordinal of an address, or `None` when it is outside the block.
    pub fn ordinal(&self, ip: IpAddr) -> Option<u32> {
        if !self.cidr.contains(&ip) {
            return None;
        }
        let off = ip_to_u128(ip) - ip_to_u128(self.cidr.network());
        u32::try_from(off).ok().filter(|o| *o < self.size())
    }

    /// The address at an ordinal, or `None` past the end of the block.
    pub fn ip(&self, ordinal: u32) -> Option<IpAddr> {
        if ordinal >= self.size() {
            return None;
        }
        let base = ip_to_u128(self.cidr.network());
        Some(u128_to_ip(
            base + u128::from(ordinal),
            matches!(self.cidr, IpNet::V6(_)),
        ))
    }

    /// The address at an ordinal with the block's mask, e.g. `10.244.1.5/26`.
    pub fn masked(&self, ip: IpAddr) -> IpNet {
        // The prefix comes from an existing IpNet of the same family, so this cannot fail.
        IpNet::new(ip, self.cidr.prefix_len()).unwrap_or(self.cidr)
    }

    /// The node this block is affine to, if it is a `host:` block.
    pub fn host(&self) -> Option<&str> {
        self.affinity.as_deref()?.strip_prefix("host:")
    }

    /// True when the block is affine to `host`.
    pub fn is_affine_to(&self, host: &str) -> bool {
        self.affinity.as_deref() == Some(host_affinity(host).as_str())
    }

    /// Number of allocated addresses.
    pub fn in_use(&self) -> u32 {
        self.allocations.iter().filter(|a| a.is_some()).count() as u32
    }

    /// Free addresses that are not reserved.
    pub fn num_free(&self, reserved: impl Fn(IpAddr) -> bool) -> u32 {
        self.unallocated
            .iter()
            .filter_map(|o| self.ip(*o))
            .filter(|ip| !reserved(*ip))
            .count() as u32
    }

    /// True when nothing but Windows' reserved addresses is allocated.
    pub fn empty(&self) -> bool {
        self.allocations.iter().flatten().all(|idx| {
            self.attributes
                .get(*idx as usize)
                .and_then(AllocationAttribute::handle)
                == Some(WINDOWS_RESERVED_HANDLE)
        })
    }

    /// Allocates up to `num` free addresses, in FIFO order, skipping reserved ones (which keep
    /// their place in the queue). All addresses of one call share one attribute entry.
    pub fn auto_assign(
        &mut self,
        num: u32,
        handle: Option<&str>,
        attrs: &BTreeMap<String, String>,
        reserved: impl Fn(IpAddr) -> bool,
    ) -> Vec<IpAddr> {
        let mut picked = Vec::new();
        let mut keep = Vec::with_capacity(self.unallocated.len());
        for &ord in &self.unallocated {
            let usable = picked.len() < num as usize
                && self.ip(ord).is_some_and(|ip| !reserved(ip))
                && self.allocations.get(ord as usize) == Some(&None);
            if usable {
                picked.push(ord);
            } else {
                keep.push(ord);
            }
        }
        if picked.is_empty() {
            return Vec::new();
        }
        self.unallocated = keep;
        let idx = self.find_or_add_attribute(handle, attrs);
        picked
            .into_iter()
            .filter_map(|ord| {
                self.mark_allocated(ord, idx);
                self.ip(ord)
            })
            .collect()
    }

    /// Allocates one specific address.
    pub fn assign(
        &mut self,
        ip: IpAddr,
        handle: Option<&str>,
        attrs: &BTreeMap<String, String>,
    ) -> Result<(), AssignError> {
        let ord = self.ordinal(ip).ok_or(AssignError::NotInBlock)?;
        match self.allocations.get(ord as usize) {
            Some(None) => {}
            Some(Some(_)) => return Err(AssignError::InUse),
            None => return Err(AssignError::NotInBlock),
        }
        self.unallocated.retain(|o| *o != ord);
        let idx = self.find_or_add_attribute(handle, attrs);
        self.mark_allocated(ord, idx);
        Ok(())
    }

    /// Frees the given addresses at once (no cooldown). See [`IpamBlock::release_with`].
    pub fn release(&mut self, ips: &[IpAddr]) -> ReleaseOutcome {
        self.release_with(ips, Cooldown::default())
    }

    /// Releases the given addresses. Duplicates are collapsed; addresses that are not
    /// allocated here (or already cooling down) are reported in `unallocated`. Without a
    /// cooldown a freed ordinal goes to the back of the free queue; with one it is parked on
    /// a `releasedAt` attribute until [`IpamBlock::garbage_collect`] frees it.
    pub fn release_with(&mut self, ips: &[IpAddr], cooldown: Cooldown) -> ReleaseOutcome {
        let mut out = ReleaseOutcome::default();
        let mut seen = BTreeSet::new();
        let mut ords = Vec::new();
        for &ip in ips {
            if !seen.insert(ip) {
                continue;
            }
            let Some(ord) = self.ordinal(ip) else {
                out.unallocated.push(ip);
                continue;
            };
            let attr = self
                .allocations
                .get(ord as usize)
                .copied()
                .flatten()
                .and_then(|idx| self.attributes.get(idx as usize));
            match attr {
                None => out.unallocated.push(ip),
                Some(a) if a.released_at().is_some() => out.unallocated.push(ip),
                Some(a) => {
                    if let Some(h) = a.handle() {
                        *out.handles.entry(h.to_owned()).or_default() += 1;
                    }
                    ords.push(ord);
                    out.released.push(ip);
                }
            }
        }
        self.free_ordinals(&ords, cooldown);
        out
    }

    /// Frees every address held by `handle` at once, in ordinal order, and returns them.
    pub fn release_by_handle(&mut self, handle: &str) -> Vec<IpAddr> {
        self.release_by_handle_with(handle, Cooldown::default())
    }

    /// Releases every address held by `handle` (see [`IpamBlock::release_with`]).
    pub fn release_by_handle_with(&mut self, handle: &str, cooldown: Cooldown) -> Vec<IpAddr> {
        let ords = self.ordinals_for_handle(handle);
        self.free_ordinals(&ords, cooldown);
        ords.into_iter().filter_map(|o| self.ip(o)).collect()
    }

    /// Frees ordinals whose cooldown is over (all of them when the cooldown is 0); returns
    /// how many. Unparseable release times count as over.
    pub fn garbage_collect(&mut self, cooldown: Cooldown) -> u32 {
        let now = (cooldown.now_nanos / 1_000_000_000) as i64;
        let expired: BTreeSet<u32> = self
            .attributes
            .iter()
            .enumerate()
            .filter(|(_, a)| {
                a.released_at().is_some_and(|t| {
                    cooldown.seconds == 0
                        || time::parse_rfc3339(t)
                            .is_none_or(|at| now - at >= i64::from(cooldown.seconds))
                })
            })
            .map(|(i, _)| i as u32)
            .collect();
        if expired.is_empty() {
            return 0;
        }
        let ords: Vec<u32> = self
            .allocations
            .iter()
            .enumerate()
            .filter(|(_, a)| a.is_some_and(|i| expired.contains(&i)))
            .map(|(o, _)| o as u32)
            .collect();
        for &ord in &ords {
            self.mark_free(ord);
        }
        self.compact_attributes();
        ords.len() as u32
    }

    fn free_ordinals(&mut self, ords: &[u32], cooldown: Cooldown) {
        if ords.is_empty() {
            return;
        }
        if cooldown.seconds == 0 {
            for &ord in ords {
                self.mark_free(ord);
            }
        } else {
            let mut extra = Extra::new();
            extra.insert(
                RELEASED_AT.to_owned(),
                time::rfc3339(cooldown.now_nanos).into(),
            );
            let parked = AllocationAttribute {
                handle_id: None,
                secondary: None,
                extra,
            };
            let idx = match self.attributes.iter().position(|a| *a == parked) {
                Some(i) => i as u32,
                None => {
                    self.attributes.push(parked);
                    (self.attributes.len() - 1) as u32
                }
            };
            for &ord in ords {
                // Re-stamped, so a stale release by sequence number cannot touch it.
                self.mark_allocated(ord, idx);
            }
        }
        self.compact_attributes();
    }

    /// The addresses held by `handle`, in ordinal order.
    pub fn ips_for_handle(&self, handle: &str) -> Vec<IpAddr> {
        self.ordinals_for_handle(handle)
            .into_iter()
            .filter_map(|o| self.ip(o))
            .collect()
    }

    /// Allocation count per handle (allocations without a handle are not counted).
    pub fn handle_counts(&self) -> BTreeMap<String, u32> {
        let mut counts = BTreeMap::new();
        for idx in self.allocations.iter().flatten() {
            if let Some(h) = self.attributes.get(*idx as usize).and_then(|a| a.handle()) {
                *counts.entry(h.to_owned()).or_default() += 1;
            }
        }
        counts
    }

    /// Describes internal inconsistencies (bad indices, ordinals both free and allocated, ...).
    pub fn consistency_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let size = self.size() as usize;
        if self.allocations.len() != size {
            problems.push(format!(
                "block {} has {} allocation entries but covers {size} addresses",
                self.cidr,
                self.allocations.len()
            ));
        }
        let mut free = BTreeSet::new();
        for &o in &self.unallocated {
            if !free.insert(o) {
                problems.push(format!(
                    "block {}: ordinal {o} is listed twice as free",
                    self.cidr
                ));
            }
            if self
                .allocations
                .get(o as usize)
                .copied()
                .flatten()
                .is_some()
            {
                problems.push(format!(
                    "block {}: ordinal {o} is both allocated and free",
                    self.cidr
                ));
            }
        }
        for (o, a) in self.allocations.iter().enumerate() {
            match a {
                None if !free.contains(&(o as u32)) => problems.push(format!(
                    "block {}: ordinal {o} is neither allocated nor free",
                    self.cidr
                )),
                Some(idx) if *idx as usize >= self.attributes.len() => problems.push(format!(
                    "block {}: ordinal {o} points at missing attribute {idx}",
                    self.cidr
                )),
                _ => {}
            }
        }
        problems
    }

    fn ordinals_for_handle(&self, handle: &str) -> Vec<u32> {
        let idxs: BTreeSet<u32> = self
            .attributes
            .iter()
            .enumerate()
            .filter(|(_, a)| a.handle() == Some(handle))
            .map(|(i, _)| i as u32)
            .collect();
        self.allocations
            .iter()
            .enumerate()
            .filter(|(_, a)| a.is_some_and(|i| idxs.contains(&i)))
            .map(|(o, _)| o as u32)
            .collect()
    }

    fn mark_allocated(&mut self, ord: u32, attr: u32) {
        if let Some(slot) = self.allocations.get_mut(ord as usize) {
            *slot = Some(attr);
            self.sequence_number_for_allocation
                .insert(ord.to_string(), self.sequence_number);
        }
    }

    fn mark_free(&mut self, ord: u32) {
        if let Some(slot) = self.allocations.get_mut(ord as usize) {
            *slot = None;
            self.unallocated.push(ord);
            self.sequence_number_for_allocation.remove(&ord.to_string());
        }
    }

    /// Reuses an identical attribute entry, else appends one.
    fn find_or_add_attribute(
        &mut self,
        handle: Option<&str>,
        attrs: &BTreeMap<String, String>,
    ) -> u32 {
        let attr = AllocationAttribute {
            handle_id: handle.map(str::to_owned),
            secondary: (!attrs.is_empty()).then(|| attrs.clone()),
            extra: Extra::new(),
        };
        if let Some(i) = self.attributes.iter().position(|a| *a == attr) {
            return i as u32;
        }
        self.attributes.push(attr);
        (self.attributes.len() - 1) as u32
    }

    /// Drops attribute entries no allocation points at and re-indexes the rest.
    fn compact_attributes(&mut self) {
        let used: BTreeSet<u32> = self.allocations.iter().flatten().copied().collect();
        let mut remap = BTreeMap::new();
        let mut kept = Vec::with_capacity(used.len());
        for (i, a) in std::mem::take(&mut self.attributes).into_iter().enumerate() {
            if used.contains(&(i as u32)) {
                remap.insert(i as u32, kept.len() as u32);
                kept.push(a);
            }
        }
        self.attributes = kept;
        for a in self.allocations.iter_mut().flatten() {
            if let Some(n) = remap.get(a) {
                *a = *n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn wire_format_matches_calico() {
        let mut b = IpamBlock::new(
            net("10.244.104.64/26"),
            Some("host:node-a".into()),
            1_754_042_400_123_456_789,
        )
        .expect("block");
        let attrs = BTreeMap::from([("node".to_owned(), "node-a".to_owned())]);
        let got = b.auto_assign(1, Some("vxlan-tunnel-addr-node-a"), &attrs, |_| false);
        assert_eq!(got, vec![ip("10.244.104.64")]);
        b.sequence_number += 1;
        let v = serde_json::to_value(&b).expect("json");
        assert_eq!(v["cidr"], "10.244.104.64/26");
        assert_eq!(v["affinity"], "host:node-a");
        assert_eq!(v["allocations"].as_array().map(Vec::len), Some(64));
        assert_eq!(v["allocations"][0], 0);
        assert!(v["allocations"][1].is_null());
        assert_eq!(v["unallocated"][0], 1);
        assert_eq!(v["attributes"][0]["handle_id"], "vxlan-tunnel-addr-node-a");
        assert_eq!(v["sequenceNumber"], 1_754_042_400_123_456_790u64);
        assert_eq!(
            v["sequenceNumberForAllocation"]["0"],
            1_754_042_400_123_456_789u64
        );
        assert_eq!(v["strictAffinity"], false);
        assert_eq!(v["deleted"], false);
        let back: IpamBlock = serde_json::from_value(v).expect("parse");
        assert_eq!(back, b);
    }

    #[test]
    fn v6_cidr_is_canonical() {
        let b =
            IpamBlock::new(net("fd00:10:244:0:9a2b:c3d4:e5f6:1c0/122"), None, 1).expect("block");
        assert_eq!(
            serde_json::to_value(&b).expect("json")["cidr"],
            "fd00:10:244:0:9a2b:c3d4:e5f6:1c0/122"
        );
    }

    #[test]
    fn release_compacts_shared_attributes() {
        let mut b = IpamBlock::new(net("10.0.0.0/30"), None, 1).expect("block");
        let none = BTreeMap::new();
        let a = b.auto_assign(2, Some("a"), &none, |_| false);
        let c = b.auto_assign(1, Some("c"), &none, |_| false);
        assert_eq!(b.attributes.len(), 2);
        let out = b.release(&[a[0], a[0], ip("10.0.0.3"), ip("10.9.9.9")]);
        assert_eq!(out.released, vec![a[0]]);
        assert_eq!(out.unallocated, vec![ip("10.0.0.3"), ip("10.9.9.9")]);
        assert_eq!(out.handles.get("a"), Some(&1));
        assert_eq!(b.attributes.len(), 2, "a still holds one address");
        assert_eq!(b.release_by_handle("a"), vec![a[1]]);
        assert_eq!(b.attributes.len(), 1);
        assert_eq!(b.allocations[2], Some(0), "c re-indexed to 0");
        assert_eq!(b.ips_for_handle("c"), c);
        assert!(b.consistency_problems().is_empty());
        assert_eq!(b.unallocated, vec![3, 0, 1]);
    }

    #[test]
    fn wraps_in_fifo_order() {
        // Calico's "should wrap IP allocations correctly": 4 allocate+release cycles in a /30,
        // the 5th allocation returns the first address again.
        let mut b = IpamBlock::new(net("10.0.0.0/30"), None, 1).expect("block");
        let none = BTreeMap::new();
        let mut seen = Vec::new();
        for _ in 0..5 {
            let got = b.auto_assign(1, Some("h"), &none, |_| false);
            seen.push(got[0]);
            b.release(&got);
        }
        assert_eq!(seen[4], seen[0]);
        assert_eq!(seen[..4].iter().collect::<BTreeSet<_>>().len(), 4);
    }

    #[test]
    fn reserved_addresses_keep_their_place() {
        let mut b = IpamBlock::new(net("10.0.0.0/29"), None, 1).expect("block");
        let none = BTreeMap::new();
        let r = ip("10.0.0.1");
        assert_eq!(b.num_free(|x| x == r), 7);
        let got = b.auto_assign(2, None, &none, |x| x == r);
        assert_eq!(got, vec![ip("10.0.0.0"), ip("10.0.0.2")]);
        assert_eq!(b.unallocated[0], 1);
    }

    #[test]
    fn assign_specific_and_windows_reserved_is_empty() {
        let mut b = IpamBlock::new(net("10.0.0.0/29"), None, 1).expect("block");
        let none = BTreeMap::new();
        b.assign(ip("10.0.0.7"), Some(WINDOWS_RESERVED_HANDLE), &none)
            .expect("assign");
        assert!(b.empty());
        assert_eq!(
            b.assign(ip("10.0.0.7"), None, &none),
            Err(AssignError::InUse)
        );
        assert_eq!(
            b.assign(ip("10.0.1.7"), None, &none),
            Err(AssignError::NotInBlock)
        );
        b.assign(ip("10.0.0.3"), Some("x"), &none).expect("assign");
        assert!(!b.empty());
        assert!(!b.unallocated.contains(&3));
    }

    #[test]
    fn cooldown_parks_released_addresses() {
        let mut b = IpamBlock::new(net("10.0.0.0/30"), None, 1).expect("block");
        let none = BTreeMap::new();
        let got = b.auto_assign(2, Some("h"), &none, |_| false);
        let t0 = 1_785_578_400 * 1_000_000_000u64;
        let cool = Cooldown {
            seconds: 60,
            now_nanos: t0,
        };
        let out = b.release_with(&got[..1], cool);
        assert_eq!(out.released, vec![got[0]]);
        assert_eq!(out.handles.get("h"), Some(&1));
        assert!(!b.empty() && b.ips_for_handle("h") == vec![got[1]]);
        assert_eq!(
            b.attributes[b.allocations[0].expect("parked") as usize].released_at(),
            Some("2026-08-01T10:00:00Z")
        );
        assert_eq!(
            b.release_with(&got[..1], cool).unallocated,
            vec![got[0]],
            "already cooling"
        );
        assert_eq!(b.num_free(|_| false), 2);
        assert_eq!(
            b.garbage_collect(Cooldown {
                now_nanos: t0 + 59_000_000_000,
                ..cool
            }),
            0
        );
        assert_eq!(
            b.garbage_collect(Cooldown {
                now_nanos: t0 + 60_000_000_000,
                ..cool
            }),
            1
        );
        assert_eq!(b.unallocated, vec![2, 3, 0]);
        assert!(b.consistency_problems().is_empty());
        assert_eq!(b.release_by_handle_with("h", cool), vec![got[1]]);
        // A cooldown of 0 (config changed) frees parked ordinals on the next collection.
        assert_eq!(b.garbage_collect(Cooldown::default()), 1);
        assert!(b.empty() && b.attributes.is_empty());
    }

    #[test]
    fn too_large_block_is_refused() {
        assert!(IpamBlock::new(net("10.0.0.0/16"), None, 1).is_err());
        assert_eq!(
            IpamBlock::new(net("10.0.0.0/20"), None, 1)
                .expect("b")
                .size(),
            4096
        );
        assert_eq!(
            IpamBlock::new(net("fd00::/116"), None, 1)
                .expect("b")
                .size(),
            4096
        );
        assert_eq!(
            IpamBlock::new(net("fd00::1/128"), None, 1)
                .expect("b")
                .size(),
            1
        );
    }
}
