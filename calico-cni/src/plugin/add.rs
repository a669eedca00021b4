//! ADD: IPAM, then the veth, addresses and routes; on any failure undo what was done. In the
//! Kubernetes datastore, the ready check and the pod's annotations come first and the pod's
//! address annotations last. Readiness gates are waited for before anything is allocated.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use libipam::cni::netconf::DatastoreType;
use libipam::cni::skel::Request;
use libipam::cni::{CniError, CniResult, Command, Interface, IpConfig, Route};

use super::{api_call, dataplane_error, host_ifname, ipam_plugin, runtime};
use crate::dataplane::{self, IPV4_GATEWAY, IPV6_GATEWAY, Plan};
use crate::k8s::{self, PodRequests};
use crate::{host_local, ipam_exec, mtu, readiness};

pub fn add(req: &Request) -> Result<CniResult, CniError> {
    let netns = req
        .env
        .netns
        .clone()
        .ok_or_else(|| CniError::invalid_env("CNI_NETNS is required for ADD"))?;
    // Validate before allocating anything: a missing netns or an interface that is already
    // there must not cost an IPAM round trip, nor release what a live attachment holds.
    let ipam = ipam_plugin(req)?;
    if req.conf.feature_control.ip_addrs_no_ipam && req.env.args.pod().is_none() {
        // Calico's check: the feature is only for Kubernetes pods (their annotation).
        return Err(CniError::invalid_config(
            "requested feature is not supported for this runtime: ip_addrs_no_ipam",
        ));
    }
    let host_ifname = host_ifname(req);
    // One runtime for the whole verb: the Kubernetes client lives on it.
    let rt = runtime()?;
    rt.block_on(dataplane::preflight(&netns, &req.env.ifname))
        .map_err(dataplane_error)?;

    // Kubernetes datastore: every API call that can fail before anything is made (the
    // ready check, the pod's and namespace's annotations); only the final annotation write
    // comes after the dataplane, and is undone with it.
    let mut api = match req.conf.datastore_type {
        DatastoreType::Kubernetes => Some(api_call(&rt, k8s::connect(&req.conf))?),
        DatastoreType::Local | DatastoreType::Etcdv3 => None,
    };
    if let Some(api) = api.as_mut() {
        api_call(&rt, api.check_ready())?;
    }
    readiness::wait_for(&req.conf.readiness_gates)?;
    let mut overrides = PodRequests::default();
    if let Some(api) = api.as_mut()
        && req.conf.policy.policy_type == "k8s"
        && let Some((namespace, pod)) = req.env.args.pod()
    {
        let annotations = api_call(&rt, api.pod(namespace, pod))?
            .ok_or_else(|| {
                CniError::new(
                    libipam::cni::code::UNKNOWN_CONTAINER,
                    "the pod does not exist",
                    format!("pod {namespace}/{pod} not found at {}", api.server()),
                )
            })?
            .annotations;
        let ns_annotations = api_call(&rt, api.namespace_annotations(namespace))?;
        overrides = PodRequests::from_annotations(
            &annotations,
            &ns_annotations,
            &req.conf.ipam.ipam_type,
            &req.conf.feature_control,
        )?;
    }
    let mut stdin = overrides.rewrite_stdin(&req.stdin)?;
    if req.conf.ipam.ipam_type == host_local::HOST_LOCAL && host_local::wants_pod_cidrs(&stdin)? {
        let cidrs = node_pod_cidrs(req, &rt, api.as_ref())?;
        stdin = host_local::replace_pod_cidrs(&stdin, &cidrs)?;
    }

    mtu::check(req.conf.mtu, gets_ipv6(req, &overrides, &stdin)?)?;

    let bypass_ipam = overrides.ip_addrs_no_ipam.is_some();
    let ipam_result = match (&overrides.ip_addrs, &overrides.ip_addrs_no_ipam) {
        (_, Some(addrs)) => given_addresses(addrs),
        (Some(addrs), None) => {
            add_specific(&ipam, &stdin, addrs).map_err(|e| overrides.name_pool_origin(e))?
        }
        (None, None) => ipam_exec::add(&ipam, &stdin).map_err(|e| overrides.name_pool_origin(e))?,
    };
    // From here on, every failure releases the addresses before it is reported.
    let undo_ipam = |cause: CniError| -> CniError {
        if bypass_ipam {
            return cause;
        }
        if let Err(e) = ipam_exec::exec(&ipam, Command::Del, &stdin) {
            tracing::error!(error = %e, "releasing addresses after a failed ADD");
            return CniError::new(
                cause.code,
                cause.msg,
                format!(
                    "{}; releasing the addresses also failed: {e}",
                    cause.details
                ),
            );
        }
        cause
    };
    let (ipv4, ipv6) = match pod_addresses(&ipam_result) {
        Ok(a) => a,
        Err(e) => return Err(undo_ipam(e)),
    };
    // An IPAM plugin whose families could not be told beforehand.
    if let Err(e) = mtu::check(req.conf.mtu, Some(ipv6.is_some())) {
        return Err(undo_ipam(e));
    }
    let plan = Plan {
        netns: netns.clone(),
        host_ifname: host_ifname.clone(),
        pod_ifname: req.env.ifname.clone(),
        mtu: req.conf.mtu.filter(|m| *m > 0),
        ipv4,
        ipv6,
        allow_ip_forwarding: req.conf.container_settings.allow_ip_forwarding,
        pod_mac: overrides.pod_mac,
    };
    let applied = match rt.block_on(dataplane::setup(&plan)) {
        Ok(applied) => applied,
        Err(e) => return Err(undo_ipam(dataplane_error(e))),
    };

    if let (Some(api), Some((namespace, pod))) = (api.as_mut(), req.env.args.pod()) {
        let addresses: Vec<IpNet> = ipv4
            .map(|a| IpNet::from(IpAddr::V4(a)))
            .into_iter()
            .chain(ipv6.map(|a| IpNet::from(IpAddr::V6(a))))
            .collect();
        let published = api_call(
            &rt,
            api.set_pod_addresses(namespace, pod, &addresses, &req.env.container_id),
        );
        if let Err(e) = published {
            // Leave nothing half-made: no interface, no addresses held.
            if let Err(t) = rt.block_on(dataplane::teardown(
                Some(&netns),
                &req.env.ifname,
                &host_ifname,
            )) {
                tracing::error!(error = %t, "removing the pod interface after a failed ADD");
            }
            return Err(undo_ipam(e));
        }
        api.save();
    }
    tracing::info!(
        Netns = %netns.display(),
        HostInterface = applied.host_ifname.as_str(),
        PodInterface = applied.pod_ifname.as_str(),
        IPv4 = ipv4.map(|a| a.to_string()).unwrap_or_default().as_str(),
        IPv6 = ipv6.map(|a| a.to_string()).unwrap_or_default().as_str(),
        "wired the pod to the host"
    );
    Ok(result(&plan, &applied))
}

