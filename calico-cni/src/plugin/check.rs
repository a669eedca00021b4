//! CHECK: the IPAM still holds the addresses, and the pod and host still have what ADD made.

use std::net::IpAddr;

use libipam::cni::skel::Request;
use libipam::cni::{CniError, CniResult, Command, code};

use super::{block_on, dataplane_error, host_ifname, ipam_plugin, ipam_stdin};
use crate::dataplane::{self, Plan};
use crate::ipam_exec;

pub fn check(req: &Request) -> Result<(), CniError> {
    let prev = req.conf.prev_result.as_ref().ok_or_else(|| {
        CniError::invalid_config("CHECK needs prevResult: the runtime passes the cached ADD result")
    })?;
    let prev = CniResult::from_value(&serde_json::Value::Object(prev.clone()))
        .map_err(|e| CniError::invalid_config(format!("prevResult: {e}")))?;
    let netns = req
        .env
        .netns
        .clone()
        .ok_or_else(|| CniError::invalid_env("CNI_NETNS is required for CHECK"))?;
    let ipam = ipam_plugin(req)?;
    ipam_exec::exec(&ipam, Command::Check, &ipam_stdin(req)?)?;

    let pod_index = prev
        .interfaces
        .iter()
        .position(|i| i.name == req.env.ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            check_failed(format!(
                "prevResult has no interface {} with a sandbox",
                req.env.ifname
            ))
        })?;
    let mut plan = Plan {
        netns,
        host_ifname: host_ifname(req),
        pod_ifname: req.env.ifname.clone(),
        mtu: None,
        ipv4: None,
        ipv6: None,
        allow_ip_forwarding: req.conf.container_settings.allow_ip_forwarding,
        pod_mac: None,
    };
    for ip in prev.ips.iter().filter(|ip| ip.interface == Some(pod_index)) {
        match ip.address.addr() {
            IpAddr::V4(a) => plan.ipv4 = Some(a),
            IpAddr::V6(a) => plan.ipv6 = Some(a),
        }
    }
    match block_on(dataplane::check(&plan))? {
        Ok(()) => Ok(()),
        Err(e) => {
            let e = dataplane_error(e);
            Err(check_failed(e.details))
        }
    }
}

fn check_failed(details: String) -> CniError {
    CniError::new(
        code::CHECK_FAILED,
        "the pod network does not match prevResult",
        details,
    )
}
