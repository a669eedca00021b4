//! Calico's special case for host-local IPAM: the pseudo-subnets `usePodCidr` and
//! `usePodCidrIPv6` stand for the IPv4 and IPv6 entries of the Kubernetes Node's
//! `spec.podCIDRs`. They may appear as `ipam.subnet` (old style) or as the `subnet` of any range
//! in `ipam.ranges` (new style), in any letter case, as in Calico.
//!
//! ADD replaces them with the Node's CIDRs before host-local runs. Every other verb replaces them
//! with `0.0.0.0/0` and `::/0`: host-local releases and checks by container ID, so it only needs
//! a subnet it can parse, and DEL must work when the API server is gone.
//!
//! The configuration is edited as a JSON tree, so every key host-local or a chained plugin
//! reads is passed on unchanged.

use serde_json::Value;

use libipam::cni::{CniError, code};

/// The IPAM type this applies to (Calico matches it exactly).
pub const HOST_LOCAL: &str = "host-local";

const USE_POD_CIDR: &str = "usePodCidr";
const USE_POD_CIDR_IPV6: &str = "usePodCidrIPv6";

/// The Node's pod CIDRs, one per family.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodCidrs {
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
}

impl PodCidrs {
    /// What stands in for them on DEL, CHECK, STATUS and GC.
    pub fn placeholder() -> PodCidrs {
        PodCidrs {
            ipv4: Some("0.0.0.0/0".into()),
            ipv6: Some("::/0".into()),
        }
    }

    /// Sorts Node `node`'s `spec.podCIDRs` by family. None is an error (Calico's wording);
    /// two of one family are one too.
    pub fn from_node(node: &str, cidrs: &[String]) -> Result<PodCidrs, CniError> {
        if cidrs.is_empty() {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!("no podCidr for node {node}"),
                format!(
                    "host-local's usePodCidr stands for the pod CIDRs of Kubernetes Node {node}, \
                     and it has none yet (spec.podCIDRs is set by kube-controller-manager's \
                     --allocate-node-cidrs)"
                ),
            ));
        }
        let mut found = PodCidrs::default();
        for cidr in cidrs {
            let net: ipnet::IpNet = cidr.parse().map_err(|_| {
                CniError::invalid_config(format!(
                    "Node {node} has pod CIDR {cidr:?}, which is not a CIDR"
                ))
            })?;
            match net {
                ipnet::IpNet::V4(_) => found.ipv4 = Some(cidr.clone()),
                ipnet::IpNet::V6(_) => found.ipv6 = Some(cidr.clone()),
            }
        }
        if cidrs.len() > 1 && (found.ipv4.is_none() || found.ipv6.is_none()) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "ClusterCIDR contains two ranges of the same type",
                format!("Node {node} has pod CIDRs {cidrs:?}"),
            ));
        }
        Ok(found)
    }
}

/// Whether host-local's configuration names a pseudo-subnet (so the Node must be read).
/// Malformed `ipam` or `ranges` sections are refused with Calico's messages.
pub fn wants_pod_cidrs(stdin: &[u8]) -> Result<bool, CniError> {
    let mut conf = parse(stdin)?;
    let mut found = false;
    visit_subnets(&mut conf, &mut |subnet| {
        found |= pseudo(subnet).is_some();
        Ok(())
    })?;
    Ok(found)
}

/// Whether host-local's configuration (pseudo-subnets already replaced) has an IPv6 subnet or
/// range: the pod then gets an IPv6 address.
pub fn has_ipv6(stdin: &[u8]) -> Result<bool, CniError> {
    let mut conf = parse(stdin)?;
    let mut found = false;
    visit_subnets(&mut conf, &mut |subnet| {
        found |= subnet.as_str().is_some_and(|s| {
            matches!(pseudo(subnet), Some(Family::V6))
                || s.parse::<ipnet::IpNet>().is_ok_and(|n| n.addr().is_ipv6())
        });
        Ok(())
    })?;
    Ok(found)
}

/// `stdin` with every pseudo-subnet replaced by `cidrs`; unchanged (byte for byte) when there
/// is none.
pub fn replace_pod_cidrs(stdin: &[u8], cidrs: &PodCidrs) -> Result<Vec<u8>, CniError> {
    if !wants_pod_cidrs(stdin)? {
        return Ok(stdin.to_vec());
    }
    let mut conf = parse(stdin)?;
    visit_subnets(&mut conf, &mut |subnet| {
        let Some(wanted) = pseudo(subnet) else {
            return Ok(());
        };
        let (cidr, family, name) = match wanted {
            Family::V4 => (&cidrs.ipv4, "IPv4", USE_POD_CIDR),
            Family::V6 => (&cidrs.ipv6, "IPv6", USE_POD_CIDR_IPV6),
        };
        let Some(cidr) = cidr else {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("{name} found but there is no {family} CIDR configured"),
                format!("the Node's pod CIDRs hold no {family} range for host-local's {name}"),
            ));
        };
        *subnet = Value::String(cidr.clone());
        Ok(())
    })?;
    serde_json::to_vec(&conf).map_err(|e| CniError::internal(e.to_string()))
}

enum Family {
    V4,
    V6,
}

fn pseudo(subnet: &Value) -> Option<Family> {
    let s = subnet.as_str()?;
    if s.eq_ignore_ascii_case(USE_POD_CIDR) {
        Some(Family::V4)
    } else if s.eq_ignore_ascii_case(USE_POD_CIDR_IPV6) {
        Some(Family::V6)
    } else {
        None
    }
}

fn parse(stdin: &[u8]) -> Result<Value, CniError> {
    serde_json::from_slice(stdin).map_err(|e| CniError::decode(e.to_string()))
}

