//! DEL: release the addresses and remove the veth. The two are independent, so the IPAM plugin
//! runs while the kernel tears the veth down (a veth delete waits for an RCU grace period, the
//! longest step by far). Everything already gone counts as success; every step runs, and the
//! release happens even when the netns is long gone. In the Kubernetes datastore the pod's
//! address annotations are cleared first.

use libipam::cni::netconf::DatastoreType;
use libipam::cni::skel::Request;
use libipam::cni::{CniError, Command};

use super::{api_call, block_on, dataplane_error, host_ifname, ipam_plugin, ipam_stdin, runtime};
use crate::{dataplane, ipam_exec, k8s};

pub fn del(req: &Request) -> Result<(), CniError> {
    if req.conf.datastore_type == DatastoreType::Kubernetes {
        unpublish(req)?;
    }
    let mut errors: Vec<CniError> = Vec::new();
    let release = ipam_plugin(req).and_then(|ipam| {
        let stdin = ipam_stdin(req)?;
        ipam_exec::start(&ipam, Command::Del, &stdin)
    });
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
    tracing::info!(
        problems = errors.len(),
        "released the addresses and removed the pod interface"
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

/// The Kubernetes datastore's part of DEL, as Calico orders it: the ready check, then the
/// pod's address annotations are cleared (unless the pod has moved on to another container).
/// Any API error stops DEL before anything is cleaned up, so a runtime retry finds everything
/// still there ("protect the endpoint from a false DEL").
fn unpublish(req: &Request) -> Result<(), CniError> {
    let rt = runtime()?;
    let mut api = api_call(&rt, k8s::connect(&req.conf))?;
    api_call(&rt, api.check_ready())?;
    if let Some((namespace, pod)) = req.env.args.pod() {
        api_call(
            &rt,
            api.clear_pod_addresses(namespace, pod, &req.env.container_id),
        )?;
    }
    api.save();
    Ok(())
}
