//! `ipam check`.

use anyhow::Result;
use libipam::datastore::local::Temporaries;

use super::{exit, with_store};
use crate::store::{Store, StoreConfig};
use crate::with_ipam;

#[allow(dead_code)] // read by the workload comparison (next step)
pub struct CheckOptions {
    pub report: Option<String>,
    pub show_all_ips: bool,
    pub show_problem_ips: bool,
}

/// Allocations, handles and blocks must agree; print what does not and exit 3.
pub fn check(store: &StoreConfig, _opts: &CheckOptions) -> Result<i32> {
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
        return Ok(exit::OK);
    }
    println!("Found {} problem(s):", problems.len());
    for p in &problems {
        println!("- {p}");
    }
    Ok(exit::PROBLEMS)
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
