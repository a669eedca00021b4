//! `ipam check`: the IPAM objects against each other (libipam's `check`) and against what
//! uses the addresses (libipam's `audit`), printed as calicoctl prints its check, with its
//! JSON report (`-o REPORT`), the input of `ipam release --from-report`.
//!
//! What counts as "in use" depends on the datastore:
//! - kubernetes: live pods (Calico's WorkloadEndpoint rules), nodes' tunnel addresses and
//!   LoadBalancer services, as calicoctl reads them;
//! - local: there is no pod list. An allocation is in use while the network namespace its
//!   ADD was given still exists (calico-ipam records it); allocations without one cannot be
//!   judged and are only counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use libipam::alloc::audit::{self, Allocation, Audit, Liveness, NETNS_ATTRIBUTE};
use libipam::alloc::{Checked, Problem};
use libipam::datastore::kube::ClusterFacts;
use libipam::datastore::local::Temporaries;
use libipam::model::{IpPool, IpamBlock};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{exit, with_store};
use crate::store::{Store, StoreConfig};
use crate::with_ipam;

pub struct CheckOptions {
    pub report: Option<String>,
    pub show_all_ips: bool,
    pub show_problem_ips: bool,
}

/// The version a report records (and `release --from-report` compares).
pub fn report_version() -> String {
    format!("calico-ipam {}", env!("CARGO_PKG_VERSION"))
}

/// Everything one check reads.
struct Gathered {
    kubernetes: bool,
    /// The report's `datastore_type`: `local`, `kubernetes` or `etcdv3`.
    datastore_type: &'static str,
    facts: ClusterFacts,
    temporaries: Temporaries,
    problems: Vec<Problem>,
    blocks: Vec<IpamBlock>,
    pools: Vec<IpPool>,
    audit: Audit,
}

pub fn check(store: &StoreConfig, opts: &CheckOptions) -> Result<i32> {
    println!("Checking IPAM for inconsistencies...\n");
    let g = with_store(store, async |store| {
        let datastore_type = match &store {
            Store::Local(_) => "local",
            Store::Kube(_) => "kubernetes",
            Store::Etcd(_) => "etcdv3",
        };
        let (kubernetes, facts, temporaries, listed) = match &store {
            Store::Local(local) => (false, ClusterFacts::default(), local.temporaries()?, None),
            Store::Etcd(_) => (false, ClusterFacts::default(), Temporaries::default(), None),
            Store::Kube(k) => {
                let conn = k.connection();
                let facts = conn.cluster_facts().await?;
                let liveness = conn.workload_liveness().await.context(
                    "ipam check lists every pod, node and service, as calicoctl does: use a \
                     kubeconfig allowed to (the CNI plugin's own account is not)",
                )?;
                (true, facts, Temporaries::default(), Some(liveness))
            }
        };
        with_ipam!(store, |ipam| {
            // Every object read once, each on its own: one that cannot be read is a problem
            // of its own, and the rest is still checked.
            let Checked {
                problems,
                inventory,
            } = ipam.check_all().await?;
            let blocks: Vec<IpamBlock> = inventory.blocks.into_iter().map(|b| b.value).collect();
            let pools = inventory.pools;
            let liveness = listed.unwrap_or_else(|| netns_liveness(&blocks));
            let audit = audit::audit(&blocks, &inventory.handles, &pools, &liveness);
            Ok::<_, anyhow::Error>(Gathered {
                kubernetes,
                datastore_type,
                facts,
                temporaries,
                problems,
                blocks,
                pools,
                audit,
            })
        })
    })??;
    report_temporaries(&g.temporaries);
    let problems = print_check(&g, opts);
    if let Some(path) = &opts.report {
        let doc = serde_json::to_string_pretty(&report(&g))?;
        std::fs::write(path, doc).with_context(|| format!("writing the report {path}"))?;
        println!("Report written to {path}.");
    }
    Ok(if problems == 0 {
        exit::OK
    } else {
        exit::PROBLEMS
    })
}

/// Local datastore: the recorded network namespaces that still exist.
fn netns_liveness(blocks: &[IpamBlock]) -> Liveness {
    let mut alive = BTreeSet::new();
    for b in blocks {
        for a in &b.attributes {
            if let Some(ns) = a.secondary.as_ref().and_then(|s| s.get(NETNS_ATTRIBUTE))
                && Path::new(ns).exists()
            {
                alive.insert(ns.clone());
            }
        }
    }
    Liveness::Netns { alive }
}

