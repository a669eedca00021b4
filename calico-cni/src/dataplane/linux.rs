//! The rtnetlink implementation: the only code that sees interface indexes.
//!
//! ADD costs three netlink round trips per namespace, each one `sendto` (see
//! [`rtnl`]): create the pair (the kernel echoes the new link, so its index, MAC and
//! peer index need no lookup), then, after the sysctls, one batch per side that
//! brings the link up and adds addresses and routes. Host and pod batches are in
//! flight at the same time.

mod rtnl;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use futures::future;
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{
    AddressMessageBuilder, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use self::rtnl::{
    AddressInfo, EEXIST, ENODEV, LinkInfo, LinkKey, Request, RouteInfo, Rtnl, drive, ignore_errno,
};
use super::netns::NetNs;
use super::{
    Applied, DataplaneError, HOST_MAC, IPV4_GATEWAY, IPV6_GATEWAY, NetlinkError, Plan, format_mac,
    sysctl,
};

/// Name of the calling thread's namespace in messages.
const HOST: &str = "the host network namespace";

// ---------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------

pub(super) async fn setup(plan: &Plan) -> Result<Applied, DataplaneError> {
    let pod_ns = NetNs::open(&plan.netns)?;
    // The host end is born directly in the host namespace: the kernel takes the
    // namespace of the peer as an fd.
    let host_ns = NetNs::current()?;
    let pod_label = netns_label(&plan.netns);
    let (host, host_conn) = Rtnl::open(HOST.to_owned())?;
    let (pod, pod_conn) = pod_ns.run(|| Rtnl::open(pod_label.clone()))??;

    drive(vec![host_conn, pod_conn], async {
        let echoed = create_pair(&host, &pod, plan, &host_ns).await?;
        // The pair exists from here on: every failure removes it before it is reported.
        let mut made = Made::default();
        let built = async {
            let pair = learn_pair(&host, &pod, plan, echoed).await?;
            made = Made {
                pod_index: Some(pair.pod_index),
                host_index: Some(pair.host_index),
            };
            configure(&host, &pod, &pod_ns, plan, &pair).await?;
            Ok(pair)
        }
        .await;
        match built {
            Ok(pair) => Ok(Applied {
                host_ifname: plan.host_ifname.clone(),
                pod_ifname: plan.pod_ifname.clone(),
                pod_mac: format_mac(&pair.pod_mac),
                host_mac: format_mac(&HOST_MAC),
            }),
            Err(cause) => match remove_pair(&host, &pod, plan, &made).await {
                Ok(()) => Err(cause),
                Err(cleanup) => Err(DataplaneError::Incomplete {
                    cause: Box::new(cause),
                    host_ifname: plan.host_ifname.clone(),
                    cleanup,
                }),
            },
        }
    })
    .await
}

/// The indexes of the pair this ADD created, as far as they are known.
#[derive(Default)]
struct Made {
    pod_index: Option<u32>,
    host_index: Option<u32>,
}

/// Deletes the pair this ADD created: from the pod end (the host end and its routes go with
/// it; so do the pod end's addresses and routes), or, if that fails, from the host end. Gone
/// already counts as done. By name where the index is not known yet: both names are this
/// attachment's, and the pod namespace was checked to have no such interface before.
/// `Err` says what both attempts answered.
async fn remove_pair(host: &Rtnl, pod: &Rtnl, plan: &Plan, made: &Made) -> Result<(), String> {
    let from_pod = match made.pod_index {
        Some(index) => delete_link(index, &plan.pod_ifname),
        None => delete_link_by_name(&plan.pod_ifname),
    };
    let Err(pod_side) = pod.one(from_pod).await.or_else(ignore_errno(ENODEV)) else {
        return Ok(());
    };
    let from_host = match made.host_index {
        Some(index) => delete_link(index, &plan.host_ifname),
        None => delete_link_by_name(&plan.host_ifname),
    };
    match host.one(from_host).await.or_else(ignore_errno(ENODEV)) {
        Ok(_) => Ok(()),
        Err(host_side) => Err(format!("{pod_side}; {host_side}")),
    }
}

pub(super) async fn preflight(path: &Path, ifname: &str) -> Result<(), DataplaneError> {
    let pod_ns = NetNs::open(path)?;
    let (pod, conn) = pod_ns.run(|| Rtnl::open(netns_label(path)))??;
    drive(vec![conn], async {
        match pod.link(LinkKey::Name(ifname)).await? {
            Some(_) => Err(DataplaneError::InterfaceExists {
                name: ifname.to_owned(),
                netns: path.to_path_buf(),
            }),
            None => Ok(()),
        }
    })
    .await
}

pub(super) async fn teardown(
    netns: Option<&Path>,
    pod_ifname: &str,
    host_ifname: &str,
) -> Result<(), DataplaneError> {
    if let Some(path) = netns.filter(|p| !p.as_os_str().is_empty()) {
        match delete_in_pod(path, pod_ifname).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) if e.is_netns_missing() => {}
            Err(e) => return Err(e),
        }
    }
    delete_leftover_host_link(host_ifname).await
}

