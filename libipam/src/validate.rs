//! IP pool and IPAM configuration validation, with messages that say what to change.

use ipnet::IpNet;

use crate::model::{
    AllowedUse, AssignmentMode, DEFAULT_V4_BLOCK_SIZE, DEFAULT_V6_BLOCK_SIZE, EncapMode, IpPool,
    IpamConfig,
};
use crate::selector::{Selector, SelectorError};

/// Why a pool was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PoolError {
    /// The name is not a valid Kubernetes object name.
    #[error(
        "pool name {0:?} is invalid: use 1-253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
    )]
    InvalidName(String),
    /// The CIDR does not parse.
    #[error(
        "pool cidr {0:?} is not a valid CIDR (expected e.g. 10.244.0.0/16 or fd00:10:244::/48)"
    )]
    InvalidCidr(String),
    /// The CIDR has host bits set.
    #[error("pool cidr {given} is not a network address; did you mean {masked}?")]
    HostBitsSet {
        /// The CIDR as given.
        given: IpNet,
        /// The CIDR with host bits cleared.
        masked: IpNet,
    },
    /// The CIDR overlaps the link-local range.
    #[error(
        "pool cidr {cidr} overlaps the link-local range {link_local}, which cannot be used for pods"
    )]
    LinkLocal {
        /// The pool CIDR.
        cidr: IpNet,
        /// 169.254.0.0/16 or fe80::/10.
        link_local: IpNet,
    },
    /// blockSize is outside the family's range.
    #[error(
        "blockSize {block_size} is out of range for an {family} pool: use {min} to {max} (default {default})"
    )]
    BlockSizeRange {
        /// The given block size.
        block_size: u32,
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// Smallest allowed prefix.
        min: u32,
        /// Largest allowed prefix.
        max: u32,
        /// The default.
        default: u32,
    },
    /// The block is bigger than the pool.
    #[error(
        "blockSize {block_size} does not fit in pool {cidr}: a block cannot be larger than its pool; use a blockSize of at least {}",
        cidr.prefix_len()
    )]
    BlockLargerThanPool {
        /// The given block size.
        block_size: u32,
        /// The pool CIDR.
        cidr: IpNet,
    },
    /// An enum-valued field has a value Calico does not know.
    #[error("{field} {value:?} is not valid: use one of {allowed}")]
    BadEnum {
        /// The field name.
        field: &'static str,
        /// The value given.
        value: String,
        /// The allowed values, `|`-separated.
        allowed: String,
    },
    /// IPIP requested on an IPv6 pool.
    #[error(
        "ipipMode {mode} is not supported on IPv6 pool {cidr}: IPIP only carries IPv4; set ipipMode to Never (use vxlanMode for IPv6 encapsulation)"
    )]
    IpipOnIpv6 {
        /// The mode given.
        mode: String,
        /// The pool CIDR.
        cidr: IpNet,
    },
    /// IPIP and VXLAN both enabled.
    #[error(
        "ipipMode {ipip} and vxlanMode {vxlan} are both enabled: a pool can use IPIP or VXLAN, not both; set one of them to Never"
    )]
    BothEncaps {
        /// ipipMode.
        ipip: String,
        /// vxlanMode.
        vxlan: String,
    },
    /// allowedUses is present but empty.
    #[error("allowedUses is empty: list at least one of {0}")]
    NoAllowedUses(String),
    /// A selector does not parse. (The parse error is part of the message, not a separate
    /// source, so that error chains do not print it twice.)
    #[error("{field}: {reason}")]
    BadSelector {
        /// `nodeSelector` or `namespaceSelector`.
        field: &'static str,
        /// The parse error.
        reason: SelectorError,
    },
    /// The new pool overlaps the known CIDR of a pool object that cannot be read.
    #[error(
        "pool {name} ({cidr}) overlaps IPPool {other} ({other_cidr}), which cannot be read ({reason}); pools must not overlap: replace {other} (calico-ipam apply -f with a good definition named {other}) or delete it (calico-ipam delete ippool {other}) first"
    )]
    OverlapsUnreadable {
        /// The new pool.
        name: String,
        /// Its CIDR.
        cidr: IpNet,
        /// The unreadable pool.
        other: String,
        /// Its CIDR.
        other_cidr: IpNet,
        /// Why it cannot be read.
        reason: String,
    },
    /// A pool object cannot be read at all, so whether the new pool overlaps it is unknown.
    #[error(
        "IPPool {other} cannot be read ({reason}) and its CIDR is unknown, so whether pool {name} overlaps it cannot be checked: replace {other} (calico-ipam apply -f with a good definition named {other}) or delete it (calico-ipam delete ippool {other}) first"
    )]
    BesideUnreadable {
        /// The new pool.
        name: String,
        /// The unreadable pool.
        other: String,
        /// Why it cannot be read.
        reason: String,
    },
    /// Two pools overlap.
    #[error(
        "pool {name} ({cidr}) overlaps existing pool {other} ({other_cidr}); pools must not overlap"
    )]
    Overlap {
        /// The new pool.
        name: String,
        /// Its CIDR.
        cidr: IpNet,
        /// The existing pool.
        other: String,
        /// Its CIDR.
        other_cidr: IpNet,
    },
}

