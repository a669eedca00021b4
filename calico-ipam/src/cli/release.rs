//! `ipam release`: one address, or the leaked addresses and handles of `check` reports.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use libipam::alloc::ExpectedAllocation;
use libipam::cni::netconf::DatastoreType;

use super::report::{HandleInfo, Report, read_report, report_version};
use super::{exit, with_store};
use crate::store::{Store, StoreConfig};
use crate::with_ipam;

/// Release one address, whatever handle holds it.
pub fn ip(store: &StoreConfig, ip: &str) -> Result<i32> {
    let ip: IpAddr = ip
        .parse()
        .with_context(|| format!("{ip:?} is not an IP address"))?;
    let unallocated = with_store(store, async |store| {
        with_ipam!(store, |ipam| ipam.release_ips(&[ip]).await)
    })??;
    if unallocated.contains(&ip) {
        bail!("IP address {ip} is not assigned");
    }
    println!("Successfully released IP address {ip}");
    Ok(exit::OK)
}

/// Release what every report lists as leaked (calicoctl's `releaseFromReports`): addresses
/// no workload uses and handles without addresses, in all the reports; each address only if it
/// still has the handle and sequence number the report saw, each handle only if unchanged.
pub fn from_reports(store: &StoreConfig, paths: &[String], force: bool) -> Result<i32> {
    let reports: Vec<(String, Report)> = paths
        .iter()
        .map(|p| read_report(p).map(|r| (p.clone(), r)))
        .collect::<Result<_>>()?;
    let (ips, handles) = merge(&reports);
    let outcome = with_store(store, async |store| {
        let kube_facts = match &store {
            Store::Kube(k) => Some(k.connection().cluster_facts().await?),
            Store::Local(_) | Store::Etcd(_) => None,
        };
        let facts = kube_facts.clone().unwrap_or_default();
        let mut warnings = Vec::new();
        let mut current = false;
        for (path, r) in &reports {
            // Not overridable: a report of another cluster must never release anything here.
            if r.cluster_guid != facts.guid {
                bail!(
                    "cluster does not match the provided report ({path}): mismatched cluster GUID. Refusing to release"
                );
            }
            if r.version != report_version() {
                if !force {
                    bail!(
                        "the provided report ({path}) was produced using a different version ({}) of calico-ipam. Refusing to release (--force overrides)",
                        r.version
                    );
                }
                warnings.push(
                    "WARNING: Report was produced using a different version of calico-ipam. Ignoring due to --force option",
                );
            }
            current |= r.cluster_info_revision == facts.revision;
        }
        if !current {
            bail!(
                "the provided reports are all stale - at least one should be up-to-date. Please generate a new report while the data store is locked and try again"
            );
        }
        if kube_facts.is_some() && !facts.datastore_locked {
            if !force {
                bail!(
                    "data store is not locked. Either lock the data store, or re-run with --force"
                );
            }
            warnings.push("WARNING: Data store is not locked. Ignoring due to --force option");
        }
        with_ipam!(store, |ipam| {
            let not_released = if ips.is_empty() {
                Vec::new()
            } else {
                ipam.release_if_unchanged(&ips).await?
            };
            let mut deleted = 0;
            for h in &handles {
                if ipam.delete_handle_if_unchanged(&h.id, &h.revision).await? {
                    deleted += 1;
                }
            }
            Ok::<_, anyhow::Error>((warnings, not_released, deleted))
        })
    })??;
    let (warnings, not_released, deleted) = outcome;
    for w in warnings {
        println!("{w}");
    }
    if ips.is_empty() {
        println!("Report didn't contain any leaked IPs to clean up.");
    } else {
        println!("Releasing {} old IPs...", ips.len());
        println!(
            "Released {} IPs successfully",
            ips.len() - not_released.len()
        );
        if !not_released.is_empty() {
            println!(
                "{} addresses marked as leaked in the report had already been cleaned up (or were allocated again since):",
                not_released.len()
            );
            for ip in &not_released {
                println!("  {ip}");
            }
        }
    }
    if handles.is_empty() {
        println!("Report didn't contain any handles to clean up.");
    } else {
        println!("Deleting {} handles...", handles.len());
        println!(
            "Released {deleted} handles; {} skipped; 0 errors.",
            handles.len() - deleted
        );
    }
    if matches!(store.kind, DatastoreType::Kubernetes) {
        println!("You may now unlock the data store.");
    }
    Ok(exit::OK)
}

/// What is leaked in every report: addresses not in use (keyed by address, with the handle and
/// sequence number of the first report), and handles leaked at the same revision in all.
fn merge(reports: &[(String, Report)]) -> (Vec<ExpectedAllocation>, Vec<HandleInfo>) {
    let mut ips: Option<BTreeMap<IpAddr, ExpectedAllocation>> = None;
    let mut handles: Option<BTreeMap<String, HandleInfo>> = None;
    for (_, r) in reports {
        let mut these = BTreeMap::new();
        for a in r.allocations.values().flatten() {
            let Ok(ip) = a.ip.parse::<IpAddr>() else {
                continue;
            };
            if a.in_use || ips.as_ref().is_some_and(|m| !m.contains_key(&ip)) {
                continue;
            }
            these.insert(
                ip,
                ExpectedAllocation {
                    ip,
                    handle: (!a.handle.is_empty()).then(|| a.handle.clone()),
                    sequence_number: a.sequence_number,
                },
            );
        }
        ips = Some(these);
        let mut these = BTreeMap::new();
        for h in &r.leaked_handles {
            let same = handles
                .as_ref()
                .is_none_or(|m| m.get(&h.id).is_some_and(|o| o.revision == h.revision));
            if same {
                these.insert(h.id.clone(), h.clone());
            }
        }
        handles = Some(these);
    }
    (
        ips.unwrap_or_default().into_values().collect(),
        handles.unwrap_or_default().into_values().collect(),
    )
}
