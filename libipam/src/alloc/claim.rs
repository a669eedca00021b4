//! Claiming blocks for a host (Calico's `findOrClaimBlock`, `findUsableBlock`,
//! `getPendingAffinity`, `claimAffineBlock`, `confirmAffinity`, `releaseBlockAffinity`).
//!
//! Claim protocol: affinity `pending` → create the block with `affinity: host:<node>` →
//! affinity `confirmed`. The block's `affinity` field decides ownership; an affinity whose
//! block says otherwise is stale and is deleted. Losing a race surfaces as a conflict, so the
//! step is retried from fresh reads and picks another block. A node's first allocation in a
//! family's pools runs the same protocol from the fast path (`fast::claim_ahead`,
//! `create_claimed_block`), the block created already holding the allocation that the
//! handle announced just before.

use ipnet::IpNet;

use super::occupied::Occupied;
use super::pools::Pool;
use super::walk::BlockWalk;
use super::{Ipam, Request, ds};
use crate::datastore::{Datastore, DatastoreError, Versioned};
use crate::error::{IpamError, Result};
use crate::model::time;
use crate::model::{AffinityState, BlockAffinity, IpamBlock, host_affinity};

/// A host may take over another host's empty block only if it was claimed this long ago
/// (Calico's `EmptyBlockMinReclaimAge`), so a block is not stolen between claim and first use.
const EMPTY_BLOCK_MIN_RECLAIM_AGE_SECS: i64 = 60;

/// When `block`'s affinity was claimed, in Unix seconds: its `affinityClaimTime`, and when
/// that is missing or unreadable, the time the block was created, which its sequence number
/// keeps. Calico (since v3.32) writes the claim time as it creates the block; a block is only
/// ever given an affinity by its creation (a claim creates it, a release removes the affinity
/// or deletes it), so the two times are the same. Blocks written by Calico before v3.32 have
/// no claim time, and an `IPAMBlock` CRD without the field (Calico v3.31's) prunes ours; the
/// sequence number starts at the creation time in Unix nanoseconds (Calico's `newBlock`,
/// invariant 4) and every write adds 1, so it stays within a second of that time for a billion
/// writes. A block from a Calico old enough to have started it at 0 reads as claimed in 1970,
/// i.e. long ago, which it was. Calico itself reads a missing claim time as "long ago": a block
/// claimed seconds before could be taken from its new owner before it used it, the very race
/// the minimum age is there to prevent.
fn claimed_at(block: &IpamBlock) -> i64 {
    block
        .affinity_claim_time
        .as_deref()
        .and_then(time::parse_rfc3339)
        .unwrap_or_else(|| i64::try_from(block.sequence_number / 1_000_000_000).unwrap_or(i64::MAX))
}

/// A block the host can use next.
pub(super) enum Candidate {
    /// No block exists at this CIDR yet.
    Unclaimed(IpNet),
    /// The block exists, is already ours and has space (we lost track of it, e.g. an
    /// interrupted claim).
    Mine(IpNet),
}

impl<D: Datastore> Ipam<D> {
    /// This host's affinity for `cidr`, from the request's listing or re-read after a
    /// conflict. `None` when it does not exist.
    pub(super) async fn host_affinity(
        &self,
        req: &mut Request<'_>,
        cidr: &IpNet,
    ) -> Result<Option<Versioned<BlockAffinity>>> {
        if let Some(Some(a)) = req.affinities.get(cidr) {
            return Ok(Some(a.clone()));
        }
        let a = self
            .store
            .get_affinity(req.host, cidr)
            .await
            .map_err(ds(format!("read affinity of {} for {cidr}", req.host)))?;
        match &a {
            Some(a) => {
                req.affinities.insert(*cidr, Some(a.clone()));
            }
            None => {
                req.affinities.remove(cidr);
            }
        }
        Ok(a)
    }

    /// Writes an affinity of this host, keeping the request's copy current. A conflict marks
    /// the copy stale; `NotFound` drops it and is a conflict too.
    pub(super) async fn put_affinity(
        &self,
        req: &mut Request<'_>,
        aff: &mut Versioned<BlockAffinity>,
        state: AffinityState,
    ) -> Result<()> {
        aff.value.state = state;
        let cidr = aff.value.cidr;
        match self.store.update_affinity(aff).await {
            Ok(rev) => {
                aff.revision = rev;
                req.affinities.insert(cidr, Some(aff.clone()));
                Ok(())
            }
            // Deleted since we read it (another writer of this host dropped it as stale, or
            // released the block): a lost race like a revision conflict, retried from fresh
            // reads rather than failing the ADD.
            Err(DatastoreError::NotFound) => {
                req.affinities.remove(&cidr);
                Err(IpamError::conflict(format!(
                    "set affinity of {} for {cidr} to {}: deleted concurrently",
                    req.host,
                    state.as_str()
                )))
            }
            Err(e) => {
                req.affinities.insert(cidr, None);
                Err(IpamError::store(format!(
                    "set affinity of {} for {cidr} to {}",
                    req.host,
                    state.as_str()
                ))(e))
            }
        }
    }