/// Validates one pool on its own (everything except overlap with other pools).
pub fn validate_pool(pool: &IpPool) -> Result<(), PoolError> {
    if !is_dns_subdomain(&pool.name) {
        return Err(PoolError::InvalidName(pool.name.clone()));
    }
    let spec = &pool.spec;
    let given: IpNet = spec
        .cidr
        .trim()
        .parse()
        .map_err(|_| PoolError::InvalidCidr(spec.cidr.clone()))?;
    let cidr = given.trunc();
    if cidr != given {
        return Err(PoolError::HostBitsSet {
            given,
            masked: cidr,
        });
    }
    let (link_local, family, min, max, default) = match cidr {
        IpNet::V4(_) => ("169.254.0.0/16", "IPv4", 20, 32, DEFAULT_V4_BLOCK_SIZE),
        IpNet::V6(_) => ("fe80::/10", "IPv6", 116, 128, DEFAULT_V6_BLOCK_SIZE),
    };
    let link_local: IpNet = link_local
        .parse()
        .map_err(|_| PoolError::InvalidCidr(link_local.to_owned()))?;
    if link_local.contains(&cidr) || cidr.contains(&link_local) {
        return Err(PoolError::LinkLocal { cidr, link_local });
    }
    let block_size = spec.block_size.unwrap_or(default);
    if !(min..=max).contains(&block_size) {
        return Err(PoolError::BlockSizeRange {
            block_size,
            family,
            min,
            max,
            default,
        });
    }
    if block_size < u32::from(cidr.prefix_len()) && !spec.disabled {
        return Err(PoolError::BlockLargerThanPool { block_size, cidr });
    }
    let ipip = check_enum::<EncapMode>("ipipMode", spec.ipip_mode.as_deref())?;
    let vxlan = check_enum::<EncapMode>("vxlanMode", spec.vxlan_mode.as_deref())?;
    let ipip = ipip.unwrap_or(EncapMode::Never);
    let vxlan = vxlan.unwrap_or(EncapMode::Never);
    if matches!(cidr, IpNet::V6(_)) && ipip != EncapMode::Never {
        return Err(PoolError::IpipOnIpv6 {
            mode: ipip.to_string(),
            cidr,
        });
    }
    if ipip != EncapMode::Never && vxlan != EncapMode::Never {
        return Err(PoolError::BothEncaps {
            ipip: ipip.to_string(),
            vxlan: vxlan.to_string(),
        });
    }
    if let Some(uses) = &spec.allowed_uses {
        if uses.is_empty() {
            return Err(PoolError::NoAllowedUses(AllowedUse::allowed()));
        }
        for u in uses {
            check_enum::<AllowedUse>("allowedUses", Some(u))?;
        }
    }
    check_enum::<AssignmentMode>("assignmentMode", spec.assignment_mode.as_deref())?;
    for (field, sel) in [
        ("nodeSelector", &spec.node_selector),
        ("namespaceSelector", &spec.namespace_selector),
    ] {
        if let Some(s) = sel {
            Selector::parse(s).map_err(|reason| PoolError::BadSelector { field, reason })?;
        }
    }
    Ok(())
}

