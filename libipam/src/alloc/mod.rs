//! The block-affinity allocator (Calico's `libcalico-go/lib/ipam`), over any [`Datastore`].
//!
//! - `assign`: auto-assign and assign-a-specific-address;
//! - `claim`: finding and claiming new blocks, reclaiming empty ones;
//! - `release`: release by handle and by address;
//! - `report`: `check`, `usage` and `blocks`;
//! - `audit`: allocations against the workloads and nodes using them (pure).
//!
//! Every read-modify-write step runs inside [`retry_on_conflict`]; nothing else loops.

mod assign;
pub mod audit;
mod claim;
mod fast;
mod occupied;
mod pools;
mod release;
mod report;
mod requested;
mod walk;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;

use ipnet::IpNet;

use crate::datastore::{Datastore, DatastoreError, Versioned};
use crate::error::{IpamError, Result};
use crate::model::{AllowedUse, BlockAffinity, Cooldown, IpamBlock, IpamConfig, IpamHandle, time};
use crate::retry::{DATASTORE_RETRIES, retry_on_conflict};

pub use release::ExpectedAllocation;
pub use report::{
    AddressOwner, BlockUsage, Checked, PoolUsage, Problem, check_inventory, validate_new_pool,
};

/// Arguments of [`Ipam::auto_assign`].
#[derive(Debug, Clone)]
pub struct AutoAssignArgs {
    /// Number of IPv4 addresses wanted.
    pub num4: u32,
    /// Number of IPv6 addresses wanted.
    pub num6: u32,
    /// The allocation handle (e.g. `k8s-pod-network.<containerID>`).
    pub handle_id: String,
    /// Stored with each allocation (`node`, `pod`, `namespace`, `timestamp`, ...).
    pub attrs: BTreeMap<String, String>,
    /// The node allocating.
    pub hostname: String,
    /// IPv4 pools to use, by name or CIDR, in order; empty = automatic selection. Requested
    /// pools bypass nodeSelector, namespaceSelector and assignmentMode.
    pub ipv4_pools: Vec<String>,
    /// IPv6 pools to use, by name or CIDR, in order; empty = automatic selection.
    pub ipv6_pools: Vec<String>,
    /// Per-request block limit; 0 = use the IPAM config's. The more restrictive wins.
    pub max_blocks_per_host: u32,
    /// What the addresses are for (matched against pools' allowedUses).
    pub intended_use: AllowedUse,
    /// Labels of the pod's namespace, for pools' namespaceSelector. `None` = read them from
    /// the datastore for `namespace`, and only if some pool has a namespaceSelector.
    pub namespace_labels: Option<BTreeMap<String, String>>,
    /// The pod's namespace (for its labels, see `namespace_labels`).
    pub namespace: Option<String>,
    /// Return the addresses the handle already holds (topping up to `num4`/`num6`) instead
    /// of allocating more. Calico allocates more on a repeated ADD; we do not. Only addresses
    /// in pools this request may allocate from now count: one from a pool since disabled or
    /// deleted stays with the handle, and a new address is allocated beside it (as Calico).
    pub reuse_existing: bool,
}

impl AutoAssignArgs {
    /// Arguments for `num4` IPv4 and `num6` IPv6 workload addresses, everything else default.
    pub fn new(
        handle_id: impl Into<String>,
        hostname: impl Into<String>,
        num4: u32,
        num6: u32,
    ) -> Self {
        AutoAssignArgs {
            num4,
            num6,
            handle_id: handle_id.into(),
            attrs: BTreeMap::new(),
            hostname: hostname.into(),
            ipv4_pools: Vec::new(),
            ipv6_pools: Vec::new(),
            max_blocks_per_host: 0,
            intended_use: AllowedUse::Workload,
            namespace_labels: None,
            namespace: None,
            reuse_existing: false,
        }
    }
}

/// Addresses handed out by [`Ipam::auto_assign`], each with its block's mask
/// (e.g. `10.244.1.5/26`, `fd00:10:244::5/122`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutoAssignResult {
    /// IPv4 addresses.
    pub ipv4: Vec<IpNet>,
    /// IPv6 addresses.
    pub ipv6: Vec<IpNet>,
}

impl AutoAssignResult {
    /// IPv4 then IPv6.
    pub fn all(&self) -> Vec<IpNet> {
        self.ipv4.iter().chain(&self.ipv6).copied().collect()
    }
}