/// calicoctl's progress lines and counts, then ours; returns the number of problems.
fn print_check(g: &Gathered, o: &CheckOptions) -> usize {
    let a = &g.audit;
    let show_problems = o.show_problem_ips || o.show_all_ips;
    println!("Loading all IPAM blocks...");
    println!("Found {} IPAM blocks.", g.blocks.len());
    for b in &g.blocks {
        println!(
            " IPAM block {} affinity={}:",
            b.cidr,
            b.affinity.as_deref().unwrap_or("<none>")
        );
        if o.show_all_ips {
            for al in a.allocations.iter().filter(|al| al.block == b.cidr) {
                println!("  {} allocated; attrs {}", al.ip, attrs(al));
            }
        }
    }
    println!("IPAM blocks record {} allocations.\n", a.allocations.len());

    println!("Loading all IPAM pools...");
    let active: Vec<&IpPool> = g.pools.iter().filter(|p| !p.spec.disabled).collect();
    for p in &active {
        println!("  {}", p.spec.cidr);
    }
    println!("Found {} active IP pools.\n", active.len());

    if g.kubernetes {
        println!("Loading all nodes, workload endpoints and load balancer services.");
        println!(
            "Workloads, nodes and services are using {} IPs.\n",
            a.in_use_count
        );
    } else {
        let judged = a.allocations.len() - a.unknown().count();
        println!("Loading network namespaces (local datastore: no pod or node list).");
        println!(
            "{judged} allocations record the network namespace of their ADD; an allocation is in use while it exists."
        );
        let unknown = a.unknown().count();
        if unknown > 0 {
            println!(
                "{unknown} allocations record none (made before calico-ipam recorded it, or without CNI_NETNS): whether they are in use cannot be known here. The container runtime's CNI GC (CNI 1.1) releases what it no longer knows."
            );
            if show_problems {
                for al in a.unknown() {
                    println!("  {} cannot be judged; attrs {}", al.ip, attrs(al));
                }
            }
        }
        println!(
            "Pods without allocations and blocks of missing nodes cannot be found without a pod and node list.\n"
        );
    }

    let mut by_node: BTreeMap<&str, usize> = BTreeMap::new();
    for al in &a.allocations {
        *by_node.entry(al.node.as_deref().unwrap_or("")).or_default() += 1;
    }
    let mut nodes: Vec<(&str, usize)> = by_node.into_iter().collect();
    nodes.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(y.0)));
    println!("Looking for top (up to 20) nodes by allocations...");
    for (n, c) in nodes.iter().take(20) {
        println!("  {n} has {c} allocations");
    }
    if let Some((_, max)) = nodes.first() {
        println!(
            "Node with most allocations has {max}; median is {}",
            nodes[nodes.len() / 2].1
        );
    }
    println!();

    println!("Scanning for IPs that are allocated but not actually in use...");
    for al in a.leaked() {
        if show_problems {
            println!("  {} leaked; attrs {}", al.ip, attrs(al));
        }
    }
    println!(
        "Found {} IPs that are allocated in IPAM but not actually in use.",
        a.leaked().count()
    );
    if g.kubernetes {
        println!(
            "Scanning for IPs that are in use by a workload or node but not allocated in IPAM..."
        );
        if show_problems {
            for (ip, _) in &a.multiple_owners {
                println!("  {ip} has multiple owners.");
            }
            for (ip, owners) in &a.not_in_active_pool {
                for owner in owners {
                    println!("  {ip} in use by {owner} is not in any active IP pool.");
                }
            }
            for (ip, owners) in &a.in_use_not_allocated {
                for owner in owners {
                    println!(
                        "  {ip} in use by {owner} and in active IPAM pool but has no IPAM allocation."
                    );
                }
            }
        }
        println!(
            "Found {} in-use IPs that are not in active IP pools.",
            a.not_in_active_pool.len()
        );
        println!(
            "Found {} in-use IPs that are in active IP pools but have no corresponding IPAM allocation.\n",
            a.in_use_not_allocated.len()
        );
    }

    println!("Scanning for IPAM handles with no matching IPs...");
    if o.show_all_ips {
        for h in &a.leaked_handles {
            println!("  {} doesn't have any active IPs.", h.id);
        }
    }
    let handles_total: BTreeSet<&str> = a
        .allocations
        .iter()
        .filter_map(|al| al.handle.as_deref())
        .collect();
    println!(
        "Found {} handles with no matching IPs (and {} handles with matches).",
        a.leaked_handles.len(),
        handles_total.len() - a.missing_handles.len()
    );
    println!("Scanning for IPs with missing handle...");
    if show_problems {
        for h in &a.missing_handles {
            println!("  {h} is in use in a block but doesn't exist.");
        }
    }
    println!(
        "Found {} handles mentioned in blocks with no matching handle resource.",
        a.missing_handles.len()
    );
    if g.kubernetes {
        println!("Scanning for blocks affine to nodes that do not exist...");
        for (cidr, node) in &a.blocks_of_missing_nodes {
            println!("  block {cidr} is affine to node {node}, which does not exist.");
        }
        println!(
            "Found {} blocks affine to missing nodes.",
            a.blocks_of_missing_nodes.len()
        );
    }
    println!(
        "Reading every IPAM object on its own (config, pools, reservations, blocks, handles, affinities) and checking them against each other..."
    );
    for p in &g.problems {
        println!("  {p}");
    }
    println!("Found {} inconsistencies.", g.problems.len());

    // A leaked handle that still lists blocks is also an inconsistency of that handle, and a
    // missing handle one of its blocks (not counted by the audit): each counts once.
    let leaked: BTreeSet<String> = a
        .leaked_handles
        .iter()
        .map(|h| format!("handle {}", h.id))
        .collect();
    let structural = g
        .problems
        .iter()
        .filter(|p| !leaked.contains(&p.object))
        .count();
    let problems = a.problem_count() + structural;
    println!("Check complete; found {problems} problems.");
    if problems > 0 && !show_problems {
        println!("Run with --show-problem-ips to list them.");
    }
    if a.leaked().count() + a.leaked_handles.len() > 0 && o.report.is_none() {
        println!(
            "To release leaked addresses and handles: write a report with -o REPORT, then `calico-ipam ipam release --from-report=REPORT`."
        );
    }
    problems
}