/// Validates `pool` and checks that it overlaps none of `existing`. A pool in `existing` with
/// the same name is the old version of this one (an update) and is ignored.
pub fn validate_new_pool(pool: &IpPool, existing: &[IpPool]) -> Result<(), PoolError> {
    validate_pool(pool)?;
    let Some(cidr) = pool.cidr() else {
        return Err(PoolError::InvalidCidr(pool.spec.cidr.clone()));
    };
    for other in existing.iter().filter(|p| p.name != pool.name) {
        let Some(other_cidr) = other.cidr() else {
            continue;
        };
        if other_cidr.contains(&cidr.network()) || cidr.contains(&other_cidr.network()) {
            return Err(PoolError::Overlap {
                name: pool.name.clone(),
                cidr,
                other: other.name.clone(),
                other_cidr,
            });
        }
    }
    Ok(())
}

/// Why an IPAM configuration was rejected (Calico's `SetIPAMConfig` rules and CRD bounds).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// Neither strict affinity nor automatic block allocation: no host could get addresses.
    #[error(
        "strictAffinity and autoAllocateBlocks cannot both be false: a host could then neither claim a block nor borrow"
    )]
    NoWayToAllocate,
    /// A block limit without strict affinity (Calico: the limit would be bypassed by borrowing).
    #[error(
        "maxBlocksPerHost {0} requires strictAffinity true (Calico's rule: without it a host borrows past its limit); set both, e.g. --strictaffinity=true --max-blocks-per-host={0}"
    )]
    LimitWithoutStrictAffinity(u32),
    /// A block limit past the CRD's bound.
    #[error("maxBlocksPerHost {0} is too large: at most {max}", max = i32::MAX)]
    LimitTooLarge(u32),
    /// Cooldown past the CRD's bound.
    #[error("ipCooldownSeconds {0} is out of range: use 0 to 1200")]
    CooldownRange(u32),
    /// Not `Enabled` or `Disabled`.
    #[error("kubeVirtVMAddressPersistence {0:?} is invalid: use Enabled or Disabled")]
    KubeVirtPersistence(String),
}

/// Validates an IPAM configuration before it is stored, as Calico's `SetIPAMConfig` does.
pub fn validate_config(c: &IpamConfig) -> Result<(), ConfigError> {
    if !c.strict_affinity && !c.auto_allocate_blocks {
        return Err(ConfigError::NoWayToAllocate);
    }
    if c.max_blocks_per_host > i32::MAX as u32 {
        return Err(ConfigError::LimitTooLarge(c.max_blocks_per_host));
    }
    if c.max_blocks_per_host > 0 && !c.strict_affinity {
        return Err(ConfigError::LimitWithoutStrictAffinity(
            c.max_blocks_per_host,
        ));
    }
    if c.ip_cooldown_seconds > 1200 {
        return Err(ConfigError::CooldownRange(c.ip_cooldown_seconds));
    }
    if let Some(p) = &c.kube_virt_vm_address_persistence
        && !matches!(p.as_str(), "Enabled" | "Disabled")
    {
        return Err(ConfigError::KubeVirtPersistence(p.clone()));
    }
    Ok(())
}