/// Arguments of [`Ipam::assign_ip`].
#[derive(Debug, Clone)]
pub struct AssignIpArgs {
    /// The address wanted.
    pub ip: IpAddr,
    /// The allocation handle.
    pub handle_id: String,
    /// Stored with the allocation.
    pub attrs: BTreeMap<String, String>,
    /// The node allocating; the address's block is claimed for it if nobody has it.
    pub hostname: String,
    /// What the address is for (the pool must allow it).
    pub intended_use: AllowedUse,
}

/// Calico's IPAM over a datastore.
#[derive(Debug)]
pub struct Ipam<D> {
    store: D,
    /// Stored pools that were left out because they do not decode or validate: name → why.
    ignored_pools: Mutex<BTreeMap<String, String>>,
}

impl<D> Ipam<D> {
    /// An allocator over `store`.
    pub fn new(store: D) -> Self {
        Ipam {
            store,
            ignored_pools: Mutex::default(),
        }
    }

    /// The stored pools this allocator has left out so far because they do not decode or do
    /// not validate (one bad object must not stop the others from being used), with why: for
    /// the caller's log.
    pub fn ignored_pools(&self) -> BTreeMap<String, String> {
        self.ignored_pools
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// The datastore.
    pub fn store(&self) -> &D {
        &self.store
    }

    /// Gives the datastore back.
    pub fn into_store(self) -> D {
        self.store
    }
}

/// What a fresh read says about a (possibly cached) copy of a block.
enum Recheck {
    /// The copy is current: a decision taken from it stands.
    Current,
    /// The block changed since the copy: the fresh version.
    Changed(Box<Versioned<IpamBlock>>),
    /// The block no longer exists.
    Gone,
}

/// What is known about the request's handle object.
#[derive(Debug, Clone)]
enum HandleCache {
    /// Must be read before it is written.
    Unknown,
    /// Not read, assumed not to exist (a new attachment): the first write creates it, and
    /// `AlreadyExists` tells the caller it was wrong.
    Assumed,
    /// Known not to exist.
    Absent,
    /// Known at this revision.
    Present(Versioned<IpamHandle>),
}

/// State shared by the steps of one request: read once, kept current as the request writes,
/// so nothing just written is read back.
struct Request<'a> {
    host: &'a str,
    handle_id: &'a str,
    attrs: &'a BTreeMap<String, String>,
    config: IpamConfig,
    reservations: Vec<IpNet>,
    handle: HandleCache,
    /// This host's affinities (both families); `None` = must be re-read before writing.
    affinities: BTreeMap<IpNet, Option<Versioned<BlockAffinity>>>,
    /// `affinities` came from a node cache's copy of the listing (no expiry, possibly stale)
    /// and has not been listed from the datastore in this request: before deciding that the
    /// host has no block with room, list it (`Ipam::relist_host_affinities`).
    affinities_from_cache: bool,
    /// The CIDRs of every block, listed once per request for the claim walks of both
    /// families (plus the blocks this request claimed); dropped after a lost race so the
    /// retry lists again.
    block_cidrs: Option<Vec<IpNet>>,
    /// Every block with its contents, as the claim step that found nothing to claim or
    /// reclaim listed them (a fresh read), for the borrowing that follows it: taken by that
    /// borrowing, and dropped by whatever makes it stale first (a lost race, a reclaim).
    listed_blocks: Option<Vec<Versioned<IpamBlock>>>,
}

impl Request<'_> {
    /// When released addresses become reusable, as of now.
    fn cooldown(&self) -> Cooldown {
        Cooldown {
            seconds: self.config.ip_cooldown_seconds,
            now_nanos: time::now_nanos(),
        }
    }

    fn reserved(&self, ip: IpAddr) -> bool {
        self.reservations.iter().any(|r| r.contains(&ip))
    }

    /// Takes up to `n` addresses for this request from `block` (Calico's order), after
    /// freeing what has cooled down, passing over reserved ones.
    fn take_from(&self, block: &mut IpamBlock, n: u32) -> Vec<IpAddr> {
        block.garbage_collect(self.cooldown());
        block.auto_assign(n, Some(self.handle_id), self.attrs, |ip| self.reserved(ip))
    }

    /// `cidr` is being claimed by this request: the claim walks of this request pass over it
    /// from now on, whoever wins it.
    fn mark_claimed(&mut self, cidr: IpNet) {
        if let Some(l) = self.block_cidrs.as_mut()
            && !l.contains(&cidr)
        {
            l.push(cidr);
        }
    }

    /// A reservation covering all of `block`, if any.
    fn reservation_covering(&self, block: &IpNet) -> Option<IpNet> {
        self.reservations
            .iter()
            .find(|r| r.contains(block))
            .copied()
    }
}

