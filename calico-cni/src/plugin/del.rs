//! DEL: release the addresses first (so they are freed even when the netns is long gone), then
//! remove the veth. Everything already gone counts as success; every step runs.

use libipam::cni::skel::Request;
use libipam::cni::{CniError, Command};

use super::{block_on, dataplane_error, host_ifname, ipam_plugin};
use crate::{dataplane, ipam_exec};

pub fn del(req: &Request) -> Result<(), CniError> {
    let mut errors: Vec<CniError> = Vec::new();
    match ipam_plugin(req).and_then(|ipam| ipam_exec::exec(&ipam, Command::Del, &req.stdin)) {
        Ok(_) => {}
        Err(e) => errors.push(e),
    }
    let host_ifname = host_ifname(req);
    let teardown = dataplane::teardown(req.env.netns.as_deref(), &req.env.ifname, &host_ifname);
    match block_on(teardown) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => errors.push(dataplane_error(e)),
        Err(e) => errors.push(e),
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
