//! Calico's veth dataplane: one veth pair per pod, routed (no bridge).
//!
//! The pod end (`eth0`) gets the pod's `/32` and `/128`, a link-scope route to
//! `169.254.1.1` and default routes via `169.254.1.1` and `fe80::1`. The host end
//! (`cali…`) answers for `169.254.1.1` by proxy ARP and carries `fe80::1` itself
//! (added without DAD, so IPv6 works the moment ADD returns), and the host routes
//! each pod address to it with a `/32` / `/128` route.
//!
//! Callers speak in [`Plan`] and [`Applied`]: names, addresses and MACs. Interface
//! indexes, netlink messages and namespace switches stay inside this module
//! (`linux.rs` owns every ifindex, `netns.rs` every `setns`, `sysctl.rs` every
//! `/proc/sys` write).
//!
//! Whatever network namespace the calling thread is in is the "host" namespace.
//! The functions are `async` because netlink replies arrive on tokio sockets: call
//! them from a tokio runtime with I/O enabled (`enable_io()` / `enable_all()`); a
//! `current_thread` runtime is enough. They never keep the thread switched into
//! another namespace across an `.await`.

mod linux;
mod netns;
mod sysctl;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

/// Gateway the pod uses for IPv4. Nothing owns it: the host veth answers ARP for it
/// with `proxy_arp=1`, the same address on every node (Calico's design).
pub const IPV4_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Gateway the pod uses for IPv6. We add it to every host veth (without DAD); Calico
/// uses the host veth's kernel link-local instead (see calico.md "where we differ").
pub const IPV6_GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// MAC of every host-side veth, as in Calico (`hostSideMAC`). Felix relies on it.
pub const HOST_MAC: [u8; 6] = [0xee; 6];

/// Interface-name prefix Calico uses for host veths unless `FELIX_INTERFACEPREFIX`
/// says otherwise.
pub const DEFAULT_HOST_PREFIX: &str = "cali";

/// What to build for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Path of the pod's network namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// Host-side veth name, see [`host_veth_name`] (`cali` + 11 hex digits).
    pub host_ifname: String,
    /// Pod-side interface name (`CNI_IFNAME`, normally `eth0`).
    pub pod_ifname: String,
    /// MTU for both ends; `None` (or `Some(0)`, Calico's "unset") keeps the kernel
    /// default.
    pub mtu: Option<u32>,
    /// The pod's IPv4 address, configured as a `/32`.
    pub ipv4: Option<Ipv4Addr>,
    /// The pod's IPv6 address, configured as a `/128`.
    pub ipv6: Option<Ipv6Addr>,
    /// `container_settings.allow_ip_forwarding`: lets the pod forward packets.
    pub allow_ip_forwarding: bool,
    /// The pod interface's MAC (Calico's `cni.projectcalico.org/hwAddr`); the kernel picks
    /// one otherwise.
    pub pod_mac: Option<[u8; 6]>,
}

/// What [`setup`] built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Host-side veth name.
    pub host_ifname: String,
    /// Pod-side interface name.
    pub pod_ifname: String,
    /// Kernel-chosen MAC of the pod interface, `aa:bb:cc:dd:ee:ff` (lowercase).
    pub pod_mac: String,
    /// MAC of the host veth: always `ee:ee:ee:ee:ee:ee`.
    pub host_mac: String,
}

/// Builds the pod's veth pair, addresses, routes and sysctls (CNI ADD).
///
/// Fails with [`DataplaneError::InterfaceExists`], touching nothing, when the pod
/// namespace already has `plan.pod_ifname`. A host link called `plan.host_ifname`
/// that is left over from an earlier pod is replaced. On any later failure the new
/// pair is deleted again, from the pod end or else from the host end.
///
/// # Errors
///
/// [`DataplaneError::InvalidPlan`] before anything is touched; namespace errors
/// ([`DataplaneError::is_netns_missing`] tells a vanished pod); `InterfaceExists`;
/// `RouteConflict` when a host route for the address points elsewhere; `Netlink` /
/// `Sysctl` naming the step, interface and namespace that failed. After any failure that
/// follows the creation of the pair, the pair (and with it its addresses and routes) is
/// deleted before the error is returned; `Incomplete` when even that failed.
pub async fn setup(plan: &Plan) -> Result<Applied, DataplaneError> {
    plan.validate()?;
    linux::setup(plan).await
}