fn check_enum<T>(field: &'static str, value: Option<&str>) -> Result<Option<T>, PoolError>
where
    T: std::str::FromStr,
    T: EnumInfo,
{
    match value {
        None | Some("") => Ok(None),
        Some(v) => v.parse::<T>().map(Some).map_err(|_| PoolError::BadEnum {
            field,
            value: v.to_owned(),
            allowed: T::allowed_values(),
        }),
    }
}

trait EnumInfo {
    fn allowed_values() -> String;
}

impl EnumInfo for EncapMode {
    fn allowed_values() -> String {
        EncapMode::allowed()
    }
}

impl EnumInfo for AllowedUse {
    fn allowed_values() -> String {
        AllowedUse::allowed()
    }
}

impl EnumInfo for AssignmentMode {
    fn allowed_values() -> String {
        AssignmentMode::allowed()
    }
}

/// RFC 1123 subdomain, as Kubernetes requires for object names.
fn is_dns_subdomain(name: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (1..=253).contains(&name.len())
        && name.chars().all(ok_char)
        && alnum(name.chars().next())
        && alnum(name.chars().last())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IpPoolSpec;

    fn pool(cidr: &str, f: impl FnOnce(&mut IpPoolSpec)) -> IpPool {
        let mut p = IpPool {
            name: "p".into(),
            spec: IpPoolSpec {
                cidr: cidr.into(),
                ..IpPoolSpec::default()
            },
        };
        f(&mut p.spec);
        p
    }

    #[test]
    fn rules_table() {
        let s = |v: &str| Some(v.to_owned());
        let cases: Vec<(IpPool, Option<&str>)> = vec![
            (pool("10.244.0.0/16", |_| {}), None),
            (pool("fd00:10:244::/48", |_| {}), None),
            (pool("10.244.0.0/16", |p| p.block_size = Some(20)), None),
            (pool("10.244.0.0/16", |p| p.block_size = Some(32)), None),
            (pool("fd00::/48", |p| p.block_size = Some(116)), None),
            (pool("fd00::/48", |p| p.block_size = Some(128)), None),
            (
                pool("10.0.0.0/8", |p| p.block_size = Some(19)),
                Some("use 20 to 32"),
            ),
            (
                pool("10.0.0.0/8", |p| p.block_size = Some(33)),
                Some("use 20 to 32"),
            ),
            (
                pool("fd00::/48", |p| p.block_size = Some(115)),
                Some("use 116 to 128"),
            ),
            (
                pool("fd00::/48", |p| p.block_size = Some(26)),
                Some("IPv6 pool: use 116 to 128"),
            ),
            (
                pool("10.0.0.0/28", |p| p.block_size = Some(26)),
                Some("use a blockSize of at least 28"),
            ),
            (
                pool("10.0.0.0/28", |p| {
                    p.block_size = Some(26);
                    p.disabled = true;
                }),
                None,
            ),
            (
                pool("10.244.1.0/16", |_| {}),
                Some("did you mean 10.244.0.0/16?"),
            ),
            (pool("fd00::1/48", |_| {}), Some("did you mean fd00::/48?")),
            (pool("10.244.0.0", |_| {}), Some("not a valid CIDR")),
            (pool("banana", |_| {}), Some("not a valid CIDR")),
            (
                pool("169.254.0.0/20", |_| {}),
                Some("link-local range 169.254.0.0/16"),
            ),
            (pool("169.0.0.0/8", |_| {}), Some("link-local")),
            (
                pool("fe80::/64", |_| {}),
                Some("link-local range fe80::/10"),
            ),
            (
                pool("fd00::/48", |p| p.ipip_mode = s("Always")),
                Some("IPIP only carries IPv4"),
            ),
            (
                pool("fd00::/48", |p| p.ipip_mode = s("CrossSubnet")),
                Some("set ipipMode to Never"),
            ),
            (pool("fd00::/48", |p| p.ipip_mode = s("Never")), None),
            (pool("fd00::/48", |p| p.vxlan_mode = s("Always")), None),
            (
                pool("10.0.0.0/16", |p| p.ipip_mode = s("CrossSubnet")),
                None,
            ),
            (
                pool("10.0.0.0/16", |p| p.ipip_mode = s("always")),
                Some("ipipMode \"always\" is not valid: use one of Never|Always|CrossSubnet"),
            ),
            (
                pool("10.0.0.0/16", |p| p.vxlan_mode = s("Sometimes")),
                Some("vxlanMode \"Sometimes\" is not valid: use one of Never|Always|CrossSubnet"),
            ),
            (
                pool("10.0.0.0/16", |p| {
                    p.ipip_mode = s("Always");
                    p.vxlan_mode = s("Always");
                }),
                Some("not both"),
            ),
            (
                pool("10.0.0.0/16", |p| {
                    p.allowed_uses = Some(vec!["Workload".into(), "Pods".into()])
                }),
                Some("allowedUses \"Pods\" is not valid: use one of Workload|Tunnel|LoadBalancer"),
            ),
            (
                pool("10.0.0.0/16", |p| p.allowed_uses = Some(vec![])),
                Some("allowedUses is empty"),
            ),
            (
                pool("10.0.0.0/16", |p| {
                    p.allowed_uses = Some(vec!["LoadBalancer".into()])
                }),
                None,
            ),
            (
                pool("10.0.0.0/16", |p| p.assignment_mode = s("Auto")),
                Some("assignmentMode \"Auto\" is not valid: use one of Automatic|Manual"),
            ),
            (
                pool("10.0.0.0/16", |p| p.assignment_mode = s("Manual")),
                None,
            ),
            (
                pool("10.0.0.0/16", |p| p.node_selector = s("zone == ")),
                Some("nodeSelector: invalid selector \"zone == \""),
            ),
            (
                pool("10.0.0.0/16", |p| p.namespace_selector = s("a &&")),
                Some("namespaceSelector: invalid selector"),
            ),
            (
                pool("10.0.0.0/16", |p| p.node_selector = s("zone == 'a'")),
                None,
            ),
        ];
        for (p, want) in cases {
            let got = validate_pool(&p);
            match (want, got) {
                (None, Ok(())) => {}
                (Some(msg), Err(e)) => assert!(
                    e.to_string().contains(msg),
                    "{}: {e} should contain {msg:?}",
                    p.spec.cidr
                ),
                (want, got) => panic!("{:?}: want {want:?}, got {got:?}", p.spec),
            }
        }
    }

    #[test]
    fn names() {
        let mut p = pool("10.0.0.0/16", |_| {});
        for bad in ["", "Default", "-a", "a-", "a_b"] {
            p.name = bad.into();
            assert!(
                matches!(validate_pool(&p), Err(PoolError::InvalidName(_))),
                "{bad}"
            );
        }
        p.name = "default-ipv4-ippool".into();
        assert_eq!(validate_pool(&p), Ok(()));
    }

    #[test]
    fn overlap() {
        let existing = vec![
            IpPool::new("a", "10.244.0.0/16"),
            IpPool::new("b", "fd00:10:244::/48"),
        ];
        let inside = IpPool::new("c", "10.244.8.0/24");
        let e = validate_new_pool(&inside, &existing).expect_err("overlap");
        assert_eq!(
            e.to_string(),
            "pool c (10.244.8.0/24) overlaps existing pool a (10.244.0.0/16); pools must not overlap"
        );
        let outside = IpPool::new("c", "10.0.0.0/8");
        assert!(
            validate_new_pool(&outside, &existing).is_err(),
            "superset overlaps"
        );
        let update = IpPool::new("a", "10.244.0.0/16");
        assert_eq!(
            validate_new_pool(&update, &existing),
            Ok(()),
            "same name = update"
        );
        let v6 = IpPool::new("d", "fd00:10:245::/48");
        assert_eq!(validate_new_pool(&v6, &existing), Ok(()));
    }

    #[test]
    fn config_rules_are_calicos() {
        let ok = IpamConfig::default();
        assert_eq!(validate_config(&ok), Ok(()));
        let neither = IpamConfig {
            auto_allocate_blocks: false,
            ..IpamConfig::default()
        };
        assert_eq!(validate_config(&neither), Err(ConfigError::NoWayToAllocate));
        let limit = IpamConfig {
            max_blocks_per_host: 4,
            ..IpamConfig::default()
        };
        assert!(
            validate_config(&limit)
                .expect_err("limit without strict")
                .to_string()
                .contains("--strictaffinity=true --max-blocks-per-host=4")
        );
        let strict_limit = IpamConfig {
            strict_affinity: true,
            ..limit
        };
        assert_eq!(validate_config(&strict_limit), Ok(()));
        let kv = IpamConfig {
            kube_virt_vm_address_persistence: Some("yes".into()),
            ..IpamConfig::default()
        };
        assert!(validate_config(&kv).is_err());
    }
}
