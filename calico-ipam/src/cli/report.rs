//! `show`, `release`, `check` and `configure`.

use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use libipam::datastore::Datastore;
use libipam::datastore::local::Temporaries;
use serde_json::json;

use super::pool::print_table;
use super::with_store;
use crate::store::{Store, StoreConfig};
use crate::with_ipam;

/// Pool usage, optionally with blocks and the IPAM configuration.
pub fn show(store: &StoreConfig, blocks: bool, config: bool, output: &str) -> Result<i32> {
    if !matches!(output, "" | "table" | "json") {
        bail!("unknown output format {output:?}: use json");
    }
    let (usage, block_list, cfg) = with_store(store, async |store| {
        with_ipam!(store, |ipam| {
            let usage = ipam.usage().await?;
            let block_list = if blocks {
                ipam.blocks().await?
            } else {
                Vec::new()
            };
            let cfg = ipam.store().get_config().await?;
            for (name, why) in ipam.ignored_pools() {
                eprintln!("warning: IPPool {name} is not shown and not used: {why}");
            }
            Ok::<_, anyhow::Error>((usage, block_list, cfg))
        })
    })??;
    if output == "json" {
        let pools: Vec<_> = usage
            .iter()
            .map(|u| json!({"name": u.name, "cidr": u.cidr.to_string(), "total": count(u.total), "inUse": count(u.in_use), "free": count(u.free)}))
            .collect();
        let mut doc = json!({ "pools": pools });
        if blocks {
            doc["blocks"] = block_list
                .iter()
                .map(|b| json!({"cidr": b.cidr.to_string(), "affinity": b.affinity, "total": b.in_use + b.free, "inUse": b.in_use, "free": b.free}))
                .collect();
        }
        if config {
            doc["configuration"] = serde_json::to_value(&cfg)?;
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    let pct = |n: u128, total: u128| n.saturating_mul(100).checked_div(total).unwrap_or(0);
    let mut rows: Vec<Vec<String>> = Vec::new();
    for u in &usage {
        rows.push(vec![
            "IP Pool".into(),
            u.cidr.to_string(),
            u.total.to_string(),
            format!("{} ({}%)", u.in_use, pct(u.in_use, u.total)),
            format!("{} ({}%)", u.free, pct(u.free, u.total)),
        ]);
        for b in block_list.iter().filter(|b| u.cidr.contains(&b.cidr)) {
            rows.push(vec![
                "Block".into(),
                b.cidr.to_string(),
                (b.in_use + b.free).to_string(),
                format!(
                    "{} ({}%)",
                    b.in_use,
                    pct(b.in_use.into(), (b.in_use + b.free).into())
                ),
                format!(
                    "{} ({}%)",
                    b.free,
                    pct(b.free.into(), (b.in_use + b.free).into())
                ),
            ]);
        }
    }
    print_table(
        &["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"],
        &rows,
    );
    if config {
        println!();
        print_table(
            &["PROPERTY", "VALUE"],
            &[
                vec!["StrictAffinity".into(), cfg.strict_affinity.to_string()],
                vec![
                    "AutoAllocateBlocks".into(),
                    cfg.auto_allocate_blocks.to_string(),
                ],
                vec!["MaxBlocksPerHost".into(), cfg.block_limit(0).to_string()],
            ],
        );
    }
    Ok(0)
}

/// A count as a JSON number, or as a decimal string past 2^64 (an IPv6 /48 holds 2^80 addresses
/// and JSON numbers beyond 2^53 already lose precision in most readers).
fn count(n: u128) -> serde_json::Value {
    match u64::try_from(n) {
        Ok(small) => json!(small),
        Err(_) => json!(n.to_string()),
    }
}

/// Who holds one address.
pub fn show_ip(store: &StoreConfig, ip: &str, output: &str) -> Result<i32> {
    if !matches!(output, "" | "table" | "json") {
        bail!("unknown output format {output:?}: use json");
    }
    let ip: IpAddr = ip
        .parse()
        .with_context(|| format!("{ip:?} is not an IP address"))?;
    let owner = with_store(store, async |store| {
        with_ipam!(store, |ipam| ipam.owner_of(ip).await)
    })??;
    if output == "json" {
        let doc = match &owner {
            None => json!({"ip": ip.to_string(), "inUse": false}),
            Some(o) => json!({
                "ip": ip.to_string(), "inUse": o.handle.is_some(), "block": o.block.to_string(),
                "affinity": o.affinity, "handle": o.handle, "attributes": o.attributes,
                "releasedAt": o.released_at,
            }),
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    match owner {
        None => println!("IP {ip} is not assigned"),
        Some(o) => {
            match (&o.handle, &o.released_at) {
                (Some(h), _) => println!("IP {ip} is in use by handle {h}"),
                (None, Some(at)) => println!("IP {ip} was released at {at} and is cooling down"),
                (None, None) => println!("IP {ip} is held without a handle"),
            }
            println!(
                "  block:    {} ({})",
                o.block,
                o.affinity.as_deref().unwrap_or("no affinity")
            );
            for (k, v) in &o.attributes {
                println!("  {:<9} {v}", format!("{k}:"));
            }
        }
    }
    Ok(0)
}

/// Release one address, whatever handle holds it.
pub fn release(store: &StoreConfig, ip: &str) -> Result<i32> {
    let ip: IpAddr = ip
        .parse()
        .with_context(|| format!("{ip:?} is not an IP address"))?;
    let unallocated = with_store(store, async |store| {
        with_ipam!(store, |ipam| ipam.release_ips(&[ip]).await)
    })??;
    if unallocated.contains(&ip) {
        bail!("{ip} is not allocated");
    }
    println!("Successfully released address {ip}");
    Ok(0)
}

/// Allocations, handles and blocks must agree; print what does not and exit 1.
pub fn check(store: &StoreConfig) -> Result<i32> {
    let (problems, temporaries) = with_store(store, async |store| {
        let temporaries = match &store {
            Store::Local(local) => local.temporaries()?,
            Store::Kube(_) => Temporaries::default(),
        };
        let problems = with_ipam!(store, |ipam| ipam.check().await)?;
        Ok::<_, anyhow::Error>((problems, temporaries))
    })??;
    report_temporaries(&temporaries);
    if problems.is_empty() {
        println!(
            "IPAM is consistent: every allocation has its handle and every handle its allocations."
        );
        return Ok(0);
    }
    println!("Found {} problem(s):", problems.len());
    for p in &problems {
        println!("- {p}");
    }
    Ok(1)
}

/// Temporary files are not IPAM state: stale ones are removed (and said so), live ones named.
fn report_temporaries(t: &Temporaries) {
    if !t.removed.is_empty() {
        println!(
            "Removed {} stale temporary file(s) left by killed writers:",
            t.removed.len()
        );
        for p in &t.removed {
            println!("- {}", p.display());
        }
    }
    if !t.in_use.is_empty() {
        println!(
            "{} temporary file(s) being written by a live writer (left alone):",
            t.in_use.len()
        );
        for p in &t.in_use {
            println!("- {}", p.display());
        }
    }
}

/// Change the IPAM configuration.
pub fn configure(
    store: &StoreConfig,
    strict: Option<String>,
    max_blocks: Option<String>,
    auto: Option<String>,
) -> Result<i32> {
    let parse_bool = |name: &str, v: &str| -> Result<bool> {
        match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => bail!("{name} must be true or false, not {v:?}"),
        }
    };
    let strict = strict
        .map(|v| parse_bool("--strictaffinity", &v))
        .transpose()?;
    let auto = auto
        .map(|v| parse_bool("--autoallocateblocks", &v))
        .transpose()?;
    let max_blocks = max_blocks
        .map(|v| {
            v.parse::<u32>()
                .with_context(|| format!("--max-blocks-per-host {v:?} is not a number"))
        })
        .transpose()?;
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
            ds.apply_config(&cfg).await?;
            Ok::<(), anyhow::Error>(())
        })
    })??;
    println!("Successfully updated the IPAM configuration");
    Ok(0)
}
