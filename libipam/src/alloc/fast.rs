//! The steady-state path of an auto-assign (`assign::auto_assign`): each family's addresses
//! from a block the host already has (or, on its first allocation in the family's pools, a
//! block it starts claiming now), announced in one handle write before any block holds them
//! (DESIGN.md invariant 6). A family it cannot serve is left to the general path.

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::assign::FamilyRequest;
use super::{HandleCache, Ipam, Request, ds};
use crate::datastore::{Datastore, DatastoreError, Revision, Versioned};
use crate::error::{IpamError, Result};
use crate::model::{AffinityState, BlockAffinity, IpFamily, IpamBlock, host_affinity, time};
use crate::retry::{DATASTORE_RETRIES, retry_on_conflict};

/// Outcome of the steady-state path.
pub(super) enum Fast {
    /// The families it completed (possibly none: the rest is for the general path).
    Done(BTreeSet<IpFamily>),
    /// The handle was assumed absent but exists: nothing was written.
    HandleExists,
}

/// A family's part of a fast-path allocation: the block to take `num` addresses from, and
/// for a block still to be created, this host's pending affinity for it (`claim_ahead`).
struct Planned {
    block: Versioned<IpamBlock>,
    num: u32,
    family: IpFamily,
    claim: Option<Versioned<BlockAffinity>>,
}