/// Whether the pod will get an IPv6 address, as far as it is known before IPAM runs: the
/// annotated addresses, calico-ipam's `assign_ipv6` (after the annotations), host-local's
/// ranges; `None` for another IPAM plugin.
fn gets_ipv6(
    req: &Request,
    overrides: &PodRequests,
    stdin: &[u8],
) -> Result<Option<bool>, CniError> {
    if let Some(addrs) = overrides
        .ip_addrs_no_ipam
        .as_ref()
        .or(overrides.ip_addrs.as_ref())
    {
        return Ok(Some(addrs.iter().any(IpAddr::is_ipv6)));
    }
    Ok(match req.conf.ipam.ipam_type.as_str() {
        "calico-ipam" => Some(
            overrides
                .families
                .map_or(req.conf.ipam.assign_ipv6, |(_, v6)| v6),
        ),
        host_local::HOST_LOCAL => Some(host_local::has_ipv6(stdin)?),
        _ => None,
    })
}

/// The Node's pod CIDRs for host-local's `usePodCidr`: the Node is `kubernetes.node_name`, else
/// the node name. Read through the datastore's connection, or one made for it.
fn node_pod_cidrs(
    req: &Request,
    rt: &tokio::runtime::Runtime,
    api: Option<&k8s::K8s>,
) -> Result<host_local::PodCidrs, CniError> {
    let node = match &req.conf.kubernetes.node_name {
        Some(n) => n.clone(),
        None => req.conf.node_name()?,
    };
    let own;
    let api = match api {
        Some(api) => api,
        None => {
            if req.conf.kubeconfig().is_none() {
                return Err(CniError::invalid_config(
                    "host-local's usePodCidr needs kubernetes.kubeconfig: the pod CIDRs are read \
                     from the Kubernetes Node",
                ));
            }
            own = api_call(rt, k8s::connect(&req.conf))?;
            &own
        }
    };
    let cidrs = api_call(rt, api.node_pod_cidrs(&node))?;
    host_local::PodCidrs::from_node(&node, &cidrs)
}