/// Cheap checks before anything is allocated for ADD: the pod namespace can be entered and has
/// no interface called `pod_ifname` yet. A runtime that repeats an ADD for a live attachment is
/// refused here, before IPAM, so the rollback of the failed ADD cannot release the addresses the
/// live attachment holds. [`setup`] checks again (the namespace is not ours to lock).
///
/// # Errors
///
/// Namespace errors ([`DataplaneError::is_netns_missing`]), or `InterfaceExists`.
pub async fn preflight(netns: &Path, pod_ifname: &str) -> Result<(), DataplaneError> {
    check_ifname(pod_ifname)?;
    linux::preflight(netns, pod_ifname).await
}

/// Removes the pod's veth pair (CNI DEL). Idempotent.
///
/// Deletes `pod_ifname` inside `netns` (its host peer and the host routes go with
/// it). When the namespace is gone (`None`, empty path, missing file, not a
/// namespace) or holds no such interface, a leftover host link `host_ifname` is
/// deleted instead, unless it is a veth whose peer is alive in another namespace
/// (that is a live pod's interface, e.g. a newer sandbox of the same pod). Nothing
/// found counts as success.
///
/// # Errors
///
/// Only real failures: an invalid interface name, a namespace that exists but
/// cannot be entered, or a kernel error other than "no such device".
pub async fn teardown(
    netns: Option<&Path>,
    pod_ifname: &str,
    host_ifname: &str,
) -> Result<(), DataplaneError> {
    check_ifname(pod_ifname)?;
    check_ifname(host_ifname)?;
    linux::teardown(netns, pod_ifname, host_ifname).await
}

/// Verifies that what [`setup`] builds is still in place (CNI CHECK).
///
/// # Errors
///
/// [`DataplaneError::CheckFailed`] listing every missing or wrong piece; namespace
/// and netlink errors when the state cannot be read at all.
pub async fn check(plan: &Plan) -> Result<(), DataplaneError> {
    plan.validate()?;
    linux::check(plan).await
}

/// Host veth name Felix expects for a Kubernetes pod: `prefix` followed by the first
/// 11 hex digits of `sha1("<namespace>.<pod>")`.
///
/// `prefix` is `cali` ([`DEFAULT_HOST_PREFIX`]) unless `FELIX_INTERFACEPREFIX` is
/// set, in which case Calico takes its first comma-separated entry.
pub fn host_veth_name(prefix: &str, namespace: &str, pod: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{}", &hex[..11])
}

/// Host veth name for a workload that is not a Kubernetes pod (Calico's `cni`
/// orchestrator): `cali` followed by the first 11 characters of the container ID.
///
/// Verbs that make interfaces only run with a container ID the spec allows (ASCII), but the
/// name stays within the kernel's 15 bytes for any input: characters are taken while they fit.
pub fn host_veth_name_for_container(container_id: &str) -> String {
    let mut name = String::from(DEFAULT_HOST_PREFIX);
    for c in container_id.chars().take(11) {
        if name.len() + c.len_utf8() > DEFAULT_HOST_PREFIX.len() + 11 {
            break;
        }
        name.push(c);
    }
    name
}

