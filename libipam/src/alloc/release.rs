//! Giving addresses back (Calico's `ReleaseByHandle`, `ReleaseIPs`) and looking them up.
//!
//! A block that becomes empty is deleted only when it has no affinity; a host's own blocks
//! stay with it even when empty (they are reclaimed by another host or by a garbage
//! collector, never on release).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::{Ipam, Recheck, ds};
use crate::datastore::{Datastore, DatastoreError, Versioned};
use crate::error::{IpamError, Result};
use crate::model::{Cooldown, IpamBlock, IpamHandle, ReleaseOutcome, time};
use crate::retry::{DATASTORE_RETRIES, retry_on_conflict};

/// An allocation as a report recorded it, for [`Ipam::release_if_unchanged`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedAllocation {
    /// The address.
    pub ip: IpAddr,
    /// Its handle then (`None`: any).
    pub handle: Option<String>,
    /// Its sequence number then (`None`: any).
    pub sequence_number: Option<u64>,
}

impl ExpectedAllocation {
    /// Whether `block` still holds this allocation.
    fn matches(&self, block: &IpamBlock) -> bool {
        let Some(ord) = block.ordinal(self.ip) else {
            return false;
        };
        let attr = block
            .allocations
            .get(ord as usize)
            .copied()
            .flatten()
            .and_then(|i| block.attributes.get(i as usize));
        let Some(attr) = attr else {
            return false;
        };
        let handle_ok = self.handle.is_none() || attr.handle() == self.handle.as_deref();
        let seq_ok = self.sequence_number.is_none()
            || block.sequence_number_for_allocation.get(&ord.to_string())
                == self.sequence_number.as_ref();
        handle_ok && seq_ok
    }
}

impl<D: Datastore> Ipam<D> {
    /// Releases every address held by `handle_id`; returns them. An unknown handle releases
    /// nothing and is not an error (DEL is idempotent).
    ///
    /// Blocks first, then one handle write dropping their entries. If that write finds the
    /// handle changed (or the copy it started from was stale), the blocks the current handle
    /// lists are released too before trying again, so nothing the handle holds is left behind.
    pub async fn release_by_handle(&self, handle_id: &str) -> Result<Vec<IpAddr>> {
        let first = self.store.prefetch_release(handle_id);
        let what = format!("read handle {handle_id} and IPAM config");
        self.grouped(self.read_ahead(first, what, self.release_by_handle_in_group(handle_id)))
            .await
    }

    async fn release_by_handle_in_group(&self, handle_id: &str) -> Result<Vec<IpAddr>> {
        let Some(handle) = self.handle_for_update(handle_id).await? else {
            return Ok(Vec::new());
        };
        self.store
            .prefetch_blocks(&handle.value.blocks())
            .await
            .map_err(ds(format!("read the blocks of handle {handle_id}")))?;
        let cooldown = self.release_cooldown().await?;
        let mut released = Vec::new();
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut known = Some(handle);
        let op = format!("release handle {handle_id}");
        retry_on_conflict(DATASTORE_RETRIES, &op, async || {
            let mut h = match known.take() {
                Some(h) => h,
                None => match self.get_handle(handle_id).await? {
                    Some(h) => h,
                    None => return Ok(()),
                },
            };
            let todo: Vec<String> = h
                .value
                .block
                .keys()
                .filter(|k| !done.contains(*k))
                .cloned()
                .collect();
            for key in todo {
                if let Ok(cidr) = key.parse::<IpNet>() {
                    released.extend(self.release_in_block(handle_id, cidr, cooldown).await?);
                }
                done.insert(key);
            }
            h.value.block.retain(|k, _| !done.contains(k));
            self.put_or_delete_handle(h).await
        })
        .await?;
        Ok(released)
    }

    /// Releases `handle_id`'s addresses in one block.
    async fn release_in_block(
        &self,
        handle_id: &str,
        cidr: IpNet,
        cooldown: Cooldown,
    ) -> Result<Vec<IpAddr>> {
        let op = format!("release handle {handle_id} in block {cidr}");
        retry_on_conflict(DATASTORE_RETRIES, &op, async || {
            let Some(mut block) = self.block_for_update(&cidr).await? else {
                return Ok(Vec::new());
            };
            let release = |b: &mut Versioned<IpamBlock>| {
                b.value.garbage_collect(cooldown);
                b.value.release_by_handle_with(handle_id, cooldown)
            };
            let mut ips = release(&mut block);
            if ips.is_empty() {
                // "Nothing of this handle here" must come from a current copy.
                match self.recheck_block(&block).await? {
                    Recheck::Current | Recheck::Gone => return Ok(Vec::new()),
                    Recheck::Changed(fresh) => {
                        block = *fresh;
                        ips = release(&mut block);
                        if ips.is_empty() {
                            return Ok(Vec::new());
                        }
                    }
                }
            }
            self.store_released_block(block).await?;
            Ok(ips)
        })
        .await
    }

