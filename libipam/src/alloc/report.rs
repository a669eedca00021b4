//! Operator views (consistency check, pool usage, block listing) and pool administration.
//! These read everything and are not meant for the allocation path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::occupied::Occupied;
use super::{Ipam, ds};
use crate::datastore::{Datastore, Inventory, PoolList};
use crate::error::{IpamError, Result};
use crate::model::{AffinityState, AffinityType, IpPool, IpamBlock};
use crate::{names, validate};

/// An inconsistency found by [`Ipam::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The object concerned, e.g. `block 10.244.1.0/26`.
    pub object: String,
    /// What is wrong, as a sentence.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// One block, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockUsage {
    /// The block.
    pub cidr: IpNet,
    /// The pool containing it, if any still does.
    pub pool: Option<String>,
    /// `host:<node>`, `virtual:<name>`, or none.
    pub affinity: Option<String>,
    /// Addresses allocated.
    pub in_use: u32,
    /// Addresses free.
    pub free: u32,
}

/// Who holds one address, for operators (`calico-ipam show --ip`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressOwner {
    /// The block holding the address.
    pub block: IpNet,
    /// The block's affinity (`host:<node>`), if any.
    pub affinity: Option<String>,
    /// The allocation handle; `None` for an address in cooldown (released, not yet reusable).
    pub handle: Option<String>,
    /// The allocation's attributes (`node`, `pod`, `namespace`, `timestamp`, ...).
    pub attributes: BTreeMap<String, String>,
    /// When it was released, for an address in cooldown.
    pub released_at: Option<String>,
}

/// Usage of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    /// Pool name.
    pub name: String,
    /// Pool CIDR.
    pub cidr: IpNet,
    /// Block prefix length.
    pub block_size: u8,
    /// Whether the pool is disabled.
    pub disabled: bool,
    /// Addresses in the pool (saturates at `u128::MAX` for `::/0`).
    pub total: u128,
    /// Addresses allocated.
    pub in_use: u128,
    /// `total - in_use`.
    pub free: u128,
    /// The pool's blocks that exist.
    pub blocks: Vec<BlockUsage>,
}

fn problem(object: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        object: object.into(),
        message: message.into(),
    }
}

/// Everything wrong with `inv`:
/// - every object that could not be read (it fails the requests that read it);
/// - the IPAMConfig's and reservations' values the allocator cannot use;
/// - every pool that does not validate (it is left out of allocation) or overlaps another;
/// - every block that is internally inconsistent, or overlaps another block;
/// - every allocation's handle exists and counts it; every block a handle lists exists and
///   holds addresses for it;
/// - every confirmed affinity's block exists and names the affinity's node; every `host:`
///   block has an affinity.
pub fn check_inventory(inv: &Inventory) -> Vec<Problem> {
    let mut problems: Vec<Problem> = inv
        .unusable
        .iter()
        .map(|u| problem(&u.object, &u.reason))
        .collect();
    problems.extend(config_problems(inv));
    problems.extend(pool_problems(&inv.pools));
    problems.extend(object_problems(inv));
    problems
}

/// Values of the IPAMConfig and the reservations that decode but mean nothing.
fn config_problems(inv: &Inventory) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(mode) = inv
        .config
        .as_ref()
        .and_then(|c| c.kube_virt_vm_address_persistence.as_deref())
        .filter(|m| !matches!(*m, "Enabled" | "Disabled"))
    {
        problems.push(problem(
            "IPAMConfig default",
            format!("kubeVirtVMAddressPersistence {mode:?} is not Enabled or Disabled"),
        ));
    }
    for r in &inv.reservations {
        for entry in &r.spec.reserved_cidrs {
            let e = entry.trim();
            if e.parse::<IpNet>().is_err() && e.parse::<IpAddr>().is_err() {
                problems.push(problem(
                    format!("IPReservation {}", r.name),
                    format!("{entry:?} is neither a CIDR nor an address: it reserves nothing"),
                ));
            }
        }
    }
    problems
}

/// Every pool that does not validate, or overlaps a pool before it in name order.
fn pool_problems(pools: &[IpPool]) -> Vec<Problem> {
    let mut pools = pools.to_vec();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    let mut problems = Vec::new();
    for (i, pool) in pools.iter().enumerate() {
        let pool = pool.clone().with_defaults();
        let subject = format!("IPPool {}", pool.name);
        if let Err(e) = validate::validate_pool(&pool) {
            problems.push(problem(
                subject,
                format!("{e} (no address is allocated from it until this is fixed)"),
            ));
        } else if let Err(e) = validate::validate_new_pool(&pool, &pools[..i]) {
            problems.push(problem(subject, e.to_string()));
        }
    }
    problems
}

