//! IPPools and the IPAM configuration as resources: `get ippool`, `apply -f`, `patch ippool`,
//! `delete ippool` (and the older `pool apply|list|delete`).

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use libipam::datastore::{Datastore, UnreadablePool};
use libipam::model::IpPool;
use serde_json::{Map, Value, json};

use super::resources::{self, Resource};
use super::show::Output;
use super::table::columns;
use super::{exit, with_store};
use crate::store::StoreConfig;
use crate::with_ipam;

/// Largest file `apply -f` reads. Resource files hold a few pools (a few hundred bytes each);
/// past this it is refused before anything is parsed.
pub const MAX_RESOURCE_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The text of `file` (`-` = stdin), at most [`MAX_RESOURCE_FILE_BYTES`].
fn read_resources(file: &str) -> Result<String> {
    let read = if file == "-" {
        libipam::cni::bounds::read_at_most(std::io::stdin().lock(), MAX_RESOURCE_FILE_BYTES)
            .context("reading stdin")?
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("reading {file}"))?;
        libipam::cni::bounds::read_at_most(f, MAX_RESOURCE_FILE_BYTES)
            .with_context(|| format!("reading {file}"))?
    };
    let Some(bytes) = read else {
        bail!(
            "{file} is larger than {MAX_RESOURCE_FILE_BYTES} bytes (4 MiB), the most apply reads"
        );
    };
    String::from_utf8(bytes).with_context(|| format!("{file} is not UTF-8 text"))
}

/// Create or update every resource in `file` (`-` = stdin). All documents are validated —
/// against each other and the pools already stored — before anything is written.
pub fn apply(store: &StoreConfig, file: &str) -> Result<i32> {
    let text = read_resources(file)?;
    let docs = resources::parse(&text).with_context(|| format!("in {file}"))?;
    if docs.is_empty() {
        bail!("{file} holds no resource");
    }
    let replaced = with_store(store, async |store| {
        with_ipam!(store, |ipam| {
            let ds = ipam.store();
            let mut known = ds.list_pools().await?;
            // Stored pool objects that cannot be read, replaced by a document of their name.
            let mut replaced: Vec<UnreadablePool> = Vec::new();
            let mut config = None;
            for doc in &docs {
                match doc {
                    Resource::Pool(pool) => {
                        libipam::alloc::validate_new_pool(pool, &known)
                            .with_context(|| format!("IPPool {}", pool.name))?;
                        if let Some(u) = known.unreadable(&pool.name) {
                            replaced.push(u.clone());
                        }
                        known.unreadable.retain(|u| u.name != pool.name);
                        known.pools.retain(|p| p.name != pool.name);
                        known.pools.push(pool.clone());
                    }
                    Resource::Config(patch) => {
                        let mut c = match config.take() {
                            Some(c) => c,
                            None => ds.get_config().await?,
                        };
                        patch.apply_to(&mut c);
                        libipam::validate::validate_config(&c)
                            .context("IPAMConfiguration default")?;
                        config = Some(c);
                    }
                }
            }
            for doc in &docs {
                if let Resource::Pool(pool) = doc {
                    ds.apply_pool(pool)
                        .await
                        .with_context(|| format!("writing IPPool {}", pool.name))?;
                }
            }
            if let Some(c) = &config {
                ds.apply_config(c)
                    .await
                    .context("writing the IPAM configuration")?;
            }
            Ok::<_, anyhow::Error>(replaced)
        })
    })??;
    for u in &replaced {
        eprintln!(
            "IPPool {} could not be read ({}: {}; its CIDR {}): it was replaced by the definition \
             in {file}, without comparing the two",
            u.name,
            u.object,
            u.reason,
            u.cidr
                .map_or_else(|| "unknown".to_owned(), |c| format!("was {c}"))
        );
    }
    let first = docs[0].kind();
    if docs.iter().all(|d| d.kind() == first) {
        println!("Successfully applied {} '{first}' resource(s)", docs.len());
    } else {
        println!("Successfully applied {} resource(s)", docs.len());
    }
    Ok(exit::OK)
}

