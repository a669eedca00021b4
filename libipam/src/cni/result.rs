//! The CNI success result. Built once in the 1.x model; converted when printed.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::net::IpAddr;

use super::SpecVersion;

/// A success result (the 1.1.0 model; older versions are produced by [`CniResult::to_json`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

/// An interface the plugin created or knows about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// 1.1.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// One address. `address` keeps its host bits (`10.244.1.5/26`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`; IPAM plugins leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings (Calico never fills them on Linux).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub search: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub options: Vec<String>,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

impl CniResult {
    /// Parse a result printed by another plugin (IPAM result or `prevResult`), in any version
    /// from 0.3.0 on: `ips[].version` is ignored, unknown keys are dropped. The result and
    /// everything in it that is an object in the specification must be a JSON object (serde
    /// would read an array field by field). The error says what is wrong, and where; the
    /// caller says whose result it was and chooses the code.
    pub fn from_value(value: &Value) -> Result<CniResult, String> {
        if !value.is_object() {
            return Err(format!(
                "the result is {}, not a JSON object",
                crate::strict::kind_of(value)
            ));
        }
        if value.get("ip4").is_some() || value.get("ip6").is_some() {
            return Err(
                "the result uses the 0.1.0/0.2.0 layout (ip4/ip6); only 0.3.0 and later are supported"
                    .into(),
            );
        }
        crate::strict::from_value(value).map_err(|e| e.to_string())
    }

    /// The result as JSON in `version`: 0.3.x and 0.4.0 add `ips[].version`, versions before
    /// 1.1.0 drop the 1.1.0-only interface `mtu`.
    pub fn to_value(&self, version: SpecVersion) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !self.interfaces.is_empty() {
            let ifaces: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut i = i.clone();
                    if version < SpecVersion::V1_1_0 {
                        i.mtu = None;
                    }
                    json!(i)
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(ifaces));
        }
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = Map::new();
                if version.has_ip_version_field() {
                    let family = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    v.insert("version".into(), json!(family));
                }
                if let Some(i) = ip.interface {
                    v.insert("interface".into(), json!(i));
                }
                v.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    v.insert("gateway".into(), json!(gw.to_string()));
                }
                Value::Object(v)
            })
            .collect();
        out.insert("ips".into(), Value::Array(ips));
        if !self.routes.is_empty() {
            out.insert("routes".into(), json!(self.routes));
        }
        out.insert("dns".into(), json!(self.dns));
        Value::Object(out)
    }

    /// [`CniResult::to_value`] as a string.
    pub fn to_json(&self, version: SpecVersion) -> String {
        self.to_value(version).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cali8805ac045c1".into(),
                    mac: Some("ee:ee:ee:ee:ee:ee".into()),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("5a:1f:0b:7e:2c:91".into()),
                    mtu: Some(1450),
                    sandbox: Some("/var/run/netns/x".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.1.5/32".parse().expect("v4"),
                    gateway: Some("169.254.1.1".parse().expect("gw4")),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00:10:244:1::5/128".parse().expect("v6"),
                    gateway: Some("fe80::1".parse().expect("gw6")),
                    interface: Some(1),
                },
            ],
            routes: vec![],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_versions_carry_ip_version_and_no_mtu() {
        let v = sample().to_value(SpecVersion::V0_3_1);
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert_eq!(v["ips"][1]["gateway"], "fe80::1");
        assert!(v["interfaces"][1].get("mtu").is_none());
    }

    #[test]
    fn new_versions_have_no_ip_version() {
        let v = sample().to_value(SpecVersion::V1_0_0);
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["interfaces"][1].get("mtu").is_none());
        let v = sample().to_value(SpecVersion::V1_1_0);
        assert_eq!(v["interfaces"][1]["mtu"], 1450);
    }

    #[test]
    fn round_trips_through_every_version() {
        for version in SpecVersion::ALL {
            let mut expected = sample();
            if version < SpecVersion::V1_1_0 {
                expected.interfaces[1].mtu = None;
            }
            let back = CniResult::from_value(&sample().to_value(version)).expect("parse back");
            assert_eq!(back, expected, "{version}");
        }
    }

    #[test]
    fn keeps_host_bits_of_block_masked_addresses() {
        let r = CniResult::from_value(&json!({"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.244.1.5/26"}],"dns":{}}))
            .expect("ipam result");
        assert_eq!(r.ips[0].address.to_string(), "10.244.1.5/26");
        assert!(CniResult::from_value(&json!({"ip4":{"ip":"10.0.0.2/24"}})).is_err());
    }

    /// Read field by field, `[[], [["10.0.0.2/24"]]]` was a result with one address.
    #[test]
    fn only_objects_are_results_at_any_depth() {
        for (value, says) in [
            (
                json!([[], [["10.0.0.2/24"]]]),
                "the result is a JSON array, not a JSON object",
            ),
            (json!(7), "the result is a number, not a JSON object"),
            (json!("ok"), "the result is a string, not a JSON object"),
            (json!(null), "the result is null, not a JSON object"),
            (
                json!({"ips": [["10.0.0.2/24"]]}),
                "ips[0]: invalid type: sequence, expected struct IpConfig",
            ),
            (
                json!({"ips": [], "dns": ["8.8.8.8"]}),
                "dns: invalid type: sequence, expected struct Dns",
            ),
            (
                json!({"interfaces": [["eth0"]]}),
                "interfaces[0]: invalid type: sequence, expected struct Interface",
            ),
        ] {
            let e = CniResult::from_value(&value).expect_err("refused");
            assert!(e.contains(says), "{value}: {e}");
        }
    }
}