/// Validates `pool` on its own and against every other stored pool (one of the same name is
/// replaced, whether it can be read or not). A pool object of another name that cannot be read
/// is kept apart by its CIDR where that can still be read; where it cannot, no new pool is
/// accepted until that object is replaced or deleted, since whether they overlap is unknown.
pub fn validate_new_pool(pool: &IpPool, existing: &PoolList) -> Result<()> {
    validate::validate_new_pool(pool, &existing.pools)?;
    let Some(cidr) = pool.cidr() else {
        return Ok(()); // validate_new_pool refused it already
    };
    for u in existing.unreadable.iter().filter(|u| u.name != pool.name) {
        let e = match u.cidr {
            Some(other) if other.contains(&cidr.network()) || cidr.contains(&other.network()) => {
                validate::PoolError::OverlapsUnreadable {
                    name: pool.name.clone(),
                    cidr,
                    other: u.name.clone(),
                    other_cidr: other,
                    reason: u.reason.clone(),
                }
            }
            Some(_) => continue,
            None => validate::PoolError::BesideUnreadable {
                name: pool.name.clone(),
                other: u.name.clone(),
                reason: u.reason.clone(),
            },
        };
        return Err(e.into());
    }
    Ok(())
}

/// Blocks, handles and affinities, on their own and against each other.
fn object_problems(inv: &Inventory) -> Vec<Problem> {
    let mut problems = Vec::new();
    let by_cidr: BTreeMap<IpNet, &IpamBlock> = inv
        .blocks
        .iter()
        .map(|b| (b.value.cidr, &b.value))
        .collect();
    let handle_counts: BTreeMap<String, (&str, &BTreeMap<String, i64>)> = inv
        .handles
        .iter()
        .map(|h| {
            (
                names::handle_object_name(&h.value.handle_id),
                (h.value.handle_id.as_str(), &h.value.block),
            )
        })
        .collect();

    let occupied = Occupied::new(by_cidr.keys().copied());
    for b in by_cidr.values() {
        let subject = format!("block {}", b.cidr);
        problems.extend(
            b.consistency_problems()
                .into_iter()
                .map(|m| problem(&subject, m)),
        );
        // Reported by the larger block of the two.
        if let Some(inner) = occupied
            .other_overlapping(&b.cidr)
            .filter(|o| b.cidr.contains(o))
        {
            problems.push(problem(
                &subject,
                format!(
                    "overlaps block {inner}: an address in both can be allocated in each                      (pools with different block sizes cover this range); release the                      addresses of one of them and delete it"
                ),
            ));
        }
        for (handle, n) in b.handle_counts() {
            match handle_counts.get(&names::handle_object_name(&handle)) {
                None => problems.push(problem(
                    &subject,
                    format!("holds {n} address(es) for handle {handle}, which does not exist"),
                )),
                Some((_, counts)) => {
                    let counted = counts.get(&b.cidr.to_string()).copied().unwrap_or(0);
                    if counted < i64::from(n) {
                        problems.push(problem(
                            &subject,
                            format!(
                                "holds {n} address(es) for handle {handle}, but the handle counts {counted}"
                            ),
                        ));
                    }
                }
            }
        }
    }

    for (handle_id, counts) in handle_counts.values() {
        let subject = format!("handle {handle_id}");
        for (key, count) in counts.iter() {
            let Ok(cidr) = key.parse::<IpNet>() else {
                problems.push(problem(
                    &subject,
                    format!("lists {key:?}, which is not a CIDR"),
                ));
                continue;
            };
            match by_cidr.get(&cidr) {
                None => problems.push(problem(
                    &subject,
                    format!("counts {count} address(es) in block {cidr}, which does not exist"),
                )),
                Some(b) if b.ips_for_handle(handle_id).is_empty() => problems.push(problem(
                    &subject,
                    format!("counts {count} address(es) in block {cidr}, which holds none for it"),
                )),
                Some(_) => {}
            }
        }
    }

    let mut affine: BTreeSet<(String, IpNet)> = BTreeSet::new();
    for a in &inv.affinities {
        let a = &a.value;
        if a.affinity_type != AffinityType::Host {
            continue;
        }
        affine.insert((a.node.clone(), a.cidr));
        if a.state != AffinityState::Confirmed {
            continue;
        }
        let subject = format!("affinity of {} for {}", a.node, a.cidr);
        match by_cidr.get(&a.cidr) {
            None => problems.push(problem(
                &subject,
                format!("is confirmed, but block {} does not exist", a.cidr),
            )),
            Some(b) if !b.is_affine_to(&a.node) => problems.push(problem(
                &subject,
                format!(
                    "is confirmed, but block {} is affine to {}",
                    a.cidr,
                    b.affinity.as_deref().unwrap_or("nobody")
                ),
            )),
            Some(_) => {}
        }
    }
    for b in by_cidr.values() {
        if let Some(host) = b.host()
            && !affine.contains(&(host.to_owned(), b.cidr))
        {
            problems.push(problem(
                format!("block {}", b.cidr),
                format!("is affine to host {host}, but {host} has no affinity for it"),
            ));
        }
    }
    problems
}