/// calicoctl's `Main:<handle> Extra:k=v,...`.
fn attrs(a: &Allocation) -> String {
    let extra: Vec<String> = a
        .attributes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "Main:{} Extra:{}",
        a.handle.as_deref().unwrap_or("<none>"),
        extra.join(",")
    )
}

/// calicoctl's report (`Report` in calicoctl/commands/ipam/check.go), plus our own findings
/// under names calicoctl does not use (it ignores them when reading a report).
#[derive(Debug, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    #[serde(default)]
    pub version: String,
    #[serde(default, rename = "clusterGUID")]
    pub cluster_guid: String,
    #[serde(default)]
    pub datastore_locked: bool,
    #[serde(default, rename = "clusterInformationRevision")]
    pub cluster_info_revision: String,
    #[serde(default)]
    pub cluster_type: String,
    #[serde(default)]
    pub allocations: BTreeMap<String, Vec<ReportAllocation>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaked_handles: Vec<HandleInfo>,
    /// Ours: `local`, `kubernetes` or `etcdv3`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub datastore_type: String,
    /// Ours: blocks, handles and affinities that disagree with each other, one sentence each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inconsistencies: Vec<String>,
    /// Ours: the other findings besides leaks, one sentence each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// One allocation of a report.
#[derive(Debug, Serialize, Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ReportAllocation {
    pub ip: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub handle: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub creation_timestamp: String,
    #[serde(default)]
    pub in_use: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub borrowed: bool,
    /// Go marshals an empty owner list as null.
    #[serde(default)]
    pub owners: Option<Vec<String>>,
    /// Ours: the local datastore could not tell (no network namespace recorded); counted as in
    /// use so that `release --from-report` leaves it alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unverifiable: bool,
}

/// A leaked handle, with Go's field names (calicoctl's `HandleInfo` has no JSON tags).
#[derive(Debug, Serialize, Deserialize, Default, Clone)]
pub struct HandleInfo {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "UID", default)]
    pub uid: Option<String>,
    #[serde(rename = "Revision", default)]
    pub revision: String,
}

fn report(g: &Gathered) -> Report {
    let a = &g.audit;
    let mut allocations: BTreeMap<String, Vec<ReportAllocation>> = BTreeMap::new();
    for al in &a.allocations {
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        allocations
            .entry(al.ip.to_string())
            .or_default()
            .push(ReportAllocation {
                ip: al.ip.to_string(),
                handle: s(&al.handle),
                sequence_number: al.sequence_number,
                pod: s(&al.pod),
                namespace: s(&al.namespace),
                node: s(&al.node),
                kind: s(&al.kind),
                creation_timestamp: s(&al.creation_timestamp),
                in_use: al.in_use != Some(false),
                borrowed: al.borrowed,
                owners: (!al.owners.is_empty()).then(|| al.owners.clone()),
                unverifiable: al.in_use.is_none(),
            });
    }
    let mut problems: Vec<String> = Vec::new();
    problems.extend(a.in_use_not_allocated.iter().map(|(ip, o)| {
        format!(
            "{ip} in use by {} and in an active pool but has no IPAM allocation",
            o.join(", ")
        )
    }));
    problems.extend(a.not_in_active_pool.iter().map(|(ip, o)| {
        format!(
            "{ip} in use by {} is not in any active IP pool",
            o.join(", ")
        )
    }));
    problems.extend(
        a.missing_handles
            .iter()
            .map(|h| format!("handle {h} is in use in a block but doesn't exist")),
    );
    problems.extend(
        a.blocks_of_missing_nodes
            .iter()
            .map(|(c, n)| format!("block {c} is affine to node {n}, which does not exist")),
    );
    Report {
        version: report_version(),
        cluster_guid: g.facts.guid.clone(),
        datastore_locked: g.facts.datastore_locked,
        cluster_info_revision: g.facts.revision.clone(),
        cluster_type: g.facts.cluster_type.clone(),
        allocations,
        leaked_handles: a
            .leaked_handles
            .iter()
            .map(|h| HandleInfo {
                id: h.id.clone(),
                uid: None,
                revision: h.revision.clone(),
            })
            .collect(),
        datastore_type: g.datastore_type.into(),
        inconsistencies: g.problems.iter().map(ToString::to_string).collect(),
        problems,
    }
}

/// Read a report written by `check -o` (ours or calicoctl's).
pub fn read_report(path: &str) -> Result<Report> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{path} is not JSON"))?;
    serde_json::from_value(v).with_context(|| format!("{path} is not an IPAM check report"))
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
