//! DEL: release the addresses and remove the veth. The two are independent, so the IPAM plugin
//! runs while the kernel tears the veth down (a veth delete waits for an RCU grace period, the
//! longest step by far). Everything already gone counts as success; every step runs, and the
//! release happens even when the netns is long gone.

use libipam::cni::skel::Request;
use libipam::cni::{CniError, Command};

use super::{block_on, dataplane_error, host_ifname, ipam_plugin};
use crate::{dataplane, ipam_exec};

pub fn del(req: &Request) -> Result<(), CniError> {
    let mut errors: Vec<CniError> = Vec::new();
    let release =
        ipam_plugin(req).and_then(|ipam| ipam_exec::start(&ipam, Command::Del, &req.stdin));
    let host_ifname = host_ifname(req);
    let teardown = dataplane::teardown(req.env.netns.as_deref(), &req.env.ifname, &host_ifname);
    match block_on(teardown) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => errors.push(dataplane_error(e)),
        Err(e) => errors.push(e),
    }
    if let Err(e) = release.and_then(ipam_exec::Running::finish) {
        errors.insert(0, e);
    }
    log!(
        Info,
        "DEL {}: {} problem(s)",
        req.env.container_id,
        errors.len()
    );
    let mut iter = errors.into_iter();
    match (iter.next(), iter.next()) {
        (None, _) => Ok(()),
        (Some(only), None) => Err(only),
        (Some(first), Some(second)) => Err(CniError::new(
            first.code,
            first.msg.clone(),
            format!("{}; also: {}", first.details, second),
        )),
    }
}