impl<D: Datastore> Ipam<D> {
    /// The steady-state path: when each family's affine blocks have room (or, on a host's
    /// first allocation in the family's pools, a block just claimed for it), take the addresses
    /// from (possibly cached) copies of the blocks, announce them all in one handle write,
    /// then write the blocks. A block that changed meanwhile is re-read and the allocation
    /// redone in it; a family that cannot be served this way is left to the general path.
    pub(super) async fn assign_fast(
        &self,
        req: &mut Request<'_>,
        plans: &[FamilyRequest<'_>],
        fresh: &mut Vec<IpNet>,
    ) -> Result<Fast> {
        // Each family's blocks to try: its pools' confirmed affinities (a claim made below
        // for one family is pending, and in the other family's pools never).
        let candidates: Vec<Vec<IpNet>> = plans
            .iter()
            .map(|plan| {
                req.affinities
                    .iter()
                    .filter(|(c, a)| {
                        plan.pools.iter().any(|p| p.cidr.contains(*c))
                            && a.as_ref()
                                .is_some_and(|a| a.value.state == AffinityState::Confirmed)
                    })
                    .map(|(c, _)| *c)
                    .collect()
            })
            .collect();
        self.store
            .prefetch_blocks(&candidates.concat())
            .await
            .map_err(ds(format!("read blocks of {}", req.host)))?;
        let mut planned: Vec<Planned> = Vec::new();
        for (plan, candidates) in plans.iter().zip(candidates) {
            let mut found = None;
            for cidr in candidates {
                let Some(block) = self
                    .store
                    .get_block_for_update(&cidr)
                    .await
                    .map_err(ds(format!("read block {cidr}")))?
                else {
                    continue;
                };
                if block.value.is_affine_to(req.host) && self.fits(req, &block, plan.num) {
                    found = Some(block);
                    break;
                }
            }
            let found = match found {
                Some(b) => Some((b, None)),
                None => self
                    .claim_ahead(req, plan)
                    .await?
                    .map(|(b, aff)| (b, Some(aff))),
            };
            match found {
                Some((block, claim)) => planned.push(Planned {
                    block,
                    num: plan.num,
                    family: plan.family,
                    claim,
                }),
                None => return Ok(Fast::Done(BTreeSet::new())),
            }
        }

        let counts: Vec<(IpNet, u32)> = planned
            .iter()
            .map(|p| (p.block.value.cidr, p.num))
            .collect();
        let assumed = matches!(req.handle, HandleCache::Assumed);
        match self
            .write_handle(req, |h| {
                for (cidr, n) in &counts {
                    h.increment(cidr, *n);
                }
            })
            .await
        {
            Ok(()) => {}
            Err(IpamError::Datastore {
                source: DatastoreError::AlreadyExists,
                ..
            }) if assumed => return Ok(Fast::HandleExists),
            Err(e) if e.is_conflict() => return Ok(Fast::Done(BTreeSet::new())),
            Err(e) => return Err(e),
        }

        let mut done = BTreeSet::new();
        for (i, p) in planned.into_iter().enumerate() {
            let Planned {
                block,
                num: n,
                family,
                claim,
            } = p;
            let cidr = block.value.cidr;
            let written = match claim {
                Some(aff) => self.create_claimed_block(req, block.value, n, aff).await,
                None => self.take_in_affine_block(req, block, n, family).await,
            };
            match written {
                Ok(Some(ips)) => {
                    fresh.extend(ips);
                    done.insert(family);
                }
                Ok(None) => self.undo_handle_increment(req, &cidr, n).await,
                Err(e) => {
                    // This block's write may have happened unless its answer says otherwise;
                    // the blocks after it were not written.
                    let from = if e.write_not_applied() { i } else { i + 1 };
                    for (cidr, n) in &counts[from..] {
                        self.undo_handle_increment(req, cidr, *n).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(Fast::Done(done))
    }

    /// Takes `n` addresses from one of the host's blocks and writes it, redoing the allocation
    /// in a fresh copy after a conflict. `None` when the block no longer has room or is no
    /// longer this host's: nothing was allocated.
    async fn take_in_affine_block(
        &self,
        req: &Request<'_>,
        block: Versioned<IpamBlock>,
        n: u32,
        family: IpFamily,
    ) -> Result<Option<Vec<IpNet>>> {
        let cidr = block.value.cidr;
        let op = format!("assign {family} addresses in block {cidr}");
        let mut current = Some(block);
        retry_on_conflict(DATASTORE_RETRIES, &op, async || {
            let mut block = match current.take() {
                Some(b) => b,
                None => match self
                    .store
                    .get_block(&cidr)
                    .await
                    .map_err(ds(format!("read block {cidr}")))?
                {
                    Some(b) if b.value.is_affine_to(req.host) => b,
                    _ => return Ok(None),
                },
            };
            let ips = req.take_from(&mut block.value, n);
            if ips.len() as u32 != n {
                return Ok(None);
            }
            self.write_block(&mut block).await?;
            Ok(Some(
                ips.into_iter().map(|ip| block.value.masked(ip)).collect(),
            ))
        })
        .await
    }

    /// A host's first allocation in a family's pools (it has no affinity in them at all):
    /// starts the claim of the first free block of the walk (its affinity `pending`, the claim
    /// protocol's first step) and plans the block, so that the fast path announces both
    /// families' addresses in one handle write and then creates each new block already
    /// holding its allocation (`create_claimed_block`). A new attachment's handle is thus never
    /// read, and a node's first ADD writes neither a second handle version nor a block twice.
    /// Invariant 6 is the fast path's: the handle is written before any block holding its
    /// addresses. `None` leaves the family to the general path, which decides as before: a
    /// block limit of 0, auto-allocation off, no free CIDR (reclaim and borrowing), a lost race
    /// (the listing is dropped), or a block that cannot hold the request.
    async fn claim_ahead(
        &self,
        req: &mut Request<'_>,
        plan: &FamilyRequest<'_>,
    ) -> Result<Option<(Versioned<IpamBlock>, Versioned<BlockAffinity>)>> {
        let in_pools = |c: &IpNet| plan.pools.iter().any(|p| p.cidr.contains(c));
        if !req.config.auto_allocate_blocks
            || plan.limit == 0
            || req.affinities.keys().any(in_pools)
        {
            return Ok(None);
        }
        let cidr = match self.first_unclaimed(req, &plan.pools).await {
            Ok(Some(cidr)) => cidr,
            Ok(None) => return Ok(None),
            Err(e) if e.is_conflict() => {
                req.block_cidrs = None;
                req.listed_blocks = None;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let block = Versioned {
            value: IpamBlock::new(cidr, Some(host_affinity(req.host)), time::now_nanos())
                .map_err(IpamError::Corrupt)?,
            revision: Revision(String::new()),
        };
        if !self.fits(req, &block, plan.num) {
            return Ok(None);
        }
        let value = BlockAffinity::host(req.host, cidr, AffinityState::Pending);
        let aff = match self.store.create_affinity(&value).await {
            Ok(revision) => Versioned { value, revision },
            // Ours already, though the listing did not say so: the general path reads it.
            Err(DatastoreError::AlreadyExists) => {
                req.block_cidrs = None;
                return Ok(None);
            }
            Err(e) => {
                return Err(IpamError::store(format!(
                    "create affinity of {} for {cidr}",
                    req.host
                ))(e));
            }
        };
        req.affinities.insert(cidr, Some(aff.clone()));
        req.mark_claimed(cidr);
        Ok(Some((block, aff)))
    }

    /// The rest of a claim started by `claim_ahead`, after the handle announced the addresses:
    /// creates the block already holding `n` of them for the request (its sequence number as
    /// if it had been created and then written once, invariant 4), then confirms the
    /// affinity. `None` when the block exists already (another host won the CIDR, or a
    /// block the listing missed): nothing was allocated, and the pending affinity is left to
    /// the general path, which drops it when the block is not this host's. A confirmation that
    /// fails leaves the claim pending with the block ours (invariant 8: the block decides), for
    /// the next request to finish; the addresses stand.
    async fn create_claimed_block(
        &self,
        req: &mut Request<'_>,
        mut block: IpamBlock,
        n: u32,
        mut aff: Versioned<BlockAffinity>,
    ) -> Result<Option<Vec<IpNet>>> {
        let cidr = block.cidr;
        let ips = req.take_from(&mut block, n);
        if ips.len() as u32 != n {
            return Ok(None);
        }
        block.sequence_number = block.sequence_number.wrapping_add(1);
        match self.store.create_block(&block).await {
            Ok(_) => {}
            Err(DatastoreError::AlreadyExists) => {
                req.block_cidrs = None;
                return Ok(None);
            }
            Err(e) => return Err(IpamError::store(format!("create block {cidr}"))(e)),
        }
        let _ = self
            .put_affinity(req, &mut aff, AffinityState::Confirmed)
            .await;
        Ok(Some(ips.into_iter().map(|ip| block.masked(ip)).collect()))
    }

    /// Whether `n` addresses can be taken from this copy of a block (the copy is not changed).
    pub(super) fn fits(&self, req: &Request<'_>, block: &Versioned<IpamBlock>, n: u32) -> bool {
        req.take_from(&mut block.value.clone(), n).len() as u32 == n
    }
}