    /// Releases the given addresses wherever they are; returns those that were not allocated.
    pub async fn release_ips(&self, ips: &[IpAddr]) -> Result<Vec<IpAddr>> {
        self.grouped(self.release_ips_in_group(ips, &BTreeMap::new()))
            .await
    }

    /// Releases each address only if it is still the allocation a report saw: the same handle
    /// and sequence number (Calico's `ReleaseOptions`; an address released and allocated again
    /// since has a new sequence number). Returns those not released: gone or changed.
    pub async fn release_if_unchanged(
        &self,
        expected: &[ExpectedAllocation],
    ) -> Result<Vec<IpAddr>> {
        let ips: Vec<IpAddr> = expected.iter().map(|e| e.ip).collect();
        let by_ip: BTreeMap<IpAddr, &ExpectedAllocation> =
            expected.iter().map(|e| (e.ip, e)).collect();
        self.grouped(self.release_ips_in_group(&ips, &by_ip)).await
    }

    /// Deletes a handle only if it is still at `revision` (a leaked handle found by a report);
    /// false if it is gone or changed.
    pub async fn delete_handle_if_unchanged(
        &self,
        handle_id: &str,
        revision: &str,
    ) -> Result<bool> {
        let Some(h) = self.get_handle(handle_id).await? else {
            return Ok(false);
        };
        if h.revision.0 != revision {
            return Ok(false);
        }
        match self.store.delete_handle(&h).await {
            Ok(()) => Ok(true),
            Err(DatastoreError::Conflict | DatastoreError::NotFound) => Ok(false),
            Err(e) => Err(IpamError::store(format!("delete handle {handle_id}"))(e)),
        }
    }

    async fn release_ips_in_group(
        &self,
        ips: &[IpAddr],
        expected: &BTreeMap<IpAddr, &ExpectedAllocation>,
    ) -> Result<Vec<IpAddr>> {
        let set = self.load_pools().await?;
        let mut by_block: BTreeMap<IpNet, Vec<IpAddr>> = BTreeMap::new();
        let mut unallocated = Vec::new();
        let mut block_cidrs: Option<Vec<IpNet>> = None;
        let mut seen = BTreeSet::new();
        for &ip in ips {
            if !seen.insert(ip) {
                continue;
            }
            // In a pool left out (its blocks may be of another size than a pool over it), or
            // outside every pool (its pool was deleted): look for the block holding it.
            let usable = set.usable.iter().find(|p| p.cidr.contains(&ip));
            let cidr = match usable.filter(|_| set.fence_of(ip).is_none()) {
                Some(pool) => Some(pool.block_for(ip)),
                None => {
                    if block_cidrs.is_none() {
                        block_cidrs = Some(
                            self.store
                                .list_block_cidrs()
                                .await
                                .map_err(ds("list blocks"))?,
                        );
                    }
                    block_cidrs
                        .iter()
                        .flatten()
                        .find(|c| c.contains(&ip))
                        .copied()
                }
            };
            match cidr {
                Some(c) => by_block.entry(c).or_default().push(ip),
                None => unallocated.push(ip),
            }
        }

        let cooldown = self.release_cooldown().await?;
        for (cidr, ips) in by_block {
            let op = format!("release addresses in block {cidr}");
            let outcome = retry_on_conflict(DATASTORE_RETRIES, &op, async || {
                let Some(mut block) = self.block_for_update(&cidr).await? else {
                    return Ok(ReleaseOutcome {
                        unallocated: ips.clone(),
                        ..ReleaseOutcome::default()
                    });
                };
                let release = |b: &mut Versioned<IpamBlock>| {
                    b.value.garbage_collect(cooldown);
                    let (same, changed): (Vec<IpAddr>, Vec<IpAddr>) = ips
                        .iter()
                        .partition(|ip| expected.get(ip).is_none_or(|e| e.matches(&b.value)));
                    let mut outcome = b.value.release_with(&same, cooldown);
                    outcome.unallocated.extend(changed);
                    outcome
                };
                let mut outcome = release(&mut block);
                if !outcome.unallocated.is_empty()
                    && let Recheck::Changed(fresh) = self.recheck_block(&block).await?
                {
                    // "Not allocated" must come from a current copy.
                    block = *fresh;
                    outcome = release(&mut block);
                }
                if !outcome.released.is_empty() {
                    self.store_released_block(block).await?;
                }
                Ok(outcome)
            })
            .await?;
            unallocated.extend(outcome.unallocated);
            for (handle_id, n) in outcome.handles {
                let op = format!("release {n} addresses of handle {handle_id} in block {cidr}");
                retry_on_conflict(DATASTORE_RETRIES, &op, async || {
                    let Some(mut h) = self.handle_for_update(&handle_id).await? else {
                        return Ok(());
                    };
                    h.value.decrement(&cidr, n);
                    self.put_or_delete_handle(h).await
                })
                .await?;
            }
        }
        Ok(unallocated)
    }

