//! `ipam show`: pool and block usage, one address's holder, borrowed addresses and the IPAM
//! configuration, as calicoctl prints them (or as JSON/YAML).

use std::net::IpAddr;

use anyhow::{Context, Result};
use libipam::alloc::{BlockUsage, PoolUsage};
use libipam::datastore::Datastore;
use libipam::model::{IpamBlock, IpamConfig};
use serde_json::{Value, json};

use super::args::usage;
use super::table::{boxed, go_g5, with_percentage};
use super::{exit, pool, with_store};
use crate::store::StoreConfig;
use crate::with_ipam;

pub struct Options {
    pub ip: Option<String>,
    pub blocks: bool,
    pub borrowed: bool,
    pub configuration: bool,
    pub output: String,
}

/// Everything `show` may print, read in one go.
struct Snapshot {
    usage: Vec<PoolUsage>,
    blocks: Vec<BlockUsage>,
    raw_blocks: Vec<IpamBlock>,
    config: IpamConfig,
}

pub fn run(store: &StoreConfig, o: &Options) -> Result<i32> {
    let output = Output::parse(&o.output)?;
    if let Some(ip) = &o.ip {
        return show_ip(store, ip, output);
    }
    let (blocks, borrowed) = (o.blocks, o.borrowed);
    let snap = with_store(store, async |store| {
        with_ipam!(store, |ipam| {
            let usage = ipam.usage().await?;
            let blocks = if blocks {
                ipam.blocks().await?
            } else {
                Vec::new()
            };
            let raw_blocks = if borrowed {
                ipam.store()
                    .list_blocks()
                    .await?
                    .into_iter()
                    .map(|b| b.value)
                    .collect()
            } else {
                Vec::new()
            };
            let config = ipam.store().get_config().await?;
            for (name, why) in ipam.ignored_pools() {
                eprintln!("warning: IPPool {name} is not shown and not used: {why}");
            }
            Ok::<_, anyhow::Error>(Snapshot {
                usage,
                blocks,
                raw_blocks,
                config,
            })
        })
    })??;
    if output != Output::Table {
        let mut doc = json!({ "pools": snap.usage.iter().map(pool_json).collect::<Vec<_>>() });
        if o.blocks {
            doc["blocks"] = snap.blocks.iter().map(block_json).collect();
        }
        if o.borrowed {
            doc["borrowed"] = borrowed_ips(&snap.raw_blocks)
                .iter()
                .map(|b| {
                    json!({"ip": b.ip.to_string(), "borrowingNode": b.borrowing_node,
                    "block": b.block, "blockOwner": b.block_owner, "type": b.kind,
                    "allocatedTo": b.allocated_to})
                })
                .collect();
        }
        if o.configuration {
            doc["configuration"] = config_json(&snap.config);
        }
        return output.print(&doc).map(|()| exit::OK);
    }
    // calicoctl prints one view; several flags here print each asked for, in this order.
    let nothing_asked = !o.blocks && !o.borrowed && !o.configuration;
    if nothing_asked || o.blocks {
        print!("{}", usage_table(&snap.usage, &snap.blocks, o.blocks));
    }
    if o.borrowed {
        print!("{}", borrowed_table(&snap.raw_blocks));
    }
    if o.configuration {
        print!("{}", config_table(&snap.config));
    }
    Ok(exit::OK)
}

/// `-o`: table (calicoctl's), json or yaml.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

impl Output {
    pub fn parse(s: &str) -> Result<Output> {
        Ok(match s {
            "" | "table" => Output::Table,
            "json" => Output::Json,
            "yaml" => Output::Yaml,
            other => usage!("unknown output format {other:?}: use table, json or yaml"),
        })
    }

    /// Print a JSON or YAML document.
    pub fn print(self, doc: &Value) -> Result<()> {
        match self {
            Output::Yaml => print!("{}", pool::to_yaml(doc)?),
            _ => println!("{}", serde_json::to_string_pretty(doc)?),
        }
        Ok(())
    }
}