/// A failed dataplane operation. The message names the interface, namespace and
/// address involved and ends with the kernel's reason, so `to_string()` alone is
/// enough for a CNI error message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataplaneError {
    /// The plan cannot be applied; nothing was touched.
    #[error("invalid dataplane plan: {reason}")]
    InvalidPlan {
        /// What is wrong with it.
        reason: String,
    },
    /// The namespace file could not be opened (see [`Self::is_netns_missing`]).
    #[error("cannot open network namespace {}: {source}", path.display())]
    NetnsOpen {
        /// The path that was opened.
        path: PathBuf,
        /// Why `open` failed.
        source: io::Error,
    },
    /// The path exists but is no network namespace, e.g. the empty file left when a
    /// namespace's bind mount is gone.
    #[error("{} is not a network namespace (setns: {source})", path.display())]
    NotNetns {
        /// The path that was opened.
        path: PathBuf,
        /// The `setns` error (`EINVAL`).
        source: nix::Error,
    },
    /// Switching the calling thread into the namespace failed.
    #[error("cannot enter network namespace {}: {source}", path.display())]
    NetnsEnter {
        /// The namespace.
        path: PathBuf,
        /// The `setns` error.
        source: nix::Error,
    },
    /// The pod namespace already has an interface with the pod interface's name.
    #[error("interface {name} already exists in network namespace {}", netns.display())]
    InterfaceExists {
        /// Interface name.
        name: String,
        /// The pod namespace.
        netns: PathBuf,
    },
    /// A netlink request failed.
    #[error("{op}: {source}")]
    Netlink {
        /// What was attempted, with interface, namespace and address.
        op: String,
        /// The kernel's answer.
        source: NetlinkError,
    },
    /// Writing a `/proc/sys` setting failed.
    #[error("cannot set {} to {value} (in {netns}): {source}", path.display())]
    Sysctl {
        /// The `/proc/sys` file.
        path: PathBuf,
        /// The value written.
        value: &'static str,
        /// Which namespace the write was done in.
        netns: String,
        /// Why the write failed.
        source: io::Error,
    },
    /// A host route for the pod's address already points at another interface.
    #[error(
        "route to {dst} already exists via {other}, not via {ifname}; \
         is {dst} still assigned to another workload?"
    )]
    RouteConflict {
        /// The pod address (`/32` or `/128`).
        dst: String,
        /// The host veth the route was meant for.
        ifname: String,
        /// The interface the existing route uses.
        other: String,
    },
    /// An ADD step failed after the veth pair was created, and removing the pair failed
    /// too: it may be left behind (DEL removes it).
    #[error("{cause}; removing the new veth {host_ifname} again also failed: {cleanup}")]
    Incomplete {
        /// The failure that stopped ADD.
        cause: Box<DataplaneError>,
        /// The host end of the pair that may be left.
        host_ifname: String,
        /// What the kernel answered to the deletes.
        cleanup: String,
    },
    /// CHECK found the dataplane incomplete.
    #[error("dataplane check failed for {ifname} in {}: {}", netns.display(), missing.join("; "))]
    CheckFailed {
        /// The pod interface.
        ifname: String,
        /// The pod namespace.
        netns: PathBuf,
        /// One entry per missing or wrong item.
        missing: Vec<String>,
    },
}

impl DataplaneError {
    /// True when the pod's network namespace no longer exists (missing path or a
    /// path that is no namespace). CNI DEL treats this as success.
    pub fn is_netns_missing(&self) -> bool {
        match self {
            Self::NetnsOpen { source, .. } => source.kind() == io::ErrorKind::NotFound,
            Self::NotNetns { .. } => true,
            _ => false,
        }
    }
}

/// The kernel's (or the netlink socket's) reason for a failed request.
#[derive(Debug)]
pub struct NetlinkError {
    errno: Option<i32>,
    kernel_message: Option<String>,
    detail: Option<String>,
}

impl NetlinkError {
    /// The positive errno, e.g. 17 (`EEXIST`), when the kernel returned one.
    pub fn errno(&self) -> Option<i32> {
        self.errno
    }

    /// The kernel's extended-ack text, e.g. "Nexthop device is not up".
    pub fn kernel_message(&self) -> Option<&str> {
        self.kernel_message.as_deref()
    }

    fn from_errno(errno: i32, kernel_message: Option<String>) -> Self {
        Self {
            errno: Some(errno),
            kernel_message,
            detail: None,
        }
    }

    fn other(detail: impl Into<String>) -> Self {
        Self {
            errno: None,
            kernel_message: None,
            detail: Some(detail.into()),
        }
    }
}

impl fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.errno, &self.detail) {
            (Some(errno), _) => write!(f, "{}", io::Error::from_raw_os_error(errno))?,
            (None, Some(detail)) => f.write_str(detail)?,
            (None, None) => f.write_str("unknown netlink failure")?,
        }
        if let Some(msg) = &self.kernel_message {
            write!(f, " (kernel: {msg})")?;
        }
        Ok(())
    }
}

impl std::error::Error for NetlinkError {}

impl Plan {
    /// Rejects plans the kernel would refuse half-way through.
    fn validate(&self) -> Result<(), DataplaneError> {
        check_ifname(&self.host_ifname)?;
        check_ifname(&self.pod_ifname)?;
        let invalid = |reason: String| Err(DataplaneError::InvalidPlan { reason });
        if self.netns.as_os_str().is_empty() {
            return invalid("no network namespace path".into());
        }
        if self.ipv4.is_none() && self.ipv6.is_none() {
            return invalid("neither an IPv4 nor an IPv6 address to configure".into());
        }
        if let Some(ip) = self.ipv4
            && (ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast())
        {
            return invalid(format!("{ip} is not a unicast IPv4 address"));
        }
        if let Some(ip) = self.ipv6
            && (ip.is_unspecified() || ip.is_multicast() || ip.is_unicast_link_local())
        {
            return invalid(format!("{ip} is not a routable unicast IPv6 address"));
        }
        if let Some(mac) = self.pod_mac
            && (mac[0] & 1 == 1 || mac == [0; 6])
        {
            return invalid(format!("{} is not a unicast MAC address", format_mac(&mac)));
        }
        Ok(())
    }

