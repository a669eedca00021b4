//! `ipam split NUMBER --cidr|--name`: replace one IPPool by 2^n equal pools, as calicoctl does.
//!
//! Order of writes (each a datastore write of its own): the old pool is disabled, the new pools
//! are created (they overlap the old, disabled one for a moment; allocation never uses a
//! disabled pool), then the old pool is deleted. Blocks and allocations are not touched: the
//! new pools have the old block size, so every existing block lies inside exactly one of them.

use anyhow::{Result, bail};
use ipnet::IpNet;
use libipam::datastore::Datastore;

use super::args::usage;
use super::{exit, with_store};
use crate::store::{Store, StoreConfig};
use crate::with_ipam;

pub fn run(
    store: &StoreConfig,
    number: &str,
    cidr: Option<&str>,
    name: Option<&str>,
) -> Result<i32> {
    let Ok(parts) = number.parse::<u32>() else {
        usage!("{number:?} is not a number of pools to split into");
    };
    if cidr.is_none() && name.is_none() {
        usage!(
            "no name or CIDR provided: give --name=POOL or --cidr=CIDR to denote the IP pool to split"
        );
    }
    let created = with_store(store, async |store| {
        if let Store::Kube(k) = &store {
            // calicoctl splits only a locked datastore (no CNI ADD in flight).
            match k.connection().datastore_ready().await? {
                Some(false) => {}
                _ => bail!(
                    "datastore is not locked: set ClusterInformation default spec.datastoreReady to false \
                     (`calicoctl datastore migrate lock`) in order to split IP pools, and unlock it afterwards"
                ),
            }
        }
        with_ipam!(store, |ipam| {
            let ds = ipam.store();
            let listed = ds.list_pools().await?;
            if let Some(u) = listed.unreadable.iter().find(|u| {
                name.is_some_and(|n| u.name == n)
                    || cidr.is_some_and(|c| c.parse::<ipnet::IpNet>().ok() == u.cidr)
            }) {
                bail!(
                    "IPPool {} cannot be read ({}: {}): replace it with `calico-ipam apply -f` \
                     before splitting it",
                    u.name,
                    u.object,
                    u.reason
                );
            }
            let pools = listed.pools.clone();
            let old = pools.iter().find(|p| {
                name.is_some_and(|n| p.name == n) || cidr.is_some_and(|c| p.spec.cidr == c)
            });
            let Some(old) = old.cloned() else {
                bail!(
                    "unable to find IP pool {} covering the specified CIDR {}",
                    name.unwrap_or(""),
                    cidr.unwrap_or("")
                );
            };
            let children = split_cidr(&old.spec.cidr, parts)?;
            let others = libipam::datastore::PoolList {
                pools: pools
                    .iter()
                    .filter(|p| p.name != old.name)
                    .cloned()
                    .collect(),
                unreadable: listed.unreadable.clone(),
            };
            let mut new_pools = Vec::new();
            for (i, c) in children.iter().enumerate() {
                let mut p = old.clone();
                p.name = split_name(&old.name, i);
                p.spec.cidr = c.to_string();
                p.spec.disabled = false;
                libipam::alloc::validate_new_pool(&p, &others)?;
                new_pools.push(p);
            }
            let mut disabled = old.clone();
            disabled.spec.disabled = true;
            ds.apply_pool(&disabled).await?;
            for p in &new_pools {
                ds.apply_pool(p).await?;
            }
            ds.delete_pool(&old.name).await?;
            Ok((old.name, new_pools))
        })
    })??;
    let (old, new_pools) = created;
    println!(
        "IP Pool {old} was successfully split into {} smaller pools.",
        new_pools.len()
    );
    for p in &new_pools {
        println!("Created {} with CIDR {}.", p.name, p.spec.cidr);
    }
    println!("Please refer to the documentation for final steps.");
    Ok(exit::OK)
}

/// `split-NAME-i`, the old name shortened so the result fits Kubernetes' 253 characters.
fn split_name(old: &str, i: usize) -> String {
    let name = format!("split-{old}-{i}");
    if name.len() <= 253 {
        return name;
    }
    let keep = old.len() - (name.len() - 253);
    format!("split-{}-{i}", &old[..keep])
}

/// `parts` (a power of 2, at least 2) equal subnets of `cidr`, in address order.
fn split_cidr(cidr: &str, parts: u32) -> Result<Vec<IpNet>> {
    if parts < 2 || !parts.is_power_of_two() {
        bail!("number to split CIDR into is not a valid power of 2: {parts}");
    }
    let net: IpNet = cidr
        .parse()
        .map_err(|_| anyhow::anyhow!("error reading CIDR {cidr} before attempting to split it"))?;
    let net = net.trunc();
    let new_prefix = u32::from(net.prefix_len()) + parts.trailing_zeros();
    if new_prefix > u32::from(net.max_prefix_len()) {
        bail!("the CIDR {cidr} is not large enough to be split into {parts} parts");
    }
    Ok(net
        .subnets(new_prefix as u8)
        .map_err(|e| anyhow::anyhow!("splitting {cidr}: {e}"))?
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_into_powers_of_two() {
        let s: Vec<String> = split_cidr("172.0.0.0/8", 2)
            .expect("split")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(s, ["172.0.0.0/9", "172.128.0.0/9"]);
        let s = split_cidr("fd00:10:244::/48", 4).expect("split v6");
        assert_eq!(s[3].to_string(), "fd00:10:244:c000::/50");
        assert!(split_cidr("10.0.0.0/8", 3).is_err());
        assert!(split_cidr("10.0.0.0/8", 1).is_err());
        assert!(split_cidr("10.0.0.0/31", 4).is_err());
        assert_eq!(split_name("p", 1), "split-p-1");
        assert_eq!(split_name(&"a".repeat(253), 0).len(), 253);
    }
}