/// `get ippool [NAME]`: calicoctl's columns (default or wide), or v3 documents.
pub fn get(store: &StoreConfig, name: Option<&str>, output: &str) -> Result<i32> {
    let format = match output {
        "" | "table" | "ps" => None,
        "wide" => Some("wide"),
        "json" | "yaml" => Some(output),
        other => super::args::usage!("unknown output format {other:?}: use wide, yaml or json"),
    };
    let listed = with_store(store, async |store| {
        with_ipam!(store, |ipam| ipam.store().list_pools().await)
    })??;
    let mut pools = listed.pools;
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(name) = name {
        if let Some(u) = listed.unreadable.iter().find(|u| u.name == name) {
            bail!("{}", unreadable(u));
        }
        pools.retain(|p| p.name == name);
        if pools.is_empty() {
            bail!("resource does not exist: IPPool({name})");
        }
    } else {
        for u in &listed.unreadable {
            eprintln!("warning: not shown: {}", unreadable(u));
        }
    }
    let pools: Vec<IpPool> = pools.into_iter().map(IpPool::with_defaults).collect();
    match format {
        Some(f @ ("json" | "yaml")) => {
            let doc = match (name, pools.as_slice()) {
                (Some(_), [one]) => to_v3(one),
                _ => json!({
                    "kind": "IPPoolList",
                    "apiVersion": "projectcalico.org/v3",
                    "metadata": {},
                    "items": pools.iter().map(to_v3).collect::<Vec<_>>(),
                }),
            };
            Output::parse(f)?.print(&doc)?;
        }
        Some(_) => {
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
                        s.assignment_mode.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                columns(
                    &[
                        "NAME",
                        "CIDR",
                        "NAT",
                        "IPIPMODE",
                        "VXLANMODE",
                        "DISABLED",
                        "DISABLEBGPEXPORT",
                        "SELECTOR",
                        "ASSIGNMENTMODE",
                    ],
                    &rows,
                )
            );
        }
        None => {
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
            print!("{}", columns(&["NAME", "CIDR", "SELECTOR"], &rows));
        }
    }
    Ok(exit::OK)
}

/// `patch ippool NAME -p PATCH`: a JSON merge patch (RFC 7386) on the v3 document, then the
/// same strict reading and validation as `apply`.
pub fn patch(store: &StoreConfig, name: &str, patch: &str) -> Result<i32> {
    let patch: Value = serde_json::from_str(patch)
        .or_else(|_| serde_saphyr::from_str::<Value>(patch))
        .context("the patch is neither JSON nor YAML")?;
    with_store(store, async |store| {
        with_ipam!(store, |ipam| {
            let ds = ipam.store();
            let pools = ds.list_pools().await?;
            if let Some(u) = pools.unreadable(name) {
                bail!("{}: a patch needs the stored object", unreadable(u));
            }
            let Some(pool) = pools.pools.iter().find(|p| p.name == name) else {
                bail!("resource does not exist: IPPool({name})");
            };
            let mut doc = to_v3(pool);
            merge_patch(&mut doc, &patch);
            let Some(Resource::Pool(patched)) = resources::parse(&doc.to_string())
                .context("the patched IPPool")?
                .pop()
            else {
                bail!("the patch must leave an IPPool");
            };
            if patched.name != name {
                bail!("a patch cannot rename IPPool {name}");
            }
            libipam::alloc::validate_new_pool(&patched, &pools)
                .with_context(|| format!("IPPool {name}"))?;
            ds.apply_pool(&patched).await?;
            Ok(())
        })
    })??;
    println!("Successfully patched 1 'IPPool' resource");
    Ok(exit::OK)
}

