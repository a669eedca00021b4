//! Allocating one specific address (Calico's `AssignIP`): the CNI's `IP=` argument, a pod's
//! `ipAddrs` annotation, the CLI.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{AssignIpArgs, Ipam, Recheck, Request, ds};
use crate::datastore::{Datastore, Versioned};
use crate::error::{IpamError, Result};
use crate::model::IpamBlock;
use crate::model::block::AssignError;
use crate::retry::{DATASTORE_RETRIES, retry_on_conflict};

impl<D: Datastore> Ipam<D> {
    /// Allocates one specific address. Its pool must be enabled and allow the intended use;
    /// a missing block is claimed for `hostname` (ignoring nodeSelector and the block limit,
    /// as Calico does). Returns the address with its block's mask.
    pub async fn assign_ip(&self, args: &AssignIpArgs) -> Result<IpNet> {
        self.grouped(self.prefetched(&args.hostname, self.assign_ip_in_group(args)))
            .await
    }

    async fn assign_ip_in_group(&self, args: &AssignIpArgs) -> Result<IpNet> {
        let all_pools = self.load_pools().await?;
        if let Some(f) = all_pools.fence_of(args.ip) {
            return Err(IpamError::AddressInUnusablePool {
                ip: args.ip,
                cidr: f.cidr,
                pool: f.pool.clone(),
                why: f.why.clone(),
            });
        }
        let pool = all_pools
            .usable
            .iter()
            .find(|p| !p.disabled && p.cidr.contains(&args.ip))
            .ok_or(IpamError::AddressNotInPool { ip: args.ip })?;
        if !pool.allows(args.intended_use) {
            return Err(IpamError::UseNotAllowed {
                ip: args.ip,
                pool: pool.name.clone(),
                intended_use: args.intended_use,
                allowed: pool.uses_string(),
            });
        }
        let cidr = pool.block_for(args.ip);
        let mut req = self
            .new_request(&args.hostname, &args.handle_id, &args.attrs)
            .await?;
        let op = format!("assign {} on {}", args.ip, args.hostname);
        retry_on_conflict(DATASTORE_RETRIES, &op, async || {
            let block = match self
                .store
                .get_block_for_update(&cidr)
                .await
                .map_err(ds(format!("read block {cidr}")))?
            {
                Some(b) => b,
                None => {
                    if let Some(existing) = self.overlapping_block(&cidr).await? {
                        return Err(IpamError::BlockOverlap {
                            block: cidr,
                            existing,
                        });
                    }
                    let existing = self.host_affinity(&mut req, &cidr).await?;
                    self.claim_block(&mut req, cidr, existing).await?
                }
            };
            self.assign_one(&mut req, block, args.ip).await
        })
        .await
    }

    async fn assign_one(
        &self,
        req: &mut Request<'_>,
        mut block: Versioned<IpamBlock>,
        ip: IpAddr,
    ) -> Result<IpNet> {
        let cidr = block.value.cidr;
        if req.config.strict_affinity && !block.value.is_affine_to(req.host) {
            return Err(IpamError::StrictAffinityViolation {
                ip,
                block: cidr,
                affinity: block.value.affinity.clone().unwrap_or_default(),
            });
        }
        block.value.garbage_collect(req.cooldown());
        match block.value.assign(ip, Some(req.handle_id), req.attrs) {
            Ok(()) => {}
            Err(AssignError::InUse) => {
                // Only a current copy can say the address is taken.
                return Err(match self.recheck_block(&block).await? {
                    Recheck::Current => IpamError::AddressInUse { ip, block: cidr },
                    _ => IpamError::conflict(format!("block {cidr} changed")),
                });
            }
            Err(AssignError::NotInBlock) => {
                return Err(IpamError::Corrupt(format!(
                    "{ip} is not inside block {cidr}"
                )));
            }
        }
        self.write_handle(req, |h| h.increment(&cidr, 1)).await?;
        if let Err(e) = self.write_block(&mut block).await {
            self.undo_handle_increment(req, &cidr, 1).await;
            return Err(e);
        }
        Ok(block.value.masked(ip))
    }
}
