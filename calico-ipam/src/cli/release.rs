//! `ipam release`: one address, or the leaked addresses and handles of `check` reports.

use std::net::IpAddr;

use anyhow::{Context, Result, bail};

use super::{exit, with_store};
use crate::store::StoreConfig;
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

/// Release what every report lists as leaked.
pub fn from_reports(_store: &StoreConfig, _reports: &[String], _force: bool) -> Result<i32> {
    bail!("--from-report is not supported yet")
}