/// What [`Ipam::check_all`] read, and the problems it found in it.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// Every problem, one per object and fault.
    pub problems: Vec<Problem>,
    /// Everything read (objects that could not be read are among the problems).
    pub inventory: Inventory,
}

impl<D: Datastore> Ipam<D> {
    /// The problems [`Ipam::check_all`] finds.
    pub async fn check(&self) -> Result<Vec<Problem>> {
        Ok(self.check_all().await?.problems)
    }

    /// Reads every object the allocator depends on, each on its own ([`Datastore::inventory`]),
    /// and checks them (see [`check_inventory`]).
    pub async fn check_all(&self) -> Result<Checked> {
        let inventory = self
            .store
            .inventory()
            .await
            .map_err(ds("read the IPAM objects"))?;
        Ok(Checked {
            problems: check_inventory(&inventory),
            inventory,
        })
    }
    /// Validates `pool` (on its own and against the other pools; a pool with the same name is
    /// replaced), fills in Calico's defaults and stores it. Returns what was stored.
    pub async fn apply_pool(&self, pool: IpPool) -> Result<IpPool> {
        let pool = pool.with_defaults();
        let existing = self.store.list_pools().await.map_err(ds("list IP pools"))?;
        validate_new_pool(&pool, &existing)?;
        self.store
            .apply_pool(&pool)
            .await
            .map_err(ds(format!("write pool {}", pool.name)))?;
        Ok(pool)
    }

    /// Who holds `ip`: `Ok(None)` when it is free (or its block does not exist yet); an error
    /// when it is in no pool.
    pub async fn owner_of(&self, ip: IpAddr) -> Result<Option<AddressOwner>> {
        let pools = self.load_pools().await?.usable;
        let pool = pools
            .iter()
            .find(|p| p.cidr.contains(&ip))
            .ok_or(IpamError::AddressNotInPool { ip })?;
        let cidr = pool.block_for(ip);
        let Some(block) = self
            .store
            .get_block(&cidr)
            .await
            .map_err(ds(format!("read block {cidr}")))?
        else {
            return Ok(None);
        };
        let block = block.value;
        let attribute = block
            .ordinal(ip)
            .and_then(|o| block.allocations.get(o as usize).copied().flatten())
            .and_then(|i| block.attributes.get(i as usize));
        Ok(attribute.map(|a| AddressOwner {
            block: block.cidr,
            affinity: block.affinity.clone(),
            handle: a.handle().map(str::to_string),
            attributes: a.secondary.clone().unwrap_or_default(),
            released_at: a.released_at().map(str::to_string),
        }))
    }

    /// Every block, in CIDR order.
    pub async fn blocks(&self) -> Result<Vec<BlockUsage>> {
        let pools = self.load_pools().await?.usable;
        let mut blocks = self.store.list_blocks().await.map_err(ds("list blocks"))?;
        blocks.sort_by_key(|b| b.value.cidr);
        Ok(blocks
            .iter()
            .map(|b| BlockUsage {
                cidr: b.value.cidr,
                pool: pools
                    .iter()
                    .find(|p| p.cidr.contains(&b.value.cidr))
                    .map(|p| p.name.clone()),
                affinity: b.value.affinity.clone(),
                in_use: b.value.in_use(),
                free: b.value.unallocated.len() as u32,
            })
            .collect())
    }

    /// Usage of every pool, in name order.
    pub async fn usage(&self) -> Result<Vec<PoolUsage>> {
        let pools = self.load_pools().await?.usable;
        let blocks = self.blocks().await?;
        Ok(pools
            .iter()
            .map(|p| {
                let host_bits = u32::from(p.cidr.max_prefix_len() - p.cidr.prefix_len());
                let total = 1u128.checked_shl(host_bits).unwrap_or(u128::MAX);
                let mine: Vec<BlockUsage> = blocks
                    .iter()
                    .filter(|b| b.pool.as_deref() == Some(p.name.as_str()))
                    .cloned()
                    .collect();
                let in_use = mine.iter().map(|b| u128::from(b.in_use)).sum::<u128>();
                PoolUsage {
                    name: p.name.clone(),
                    cidr: p.cidr,
                    block_size: p.block_size,
                    disabled: p.disabled,
                    total,
                    in_use,
                    free: total.saturating_sub(in_use),
                    blocks: mine,
                }
            })
            .collect())
    }
}
