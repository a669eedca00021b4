//! Netlink plumbing: batched requests on a `NETLINK_ROUTE` socket, and the few
//! kernel objects we read back.
//!
//! A batch goes out in one `sendto`; the kernel runs its messages in order and
//! answers each with its own ack (or error), so a whole ADD step costs one system
//! call in and a few reads out. The connection is driven next to the work
//! ([`drive`]) instead of being spawned, so nothing outlives a call.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::StreamExt;
use futures::future::{self, Either};
use rtnetlink::LinkUnspec;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::proto::{Connection, ConnectionHandle};
use rtnetlink::sys::{AsyncSocket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::dataplane::{DataplaneError, NetlinkError};

pub(super) const EEXIST: i32 = 17;
pub(super) const ENODEV: i32 = 19;
/// `NLMSGERR_ATTR_MSG`: the extended-ack text after a capped error header.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSG_HDR_LEN: usize = 16;

/// `Err` with this errno becomes `Ok(vec![])`.
pub(super) fn ignore_errno(
    errno: i32,
) -> impl FnOnce(DataplaneError) -> Result<Vec<RouteNetlinkMessage>, DataplaneError> {
    move |e| match &e {
        DataplaneError::Netlink { source, .. } if source.errno() == Some(errno) => Ok(Vec::new()),
        _ => Err(e),
    }
}

// ---------------------------------------------------------------------------------
// Parsed kernel objects
// ---------------------------------------------------------------------------------

#[derive(Debug)]
pub(super) struct LinkInfo {
    pub(super) index: u32,
    pub(super) name: String,
    pub(super) mac: Vec<u8>,
    pub(super) up: bool,
    /// `IFLA_LINK`: for a veth, the peer's index in the peer's namespace.
    pub(super) peer_index: Option<u32>,
    /// `IFLA_LINK_NETNSID` present: the peer lives in another namespace.
    pub(super) peer_in_other_netns: bool,
}

impl From<&LinkMessage> for LinkInfo {
    fn from(msg: &LinkMessage) -> Self {
        let mut info = LinkInfo {
            index: msg.header.index,
            name: String::new(),
            mac: Vec::new(),
            up: msg.header.flags.contains(LinkFlags::Up),
            peer_index: None,
            peer_in_other_netns: false,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => info.name.clone_from(name),
                LinkAttribute::Address(mac) => info.mac.clone_from(mac),
                LinkAttribute::Link(index) => info.peer_index = Some(*index),
                LinkAttribute::LinkNetNsId(_) => info.peer_in_other_netns = true,
                _ => {}
            }
        }
        info
    }
}

#[derive(Debug)]
pub(super) struct AddressInfo {
    pub(super) ip: IpAddr,
    pub(super) prefix_len: u8,
}

#[derive(Debug)]
pub(super) struct RouteInfo {
    pub(super) dst: IpAddr,
    pub(super) prefix_len: u8,
    pub(super) gateway: Option<IpAddr>,
    pub(super) oif: Option<u32>,
    pub(super) scope: RouteScope,
}

impl From<&RouteMessage> for RouteInfo {
    fn from(msg: &RouteMessage) -> Self {
        let unspecified = match msg.header.address_family {
            AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let mut info = RouteInfo {
            dst: unspecified,
            prefix_len: msg.header.destination_prefix_length,
            gateway: None,
            oif: None,
            scope: msg.header.scope,
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(addr) => {
                    info.dst = route_address(addr).unwrap_or(unspecified);
                }
                RouteAttribute::Gateway(addr) => info.gateway = route_address(addr),
                RouteAttribute::Oif(index) => info.oif = Some(*index),
                _ => {}
            }
        }
        info
    }
}