fn ds(op: impl Into<String>) -> impl FnOnce(DatastoreError) -> IpamError {
    IpamError::store(op)
}

impl<D: Datastore> Ipam<D> {
    /// Runs one operation with its writes grouped into one commit ([`Datastore::begin`]).
    /// Whatever the operation wrote is committed, whether it succeeded or not (its own
    /// rollbacks included), exactly as if each write had been committed on its own.
    async fn grouped<T>(&self, op: impl Future<Output = Result<T>>) -> Result<T> {
        self.store.begin();
        let out = op.await;
        let committed = self.store.commit().await.map_err(ds("commit"));
        let value = out?;
        committed?;
        Ok(value)
    }

    /// Runs one allocation for `host` between [`Datastore::prefetch_request`] and
    /// [`Datastore::end_request`], so that a backend may serve the request's first reads from
    /// one round trip, and nothing it prefetched outlives the request, used or not.
    async fn prefetched<T>(&self, host: &str, op: impl Future<Output = Result<T>>) -> Result<T> {
        let what = format!("read IPAM config, IP pools, IP reservations and affinities of {host}");
        self.read_ahead(self.store.prefetch_request(host), what, op)
            .await
    }

    /// Runs `op` after the read-ahead `first`, and then [`Datastore::end_request`].
    async fn read_ahead<T>(
        &self,
        first: impl Future<Output = crate::datastore::DsResult<()>>,
        what: String,
        op: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let out = match first.await {
            Ok(()) => op.await,
            Err(e) => Err(ds(what)(e)),
        };
        self.store.end_request();
        out
    }