pub(super) async fn check(plan: &Plan) -> Result<(), DataplaneError> {
    let pod_ns = NetNs::open(&plan.netns)?;
    let pod_label = netns_label(&plan.netns);
    let (host, host_conn) = Rtnl::open(HOST.to_owned())?;
    let (pod, pod_conn) = pod_ns.run(|| Rtnl::open(pod_label.clone()))??;

    let missing = drive(vec![host_conn, pod_conn], async {
        let mut missing = Vec::new();
        let pod_link = pod.link(LinkKey::Name(&plan.pod_ifname)).await?;
        let host_link = host.link(LinkKey::Name(&plan.host_ifname)).await?;
        match &pod_link {
            None => missing.push(format!("interface {} not found", plan.pod_ifname)),
            Some(link) => check_pod(&pod, plan, link, &mut missing).await?,
        }
        match &host_link {
            None => missing.push(format!(
                "host veth {} not found in {HOST}",
                plan.host_ifname
            )),
            Some(link) => check_host(&host, plan, link, &mut missing).await?,
        }
        if let (Some(pod_link), Some(host_link)) = (&pod_link, &host_link)
            && pod_link.peer_index != Some(host_link.index)
        {
            missing.push(format!(
                "{} is not the peer of host veth {}",
                plan.pod_ifname, plan.host_ifname
            ));
        }
        Ok(missing)
    })
    .await?;

    if missing.is_empty() {
        Ok(())
    } else {
        Err(DataplaneError::CheckFailed {
            ifname: plan.pod_ifname.clone(),
            netns: plan.netns.clone(),
            missing,
        })
    }
}

// ---------------------------------------------------------------------------------
// ADD steps
// ---------------------------------------------------------------------------------

/// What the kernel told us about the new pair.
struct Pair {
    pod_index: u32,
    pod_mac: Vec<u8>,
    host_index: u32,
}