fn route_address(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------
// Netlink plumbing
// ---------------------------------------------------------------------------------

pub(super) type Conn = Connection<RouteNetlinkMessage>;

/// Drives the netlink connections while `work` runs; no task is spawned, so nothing
/// outlives the call.
pub(super) async fn drive<T>(
    conns: Vec<Conn>,
    work: impl Future<Output = Result<T, DataplaneError>>,
) -> Result<T, DataplaneError> {
    let work = std::pin::pin!(work);
    match future::select(work, future::join_all(conns)).await {
        Either::Left((out, _)) => out,
        Either::Right(_) => Err(DataplaneError::Netlink {
            op: "netlink socket".to_owned(),
            source: NetlinkError::other("connection closed unexpectedly"),
        }),
    }
}

/// Which link a lookup is for.
pub(super) enum LinkKey<'a> {
    Name(&'a str),
    Index(u32),
}

/// One request of a batch; `op` says what it does for error messages.
pub(super) struct Request {
    pub(super) op: String,
    msg: RouteNetlinkMessage,
    flags: u16,
    /// For host routes: the destination, to explain an EEXIST.
    pub(super) route_dst: Option<(IpAddr, u8)>,
}

impl Request {
    pub(super) fn new(op: String, msg: RouteNetlinkMessage, flags: u16) -> Self {
        Self {
            op,
            msg,
            flags,
            route_dst: None,
        }
    }

    pub(super) fn for_dst(mut self, ip: impl Into<IpAddr>, len: u8) -> Self {
        self.route_dst = Some((ip.into(), len));
        self
    }
}

/// The kernel's answer to one request.
pub(super) struct Reply {
    op: String,
    pub(super) route_dst: Option<(IpAddr, u8)>,
    messages: Vec<RouteNetlinkMessage>,
    error: Option<NetlinkError>,
    answered: bool,
}

impl Reply {
    pub(super) fn errno(&self) -> Option<i32> {
        self.error.as_ref().and_then(NetlinkError::errno)
    }
}

/// A `NETLINK_ROUTE` socket bound to the namespace it was opened in.
pub(super) struct Rtnl {
    handle: ConnectionHandle<RouteNetlinkMessage>,
    /// The namespace, for messages.
    pub(super) ns: String,
    /// `NETLINK_CAP_ACK` is on: error replies carry only the request's header.
    capped: bool,
}

impl Rtnl {
    /// Opens the socket in the calling thread's namespace.
    pub(super) fn open(ns: String) -> Result<(Self, Conn), DataplaneError> {
        let (mut conn, handle, _unsolicited) = rtnetlink::proto::new_connection::<
            RouteNetlinkMessage,
        >(NETLINK_ROUTE)
        .map_err(|e| DataplaneError::Netlink {
            op: format!("open a netlink socket in {ns}"),
            source: NetlinkError::from_errno(e.raw_os_error().unwrap_or(0), None),
        })?;
        // Every request must end in exactly one ack, error or done message: that
        // is how replies are matched to the requests of a batch.
        conn.set_forward_ack(true);
        conn.set_forward_done(true);
        let socket = conn.socket_mut().socket_mut();
        // The kernel's reason ("Nexthop device is not up") beats a bare errno.
        let capped = socket.set_ext_ack(true).is_ok() && socket.set_cap_ack(true).is_ok();
        // Let dumps be filtered by the kernel (by link, by table); older kernels
        // ignore the filters and the replies are filtered here as well.
        let _ = socket.set_netlink_get_strict_chk(true);
        Ok((Self { handle, ns, capped }, conn))
    }

    /// Sends `requests` in one datagram and collects one reply per request.
    pub(super) async fn batch(&self, requests: Vec<Request>) -> Result<Vec<Reply>, DataplaneError> {
        let mut replies = Vec::with_capacity(requests.len());
        let mut messages = Vec::with_capacity(requests.len());
        for req in requests {
            let mut msg = NetlinkMessage::from(req.msg);
            msg.header.flags = NLM_F_REQUEST | req.flags;
            messages.push(msg);
            replies.push(Reply {
                op: req.op,
                route_dst: req.route_dst,
                messages: Vec::new(),
                error: None,
                answered: false,
            });
        }
        let mut stream = self
            .handle
            .request_batch(messages, SocketAddr::new(0, 0))
            .map_err(|e| DataplaneError::Netlink {
                op: format!("send netlink request in {}", self.ns),
                source: NetlinkError::other(e.to_string()),
            })?;
        let mut responses = Vec::new();
        while let Some(msg) = stream.next().await {
            responses.push(msg);
        }
        // Sequence numbers within a batch are consecutive and every request is
        // answered, so the smallest one belongs to the first request.
        let Some(first) = responses.iter().map(|m| m.header.sequence_number).min() else {
            return Ok(replies);
        };
        for msg in responses {
            let i = msg.header.sequence_number.wrapping_sub(first) as usize;
            let Some(reply) = replies.get_mut(i) else {
                continue;
            };
            match msg.payload {
                NetlinkPayload::InnerMessage(inner) => reply.messages.push(inner),
                NetlinkPayload::Error(err) => {
                    reply.answered = true;
                    if let Some(code) = err.code {
                        let text = self.extack_in_error(&err.header);
                        reply.error = Some(NetlinkError::from_errno(-code.get(), text));
                    }
                }
                NetlinkPayload::Done(done) => {
                    reply.answered = true;
                    if done.code < 0 {
                        let text = extack_message(&done.extended_ack);
                        reply.error = Some(NetlinkError::from_errno(-done.code, text));
                    }
                }
                NetlinkPayload::Overrun(_) => {
                    reply.answered = true;
                    reply.error = Some(NetlinkError::other("netlink reply overrun"));
                }
                _ => {}
            }
        }
        for reply in &mut replies {
            if !reply.answered && reply.error.is_none() {
                reply.error = Some(NetlinkError::other("no reply from the kernel"));
            }
        }
        Ok(replies)
    }

    /// One request; a kernel error becomes [`DataplaneError::Netlink`].
    pub(super) async fn one(
        &self,
        request: Request,
    ) -> Result<Vec<RouteNetlinkMessage>, DataplaneError> {
        let reply = self.batch(vec![request]).await?.remove(0);
        self.check(reply)
    }

    pub(super) fn check(&self, reply: Reply) -> Result<Vec<RouteNetlinkMessage>, DataplaneError> {
        match reply.error {
            None => Ok(reply.messages),
            Some(source) => Err(DataplaneError::Netlink {
                op: format!("{} in {}", reply.op, self.ns),
                source,
            }),
        }
    }

    pub(super) async fn link(&self, key: LinkKey<'_>) -> Result<Option<LinkInfo>, DataplaneError> {
        let (op, msg) = match key {
            LinkKey::Name(name) => (
                format!("look up {name}"),
                LinkUnspec::new_with_name(name).build(),
            ),
            LinkKey::Index(index) => (
                format!("look up ifindex {index}"),
                LinkUnspec::new_with_index(index).build(),
            ),
        };
        let req = Request::new(op, RouteNetlinkMessage::GetLink(msg), NLM_F_ACK);
        let reply = self.batch(vec![req]).await?.remove(0);
        if reply.errno() == Some(ENODEV) {
            return Ok(None);
        }
        Ok(self.check(reply)?.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => Some(LinkInfo::from(link)),
            _ => None,
        }))
    }

    /// Routes of the main table, optionally only those through `oif`.
    pub(super) async fn routes(
        &self,
        family: AddressFamily,
        oif: Option<u32>,
    ) -> Result<Vec<RouteMessage>, DataplaneError> {
        // A dump request may only carry filters (table, oif) under strict checking.
        let mut filter = RouteMessage::default();
        filter.header.address_family = family;
        filter.header.table = RouteHeader::RT_TABLE_MAIN;
        if let Some(oif) = oif {
            filter.attributes.push(RouteAttribute::Oif(oif));
        }
        let req = Request::new(
            format!("list {family:?} routes"),
            RouteNetlinkMessage::GetRoute(filter),
            NLM_F_DUMP,
        );
        let messages = self.one(req).await?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .filter(|r| {
                let info = RouteInfo::from(r);
                let table = r
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(u32::from(r.header.table));
                table == u32::from(RouteHeader::RT_TABLE_MAIN) && (oif.is_none() || info.oif == oif)
            })
            .collect())
    }

    /// Addresses of one link.
    pub(super) async fn addresses(
        &self,
        family: AddressFamily,
        index: u32,
    ) -> Result<Vec<AddressInfo>, DataplaneError> {
        let mut filter = AddressMessage::default();
        filter.header.family = family;
        filter.header.index = index;
        let req = Request::new(
            format!("list {family:?} addresses of ifindex {index}"),
            RouteNetlinkMessage::GetAddress(filter),
            NLM_F_DUMP,
        );
        let messages = self.one(req).await?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let ip = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })?;
                    Some(AddressInfo {
                        ip,
                        prefix_len: a.header.prefix_len,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// The extended-ack text of an `NLMSG_ERROR` payload (after the error code).
    fn extack_in_error(&self, payload: &[u8]) -> Option<String> {
        if !self.capped || payload.len() <= NLMSG_HDR_LEN {
            return None;
        }
        extack_message(&payload[NLMSG_HDR_LEN..])
    }
}

/// Finds `NLMSGERR_ATTR_MSG` in a run of netlink attributes.
fn extack_message(mut attrs: &[u8]) -> Option<String> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &attrs[4..len];
            let text = text.split(|&b| b == 0).next().unwrap_or(text);
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        let aligned = (len + 3) & !3;
        attrs = attrs.get(aligned..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extack_text_is_found_after_other_attributes() {
        let mut attrs = Vec::new();
        // NLMSGERR_ATTR_OFFS (u32), then NLMSGERR_ATTR_MSG "bad\0" padded.
        attrs.extend_from_slice(&8u16.to_ne_bytes());
        attrs.extend_from_slice(&2u16.to_ne_bytes());
        attrs.extend_from_slice(&0u32.to_ne_bytes());
        attrs.extend_from_slice(&8u16.to_ne_bytes());
        attrs.extend_from_slice(&1u16.to_ne_bytes());
        attrs.extend_from_slice(b"bad\0");
        assert_eq!(extack_message(&attrs).as_deref(), Some("bad"));
        assert_eq!(extack_message(&attrs[..6]), None);
    }
}
