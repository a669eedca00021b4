//! The verbs: orchestration only. IPAM is delegated (`ipam_exec`), kernel work is the
//! `dataplane` module's; this file decides what to do and in which order.

mod add;
mod check;
mod del;

use libipam::cni::skel::{Plugin, Request};
use libipam::cni::{CniError, CniResult, Command, NetConf, code, log};

use crate::dataplane::DataplaneError;
use crate::dataplane::{self, DEFAULT_HOST_PREFIX};
use crate::{host_local, ipam_exec, k8s};

/// The `calico` CNI plugin.
pub struct Calico;

impl Plugin for Calico {
    fn configure(&self, conf: Option<&NetConf>) {
        let settings = conf.map(log::Settings::from_conf).unwrap_or_default();
        log::init("cni-plugin", &settings);
    }
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        add::add(req)
    }
    fn del(&self, req: &Request) -> Result<(), CniError> {
        del::del(req)
    }
    fn check(&self, req: &Request) -> Result<(), CniError> {
        check::check(req)
    }
    fn status(&self, req: &Request) -> Result<(), CniError> {
        let ipam = ipam_plugin(req)?;
        ipam_exec::exec(&ipam, Command::Status, &ipam_stdin(req)?).map(|_| ())
    }
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let ipam = ipam_plugin(req)?;
        ipam_exec::exec(&ipam, Command::Gc, &ipam_stdin(req)?).map(|_| ())
    }
}

/// The IPAM plugin named by `ipam.type`; never calico-cni itself, nor past the delegation depth
/// bound. Its code runs in this process when it is calico-ipam of this build and the netconf's
/// `ipam_in_process` allows it (see `ipam_exec`).
fn ipam_plugin(req: &Request) -> Result<ipam_exec::IpamPlugin, CniError> {
    let ipam_type = &req.conf.ipam.ipam_type;
    if ipam_type.is_empty() {
        return Err(CniError::invalid_config(
            "ipam.type is missing: name an IPAM plugin such as calico-ipam or host-local",
        ));
    }
    let binary = ipam_exec::find_plugin(ipam_type, &req.env.path)?;
    ipam_exec::check_delegation(ipam_type, &binary)?;
    Ok(ipam_exec::IpamPlugin::new(binary, req.conf.ipam_in_process))
}

/// The IPAM plugin's stdin for every verb but ADD: host-local's `usePodCidr` pseudo-subnets
/// become placeholders it can parse (it releases and checks by container ID), so these verbs
/// never need the API server.
fn ipam_stdin(req: &Request) -> Result<Vec<u8>, CniError> {
    if req.conf.ipam.ipam_type != host_local::HOST_LOCAL {
        return Ok(req.stdin.clone());
    }
    host_local::replace_pod_cidrs(&req.stdin, &host_local::PodCidrs::placeholder())
}

/// The host-side veth name for this attachment (Calico's rule: Felix computes the same name from
/// the pod, so it must match exactly).
fn host_ifname(req: &Request) -> String {
    match req.env.args.pod() {
        Some((namespace, pod)) => {
            let prefix = interface_prefix(std::env::var("FELIX_INTERFACEPREFIX").ok().as_deref());
            dataplane::host_veth_name(&prefix, namespace, pod)
        }
        None => dataplane::host_veth_name_for_container(&req.env.container_id),
    }
}

/// FELIX_INTERFACEPREFIX's first comma-separated entry, else `cali`.
fn interface_prefix(raw: Option<&str>) -> String {
    raw.and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .unwrap_or(DEFAULT_HOST_PREFIX)
        .to_string()
}

/// A current_thread runtime (no work stealing: see the dataplane's netns rules).
fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::internal(format!("cannot start the async runtime: {e}")))
}

/// Run a future on a fresh current_thread runtime.
fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, CniError> {
    Ok(runtime()?.block_on(f))
}

/// Run a Kubernetes API call on `rt` within [`k8s::API_TIMEOUT`].
fn api_call<T>(
    rt: &tokio::runtime::Runtime,
    f: impl std::future::Future<Output = Result<T, CniError>>,
) -> Result<T, CniError> {
    rt.block_on(async { tokio::time::timeout(k8s::API_TIMEOUT, f).await })
        .map_err(|_| {
            CniError::try_again(format!(
                "the Kubernetes API did not answer within {:?}",
                k8s::API_TIMEOUT
            ))
        })?
}

/// Dataplane failures as CNI errors: the one place their codes are chosen.
fn dataplane_error(e: DataplaneError) -> CniError {
    let cause = match &e {
        DataplaneError::Incomplete { cause, .. } => cause.as_ref(),
        other => other,
    };
    let code = match cause {
        DataplaneError::NetnsOpen { .. }
        | DataplaneError::NotNetns { .. }
        | DataplaneError::NetnsEnter { .. } => code::NETNS,
        DataplaneError::InterfaceExists { .. } => code::INTERFACE_EXISTS,
        _ => code::DATAPLANE,
    };
    let msg = match code {
        code::NETNS => "cannot enter the pod network namespace",
        code::INTERFACE_EXISTS => "the pod already has this interface",
        _ => "failed to configure the pod network",
    };
    CniError::new(code, msg, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_prefix_follows_felix() {
        assert_eq!(interface_prefix(Some("eni,veth,foo")), "eni");
        assert_eq!(interface_prefix(Some("")), "cali");
        assert_eq!(interface_prefix(None), "cali");
    }
}