    async fn new_request<'a>(
        &self,
        host: &'a str,
        handle_id: &'a str,
        attrs: &'a BTreeMap<String, String>,
    ) -> Result<Request<'a>> {
        if host.is_empty() {
            return Err(IpamError::InvalidArgs("a hostname is required".into()));
        }
        if handle_id.is_empty() {
            return Err(IpamError::InvalidArgs("a handle ID is required".into()));
        }
        let config = self
            .store
            .get_config()
            .await
            .map_err(ds("read IPAM config"))?;
        let reservations = self
            .store
            .list_reservations()
            .await
            .map_err(ds("list IP reservations"))?
            .iter()
            .flat_map(|r| r.spec.networks())
            .collect();
        Ok(Request {
            host,
            handle_id,
            attrs,
            config,
            reservations,
            handle: HandleCache::Unknown,
            affinities: BTreeMap::new(),
            affinities_from_cache: false,
            block_cidrs: None,
            listed_blocks: None,
        })
    }

    /// Every stored pool that decodes and validates, in name order, and the CIDRs of those
    /// left out (see [`pools::PoolSet`]). The ones left out are recorded in
    /// [`Ipam::ignored_pools`].
    async fn load_pools(&self) -> Result<pools::PoolSet> {
        let listed = self.store.list_pools().await.map_err(ds("list IP pools"))?;
        let set = pools::PoolSet::from_list(listed);
        if !set.ignored.is_empty()
            && let Ok(mut ignored) = self.ignored_pools.lock()
        {
            for (name, why) in &set.ignored {
                ignored.insert(name.clone(), why.clone());
            }
        }
        Ok(set)
    }

    /// The request's handle, read at most once. `fresh` asks for a read of the datastore
    /// rather than a copy only good as the base of a compare-and-swap write (a node cache's):
    /// what the handle holds is an answer, not a write.
    async fn current_handle(
        &self,
        req: &mut Request<'_>,
        fresh: bool,
    ) -> Result<Option<Versioned<IpamHandle>>> {
        if let HandleCache::Unknown = req.handle {
            let read = if fresh {
                self.store.get_handle(req.handle_id).await
            } else {
                self.store.get_handle_for_update(req.handle_id).await
            };
            req.handle = match read.map_err(ds(format!("read handle {}", req.handle_id)))? {
                Some(h) => HandleCache::Present(h),
                None => HandleCache::Absent,
            };
        }
        Ok(match &req.handle {
            HandleCache::Present(h) => Some(h.clone()),
            _ => None,
        })
    }

    /// One attempt at changing the request's handle: create, update, or delete when it ends
    /// up empty. A conflict forgets the cached copy so the next attempt re-reads it.
    async fn write_handle(
        &self,
        req: &mut Request<'_>,
        change: impl Fn(&mut IpamHandle),
    ) -> Result<()> {
        let op = format!("write handle {}", req.handle_id);
        let result = match self.current_handle(req, false).await? {
            None => {
                let mut h = IpamHandle::new(req.handle_id);
                change(&mut h);
                if h.is_empty() {
                    return Ok(());
                }
                self.store
                    .create_handle(&h)
                    .await
                    .map(|revision| HandleCache::Present(Versioned { value: h, revision }))
            }
            Some(mut h) => {
                change(&mut h.value);
                if h.value.is_empty() {
                    self.store
                        .delete_handle(&h)
                        .await
                        .map(|()| HandleCache::Absent)
                } else {
                    self.store.update_handle(&h).await.map(|revision| {
                        h.revision = revision;
                        HandleCache::Present(h)
                    })
                }
            }
        };
        match result {
            Ok(cache) => {
                req.handle = cache;
                Ok(())
            }
            Err(e) => {
                req.handle = HandleCache::Unknown;
                // Gone since it was read (another release): re-read and retry, like a conflict.
                Err(IpamError::store(op)(release::gone_is_conflict(e)))
            }
        }
    }

    /// Takes back a handle increment after the block write it announced is known not to have
    /// happened (never after a failure that may hide an applied write: the handle must keep
    /// naming the block so that DEL finds the addresses). Best effort: a handle that
    /// over-counts is tolerated by every reader.
    async fn undo_handle_increment(&self, req: &mut Request<'_>, block: &IpNet, n: u32) {
        let _ = retry_on_conflict(DATASTORE_RETRIES, "undo handle increment", async || {
            self.write_handle(req, |h| h.decrement(block, n)).await
        })
        .await;
    }

    /// Re-reads a block whose copy (possibly from a node cache) led to a decision that no
    /// write will validate: "no room", "not allocated here", "already taken".
    async fn recheck_block(&self, copy: &Versioned<IpamBlock>) -> Result<Recheck> {
        let cidr = copy.value.cidr;
        Ok(
            match self
                .store
                .get_block(&cidr)
                .await
                .map_err(ds(format!("read block {cidr}")))?
            {
                None => Recheck::Gone,
                Some(b) if b.revision == copy.revision => Recheck::Current,
                Some(b) => Recheck::Changed(Box::new(b)),
            },
        )
    }

    /// Writes a changed block (sequence number +1, compare-and-swap on its revision).
    async fn write_block(&self, block: &mut Versioned<IpamBlock>) -> Result<()> {
        block.value.sequence_number = block.value.sequence_number.wrapping_add(1);
        // (Wrapping: the number comes from the datastore, as Go's uint64 it wraps.)
        // Deprecated field, always written false as Calico does.
        block.value.strict_affinity = false;
        block.revision = self.store.update_block(block).await.map_err(|e| {
            // A block deleted since it was read is a lost race like any other: the retry
            // re-reads it (and finds it gone).
            IpamError::store(format!("update block {}", block.value.cidr))(
                release::gone_is_conflict(e),
            )
        })?;
        Ok(())
    }

    /// Allocates up to `want` addresses from `block` for the request: handle first, then the
    /// block (Calico's order); the handle is decremented again if the block write fails.
    async fn assign_from_block(
        &self,
        req: &mut Request<'_>,
        mut block: Versioned<IpamBlock>,
        want: u32,
    ) -> Result<Vec<IpNet>> {
        let take = |block: &mut Versioned<IpamBlock>| req.take_from(&mut block.value, want);
        let mut ips = take(&mut block);
        if ips.is_empty() {
            // "Full" is a decision: it must not rest on a stale cached copy.
            match self.recheck_block(&block).await? {
                Recheck::Current => return Ok(Vec::new()),
                Recheck::Gone => {
                    return Err(IpamError::conflict(format!(
                        "block {} disappeared",
                        block.value.cidr
                    )));
                }
                Recheck::Changed(fresh) => {
                    block = *fresh;
                    ips = take(&mut block);
                    if ips.is_empty() {
                        return Ok(Vec::new());
                    }
                }
            }
        }
        let cidr = block.value.cidr;
        let n = ips.len() as u32;
        self.write_handle(req, |h| h.increment(&cidr, n)).await?;
        if let Err(e) = self.write_block(&mut block).await {
            if e.write_not_applied() {
                self.undo_handle_increment(req, &cidr, n).await;
            }
            return Err(e);
        }
        Ok(ips.into_iter().map(|ip| block.value.masked(ip)).collect())
    }
}
