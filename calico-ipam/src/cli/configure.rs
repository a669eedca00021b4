//! `ipam configure`: change the IPAM configuration, with Calico's rules.

use anyhow::{Result, bail};
use libipam::datastore::Datastore;

use super::args::usage;
use super::{exit, with_store};
use crate::store::StoreConfig;
use crate::with_ipam;

pub struct Options {
    pub strict_affinity: Option<String>,
    pub max_blocks_per_host: Option<String>,
    pub auto_allocate_blocks: Option<String>,
    pub kubevirt_ip_persistence: Option<String>,
}

/// Go's `strconv.ParseBool`, which calicoctl uses.
fn parse_bool(flag: &str, v: &str) -> Result<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => bail!("invalid value {v:?} for {flag}: use true or false"),
    }
}

pub fn run(store: &StoreConfig, o: Options) -> Result<i32> {
    let strict = o
        .strict_affinity
        .as_deref()
        .map(|v| parse_bool("--strictaffinity", v))
        .transpose()?;
    let auto = o
        .auto_allocate_blocks
        .as_deref()
        .map(|v| parse_bool("--autoallocateblocks", v))
        .transpose()?;
    let max_blocks = o
        .max_blocks_per_host
        .as_deref()
        .map(|v| {
            v.parse::<u32>().map_err(|_| {
                anyhow::anyhow!(
                    "invalid value {v:?} for --max-blocks-per-host: use a number of blocks (0 for Calico's default of 20)"
                )
            })
        })
        .transpose()?;
    let kubevirt = match o.kubevirt_ip_persistence.as_deref() {
        None => None,
        Some(v @ ("Enabled" | "Disabled")) => Some(v.to_string()),
        Some(v) => {
            bail!("invalid value {v:?} for --kubevirt-ip-persistence: use Enabled or Disabled")
        }
    };
    if strict.is_none() && auto.is_none() && max_blocks.is_none() && kubevirt.is_none() {
        usage!(
            "at least one configuration option must be specified: --strictaffinity, --max-blocks-per-host, --autoallocateblocks or --kubevirt-ip-persistence"
        );
    }
    with_store(store, async |store| {
        with_ipam!(store, |ipam| {
            let ds = ipam.store();
            let mut cfg = ds.get_config().await?;
            if let Some(s) = strict {
                cfg.strict_affinity = s;
            }
            if let Some(a) = auto {
                cfg.auto_allocate_blocks = a;
            }
            if let Some(m) = max_blocks {
                cfg.max_blocks_per_host = m;
            }
            if let Some(k) = &kubevirt {
                cfg.kube_virt_vm_address_persistence = Some(k.clone());
            }
            libipam::validate::validate_config(&cfg)?;
            ds.apply_config(&cfg).await?;
            Ok::<(), anyhow::Error>(())
        })
    })??;
    if let Some(s) = strict {
        println!("Successfully set StrictAffinity to: {s}");
    }
    if let Some(m) = max_blocks {
        println!("Successfully set MaxBlocksPerHost to: {m}");
    }
    if let Some(a) = auto {
        println!("Successfully set AutoAllocateBlocks to: {a}");
    }
    if let Some(k) = kubevirt {
        println!("Successfully set KubeVirtVMAddressPersistence to: {k}");
    }
    Ok(exit::OK)
}