    /// The MTU to request, `None` for the kernel default.
    fn effective_mtu(&self) -> Option<u32> {
        self.mtu.filter(|&mtu| mtu != 0)
    }
}

/// The kernel's `dev_valid_name`: 1..=15 bytes, not `.`/`..`, no `/`, `:` or
/// whitespace. Checked up front because the names also become `/proc/sys` paths.
fn check_ifname(name: &str) -> Result<(), DataplaneError> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0');
    if bad {
        return Err(DataplaneError::InvalidPlan {
            reason: format!(
                "{name:?} is not a valid interface name (1-15 bytes, no '/', ':' or spaces)"
            ),
        });
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff`, lowercase.
fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            netns: PathBuf::from("/run/netns/x"),
            host_ifname: "cali0123456789a".into(),
            pod_ifname: "eth0".into(),
            mtu: None,
            ipv4: Some(Ipv4Addr::new(10, 0, 0, 1)),
            ipv6: None,
            allow_ip_forwarding: false,
            pod_mac: None,
        }
    }

    #[test]
    fn veth_name_matches_calico_vectors() {
        assert_eq!(
            host_veth_name("eni", "namespace", "podname"),
            "eni82111e10a96"
        );
        assert_eq!(
            host_veth_name("cali", "default", "nginx"),
            "calic440f455693"
        );
        assert_eq!(
            host_veth_name("cali", "default", "nginx-7c5ddbdf54-x2v9k"),
            "cali8805ac045c1"
        );
        assert_eq!(
            host_veth_name_for_container("8f3a1c2b4d5e6f708192a3b4"),
            "cali8f3a1c2b4d5"
        );
    }

    #[test]
    fn container_veth_name_takes_at_most_11_chars() {
        assert_eq!(
            host_veth_name_for_container("0123456789abcdef"),
            "cali0123456789a"
        );
        assert_eq!(host_veth_name_for_container("abc"), "caliabc");
        // Multi-byte characters (never in a valid container ID) still fit 15 bytes.
        let name = host_veth_name_for_container("ct\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}r2147");
        assert!(name.len() <= 15, "{name:?}");
    }

    #[test]
    fn plan_validation() {
        assert!(plan().validate().is_ok());
        let long = Plan {
            host_ifname: "cali0123456789ab".into(),
            ..plan()
        };
        assert!(matches!(
            long.validate(),
            Err(DataplaneError::InvalidPlan { .. })
        ));
        let slash = Plan {
            pod_ifname: "eth/0".into(),
            ..plan()
        };
        assert!(slash.validate().is_err());
        let no_ip = Plan {
            ipv4: None,
            ..plan()
        };
        assert!(no_ip.validate().is_err());
        let ll = Plan {
            ipv6: Some(IPV6_GATEWAY),
            ..plan()
        };
        assert!(ll.validate().is_err());
        let no_ns = Plan {
            netns: PathBuf::new(),
            ..plan()
        };
        assert!(no_ns.validate().is_err());
        assert_eq!(
            Plan {
                mtu: Some(0),
                ..plan()
            }
            .effective_mtu(),
            None
        );
        assert_eq!(
            Plan {
                mtu: Some(1450),
                ..plan()
            }
            .effective_mtu(),
            Some(1450)
        );
    }

    #[test]
    fn mac_is_lowercase_colon_hex() {
        assert_eq!(format_mac(&HOST_MAC), "ee:ee:ee:ee:ee:ee");
        assert_eq!(
            format_mac(&[0x0a, 0xBC, 0, 1, 2, 0xff]),
            "0a:bc:00:01:02:ff"
        );
    }

    #[test]
    fn netlink_error_text_has_errno_and_kernel_reason() {
        let e = NetlinkError::from_errno(17, Some("Nexthop device is not up".into()));
        let text = e.to_string();
        assert!(text.contains("File exists"), "{text}");
        assert!(text.contains("Nexthop device is not up"), "{text}");
    }

    #[test]
    fn netns_missing_classification() {
        let missing = DataplaneError::NetnsOpen {
            path: "/x".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(missing.is_netns_missing());
        let denied = DataplaneError::NetnsOpen {
            path: "/x".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(!denied.is_netns_missing());
    }
}