    /// Deletes an affinity, ignoring "already gone" and conflicts (someone else is dealing
    /// with it).
    async fn drop_affinity(
        &self,
        req: &mut Request<'_>,
        aff: &Versioned<BlockAffinity>,
    ) -> Result<()> {
        req.affinities.remove(&aff.value.cidr);
        match self.store.delete_affinity(aff).await {
            Ok(()) | Err(DatastoreError::NotFound | DatastoreError::Conflict) => Ok(()),
            Err(e) => Err(IpamError::store(format!(
                "delete affinity of {} for {}",
                aff.value.node, aff.value.cidr
            ))(e)),
        }
    }

    /// Gets one of this host's affine blocks ready for allocation: re-creates a missing
    /// block, drops a stale affinity (returns `None`), finishes an interrupted claim.
    pub(super) async fn prepare_affine_block(
        &self,
        req: &mut Request<'_>,
        cidr: IpNet,
    ) -> Result<Option<Versioned<IpamBlock>>> {
        let Some(aff) = self.host_affinity(req, &cidr).await? else {
            return Ok(None);
        };
        let block = self
            .store
            .get_block_for_update(&cidr)
            .await
            .map_err(ds(format!("read block {cidr}")))?;
        match block {
            // An affinity without its block (an interrupted claim) whose addresses a block of
            // another size now holds: the claim cannot be finished, and holds nothing.
            None if self.overlapping_block(&cidr).await?.is_some() => {
                self.drop_affinity(req, &aff).await?;
                Ok(None)
            }
            None => match self.claim_block(req, cidr, Some(aff)).await {
                Ok(b) => Ok(Some(b)),
                Err(IpamError::Datastore {
                    source: DatastoreError::NotFound,
                    ..
                }) => Ok(None),
                Err(e) => Err(e),
            },
            Some(b) if !b.value.is_affine_to(req.host) => {
                self.drop_affinity(req, &aff).await?;
                Ok(None)
            }
            Some(b) if aff.value.state != AffinityState::Confirmed => {
                self.confirm_existing_claim(req, aff, b).await.map(Some)
            }
            Some(b) => Ok(Some(b)),
        }
    }

    /// The block is ours but the affinity is not confirmed (an interrupted claim, or a
    /// release in progress): affinity `pending`, rewrite the block unchanged to fence any
    /// concurrent releaser, affinity `confirmed`.
    async fn confirm_existing_claim(
        &self,
        req: &mut Request<'_>,
        mut aff: Versioned<BlockAffinity>,
        mut block: Versioned<IpamBlock>,
    ) -> Result<Versioned<IpamBlock>> {
        self.put_affinity(req, &mut aff, AffinityState::Pending)
            .await?;
        self.write_block(&mut block).await?;
        self.put_affinity(req, &mut aff, AffinityState::Confirmed)
            .await?;
        Ok(block)
    }

