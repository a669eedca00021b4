//! `pool apply|list|delete`.

use std::io::Read;

use anyhow::{Context, Result, bail};
use libipam::datastore::Datastore;
use libipam::model::{IpPool, IpPoolSpec};
use serde_json::{Value, json};

use super::with_store;
use crate::store::StoreConfig;
use crate::with_ipam;

/// Create or update every IPPool in `file` (`-` = stdin). All documents are validated — against
/// each other and the pools already stored — before anything is written.
pub fn apply(store: &StoreConfig, file: &str) -> Result<i32> {
    let text = if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    };
    let pools = parse_pools(&text).with_context(|| format!("in {file}"))?;
    if pools.is_empty() {
        bail!("{file} holds no IPPool");
    }
    with_store(store, async |store| {
        with_ipam!(store, |ipam| {
            let ds = ipam.store();
            let mut known: Vec<IpPool> = ds.list_pools().await?;
            for pool in &pools {
                libipam::validate::validate_new_pool(pool, &known)
                    .with_context(|| format!("IPPool {}", pool.name))?;
                known.retain(|p| p.name != pool.name);
                known.push(pool.clone());
            }
            for pool in &pools {
                ds.apply_pool(pool)
                    .await
                    .with_context(|| format!("writing IPPool {}", pool.name))?;
                println!(
                    "Successfully applied IPPool {} ({})",
                    pool.name, pool.spec.cidr
                );
            }
            Ok::<i32, anyhow::Error>(0)
        })
    })?
}

/// `pool list`: a table (default or wide) or JSON.
pub fn list(store: &StoreConfig, output: &str) -> Result<i32> {
    let mut pools = with_store(store, async |store| {
        with_ipam!(store, |ipam| ipam.store().list_pools().await)
    })??;
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    let pools: Vec<IpPool> = pools.into_iter().map(IpPool::with_defaults).collect();
    match output {
        "json" => {
            let docs: Vec<Value> = pools.iter().map(to_v3).collect();
            println!("{}", serde_json::to_string_pretty(&docs)?);
        }
        "wide" => {
            let rows: Vec<Vec<String>> = pools
                .iter()
                .map(|p| {
                    let s = &p.spec;
                    vec![
                        p.name.clone(),
                        s.cidr.clone(),
                        s.nat_outgoing.to_string(),
                        s.ipip_mode.clone().unwrap_or_default(),
                        s.vxlan_mode.clone().unwrap_or_default(),
                        s.disabled.to_string(),
                        s.disable_bgp_export.to_string(),
                        s.node_selector.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME",
                    "CIDR",
                    "NAT",
                    "IPIPMODE",
                    "VXLANMODE",
                    "DISABLED",
                    "DISABLEBGPEXPORT",
                    "SELECTOR",
                ],
                &rows,
            );
        }
        "" | "table" => {
            let rows: Vec<Vec<String>> = pools
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.spec.cidr.clone(),
                        p.spec.node_selector.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(&["NAME", "CIDR", "SELECTOR"], &rows);
        }
        other => bail!("unknown output format {other:?}: use wide or json"),
    }
    Ok(0)
}

/// `pool delete NAME`.
pub fn delete(store: &StoreConfig, name: &str) -> Result<i32> {
    let found = with_store(store, async |store| {
        with_ipam!(store, |ipam| ipam.store().delete_pool(name).await)
    })??;
    if found {
        println!("Successfully deleted IPPool {name}");
        Ok(0)
    } else {
        bail!("IPPool {name} does not exist")
    }
}

/// Parse YAML or JSON holding one or many IPPool documents (or a List of them).
pub fn parse_pools(text: &str) -> Result<Vec<IpPool>> {
    let docs: Vec<Value> = if text.trim_start().starts_with(['{', '[']) {
        match serde_json::from_str::<Value>(text).context("parsing JSON")? {
            Value::Array(items) => items,
            one => vec![one],
        }
    } else {
        serde_saphyr::from_multiple::<Value>(text).context("parsing YAML")?
    };
    let mut pools = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind.ends_with("List") {
            let items = doc
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for item in items {
                pools.push(pool_from_doc(&item).with_context(|| format!("document {}", i + 1))?);
            }
        } else {
            pools.push(pool_from_doc(&doc).with_context(|| format!("document {}", i + 1))?);
        }
    }
    Ok(pools)
}

fn pool_from_doc(doc: &Value) -> Result<IpPool> {
    let api = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if !matches!(api, "projectcalico.org/v3" | "crd.projectcalico.org/v1") {
        bail!("apiVersion {api:?} is not projectcalico.org/v3 or crd.projectcalico.org/v1");
    }
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind != "IPPool" {
        bail!("kind {kind:?} is not IPPool (this command manages IPPools only)");
    }
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .context("metadata.name is missing")?;
    let spec = doc.get("spec").cloned().context("spec is missing")?;
    let spec: IpPoolSpec = serde_json::from_value(spec).context("reading spec")?;
    Ok(IpPool {
        name: name.to_string(),
        spec,
    })
}

/// A pool as a projectcalico.org/v3 document.
pub fn to_v3(p: &IpPool) -> Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": p.name}, "spec": p.spec})
}

/// Print left-aligned columns, calicoctl style.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("   ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_pools_parse_unchanged() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/pools/seed-pools.yaml"
        ))
        .expect("seed pools");
        let pools = parse_pools(&text).expect("parse");
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].name, "ipv4-pool");
        assert_eq!(pools[0].spec.cidr, "10.244.0.0/16");
        assert_eq!(pools[1].spec.cidr, "fd00:10:244::/48");
        assert_eq!(pools[1].spec.block_size, Some(122));
    }

    #[test]
    fn wrong_kind_is_named() {
        let e = parse_pools("apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {}\n")
            .expect_err("kind");
        assert!(format!("{e:#}").contains("NetworkPolicy"));
    }
}