/// The `cni.projectcalico.org/ipAddrsNoIpam` path: the pod gets exactly these addresses and
/// IPAM is not asked (the operator owns them).
fn given_addresses(addrs: &[IpAddr]) -> CniResult {
    CniResult {
        ips: addrs
            .iter()
            .map(|&a| IpConfig {
                address: IpNet::from(a),
                gateway: None,
                interface: None,
            })
            .collect(),
        ..Default::default()
    }
}

/// The `cni.projectcalico.org/ipAddrs` path: one IPAM ADD per address with `IP=<addr>` in
/// `CNI_ARGS` (calico-ipam assigns exactly that address), as Calico does. If a later one
/// fails, the earlier ones are released (same handle) before the error is returned.
fn add_specific(
    ipam: &ipam_exec::IpamPlugin,
    stdin: &[u8],
    addrs: &[IpAddr],
) -> Result<CniResult, CniError> {
    let mut merged = CniResult::default();
    for ip in addrs {
        match ipam_exec::add_with_args(ipam, stdin, Some(&format!("IP={ip}"))) {
            Ok(r) => {
                merged.ips.extend(r.ips);
                merged.routes.extend(r.routes);
            }
            Err(e) => {
                if !merged.ips.is_empty() {
                    let _ = ipam_exec::exec(ipam, Command::Del, stdin);
                }
                return Err(e);
            }
        }
    }
    Ok(merged)
}

/// One address per family from the IPAM result. Its prefix is the IPAM's (block mask for
/// calico-ipam, subnet for host-local); the pod gets /32 and /128 regardless.
fn pod_addresses(r: &CniResult) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), CniError> {
    let mut v4 = None;
    let mut v6 = None;
    for ip in &r.ips {
        let (slot_taken, family) = match ip.address.addr() {
            IpAddr::V4(a) => (v4.replace(a).is_some(), "IPv4"),
            IpAddr::V6(a) => (v6.replace(a).is_some(), "IPv6"),
        };
        if slot_taken {
            return Err(CniError::invalid_config(format!(
                "the IPAM plugin returned more than one {family} address; this plugin configures one per family"
            )));
        }
    }
    if v4.is_none() && v6.is_none() {
        return Err(CniError::new(
            libipam::cni::code::IPAM_PLUGIN,
            "the IPAM plugin returned no addresses",
            "check the IPAM configuration (assign_ipv4/assign_ipv6, ranges)",
        ));
    }
    Ok((v4, v6))
}

/// The result: interfaces [host veth, pod interface], /32 and /128 with their gateways, and the
/// pod's default routes.
fn result(plan: &Plan, applied: &dataplane::Applied) -> CniResult {
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    if let Some(a) = plan.ipv4 {
        ips.push(IpConfig {
            address: IpNet::from(IpAddr::V4(a)),
            gateway: Some(IpAddr::V4(IPV4_GATEWAY)),
            interface: Some(1),
        });
        routes.push(Route {
            dst: IpNet::V4(ipnet::Ipv4Net::default()),
            gw: Some(IpAddr::V4(IPV4_GATEWAY)),
        });
    }
    if let Some(a) = plan.ipv6 {
        ips.push(IpConfig {
            address: IpNet::from(IpAddr::V6(a)),
            gateway: Some(IpAddr::V6(IPV6_GATEWAY)),
            interface: Some(1),
        });
        routes.push(Route {
            dst: IpNet::V6(ipnet::Ipv6Net::default()),
            gw: Some(IpAddr::V6(IPV6_GATEWAY)),
        });
    }
    CniResult {
        interfaces: vec![
            Interface {
                name: applied.host_ifname.clone(),
                mac: Some(applied.host_mac.clone()),
                ..Default::default()
            },
            Interface {
                name: applied.pod_ifname.clone(),
                mac: Some(applied.pod_mac.clone()),
                mtu: plan.mtu,
                sandbox: Some(plan.netns.display().to_string()),
            },
        ],
        ips,
        routes,
        dns: Default::default(),
    }
}