/// Creates the pair from the pod namespace: `pod_ifname` is born there, its peer is
/// born in the host namespace with its final name and MAC (set at creation, so the
/// kernel never generates a link-local from a random MAC first). Returns what the kernel
/// echoed. An error means no pair was created.
async fn create_pair(
    host: &Rtnl,
    pod: &Rtnl,
    plan: &Plan,
    host_ns: &NetNs,
) -> Result<Vec<RouteNetlinkMessage>, DataplaneError> {
    let create = || {
        Request::new(
            format!(
                "create veth {} with host peer {}{}",
                plan.pod_ifname,
                plan.host_ifname,
                plan.effective_mtu()
                    .map(|m| format!(" (mtu {m})"))
                    .unwrap_or_default()
            ),
            RouteNetlinkMessage::NewLink(veth_message(plan, host_ns)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
        )
    };
    match pod.batch(vec![create()]).await?.remove(0) {
        reply if reply.errno() == Some(EEXIST) => {
            // Either the pod already has the name (refuse, touch nothing) or a stale
            // host veth of an earlier pod has the host name (replace it, as Calico does).
            if pod.link(LinkKey::Name(&plan.pod_ifname)).await?.is_some() {
                return Err(DataplaneError::InterfaceExists {
                    name: plan.pod_ifname.clone(),
                    netns: plan.netns.clone(),
                });
            }
            host.one(delete_link_by_name(&plan.host_ifname))
                .await
                .or_else(ignore_errno(ENODEV))?;
            pod.one(create()).await
        }
        reply => pod.check(reply),
    }
}

/// The new pair's indexes and the pod end's MAC, from the kernel's echo or, on kernels
/// before 6.3 (no `RTM_NEWLINK` echo), from one lookup per end.
async fn learn_pair(
    host: &Rtnl,
    pod: &Rtnl,
    plan: &Plan,
    echoed: Vec<RouteNetlinkMessage>,
) -> Result<Pair, DataplaneError> {
    let created = echoed.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(link) => Some(LinkInfo::from(&link)),
        _ => None,
    });
    let created = match created {
        Some(link) => link,
        None => pod
            .link(LinkKey::Name(&plan.pod_ifname))
            .await?
            .ok_or_else(|| vanished(&plan.pod_ifname, &pod.ns))?,
    };
    let host_index = match created.peer_index {
        Some(index) => index,
        None => {
            host.link(LinkKey::Name(&plan.host_ifname))
                .await?
                .ok_or_else(|| vanished(&plan.host_ifname, HOST))?
                .index
        }
    };
    Ok(Pair {
        pod_index: created.index,
        pod_mac: created.mac,
        host_index,
    })
}

/// Sysctls (before up, as Calico), then one batch per side.
async fn configure(
    host: &Rtnl,
    pod: &Rtnl,
    pod_ns: &NetNs,
    plan: &Plan,
    pair: &Pair,
) -> Result<(), DataplaneError> {
    let (v4, v6) = (plan.ipv4.is_some(), plan.ipv6.is_some());
    sysctl::apply(&sysctl::host_side(&plan.host_ifname, v4, v6), HOST)?;
    let pod_settings = sysctl::pod_side(&plan.pod_ifname, v4, v6, plan.allow_ip_forwarding);
    pod_ns.run(|| sysctl::apply(&pod_settings, &pod.ns))??;

    let (host_replies, pod_replies) = future::join(
        host.batch(host_requests(plan, pair.host_index)),
        pod.batch(pod_requests(plan, pair.pod_index)),
    )
    .await;
    for reply in host_replies? {
        match reply.route_dst {
            Some(dst) if reply.errno() == Some(EEXIST) => {
                resolve_route_conflict(host, dst, pair.host_index, &plan.host_ifname).await?;
            }
            _ => {
                host.check(reply)?;
            }
        }
    }
    for reply in pod_replies? {
        pod.check(reply)?;
    }
    Ok(())
}