    /// The addresses held by `handle_id`, each with its block's mask.
    pub async fn ips_by_handle(&self, handle_id: &str) -> Result<Vec<IpNet>> {
        let Some(handle) = self.get_handle(handle_id).await? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for cidr in handle.value.blocks() {
            if let Some(b) = self.get_block(&cidr).await? {
                out.extend(
                    b.value
                        .ips_for_handle(handle_id)
                        .into_iter()
                        .map(|ip| b.value.masked(ip)),
                );
            }
        }
        Ok(out)
    }

    async fn release_cooldown(&self) -> Result<Cooldown> {
        let config = self
            .store
            .get_config()
            .await
            .map_err(ds("read IPAM config"))?;
        Ok(Cooldown {
            seconds: config.ip_cooldown_seconds,
            now_nanos: time::now_nanos(),
        })
    }

    async fn get_block(&self, cidr: &IpNet) -> Result<Option<Versioned<IpamBlock>>> {
        self.store
            .get_block(cidr)
            .await
            .map_err(ds(format!("read block {cidr}")))
    }

    async fn block_for_update(&self, cidr: &IpNet) -> Result<Option<Versioned<IpamBlock>>> {
        self.store
            .get_block_for_update(cidr)
            .await
            .map_err(ds(format!("read block {cidr}")))
    }

    async fn handle_for_update(&self, handle_id: &str) -> Result<Option<Versioned<IpamHandle>>> {
        self.store
            .get_handle_for_update(handle_id)
            .await
            .map_err(ds(format!("read handle {handle_id}")))
    }

    async fn get_handle(&self, handle_id: &str) -> Result<Option<Versioned<IpamHandle>>> {
        self.store
            .get_handle(handle_id)
            .await
            .map_err(ds(format!("read handle {handle_id}")))
    }

    /// Writes a handle after a release, deleting it once it holds nothing. A handle gone
    /// since it was read counts as a conflict: the retry re-reads it and finds nothing to do.
    async fn put_or_delete_handle(&self, h: Versioned<IpamHandle>) -> Result<()> {
        let op = format!("write handle {}", h.value.handle_id);
        let written = if h.value.is_empty() {
            self.store.delete_handle(&h).await
        } else {
            self.store.update_handle(&h).await.map(|_| ())
        };
        written.map_err(|e| IpamError::store(op)(gone_is_conflict(e)))
    }

    /// Writes a block after a release: deleted when it is empty and nobody's, else updated.
    async fn store_released_block(&self, mut block: Versioned<IpamBlock>) -> Result<()> {
        if block.value.empty() && block.value.affinity.is_none() {
            let cidr = block.value.cidr;
            self.store.delete_block(&block).await.map_err(|e| {
                IpamError::store(format!("delete empty block {cidr}"))(gone_is_conflict(e))
            })
        } else {
            self.write_block(&mut block).await
        }
    }
}

/// `NotFound` on a compare-and-swap write means the object went away since it was read: a
/// lost race, retried from fresh reads like a conflict.
pub(super) fn gone_is_conflict(e: DatastoreError) -> DatastoreError {
    if e == DatastoreError::NotFound {
        DatastoreError::Conflict
    } else {
        e
    }
}
