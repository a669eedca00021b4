//! The `/proc/sys` settings Calico applies (calico.md §1.6).
//!
//! `/proc/sys/net` resolves against the network namespace of the thread that opens
//! the file, so pod-side settings must be applied while the thread is inside the pod
//! namespace (`NetNs::run`), host-side ones from the host namespace.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use super::DataplaneError;

/// One `/proc/sys` write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Setting {
    pub(crate) path: PathBuf,
    pub(crate) value: &'static str,
    /// Calico only warns when these fail (`proxy_delay`, `accept_ra`).
    pub(crate) best_effort: bool,
}

fn setting(path: String, value: &'static str) -> Setting {
    Setting {
        path: PathBuf::from(path),
        value,
        best_effort: false,
    }
}

fn best_effort(path: String, value: &'static str) -> Setting {
    Setting {
        best_effort: true,
        ..setting(path, value)
    }
}

/// Host veth settings, written before the link goes up.
pub(crate) fn host_side(ifname: &str, ipv4: bool, ipv6: bool) -> Vec<Setting> {
    let mut out = Vec::with_capacity(9);
    if ipv4 {
        let conf = format!("/proc/sys/net/ipv4/conf/{ifname}");
        // Lets the host reach the pod from 127.0.0.0/8 (kube-proxy nodeports).
        out.push(setting(format!("{conf}/route_localnet"), "1"));
        // Answer the pod's ARP for 169.254.1.1 at once: nothing owns that address,
        // the veth answers for it with its own MAC (proxy ARP)...
        out.push(best_effort(
            format!("/proc/sys/net/ipv4/neigh/{ifname}/proxy_delay"),
            "0",
        ));
        out.push(setting(format!("{conf}/proxy_arp"), "1"));
        out.push(setting(format!("{conf}/forwarding"), "1"));
    }
    if ipv6 {
        let conf = format!("/proc/sys/net/ipv6/conf/{ifname}");
        // ...and for IPv6 the gateway fe80::1 is a real address on the veth, added
        // with IFA_F_NODAD; accept_dad=0 also spares the kernel link-local the
        // ~1 s of DAD during which it would not answer.
        out.push(setting(format!("{conf}/accept_dad"), "0"));
        out.push(setting(format!("{conf}/disable_ipv6"), "0"));
        out.push(setting(format!("{conf}/proxy_ndp"), "1"));
        out.push(setting(format!("{conf}/forwarding"), "1"));
    }
    // The pod is not a router; never take its router advertisements.
    out.push(best_effort(
        format!("/proc/sys/net/ipv6/conf/{ifname}/accept_ra"),
        "0",
    ));
    out
}

/// Pod namespace settings, written before the pod interface goes up.
pub(crate) fn pod_side(
    ifname: &str,
    ipv4: bool,
    ipv6: bool,
    allow_ip_forwarding: bool,
) -> Vec<Setting> {
    let forwarding = if allow_ip_forwarding { "1" } else { "0" };
    let mut out = Vec::with_capacity(6);
    if ipv6 {
        // Before up, so the /128 and the kernel link-local are usable at once.
        out.push(setting(
            format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad"),
            "0",
        ));
        // Container runtimes may create the namespace with IPv6 disabled; adding the
        // /128 would then fail with EACCES.
        for dev in ["all", "default", "lo"] {
            out.push(setting(
                format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"),
                "0",
            ));
        }
    }
    if ipv4 {
        out.push(setting("/proc/sys/net/ipv4/ip_forward".into(), forwarding));
    }
    if ipv6 {
        out.push(setting(
            "/proc/sys/net/ipv6/conf/all/forwarding".into(),
            forwarding,
        ));
    }
    out
}

/// Writes `settings` in order from the calling thread's namespace, named `netns` in
/// errors. Best-effort failures are ignored, as Calico only logs them.
pub(crate) fn apply(settings: &[Setting], netns: &str) -> Result<(), DataplaneError> {
    for s in settings {
        let written = OpenOptions::new()
            .write(true)
            .open(&s.path)
            .and_then(|mut f| f.write_all(s.value.as_bytes()));
        match written {
            Ok(()) => {}
            Err(_) if s.best_effort => {}
            Err(source) => {
                return Err(DataplaneError::Sysctl {
                    path: s.path.clone(),
                    value: s.value,
                    netns: netns.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(settings: &[Setting]) -> Vec<(String, &'static str)> {
        settings
            .iter()
            .map(|s| (s.path.display().to_string(), s.value))
            .collect()
    }

    #[test]
    fn host_dual_stack_matches_calico_table() {
        let got = paths(&host_side("cali1", true, true));
        let want = [
            ("/proc/sys/net/ipv4/conf/cali1/route_localnet", "1"),
            ("/proc/sys/net/ipv4/neigh/cali1/proxy_delay", "0"),
            ("/proc/sys/net/ipv4/conf/cali1/proxy_arp", "1"),
            ("/proc/sys/net/ipv4/conf/cali1/forwarding", "1"),
            ("/proc/sys/net/ipv6/conf/cali1/accept_dad", "0"),
            ("/proc/sys/net/ipv6/conf/cali1/disable_ipv6", "0"),
            ("/proc/sys/net/ipv6/conf/cali1/proxy_ndp", "1"),
            ("/proc/sys/net/ipv6/conf/cali1/forwarding", "1"),
            ("/proc/sys/net/ipv6/conf/cali1/accept_ra", "0"),
        ];
        let want: Vec<_> = want.iter().map(|(p, v)| (p.to_string(), *v)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn host_v4_only_still_refuses_router_advertisements() {
        let got = host_side("cali1", true, false);
        assert_eq!(got.len(), 5);
        assert!(
            got.last()
                .is_some_and(|s| s.best_effort && s.path.ends_with("accept_ra"))
        );
    }

    #[test]
    fn pod_forwarding_follows_allow_ip_forwarding() {
        let off = paths(&pod_side("eth0", true, true, false));
        assert_eq!(
            off[0],
            ("/proc/sys/net/ipv6/conf/eth0/accept_dad".into(), "0")
        );
        assert!(off.contains(&("/proc/sys/net/ipv4/ip_forward".into(), "0")));
        assert!(off.contains(&("/proc/sys/net/ipv6/conf/all/forwarding".into(), "0")));
        let on = paths(&pod_side("eth0", true, false, true));
        assert_eq!(on, vec![("/proc/sys/net/ipv4/ip_forward".into(), "1")]);
    }
}