/// `up`, `fe80::1/64` (no DAD), `<ipv4>/32 scope link`, `<ipv6>/128`.
fn host_requests(plan: &Plan, index: u32) -> Vec<Request> {
    let name = &plan.host_ifname;
    let mut out = vec![link_up(index, name)];
    if plan.ipv6.is_some() {
        out.push(add_address(index, name, IPV6_GATEWAY.into(), 64));
    }
    if let Some(ip) = plan.ipv4 {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(ip, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .protocol(RouteProtocol::Boot)
            .build();
        out.push(add_route(format!("add host route {ip}/32 dev {name}"), route).for_dst(ip, 32));
    }
    if let Some(ip) = plan.ipv6 {
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(ip, 128)
            .output_interface(index)
            .protocol(RouteProtocol::Boot)
            .build();
        out.push(add_route(format!("add host route {ip}/128 dev {name}"), route).for_dst(ip, 128));
    }
    out
}

/// `up`, `169.254.1.1 scope link`, `default via 169.254.1.1`, `default via fe80::1`,
/// then the addresses (Calico's order: routes first).
fn pod_requests(plan: &Plan, index: u32) -> Vec<Request> {
    let name = &plan.pod_ifname;
    let mut out = vec![link_up(index, name)];
    if plan.ipv4.is_some() {
        // 169.254.1.1 is not on any subnet of the pod: make it reachable on-link...
        let gw = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(IPV4_GATEWAY, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .protocol(RouteProtocol::Boot)
            .build();
        out.push(add_route(
            format!("add route {IPV4_GATEWAY} scope link dev {name}"),
            gw,
        ));
        // ...then route everything through it.
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(IPV4_GATEWAY)
            .output_interface(index)
            .protocol(RouteProtocol::Boot)
            .build();
        out.push(add_route(
            format!("add default route via {IPV4_GATEWAY} dev {name}"),
            default,
        ));
    }
    if plan.ipv6.is_some() {
        let default = RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(IPV6_GATEWAY)
            .output_interface(index)
            .protocol(RouteProtocol::Boot)
            .build();
        out.push(add_route(
            format!("add default route via {IPV6_GATEWAY} dev {name}"),
            default,
        ));
    }
    if let Some(ip) = plan.ipv4 {
        out.push(add_address(index, name, ip.into(), 32));
    }
    if let Some(ip) = plan.ipv6 {
        out.push(add_address(index, name, ip.into(), 128));
    }
    out
}

/// A host route for the pod address already exists. Identical (same device) is
/// success, as in Calico (Felix may have programmed it); anything else is a
/// conflict naming the other interface.
async fn resolve_route_conflict(
    host: &Rtnl,
    (dst, prefix_len): (IpAddr, u8),
    index: u32,
    ifname: &str,
) -> Result<(), DataplaneError> {
    let routes = host.routes(family_of(dst), None).await?;
    let existing = routes
        .iter()
        .map(RouteInfo::from)
        .find(|r| r.dst == dst && r.prefix_len == prefix_len);
    let other = match existing {
        Some(route) if route.oif == Some(index) => return Ok(()),
        Some(RouteInfo {
            oif: Some(other), ..
        }) => match host.link(LinkKey::Index(other)).await? {
            Some(link) => format!("{} (ifindex {other})", link.name),
            None => format!("ifindex {other}"),
        },
        Some(_) => "a route without an output interface (blackhole/unreachable?)".to_owned(),
        // Gone again (or in another table): the kernel said EEXIST all the same.
        None => "an unknown interface".to_owned(),
    };
    Err(DataplaneError::RouteConflict {
        dst: format!("{dst}/{prefix_len}"),
        ifname: ifname.to_owned(),
        other,
    })
}

// ---------------------------------------------------------------------------------
// DEL steps
// ---------------------------------------------------------------------------------

/// Deletes `ifname` in the pod namespace. `Ok(false)`: no such interface.
async fn delete_in_pod(path: &Path, ifname: &str) -> Result<bool, DataplaneError> {
    let pod_ns = NetNs::open(path)?;
    let (pod, conn) = pod_ns.run(|| Rtnl::open(netns_label(path)))??;
    drive(vec![conn], async {
        let reply = pod
            .batch(vec![delete_link_by_name(ifname)])
            .await?
            .remove(0);
        if reply.errno() == Some(ENODEV) {
            return Ok(false);
        }
        pod.check(reply).map(|_| true)
    })
    .await
}

/// The pod namespace or its interface is gone: delete a leftover host veth, unless
/// its peer is alive in some other namespace. Such a veth is a live workload's (for
/// example a newer sandbox of the same pod, when an old sandbox's DEL is retried);
/// a pair whose pod namespace is being destroyed goes away with that namespace.
async fn delete_leftover_host_link(ifname: &str) -> Result<(), DataplaneError> {
    let (host, conn) = Rtnl::open(HOST.to_owned())?;
    drive(vec![conn], async {
        let Some(link) = host.link(LinkKey::Name(ifname)).await? else {
            return Ok(());
        };
        if link.peer_in_other_netns {
            return Ok(());
        }
        host.one(delete_link(link.index, ifname))
            .await
            .or_else(ignore_errno(ENODEV))
            .map(drop)
    })
    .await
}

// ---------------------------------------------------------------------------------
// CHECK steps
// ---------------------------------------------------------------------------------

async fn check_pod(
    pod: &Rtnl,
    plan: &Plan,
    link: &LinkInfo,
    missing: &mut Vec<String>,
) -> Result<(), DataplaneError> {
    let name = &plan.pod_ifname;
    if !link.up {
        missing.push(format!("{name} is down"));
    }
    let has_address = |addrs: &[AddressInfo], ip: IpAddr, len: u8| {
        addrs.iter().any(|a| a.ip == ip && a.prefix_len == len)
    };
    if let Some(ip) = plan.ipv4 {
        let addrs = pod.addresses(AddressFamily::Inet, link.index).await?;
        if !has_address(&addrs, ip.into(), 32) {
            missing.push(format!("address {ip}/32 missing on {name}"));
        }
        let routes = pod.routes(AddressFamily::Inet, Some(link.index)).await?;
        let routes: Vec<_> = routes.iter().map(RouteInfo::from).collect();
        let gw = IpAddr::from(IPV4_GATEWAY);
        if !routes
            .iter()
            .any(|r| r.dst == gw && r.prefix_len == 32 && r.scope == RouteScope::Link)
        {
            missing.push(format!(
                "route {IPV4_GATEWAY} scope link dev {name} missing"
            ));
        }
        if !routes
            .iter()
            .any(|r| r.prefix_len == 0 && r.gateway == Some(gw))
        {
            missing.push(format!(
                "default route via {IPV4_GATEWAY} dev {name} missing"
            ));
        }
    }
    if let Some(ip) = plan.ipv6 {
        let addrs = pod.addresses(AddressFamily::Inet6, link.index).await?;
        if !has_address(&addrs, ip.into(), 128) {
            missing.push(format!("address {ip}/128 missing on {name}"));
        }
        let routes = pod.routes(AddressFamily::Inet6, Some(link.index)).await?;
        let gw = IpAddr::from(IPV6_GATEWAY);
        if !routes
            .iter()
            .map(RouteInfo::from)
            .any(|r| r.prefix_len == 0 && r.gateway == Some(gw))
        {
            missing.push(format!(
                "default route via {IPV6_GATEWAY} dev {name} missing"
            ));
        }
    }
    Ok(())
}

async fn check_host(
    host: &Rtnl,
    plan: &Plan,
    link: &LinkInfo,
    missing: &mut Vec<String>,
) -> Result<(), DataplaneError> {
    let name = &plan.host_ifname;
    if !link.up {
        missing.push(format!("host veth {name} is down"));
    }
    let has_route = |routes: &[RouteMessage], ip: IpAddr, len: u8| {
        routes
            .iter()
            .map(RouteInfo::from)
            .any(|r| r.dst == ip && r.prefix_len == len && r.gateway.is_none())
    };
    if let Some(ip) = plan.ipv4 {
        let routes = host.routes(AddressFamily::Inet, Some(link.index)).await?;
        if !has_route(&routes, ip.into(), 32) {
            missing.push(format!("host route {ip}/32 dev {name} missing"));
        }
    }
    if let Some(ip) = plan.ipv6 {
        let routes = host.routes(AddressFamily::Inet6, Some(link.index)).await?;
        if !has_route(&routes, ip.into(), 128) {
            missing.push(format!("host route {ip}/128 dev {name} missing"));
        }
        let addrs = host.addresses(AddressFamily::Inet6, link.index).await?;
        if !addrs
            .iter()
            .any(|a| a.ip == IpAddr::from(IPV6_GATEWAY) && a.prefix_len == 64)
        {
            missing.push(format!(
                "gateway address {IPV6_GATEWAY}/64 missing on {name}"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------

/// `RTM_NEWLINK` for the pair. Both ends get one queue pair (Calico's `num_queues`
/// default; the kernel would otherwise create one per CPU, each with sysfs
/// entries) and the plan's MTU.
fn veth_message(plan: &Plan, host_ns: &NetNs) -> LinkMessage {
    use std::os::fd::AsRawFd;

    let mut peer = LinkUnspec::new_with_name(&plan.host_ifname)
        .address(HOST_MAC.to_vec())
        .setns_by_fd(host_ns.file().as_raw_fd())
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1));
    let mut pod = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(plan.pod_ifname.clone())
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1));
    if let Some(mtu) = plan.effective_mtu() {
        peer = peer.mtu(mtu);
        pod = pod.mtu(mtu);
    }
    if let Some(mac) = plan.pod_mac {
        pod = pod.address(mac.to_vec());
    }
    pod.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
        .build()
}

fn link_up(index: u32, name: &str) -> Request {
    Request::new(
        format!("set {name} up"),
        RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(index).up().build()),
        NLM_F_ACK,
    )
}

fn delete_link(index: u32, name: &str) -> Request {
    Request::new(
        format!("delete {name}"),
        RouteNetlinkMessage::DelLink(LinkUnspec::new_with_index(index).build()),
        NLM_F_ACK,
    )
}

fn delete_link_by_name(name: &str) -> Request {
    Request::new(
        format!("delete {name}"),
        RouteNetlinkMessage::DelLink(LinkUnspec::new_with_name(name).build()),
        NLM_F_ACK,
    )
}

/// Adds `ip/len` without duplicate address detection: usable at once, and for
/// `fe80::1` the pod's first neighbour solicitation is answered immediately.
fn add_address(index: u32, name: &str, ip: IpAddr, len: u8) -> Request {
    let mut msg = match ip {
        IpAddr::V4(ip) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(ip, len)
            .build(),
        IpAddr::V6(ip) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(index)
            .address(ip, len)
            .build(),
    };
    if ip.is_ipv6() {
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    let hint = if ip.is_ipv6() {
        " (EACCES here means IPv6 is disabled on the interface)"
    } else {
        ""
    };
    Request::new(
        format!("add address {ip}/{len} to {name}{hint}"),
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )
}

fn add_route(op: String, route: RouteMessage) -> Request {
    Request::new(
        op,
        RouteNetlinkMessage::NewRoute(route),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )
}

fn netns_label(path: &Path) -> String {
    format!("network namespace {}", path.display())
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn vanished(name: &str, ns: &str) -> DataplaneError {
    DataplaneError::Netlink {
        op: format!("look up {name} in {ns}"),
        source: NetlinkError::from_errno(ENODEV, Some("vanished right after creation".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_requests_put_routes_before_addresses() {
        let plan = Plan {
            netns: "/run/netns/x".into(),
            host_ifname: "cali1".into(),
            pod_ifname: "eth0".into(),
            mtu: None,
            ipv4: Some(Ipv4Addr::new(10, 0, 0, 1)),
            ipv6: Some("fd00::1".parse().unwrap_or(Ipv6Addr::LOCALHOST)),
            allow_ip_forwarding: false,
            pod_mac: None,
        };
        let ops: Vec<_> = pod_requests(&plan, 7).into_iter().map(|r| r.op).collect();
        assert_eq!(
            ops,
            [
                "set eth0 up",
                "add route 169.254.1.1 scope link dev eth0",
                "add default route via 169.254.1.1 dev eth0",
                "add default route via fe80::1 dev eth0",
                "add address 10.0.0.1/32 to eth0",
                "add address fd00::1/128 to eth0 (EACCES here means IPv6 is disabled on the interface)",
            ]
        );
        let host: Vec<_> = host_requests(&plan, 9)
            .into_iter()
            .map(|r| r.route_dst)
            .collect();
        assert_eq!(host[0], None);
        assert_eq!(
            host[2],
            Some((IpAddr::from(Ipv4Addr::new(10, 0, 0, 1)), 32))
        );
    }
}