/// RFC 7386: objects merge, `null` deletes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// `delete ippool NAME`. A pool with addresses in use must be disabled first: deleting it
/// while it still hands out addresses would strand them (no pool covers their blocks). A pool
/// object that cannot be read is deleted all the same (whether it is enabled cannot be known,
/// and it hands out nothing meanwhile), saying so and what stays allocated in its CIDR.
pub fn delete(store: &StoreConfig, name: &str) -> Result<i32> {
    let note = with_store(store, async |store| {
        with_ipam!(store, |ipam| {
            let listed = ipam.store().list_pools().await?;
            let in_use = async |cidr: IpNet| -> Result<u128> {
                Ok(ipam
                    .blocks()
                    .await?
                    .iter()
                    .filter(|b| cidr.contains(&b.cidr))
                    .map(|b| u128::from(b.in_use))
                    .sum())
            };
            let mut note = None;
            if let Some(pool) = listed.pools.iter().find(|p| p.name == name) {
                let pool = pool.clone().with_defaults();
                if let (false, Some(cidr)) = (pool.spec.disabled, pool.cidr()) {
                    let n = in_use(cidr.trunc()).await?;
                    if n > 0 {
                        bail!(
                            "IPPool {name} ({cidr}) still has {n} address(es) in use: disable it first so no new \
                             address comes from it, move or delete the pods that use it, then delete it:\n  \
                             calico-ipam patch ippool {name} -p '{{\"spec\":{{\"disabled\":true}}}}'\n  \
                             calico-ipam delete ippool {name}\n\
                             (`calico-ipam ipam show --show-blocks` shows where they are; a disabled pool can \
                             be deleted with addresses in use, which stay allocated until released)"
                        );
                    }
                }
            } else if let Some(u) = listed.unreadable(name) {
                let held = match u.cidr {
                    Some(cidr) => match in_use(cidr).await? {
                        0 => format!("no address in its CIDR {cidr} is allocated"),
                        n => format!(
                            "the {n} address(es) allocated in its CIDR {cidr} stay allocated until \
                             released (`calico-ipam ipam show --show-blocks` shows where they are)"
                        ),
                    },
                    None => "its CIDR is unknown: addresses allocated from it stay allocated \
                             until released (`calico-ipam ipam show --show-blocks` lists blocks \
                             in no pool)"
                        .to_owned(),
                };
                note = Some(format!(
                    "IPPool {name} could not be read ({}: {}), so whether it was enabled is \
                     unknown; it was deleted, and {held}",
                    u.object, u.reason
                ));
            }
            if !ipam.store().delete_pool(name).await? {
                bail!(
                    "Failed to delete 'IPPool' resource: resource does not exist: IPPool({name})"
                );
            }
            Ok(note)
        })
    })??;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    println!("Successfully deleted 1 'IPPool' resource(s)");
    Ok(exit::OK)
}

/// What is said of a pool object that cannot be read, and how to repair it.
fn unreadable(u: &UnreadablePool) -> String {
    format!(
        "IPPool({}) cannot be read ({}: {}): replace it with `calico-ipam apply -f` and a good \
         definition named {}, or delete it with `calico-ipam delete ippool {}`",
        u.name, u.object, u.reason, u.name, u.name
    )
}

/// A pool as a projectcalico.org/v3 document, fields in Calico's order (libipam's one
/// encoder, which the etcd datastore's values use too).
pub fn to_v3(p: &IpPool) -> Value {
    p.v3_document()
}

/// YAML as calicoctl prints it (sigs.k8s.io/yaml: keys sorted).
pub fn to_yaml(doc: &Value) -> Result<String> {
    serde_saphyr::to_string(&sorted(doc)).context("writing YAML")
}

fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_rfc7386() {
        let mut doc = json!({"spec": {"cidr": "10.0.0.0/8", "natOutgoing": true}});
        merge_patch(
            &mut doc,
            &json!({"spec": {"disabled": true, "natOutgoing": null}}),
        );
        assert_eq!(
            doc,
            json!({"spec": {"cidr": "10.0.0.0/8", "disabled": true}})
        );
    }

    #[test]
    fn v3_documents_round_trip_through_the_strict_reader() {
        let pool = IpPool::new("p", "10.1.0.0/16");
        let yaml = to_yaml(&to_v3(&pool)).expect("yaml");
        assert!(
            yaml.starts_with("apiVersion: projectcalico.org/v3\n"),
            "{yaml}"
        );
        let back = resources::parse(&yaml).expect("parse");
        assert_eq!(back, vec![Resource::Pool(pool)]);
    }
}
