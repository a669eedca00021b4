//! Handing out addresses (Calico's `AutoAssign`): planning each family's share, the steady-state
//! path (`fast.rs`) first, then the general path: the host's blocks, a claim, borrowing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::claim::Candidate;
use super::fast::Fast;
use super::pools::{self, Pool, PoolSet, Selection};
use super::{AutoAssignArgs, AutoAssignResult, HandleCache, Ipam, Request, ds};
use crate::datastore::{Datastore, Versioned};
use crate::error::{IpamError, Result};
use crate::model::{AffinityType, IpFamily, IpamBlock};
use crate::retry::{DATASTORE_RETRIES, retry_on_conflict};
use crate::selector::Selector;

fn family_mut(result: &mut AutoAssignResult, family: IpFamily) -> &mut Vec<IpNet> {
    match family {
        IpFamily::V4 => &mut result.ipv4,
        IpFamily::V6 => &mut result.ipv6,
    }
}

/// Outcome of one allocation step.
enum Step {
    /// Addresses allocated from one block.
    Got(Vec<IpNet>),
    /// No affine block has space and no block can be claimed: borrow or give up.
    NoFreeBlocks,
}

/// Node and namespace labels, each read at most once per request and only when a pool
/// selector needs them.
#[derive(Default)]
struct Labels {
    node: Option<BTreeMap<String, String>>,
    namespace: Option<BTreeMap<String, String>>,
}

/// One family's share of an auto-assign request.
pub(super) struct FamilyRequest<'a> {
    pub(super) family: IpFamily,
    pub(super) num: u32,
    pub(super) pools: Vec<&'a Pool>,
    pub(super) limit: u32,
}

impl<D: Datastore> Ipam<D> {
    /// Allocates `num4` IPv4 and `num6` IPv6 addresses for `handle_id` on `hostname`.
    ///
    /// IPv4 is handled completely before IPv6. Either family failing (including getting fewer
    /// addresses than asked for) releases everything this call allocated and returns the
    /// error, so a caller never holds half a dual-stack result.
    ///
    /// A new attachment has no handle yet, so the handle is not read first: the steady-state
    /// path creates it, and only if it turns out to exist (a repeated ADD) is it read and the
    /// request planned again around what it already holds.
    pub async fn auto_assign(&self, args: &AutoAssignArgs) -> Result<AutoAssignResult> {
        self.grouped(self.prefetched(&args.hostname, self.auto_assign_in_group(args)))
            .await
    }

    async fn auto_assign_in_group(&self, args: &AutoAssignArgs) -> Result<AutoAssignResult> {
        let all_pools = self.load_pools().await?;
        // A bad pool list is reported even for a family that was not asked for.
        pools::resolve_requested(&all_pools, &args.ipv4_pools, IpFamily::V4)?;
        pools::resolve_requested(&all_pools, &args.ipv6_pools, IpFamily::V6)?;
        let mut req = self
            .new_request(&args.hostname, &args.handle_id, &args.attrs)
            .await?;
        // No address of a pool left out is handed out by another pool over its range.
        req.reservations
            .extend(all_pools.fenced.iter().map(|f| f.cidr));
        let mut labels = Labels::default();
        let mut affinities_loaded = false;
        let mut optimistic = true;
        loop {
            // 1. What each family still needs and from which pools. Nothing is written yet,
            //    so a configuration error in either family needs no rollback.
            let mut result = AutoAssignResult::default();
            let plans = self
                .plan_families(
                    &mut req,
                    args,
                    &all_pools,
                    &mut labels,
                    optimistic,
                    &mut result,
                )
                .await?;
            if plans.is_empty() {
                return Ok(result);
            }
            if !affinities_loaded {
                self.load_host_affinities(&mut req).await?;
                if let Some(node_labels) = &labels.node {
                    for plan in &plans {
                        self.retire_unselected_affinities(
                            &mut req,
                            &all_pools.usable,
                            plan,
                            node_labels,
                        )
                        .await;
                    }
                }
                affinities_loaded = true;
            }
            if optimistic && matches!(req.handle, HandleCache::Unknown) {
                req.handle = HandleCache::Assumed;
            }

            // 2. Allocate; on any failure give back what this call took.
            let mut fresh: Vec<IpNet> = Vec::new();
            let outcome: Result<bool> = async {
                let done = match self.assign_fast(&mut req, &plans, &mut fresh).await? {
                    Fast::HandleExists => return Ok(false),
                    Fast::Done(done) => done,
                };
                if args.reuse_existing && matches!(req.handle, HandleCache::Assumed) {
                    // Nothing written, and whether the handle holds addresses is unknown.
                    return Ok(false);
                }
                for plan in plans.iter().filter(|p| !done.contains(&p.family)) {
                    self.assign_family(&mut req, plan, &mut fresh).await?;
                }
                Ok(true)
            }
            .await;
            match outcome {
                Ok(true) => {
                    for n in fresh {
                        family_mut(&mut result, IpFamily::of_net(&n)).push(n);
                    }
                    return Ok(result);
                }
                Ok(false) => {
                    // Plan again from what the handle really holds.
                    optimistic = false;
                    req.handle = HandleCache::Unknown;
                }
                Err(e) => {
                    self.roll_back(&fresh).await;
                    return Err(e);
                }
            }
        }
    }