fn pool_json(u: &PoolUsage) -> Value {
    json!({"name": u.name, "cidr": u.cidr.to_string(), "total": count(u.total),
           "inUse": count(u.in_use), "free": count(u.free)})
}

fn block_json(b: &BlockUsage) -> Value {
    json!({"cidr": b.cidr.to_string(), "pool": b.pool, "affinity": b.affinity,
           "total": b.in_use + b.free, "inUse": b.in_use, "free": b.free})
}

/// The stored configuration with every field present (`maxBlocksPerHost` 0 means Calico's
/// default of 20 blocks per host and family).
fn config_json(c: &IpamConfig) -> Value {
    json!({"strictAffinity": c.strict_affinity, "autoAllocateBlocks": c.auto_allocate_blocks,
           "maxBlocksPerHost": c.max_blocks_per_host})
}

/// A count as a JSON number, or as a decimal string past 2^64 (an IPv6 /48 holds 2^80 addresses
/// and JSON numbers beyond 2^53 already lose precision in most readers).
fn count(n: u128) -> Value {
    match u64::try_from(n) {
        Ok(small) => json!(small),
        Err(_) => json!(n.to_string()),
    }
}

/// calicoctl's utilization table: one row per pool, and its blocks under it with
/// `--show-blocks` (blocks no pool covers any more come last, without a pool row). Numbers and
/// percentages are computed in floating point as calicoctl does, so an IPv6 /48 prints
/// `1.2089e+24`.
fn usage_table(usage: &[PoolUsage], blocks: &[BlockUsage], show_blocks: bool) -> String {
    let row = |kind: &str, cidr: String, in_use: f64, capacity: f64| {
        vec![
            kind.to_string(),
            cidr,
            go_g5(capacity),
            with_percentage(in_use, capacity),
            with_percentage(capacity - in_use, capacity),
        ]
    };
    let block_row = |b: &BlockUsage| {
        let capacity = f64::from(b.in_use + b.free);
        row("Block", b.cidr.to_string(), f64::from(b.in_use), capacity)
    };
    let mut rows = Vec::new();
    for u in usage {
        let host_bits = i32::from(u.cidr.max_prefix_len() - u.cidr.prefix_len());
        let capacity = 2f64.powi(host_bits);
        // (An empty f64 sum is -0.0, which would print as "-0%".)
        let in_use = u.blocks.iter().fold(0.0, |n, b| n + f64::from(b.in_use));
        rows.push(row("IP Pool", u.cidr.to_string(), in_use, capacity));
        if show_blocks {
            rows.extend(
                blocks
                    .iter()
                    .filter(|b| b.pool.as_deref() == Some(u.name.as_str()))
                    .map(block_row),
            );
        }
    }
    if show_blocks {
        rows.extend(blocks.iter().filter(|b| b.pool.is_none()).map(block_row));
    }
    boxed(
        &["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"],
        &rows,
    )
}

/// calicoctl prints the IPAMConfig struct's fields with `%#v`.
fn config_table(c: &IpamConfig) -> String {
    boxed(
        &["PROPERTY", "VALUE"],
        &[
            vec!["StrictAffinity".into(), c.strict_affinity.to_string()],
            vec![
                "AutoAllocateBlocks".into(),
                c.auto_allocate_blocks.to_string(),
            ],
            vec!["MaxBlocksPerHost".into(), c.max_blocks_per_host.to_string()],
        ],
    )
}

/// An address taken by a node from a block it has no affinity for (or from a block without
/// affinity).
struct Borrowed {
    ip: IpAddr,
    borrowing_node: String,
    block: String,
    block_owner: String,
    kind: String,
    allocated_to: String,
}