/// Calls `f` on `ipam.subnet` and on the `subnet` of every range of `ipam.ranges`, where present.
fn visit_subnets(
    conf: &mut Value,
    f: &mut impl FnMut(&mut Value) -> Result<(), CniError>,
) -> Result<(), CniError> {
    let shown = conf.get("ipam").unwrap_or(&Value::Null).to_string();
    let Some(ipam) = conf.get_mut("ipam").and_then(Value::as_object_mut) else {
        return Err(CniError::invalid_config(format!(
            "failed to parse host-local IPAM data; was expecting a dict, not: {shown}"
        )));
    };
    if let Some(subnet) = ipam.get_mut("subnet") {
        f(subnet)?;
    }
    let Some(ranges) = ipam.get_mut("ranges").filter(|r| !r.is_null()) else {
        return Ok(());
    };
    let shown = ranges.to_string();
    let Some(sets) = ranges.as_array_mut() else {
        return Err(CniError::invalid_config(format!(
            "failed to parse host-local IPAM ranges section; was expecting a list, not: {shown}"
        )));
    };
    for set in sets {
        let shown = set.to_string();
        let Some(set) = set.as_array_mut() else {
            return Err(CniError::invalid_config(format!(
                "failed to parse host-local IPAM range set; was expecting a list, not: {shown}"
            )));
        };
        for range in set {
            let shown = range.to_string();
            let Some(range) = range.as_object_mut() else {
                return Err(CniError::invalid_config(format!(
                    "failed to parse host-local IPAM data; was expecting a dict, not: {shown}"
                )));
            };
            if let Some(subnet) = range.get_mut("subnet") {
                f(subnet)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dual() -> PodCidrs {
        PodCidrs::from_node("n", &["10.10.0.0/24".into(), "dead:beef::/96".into()]).expect("dual")
    }

    fn replaced(conf: Value, cidrs: &PodCidrs) -> Result<Value, CniError> {
        let out = replace_pod_cidrs(conf.to_string().as_bytes(), cidrs)?;
        Ok(serde_json::from_slice(&out).expect("json"))
    }

    #[test]
    fn old_style_subnet_and_new_style_ranges_are_replaced_keeping_other_keys() {
        let out = replaced(
            json!({"name": "n", "ipam": {"type": "host-local", "subnet": "usePodCidr",
                   "dataDir": "/d", "routes": [{"dst": "10.123.0.0/16"}]}}),
            &dual(),
        )
        .expect("old style");
        assert_eq!(
            out,
            json!({"name": "n", "ipam": {"type": "host-local", "subnet": "10.10.0.0/24",
                   "dataDir": "/d", "routes": [{"dst": "10.123.0.0/16"}]}})
        );
        let out = replaced(
            json!({"ipam": {"type": "host-local", "ranges": [
                [{"subnet": "USEPODCIDR", "gateway": "10.10.0.1"}],
                [{"subnet": "10.100.0.0/24"}],
                [{"subnet": "usePodCidrIPv6"}]]}}),
            &dual(),
        )
        .expect("ranges");
        assert_eq!(out["ipam"]["ranges"][0][0]["subnet"], "10.10.0.0/24");
        assert_eq!(out["ipam"]["ranges"][0][0]["gateway"], "10.10.0.1");
        assert_eq!(out["ipam"]["ranges"][1][0]["subnet"], "10.100.0.0/24");
        assert_eq!(out["ipam"]["ranges"][2][0]["subnet"], "dead:beef::/96");
    }

    #[test]
    fn nothing_to_replace_leaves_the_bytes_alone() {
        let raw = br#"{"ipam":{"type":"host-local","subnet":"10.0.0.0/8"},  "x":1}"#;
        assert!(!wants_pod_cidrs(raw).expect("plain"));
        assert_eq!(
            replace_pod_cidrs(raw, &PodCidrs::default()).expect("same"),
            raw.to_vec()
        );
    }

    #[test]
    fn calicos_errors() {
        let v4_only = PodCidrs::from_node("n", &["10.0.0.0/24".into()]).expect("v4");
        let e = replaced(
            json!({"ipam": {"type": "host-local", "ranges": [[{"subnet": "usePodCidrIPv6"}]]}}),
            &v4_only,
        )
        .expect_err("no v6");
        assert_eq!(
            (e.code, e.msg.as_str()),
            (
                7,
                "usePodCidrIPv6 found but there is no IPv6 CIDR configured"
            )
        );
        let e = PodCidrs::from_node("node-x", &[]).expect_err("none");
        assert_eq!((e.code, e.msg.as_str()), (11, "no podCidr for node node-x"));
        let e = PodCidrs::from_node("n", &["10.0.0.0/24".into(), "10.1.0.0/24".into()])
            .expect_err("same family");
        assert_eq!(e.msg, "ClusterCIDR contains two ranges of the same type");
        let e = wants_pod_cidrs(br#"{"ipam":{"type":"host-local","ranges":"usePodCidr"}}"#)
            .expect_err("ranges");
        assert!(
            e.details
                .starts_with("failed to parse host-local IPAM ranges section"),
            "{e:?}"
        );
        assert_eq!(
            wants_pod_cidrs(br#"{"ipam":"host-local"}"#)
                .expect_err("ipam")
                .code,
            7
        );
    }

    #[test]
    fn placeholder_parses_for_both_families() {
        let out = replaced(
            json!({"ipam": {"type": "host-local", "ranges": [[{"subnet": "usePodCidr"}], [{"subnet": "usePodCidrIPv6"}]]}}),
            &PodCidrs::placeholder(),
        )
        .expect("placeholder");
        assert_eq!(out["ipam"]["ranges"][0][0]["subnet"], "0.0.0.0/0");
        assert_eq!(out["ipam"]["ranges"][1][0]["subnet"], "::/0");
    }
}
