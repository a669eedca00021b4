//! The pod interface's MTU (`mtu`), checked before anything is allocated or made. The kernel
//! refuses a veth MTU under 68 or over 65535, and turns IPv6 off on a link under 1280, so
//! the IPv6 sysctls and addresses of the ADD fail half-way through (and are undone).

use libipam::cni::CniError;

/// IPv4's minimum (RFC 791), the kernel's `ETH_MIN_MTU`.
pub const MIN_IPV4: u32 = 68;
/// IPv6's minimum link MTU (RFC 8200).
pub const MIN_IPV6: u32 = 1280;
/// The kernel's `ETH_MAX_MTU`, a veth's maximum.
pub const MAX: u32 = 65535;

/// Checks `mtu` (absent or 0: the kernel's default, always fine) for a pod that gets an IPv6
/// address (`Some(true)`), does not (`Some(false)`), or may (`None`: not known until the IPAM
/// plugin answers; the IPv6 bound is then checked again on its result).
pub fn check(mtu: Option<u32>, ipv6: Option<bool>) -> Result<(), CniError> {
    let Some(mtu) = mtu.filter(|m| *m > 0) else {
        return Ok(());
    };
    let refuse = |what: String| {
        Err(CniError::invalid_config(format!(
            "{what}: mtu is {mtu} in the network configuration"
        )))
    };
    if ipv6 == Some(true) && mtu < MIN_IPV6 {
        return refuse(format!(
            "MTU too small for IPv6 (minimum {MIN_IPV6}), and the pod gets an IPv6 address"
        ));
    }
    if mtu < MIN_IPV4 {
        return refuse(format!("MTU too small for IPv4 (minimum {MIN_IPV4})"));
    }
    if mtu > MAX {
        return refuse(format!("MTU too large for a veth (maximum {MAX})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        for ok in [
            (None, Some(true)),
            (Some(0), Some(true)),
            (Some(1280), Some(true)),
        ] {
            assert!(check(ok.0, ok.1).is_ok(), "{ok:?}");
        }
        assert!(check(Some(68), Some(false)).is_ok());
        assert!(check(Some(1000), None).is_ok());
        assert!(check(Some(65535), Some(true)).is_ok());
        for (mtu, ipv6, says) in [
            (1279, Some(true), "MTU too small for IPv6 (minimum 1280)"),
            (60, Some(true), "MTU too small for IPv6 (minimum 1280)"),
            (67, Some(false), "MTU too small for IPv4 (minimum 68)"),
            (67, None, "MTU too small for IPv4 (minimum 68)"),
            (
                65536,
                Some(false),
                "MTU too large for a veth (maximum 65535)",
            ),
        ] {
            let e = check(Some(mtu), ipv6).expect_err("refused");
            assert_eq!(e.code, 7);
            assert!(e.details.starts_with(says), "{mtu}: {}", e.details);
            assert!(
                e.details.contains(&format!("mtu is {mtu}")),
                "{}",
                e.details
            );
        }
    }
}