    /// Each family's remaining need and its pools. Unless `optimistic`, what the handle
    /// already holds in those pools counts (with `reuse_existing`) and goes into `result`.
    async fn plan_families<'p>(
        &self,
        req: &mut Request<'_>,
        args: &AutoAssignArgs,
        all_pools: &'p PoolSet,
        labels: &mut Labels,
        optimistic: bool,
        result: &mut AutoAssignResult,
    ) -> Result<Vec<FamilyRequest<'p>>> {
        let mut plans = Vec::new();
        for (family, num, requested) in [
            (IpFamily::V4, args.num4, &args.ipv4_pools),
            (IpFamily::V6, args.num6, &args.ipv6_pools),
        ] {
            if num == 0 {
                continue;
            }
            // The Node is read only when a pool of the family selects nodes: with every
            // nodeSelector `all()` its labels decide nothing (and no affinity has to be
            // retired for them), so a node's first ADD need not read it.
            let needs_node = requested.is_empty()
                && all_pools
                    .usable
                    .iter()
                    .any(|p| p.family() == family && p.node_selector != Selector::All);
            if needs_node && labels.node.is_none() {
                labels.node = Some(
                    self.store
                        .node_labels(&args.hostname)
                        .await
                        .map_err(ds(format!("read node {}", args.hostname)))?
                        .unwrap_or_default(),
                );
            }
            let needs_namespace = requested.is_empty()
                && all_pools.usable.iter().any(|p| {
                    p.family() == family && !p.disabled && p.namespace_selector != Selector::All
                });
            if needs_namespace && labels.namespace.is_none() {
                labels.namespace = Some(match (&args.namespace_labels, &args.namespace) {
                    (Some(l), _) => l.clone(),
                    (None, Some(ns)) => self
                        .store
                        .namespace_labels(ns)
                        .await
                        .map_err(ds(format!("read namespace {ns}")))?
                        .unwrap_or_default(),
                    (None, None) => BTreeMap::new(),
                });
            }
            let no_labels = BTreeMap::new();
            let selection = Selection {
                family,
                requested,
                node_labels: labels.node.as_ref().unwrap_or(&no_labels),
                namespace_labels: labels.namespace.as_ref().unwrap_or(&no_labels),
                intended_use: args.intended_use,
                host: &args.hostname,
            };
            let pools = pools::determine_pools(all_pools, &selection)?;
            // What the handle holds counts only where this request could allocate now: an
            // address from a pool since disabled or deleted (or not asked for) is kept by the
            // handle but not returned, and a new one is allocated, as Calico would.
            let held: Vec<IpNet> = if args.reuse_existing && !optimistic {
                self.held_by_handle(req, family)
                    .await?
                    .into_iter()
                    .filter(|ip| pools.iter().any(|p| p.cidr.contains(&ip.addr())))
                    .collect()
            } else {
                Vec::new()
            };
            family_mut(result, family).extend(held.iter().take(num as usize));
            if held.len() >= num as usize {
                continue;
            }
            plans.push(FamilyRequest {
                family,
                num: num - held.len() as u32,
                limit: req.config.block_limit(args.max_blocks_per_host),
                pools,
            });
        }
        Ok(plans)
    }

    /// Releases addresses this call allocated before it failed. Errors are ignored: the
    /// caller reports the original failure, and a later DEL releases by handle anyway.
    async fn roll_back(&self, fresh: &[IpNet]) {
        if fresh.is_empty() {
            return;
        }
        let ips: Vec<IpAddr> = fresh.iter().map(IpNet::addr).collect();
        let _ = self.release_ips(&ips).await;
    }

    /// One listing of this host's affinities, reused for both families: the node cache's
    /// copy when the datastore keeps one (it only says which blocks to try first; see
    /// [`Ipam::relist_host_affinities`]), else a read.
    async fn load_host_affinities(&self, req: &mut Request<'_>) -> Result<()> {
        let (listed, from_cache) = match self.store.cached_host_affinities(req.host) {
            Some(cached) => (cached, true),
            None => (
                self.store
                    .list_host_affinities(req.host)
                    .await
                    .map_err(ds(format!("list affinities of {}", req.host)))?,
                false,
            ),
        };
        req.affinities_from_cache = from_cache;
        for a in listed {
            if a.value.affinity_type == AffinityType::Host
                && a.value.node == req.host
                && !a.value.deleted
            {
                req.affinities.insert(a.value.cidr, Some(a));
            }
        }
        Ok(())
    }

    /// Lists this host's affinities from the datastore if the request's listing came from a
    /// node cache, replacing it; `false` when it was already a read (nothing to do). Called
    /// before any decision that the host has no block with room (claiming a block, borrowing,
    /// "block limit reached", "strict affinity"): a cached list may lack a block claimed for
    /// this host by another process (calico-node's tunnel address, a request with another
    /// cache) or name one taken away, and neither may lead to a claim or a refusal.
    async fn relist_host_affinities(&self, req: &mut Request<'_>) -> Result<bool> {
        if !req.affinities_from_cache {
            return Ok(false);
        }
        let listed = self
            .store
            .list_host_affinities(req.host)
            .await
            .map_err(ds(format!("list affinities of {}", req.host)))?;
        req.affinities_from_cache = false;
        req.affinities = listed
            .into_iter()
            .filter(|a| {
                a.value.affinity_type == AffinityType::Host
                    && a.value.node == req.host
                    && !a.value.deleted
            })
            .map(|a| (a.value.cidr, Some(a)))
            .collect();
        Ok(true)
    }

    /// Addresses of `family` the request's handle already holds.
    async fn held_by_handle(&self, req: &mut Request<'_>, family: IpFamily) -> Result<Vec<IpNet>> {
        let Some(handle) = self.current_handle(req, true).await? else {
            return Ok(Vec::new());
        };
        let mut held = Vec::new();
        for cidr in handle.value.blocks() {
            if IpFamily::of_net(&cidr) != family {
                continue;
            }
            if let Some(b) = self
                .store
                .get_block(&cidr)
                .await
                .map_err(ds(format!("read block {cidr}")))?
            {
                let ips = b.value.ips_for_handle(req.handle_id);
                held.extend(ips.into_iter().map(|ip| b.value.masked(ip)));
            }
        }
        Ok(held)
    }

    /// Releases (when empty) this host's blocks in enabled pools whose nodeSelector no
    /// longer matches the node, as Calico does on every assignment. Best effort.
    async fn retire_unselected_affinities(
        &self,
        req: &mut Request<'_>,
        all_pools: &[Pool],
        fam: &FamilyRequest<'_>,
        node_labels: &BTreeMap<String, String>,
    ) {
        let stale: Vec<IpNet> = req
            .affinities
            .keys()
            .filter(|c| IpFamily::of_net(c) == fam.family)
            .filter(|c| {
                all_pools.iter().any(|p| {
                    p.cidr.contains(*c)
                        && !p.disabled
                        && !p.node_selector.matches(node_labels)
                        && !fam.pools.iter().any(|q| q.name == p.name)
                })
            })
            .copied()
            .collect();
        for cidr in stale {
            if let Ok(Some(block)) = self.store.get_block(&cidr).await
                && block.value.is_affine_to(req.host)
                && matches!(self.release_block_affinity(block, true).await, Ok(true))
            {
                req.affinities.remove(&cidr);
            }
        }
    }

    /// Allocates `fam.num` addresses of one family, pushing each into `out` as soon as it is
    /// written (so the caller can roll back on a later failure).
    async fn assign_family(
        &self,
        req: &mut Request<'_>,
        fam: &FamilyRequest<'_>,
        out: &mut Vec<IpNet>,
    ) -> Result<()> {
        let mut affine: Vec<IpNet> = req
            .affinities
            .keys()
            .filter(|c| fam.pools.iter().any(|p| p.cidr.contains(*c)))
            .copied()
            .collect();
        let mut full = BTreeSet::new();
        let mut got = 0u32;
        let op = format!("assign {} addresses for {}", fam.family, req.host);
        while got < fam.num {
            let want = fam.num - got;
            let step = retry_on_conflict(DATASTORE_RETRIES, &op, async || {
                let step = self.host_step(req, fam, &mut affine, &mut full, want).await;
                if step.as_ref().is_err_and(|e| e.is_conflict()) {
                    // A lost race: the retry lists the blocks again.
                    req.block_cidrs = None;
                    req.listed_blocks = None;
                }
                step
            })
            .await?;
            match step {
                Step::Got(ips) => {
                    got += ips.len() as u32;
                    out.extend(ips);
                }
                Step::NoFreeBlocks => {
                    if req.config.strict_affinity {
                        return Err(if req.config.auto_allocate_blocks {
                            IpamError::StrictAffinityExhausted {
                                host: req.host.to_owned(),
                                family: fam.family,
                                requested: fam.num,
                                assigned: got,
                            }
                        } else {
                            IpamError::AutoAllocateDisabled {
                                host: req.host.to_owned(),
                                family: fam.family,
                            }
                        });
                    }
                    let borrowed = self.borrow(req, fam, want).await?;
                    got += borrowed.len() as u32;
                    out.extend(borrowed);
                    if got < fam.num {
                        return Err(IpamError::Exhausted {
                            family: fam.family,
                            pools: fam.pools.iter().map(|p| p.cidr).collect(),
                            requested: fam.num,
                            assigned: got,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// One step: allocate from the first affine block with space, else claim a new block
    /// and allocate from it.
    async fn host_step(
        &self,
        req: &mut Request<'_>,
        fam: &FamilyRequest<'_>,
        affine: &mut Vec<IpNet>,
        full: &mut BTreeSet<IpNet>,
        want: u32,
    ) -> Result<Step> {
        loop {
            for cidr in affine.clone() {
                if full.contains(&cidr) {
                    continue;
                }
                let Some(block) = self.prepare_affine_block(req, cidr).await? else {
                    affine.retain(|c| *c != cidr);
                    continue;
                };
                let ips = self.assign_from_block(req, block, want).await?;
                if ips.is_empty() {
                    full.insert(cidr);
                    continue;
                }
                return Ok(Step::Got(ips));
            }
            // "No affine block has room" must not rest on a cached listing: list, and try
            // the blocks it adds. The blocks found full (each confirmed by a fresh read) still
            // count towards the limit; the others are the listing's.
            if !self.relist_host_affinities(req).await? {
                break;
            }
            let listed: Vec<IpNet> = req
                .affinities
                .keys()
                .filter(|c| fam.pools.iter().any(|p| p.cidr.contains(*c)))
                .copied()
                .collect();
            affine.retain(|c| full.contains(c) || listed.contains(c));
            let mut added = false;
            for c in listed {
                if !affine.contains(&c) {
                    affine.push(c);
                    added = true;
                }
            }
            if !added {
                break;
            }
        }

        if affine.len() as u32 >= fam.limit {
            return Err(IpamError::BlockLimit {
                limit: fam.limit,
                host: req.host.to_owned(),
            });
        }
        if !req.config.auto_allocate_blocks {
            return Ok(Step::NoFreeBlocks);
        }
        let block = match self.find_usable_block(req, &fam.pools).await? {
            None => return Ok(Step::NoFreeBlocks),
            Some(Candidate::Unclaimed(cidr)) => self.claim_block(req, cidr, None).await?,
            Some(Candidate::Mine(cidr)) => {
                let existing = self.host_affinity(req, &cidr).await?;
                let found = match existing {
                    Some(_) => self.prepare_affine_block(req, cidr).await?,
                    None => Some(self.claim_block(req, cidr, None).await?),
                };
                let Some(block) = found else {
                    return Err(IpamError::conflict(format!("block {cidr} changed owner")));
                };
                block
            }
        };
        let cidr = block.value.cidr;
        if !affine.contains(&cidr) {
            affine.push(cidr);
        }
        let ips = self.assign_from_block(req, block, want).await?;
        if ips.is_empty() {
            // Only reserved addresses left in a fresh block; look again.
            full.insert(cidr);
            return Err(IpamError::conflict(format!(
                "block {cidr} has no usable address"
            )));
        }
        Ok(Step::Got(ips))
    }

    /// Takes addresses from other hosts' blocks (strict affinity off, nothing left to
    /// claim), walking each pool's existing blocks in this host's walk order.
    ///
    /// The blocks come from one listing with their contents (the one the claim step just made,
    /// or a new one), not one read per block: a node that must borrow in a pool of 1,000 full
    /// blocks used to read all 1,000 one by one. The listing is a fresh read, so "this block is
    /// full" is decided from it (invariant 3a); a block with room is written from its listed
    /// copy, a compare-and-swap that fails if it changed since, and only then re-read.
    async fn borrow(
        &self,
        req: &mut Request<'_>,
        fam: &FamilyRequest<'_>,
        want: u32,
    ) -> Result<Vec<IpNet>> {
        let blocks = match req.listed_blocks.take() {
            Some(b) => b,
            None => self.store.list_blocks().await.map_err(ds("list blocks"))?,
        };
        let cooldown = req.cooldown();
        let mut got: Vec<IpNet> = Vec::new();
        for pool in &fam.pools {
            let walk = super::walk::BlockWalk::new(pool.cidr, pool.block_size, req.host);
            let mut in_pool: Vec<&Versioned<IpamBlock>> = blocks
                .iter()
                .filter(|b| {
                    b.value.cidr.prefix_len() == pool.block_size
                        && pool.cidr.contains(&b.value.cidr)
                })
                .collect();
            in_pool.sort_by_key(|b| walk.position(&b.value.cidr));
            for listed in in_pool {
                let remaining = want - got.len() as u32;
                if remaining == 0 {
                    return Ok(got);
                }
                let cidr = listed.value.cidr;
                if req.reservation_covering(&cidr).is_some() {
                    continue;
                }
                let mut trial = listed.value.clone();
                trial.garbage_collect(cooldown);
                if trial.num_free(|ip| req.reserved(ip)) == 0 {
                    continue;
                }
                let op = format!("borrow addresses from block {cidr}");
                let mut first = Some(listed.clone());
                let ips = retry_on_conflict(DATASTORE_RETRIES, &op, async || {
                    let block = match first.take() {
                        Some(b) => Some(b),
                        // The listed copy was stale: read this block, and only this one.
                        None => self
                            .store
                            .get_block(&cidr)
                            .await
                            .map_err(ds(format!("read block {cidr}")))?,
                    };
                    match block {
                        Some(b) => self.assign_from_block(req, b, remaining).await,
                        None => Ok(Vec::new()),
                    }
                })
                .await?;
                got.extend(ips);
            }
        }
        Ok(got)
    }
}