fn borrowed_ips(blocks: &[IpamBlock]) -> Vec<Borrowed> {
    let mut out = Vec::new();
    for b in blocks {
        let owner = b
            .affinity
            .as_deref()
            .map(|a| a.split_once(':').map_or(a, |(_, n)| n))
            .unwrap_or("")
            .to_string();
        for (ordinal, slot) in b.allocations.iter().enumerate() {
            let Some(attr) = slot.and_then(|i| b.attributes.get(i as usize)) else {
                continue;
            };
            let attrs = attr.secondary.clone().unwrap_or_default();
            let Some(node) = attrs.get("node") else {
                continue;
            };
            if *node == owner {
                continue;
            }
            let Some(ip) = u32::try_from(ordinal).ok().and_then(|o| b.ip(o)) else {
                continue;
            };
            let ns = attrs.get("namespace").cloned().unwrap_or_default();
            let (kind, allocated_to) = match (attrs.get("pod"), attrs.get("type")) {
                (Some(pod), _) => ("pod".to_string(), format!("{ns}/{pod}")),
                (None, Some(t)) => (t.clone(), String::new()),
                (None, None) => (String::new(), String::new()),
            };
            out.push(Borrowed {
                ip,
                borrowing_node: node.clone(),
                block: b.cidr.to_string(),
                block_owner: owner.clone(),
                kind,
                allocated_to,
            });
        }
    }
    out
}

fn borrowed_table(blocks: &[IpamBlock]) -> String {
    let mut without_node = 0;
    for b in blocks {
        for slot in b.allocations.iter().flatten() {
            let has_node = b
                .attributes
                .get(*slot as usize)
                .and_then(|a| a.secondary.as_ref())
                .is_some_and(|s| s.contains_key("node"));
            if !has_node {
                without_node += 1;
            }
        }
    }
    let rows: Vec<Vec<String>> = borrowed_ips(blocks)
        .into_iter()
        .map(|b| {
            vec![
                b.ip.to_string(),
                b.borrowing_node,
                b.block,
                b.block_owner,
                b.kind,
                b.allocated_to,
            ]
        })
        .collect();
    let mut out = boxed(
        &[
            "IP",
            "BORROWING-NODE",
            "BLOCK",
            "BLOCK OWNER",
            "TYPE",
            "ALLOCATED-TO",
        ],
        &rows,
    );
    if without_node > 0 {
        out.push_str(&format!(
            "\nNote: found {without_node} IP allocations without an explicit node association. Unable to determine if they are borrowed.\n"
        ));
    }
    out
}

/// `--ip`: calicoctl's lines (in use, handle, owner attributes), then the block.
fn show_ip(store: &StoreConfig, ip: &str, output: Output) -> Result<i32> {
    let ip: IpAddr = ip
        .parse()
        .with_context(|| format!("{ip:?} is not an IP address"))?;
    let owner = with_store(store, async |store| {
        with_ipam!(store, |ipam| ipam.owner_of(ip).await)
    })??;
    if output != Output::Table {
        let doc = match &owner {
            None => json!({"ip": ip.to_string(), "inUse": false}),
            Some(o) => json!({
                "ip": ip.to_string(), "inUse": o.handle.is_some(), "block": o.block.to_string(),
                "affinity": o.affinity, "handle": o.handle, "attributes": o.attributes,
                "releasedAt": o.released_at,
            }),
        };
        output.print(&doc)?;
        return Ok(exit::OK);
    }
    let Some(o) = owner else {
        println!("{ip} is not assigned");
        return Ok(exit::OK);
    };
    match (&o.handle, &o.released_at) {
        (None, Some(at)) => {
            println!("IP {ip} is not assigned: it was released at {at} and is cooling down")
        }
        _ => {
            println!("IP {ip} is in use");
            println!("Handle ID: {}", o.handle.as_deref().unwrap_or("<none>"));
        }
    }
    if o.attributes.is_empty() {
        println!("No Active Owner attributes defined");
    } else {
        println!("Active Owner Attributes:");
        for (k, v) in &o.attributes {
            println!("  {k}: {v}");
        }
    }
    println!(
        "Block: {} ({})",
        o.block,
        o.affinity.as_deref().unwrap_or("no affinity")
    );
    Ok(exit::OK)
}