    /// Claims the block at `cidr` for this host. `existing` is this host's affinity for it,
    /// when there is one already.
    pub(super) async fn claim_block(
        &self,
        req: &mut Request<'_>,
        cidr: IpNet,
        existing: Option<Versioned<BlockAffinity>>,
    ) -> Result<Versioned<IpamBlock>> {
        // 1. A pending affinity.
        let mut aff = match existing {
            Some(mut a) => {
                self.put_affinity(req, &mut a, AffinityState::Pending)
                    .await?;
                a
            }
            None => {
                let value = BlockAffinity::host(req.host, cidr, AffinityState::Pending);
                match self.store.create_affinity(&value).await {
                    Ok(revision) => Versioned { value, revision },
                    Err(DatastoreError::AlreadyExists) => {
                        req.affinities.remove(&cidr);
                        let Some(mut a) = self.host_affinity(req, &cidr).await? else {
                            return Err(IpamError::conflict(format!(
                                "claim block {cidr}: affinity vanished"
                            )));
                        };
                        if a.value.state != AffinityState::Confirmed {
                            self.put_affinity(req, &mut a, AffinityState::Pending)
                                .await?;
                        }
                        a
                    }
                    Err(e) => {
                        return Err(IpamError::store(format!(
                            "create affinity of {} for {cidr}",
                            req.host
                        ))(e));
                    }
                }
            }
        };
        req.affinities.insert(cidr, Some(aff.clone()));

        // 2. The block itself.
        req.mark_claimed(cidr);
        let new_block = IpamBlock::new(cidr, Some(host_affinity(req.host)), time::now_nanos())
            .map_err(IpamError::Corrupt)?;
        let block = match self.store.create_block(&new_block).await {
            Ok(revision) => Versioned {
                value: new_block,
                revision,
            },
            Err(DatastoreError::AlreadyExists) => {
                let found = self
                    .store
                    .get_block(&cidr)
                    .await
                    .map_err(ds(format!("read block {cidr}")))?;
                match found {
                    Some(b) if b.value.is_affine_to(req.host) => b,
                    _ => {
                        // Another host won the block; withdraw our claim.
                        self.drop_affinity(req, &aff).await?;
                        return Err(IpamError::conflict(format!(
                            "claim block {cidr}: claimed by another host"
                        )));
                    }
                }
            }
            Err(e) => return Err(IpamError::store(format!("create block {cidr}"))(e)),
        };

        // 3. Confirm (accepting a confirmation somebody else already wrote).
        if aff.value.state != AffinityState::Confirmed
            && let Err(e) = self
                .put_affinity(req, &mut aff, AffinityState::Confirmed)
                .await
        {
            if !e.is_conflict() {
                return Err(e);
            }
            match self.host_affinity(req, &cidr).await? {
                Some(a) if a.value.state == AffinityState::Confirmed => {}
                _ => return Err(e),
            }
        }
        Ok(block)
    }

    /// An existing block, other than one at exactly `cidr`, that holds some of `cidr`'s
    /// addresses: a block must not be created at `cidr` while there is one (`occupied.rs`).
    pub(super) async fn overlapping_block(&self, cidr: &IpNet) -> Result<Option<IpNet>> {
        let existing = self
            .store
            .list_block_cidrs()
            .await
            .map_err(ds("list blocks"))?;
        Ok(Occupied::new(existing).other_overlapping(cidr))
    }

    /// Picks the next block for this host among `pools` (Calico's `findUsableBlock`): the
    /// first CIDR of each pool's walk that no block holds yet; failing that, a block of ours
    /// with space; failing that, another host's empty block, reclaimed.
    pub(super) async fn find_usable_block(
        &self,
        req: &mut Request<'_>,
        pools: &[&Pool],
    ) -> Result<Option<Candidate>> {
        if let Some(cidr) = self.first_unclaimed(req, pools).await? {
            return Ok(Some(Candidate::Unclaimed(cidr)));
        }
        self.usable_existing_block(req, pools).await
    }

    /// The first CIDR of each pool's walk that no block holds yet (and none overlaps), from
    /// one listing of the block names per request.
    pub(super) async fn first_unclaimed(
        &self,
        req: &mut Request<'_>,
        pools: &[&Pool],
    ) -> Result<Option<IpNet>> {
        let listed = match &req.block_cidrs {
            Some(l) => l.clone(),
            None => {
                let l = self
                    .store
                    .list_block_cidrs()
                    .await
                    .map_err(ds("list blocks"))?;
                req.block_cidrs = Some(l.clone());
                l
            }
        };
        let existing = Occupied::new(listed);
        for pool in pools {
            if req.reservation_covering(&pool.cidr).is_some() {
                continue;
            }
            let mut walk = BlockWalk::new(pool.cidr, pool.block_size, req.host);
            while let Some(cidr) = walk.next() {
                if let Some(r) = req.reservation_covering(&cidr) {
                    walk.skip_reserved(&cidr, &r);
                    continue;
                }
                // Stops at the first gap, so a huge pool costs at most one step per block
                // that already exists in it (a larger block of another size is one step).
                if existing.contains(&cidr) {
                    continue;
                }
                match existing.other_overlapping(&cidr) {
                    None => return Ok(Some(cidr)),
                    Some(other) if other.contains(&cidr) => walk.skip_reserved(&cidr, &other),
                    Some(_) => {}
                }
            }
        }
        Ok(None)
    }

    /// Every block of every pool exists: a block of ours with space, else another host's
    /// empty block, reclaimed (`Unclaimed` once released); `None` leaves the listing for
    /// borrowing.
    async fn usable_existing_block(
        &self,
        req: &mut Request<'_>,
        pools: &[&Pool],
    ) -> Result<Option<Candidate>> {
        let blocks = self.store.list_blocks().await.map_err(ds("list blocks"))?;
        let mut reclaimable = Vec::new();
        for pool in pools {
            let walk = BlockWalk::new(pool.cidr, pool.block_size, req.host);
            let mut in_pool: Vec<&Versioned<IpamBlock>> = blocks
                .iter()
                .filter(|b| {
                    b.value.cidr.prefix_len() == pool.block_size
                        && pool.cidr.contains(&b.value.cidr)
                })
                .collect();
            in_pool.sort_by_key(|b| walk.position(&b.value.cidr));
            for b in in_pool {
                if req.reservation_covering(&b.value.cidr).is_some() {
                    continue;
                }
                let free = b.value.num_free(|ip| req.reserved(ip));
                if free == 0 {
                    continue;
                }
                if b.value.is_affine_to(req.host) {
                    return Ok(Some(Candidate::Mine(b.value.cidr)));
                }
                let host_or_none = b.value.affinity.is_none() || b.value.host().is_some();
                if b.value.empty() && host_or_none {
                    reclaimable.push(b.clone());
                }
            }
        }
        // Calico v3.32's last resort (calico#11149): nothing left to claim and none of ours
        // has room, so take over an empty block of another host, in walk order, if it was
        // claimed long enough ago. The release below is a compare-and-swap on the revision
        // listed, so a block its owner allocated from since is left alone.
        let now = i64::try_from(time::now_nanos() / 1_000_000_000).unwrap_or(i64::MAX);
        for b in reclaimable {
            if now.saturating_sub(claimed_at(&b.value)) < EMPTY_BLOCK_MIN_RECLAIM_AGE_SECS {
                continue;
            }
            let cidr = b.value.cidr;
            if self.release_block_affinity(b, true).await? {
                // Whoever wins the claim that follows, the listing is out of date.
                req.listed_blocks = None;
                return Ok(Some(Candidate::Unclaimed(cidr)));
            }
        }
        // Borrowing is next (for this family, in this step): it picks from this listing.
        req.listed_blocks = Some(blocks);
        Ok(None)
    }

    /// Takes a block away from its owner (Calico's `releaseBlockAffinity`): owner's affinity
    /// `pendingDeletion`, then the block is deleted if empty (or else, unless `require_empty`,
    /// left without affinity), then the affinity is deleted. The block write is a
    /// compare-and-swap on the revision the caller saw, so a concurrent allocation wins.
    /// `Ok(false)` when someone else changed things first.
    pub(super) async fn release_block_affinity(
        &self,
        mut block: Versioned<IpamBlock>,
        require_empty: bool,
    ) -> Result<bool> {
        let cidr = block.value.cidr;
        let lost = |e: &DatastoreError| {
            matches!(
                e,
                DatastoreError::Conflict | DatastoreError::NotFound | DatastoreError::AlreadyExists
            )
        };
        let empty = block.value.empty();
        if require_empty && !empty {
            return Ok(false);
        }
        let mut aff = match block.value.host() {
            Some(owner) => self
                .store
                .get_affinity(owner, &cidr)
                .await
                .map_err(ds(format!("read affinity of {owner} for {cidr}")))?,
            None => None,
        };
        let held_state = aff.as_ref().map(|a| a.value.state);
        if let Some(a) = aff.as_mut() {
            a.value.state = AffinityState::PendingDeletion;
            match self.store.update_affinity(a).await {
                Ok(rev) => a.revision = rev,
                Err(e) if lost(&e) => return Ok(false),
                Err(e) => return Err(IpamError::store(format!("release affinity for {cidr}"))(e)),
            }
        }
        let result = if empty {
            self.store.delete_block(&block).await
        } else {
            block.value.affinity = None;
            block.value.affinity_claim_time = None;
            block.value.sequence_number = block.value.sequence_number.wrapping_add(1);
            self.store.update_block(&block).await.map(|_| ())
        };
        match result {
            Ok(()) => {}
            // Deleted by someone else meanwhile: the CIDR is free all the same (Calico carries
            // on too).
            Err(DatastoreError::NotFound) if empty => {}
            Err(e) if lost(&e) => {
                // The block changed since the caller read it (its owner allocated from it):
                // it stays the owner's. Give the owner back the affinity as it was, so its
                // next request need not confirm the claim again (three writes); if anybody
                // touched the affinity since, this compare-and-swap fails and whoever did
                // decides. Calico leaves it `pendingDeletion`.
                if let (Some(mut a), Some(state)) = (aff, held_state) {
                    a.value.state = state;
                    let _ = self.store.update_affinity(&a).await;
                }
                return Ok(false);
            }
            Err(e) => return Err(IpamError::store(format!("release block {cidr}"))(e)),
        }
        if let Some(a) = aff {
            match self.store.delete_affinity(&a).await {
                Ok(()) => {}
                Err(e) if lost(&e) => {}
                Err(e) => return Err(IpamError::store(format!("delete affinity for {cidr}"))(e)),
            }
        }
        Ok(true)
    }
}
