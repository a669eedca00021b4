//! Calico's network configuration, as Calico's manifests and installers write it.
//!
//! Typed and strict about the fields we read, tolerant of every other key (the spec lets runtimes
//! and other plugins put anything in a plugin's configuration). Legacy spellings are normalised
//! here, once: `"assign_ipv4": "true"` and `true` both become `bool`, `null` lists become empty.

use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{CniError, SpecVersion};
use crate::datastore::api_group::{ApiGroup, BadApiGroup};
// Every struct of the netconf is read from a JSON object only: serde's derived structs also take
// a JSON array as their fields in order (`["1.0.0", "net"]` was once read as a netconf, and
// allocated a pair).
use crate::strict::Object;

/// Where IPAM state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatastoreType {
    /// The embedded single-host store (no cluster needed). Our default.
    #[default]
    Local,
    /// Calico's CRDs in a Kubernetes API server (crd.projectcalico.org/v1).
    Kubernetes,
    /// Calico's keys in an etcd v3 cluster (`etcd_endpoints`, `etcd_*_file`).
    Etcdv3,
}

/// Where the etcd cluster of `datastore_type: etcdv3` is, and the TLS files to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdSettings {
    /// Comma-separated endpoint URLs.
    pub endpoints: Option<String>,
    /// The CA certificate (PEM).
    pub ca_cert_file: Option<PathBuf>,
    /// The client certificate (PEM).
    pub cert_file: Option<PathBuf>,
    /// The client key (PEM).
    pub key_file: Option<PathBuf>,
}

/// How long the node-local caches of the Kubernetes datastore serve configuration objects unless
/// `kubernetes.cache_ttl_seconds` says otherwise.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(10);

/// The Kubernetes client's requests a second when `qps` is unset (client-go's default, which
/// Calico keeps).
pub const DEFAULT_CLIENT_QPS: f64 = 5.0;
/// The Kubernetes client's burst when `burst` is unset (Calico's: libcalico-go sets 100).
pub const DEFAULT_CLIENT_BURST: u32 = 100;

/// Default directory of the `local` datastore.
pub const DEFAULT_DATASTORE_PATH: &str = "/var/lib/calico/ipam";
/// Calico's default node-name file (written by calico-node).
pub const DEFAULT_NODENAME_FILE: &str = "/var/lib/calico/nodename";
/// Calico's default host-wide IPAM lock.
pub const DEFAULT_IPAM_LOCK_FILE: &str = "/var/run/calico/ipam.lock";
/// `ipam_in_process` when the netconf does not set it.
pub const DEFAULT_IPAM_IN_PROCESS: bool = true;

/// The plugin configuration received on stdin.
///
/// Calico's own tooling marshals its Go `NetConf` type, which writes every unset field: `null`
/// for pointers and lists (`"assign_ipv4": null`, `"ipv4_pools": null`, `"readiness_gates":
/// null`), `""` for strings and `0` for numbers. All three mean "not set" here, for every
/// optional field of every section; anything else of the wrong type is still refused.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default, deserialize_with = "null_as_default")]
    pub cni_version: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(rename = "type", default, deserialize_with = "null_as_default")]
    pub plugin_type: String,
    #[serde(default, deserialize_with = "datastore_type")]
    pub datastore_type: DatastoreType,
    /// Ours (Calico has no such field, so no tool of Calico's writes it empty): `""` is kept,
    /// and refused by [`super::bounds::check_netconf`] rather than read as the default.
    #[serde(default)]
    pub datastore_path: Option<PathBuf>,
    /// Calico's `etcd_endpoints` (comma-separated URLs), for `datastore_type: etcdv3`; else
    /// ETCD_ENDPOINTS.
    #[serde(default, deserialize_with = "unset_as_none")]
    pub etcd_endpoints: Option<String>,
    /// Calico's `etcd_ca_cert_file`; else ETCD_CA_CERT_FILE.
    #[serde(default, deserialize_with = "unset_as_none")]
    pub etcd_ca_cert_file: Option<PathBuf>,
    /// Calico's `etcd_cert_file`; else ETCD_CERT_FILE.
    #[serde(default, deserialize_with = "unset_as_none")]
    pub etcd_cert_file: Option<PathBuf>,
    /// Calico's `etcd_key_file`; else ETCD_KEY_FILE.
    #[serde(default, deserialize_with = "unset_as_none")]
    pub etcd_key_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "unset_as_none")]
    pub nodename: Option<String>,
    #[serde(default, deserialize_with = "unset_as_none")]
    pub nodename_file: Option<PathBuf>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default, deserialize_with = "section")]
    pub ipam: IpamConf,
    /// The Kubernetes client's rate limit, as Calico v3.32 reads it (an integer; `0` or `null`:
    /// Calico's default of 5 a second; negative: no limit, as client-go takes a negative QPS).
    #[serde(default, deserialize_with = "null_as_default")]
    pub qps: i64,
    /// Requests that may go at once before `qps` paces them (an integer; `0` or `null`:
    /// Calico's default of 100). Negative is refused: client-go would fail every request.
    #[serde(default, deserialize_with = "null_as_default")]
    pub burst: u32,
    /// Calico v3.32's `calico_api_group`: the API group of Calico's objects in the Kubernetes
    /// datastore (`projectcalico.org/v3` or `crd.projectcalico.org/v1`); unset (`null`, `""`):
    /// CALICO_API_GROUP, else asked of the API server ([`NetConf::api_group`]).
    #[serde(default, deserialize_with = "api_group")]
    pub calico_api_group: Option<ApiGroup>,
    #[serde(default, deserialize_with = "section")]
    pub kubernetes: KubernetesConf,
    #[serde(default, deserialize_with = "section")]
    pub policy: PolicyConf,
    #[serde(default, deserialize_with = "unset_as_none")]
    pub log_level: Option<String>,
    #[serde(default, deserialize_with = "unset_as_none")]
    pub log_file_path: Option<PathBuf>,
    /// Rotation limits, as Calico's: size in MB, age in days, rotated files kept. 0 (Go's unset
    /// number) means Calico's default: 100, 30, 10.
    #[serde(default, deserialize_with = "null_as_default")]
    pub log_file_max_size: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub log_file_max_age: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub log_file_max_count: u64,
    #[serde(default, deserialize_with = "section")]
    pub container_settings: ContainerSettings,
    #[serde(default, deserialize_with = "section")]
    pub feature_control: FeatureControl,
    #[serde(default, deserialize_with = "unset_as_none")]
    pub ipam_lock_file: Option<PathBuf>,
    /// Ours: whether calico-cni may run the IPAM plugin's code in its own process instead of
    /// running the binary, which it does only when that binary is calico-ipam of this very
    /// build (any other plugin is always run). `false` forces the binary. Unset (or `null`):
    /// [`DEFAULT_IPAM_IN_PROCESS`].
    #[serde(
        default = "ipam_in_process_default",
        deserialize_with = "ipam_in_process"
    )]
    pub ipam_in_process: bool,
    /// URLs that must answer 2xx/3xx before ADD goes ahead (Calico's `readiness_gates`).
    #[serde(default, deserialize_with = "readiness_gates")]
    pub readiness_gates: Vec<String>,
    /// The previous plugin's result (CHECK, chained ADD): a JSON object or `null`, as libcni's
    /// `map[string]interface{}` takes it; anything else is refused like any field of the wrong
    /// type.
    #[serde(rename = "prevResult", default, deserialize_with = "prev_result")]
    pub prev_result: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        deserialize_with = "objects"
    )]
    pub valid_attachments: Vec<Attachment>,
}

/// The `ipam` section. Fields other plugins (host-local) read are left in the raw stdin.
#[derive(Debug, Clone, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type", default, deserialize_with = "null_as_default")]
    pub ipam_type: String,
    #[serde(default = "yes", deserialize_with = "assign_ipv4")]
    pub assign_ipv4: bool,
    #[serde(default, deserialize_with = "assign_ipv6")]
    pub assign_ipv6: bool,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub ipv4_pools: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub ipv6_pools: Vec<String>,
}

impl Default for IpamConf {
    fn default() -> Self {
        IpamConf {
            ipam_type: String::new(),
            assign_ipv4: true,
            assign_ipv6: false,
            ipv4_pools: Vec::new(),
            ipv6_pools: Vec::new(),
        }
    }
}

/// The `kubernetes` section.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct KubernetesConf {
    /// The kubeconfig the plugins use (`datastore_type: kubernetes`).
    #[serde(default, deserialize_with = "unset_as_none")]
    pub kubeconfig: Option<PathBuf>,
    /// The Kubernetes Node whose `spec.podCIDRs` replace host-local's `usePodCidr` (Calico's
    /// `kubernetes.node_name`); the node name otherwise.
    #[serde(default, deserialize_with = "unset_as_none")]
    pub node_name: Option<String>,
    /// Ours: how long the node-local caches serve configuration objects (pools, IPAM config,
    /// reservations, node/namespace labels, this node's affinities, ClusterInformation)
    /// before reading them again; 0 = always read. Default 10 s.
    #[serde(default)]
    pub cache_ttl_seconds: Option<u64>,
}

/// The `policy` section: `type: k8s` makes the plugin read pod and namespace annotations.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PolicyConf {
    #[serde(rename = "type", default, deserialize_with = "null_as_default")]
    pub policy_type: String,
}

/// The `container_settings` section.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContainerSettings {
    #[serde(default, deserialize_with = "allow_ip_forwarding")]
    pub allow_ip_forwarding: bool,
}

/// The `feature_control` section: pod annotations that need the operator's consent.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FeatureControl {
    /// `cni.projectcalico.org/ipAddrsNoIpam`: the pod's addresses are given, IPAM is bypassed.
    #[serde(default, deserialize_with = "ip_addrs_no_ipam")]
    pub ip_addrs_no_ipam: bool,
    /// `cni.projectcalico.org/floatingIPs`: addresses DNATed to the pod.
    #[serde(default, deserialize_with = "floating_ips")]
    pub floating_ips: bool,
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
}

fn yes() -> bool {
    true
}

fn ipam_in_process_default() -> bool {
    DEFAULT_IPAM_IN_PROCESS
}

fn ipam_in_process<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    bool_or_string(d, "ipam_in_process", DEFAULT_IPAM_IN_PROCESS)
}

fn assign_ipv4<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    bool_or_string(d, "ipam.assign_ipv4", true)
}

fn assign_ipv6<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    bool_or_string(d, "ipam.assign_ipv6", false)
}

fn allow_ip_forwarding<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    bool_or_string(d, "container_settings.allow_ip_forwarding", false)
}

fn ip_addrs_no_ipam<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    bool_or_string(d, "feature_control.ip_addrs_no_ipam", false)
}

fn floating_ips<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    bool_or_string(d, "feature_control.floating_ips", false)
}

/// Calico writes booleans as strings (`"true"`); accept both forms, and `null` as `unset`,
/// nothing else. Errors name the field, since serde's own messages only give a line and column.
fn bool_or_string<'de, D: Deserializer<'de>>(
    d: D,
    field: &str,
    unset: bool,
) -> Result<bool, D::Error> {
    let raw = serde_json::Value::deserialize(d)?;
    match &raw {
        serde_json::Value::Null => return Ok(unset),
        serde_json::Value::Bool(b) => return Ok(*b),
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("true") => return Ok(true),
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("false") => return Ok(false),
        _ => {}
    }
    Err(serde::de::Error::custom(format!(
        "{field} must be true or false (or the strings \"true\"/\"false\"), not {raw}"
    )))
}

/// `null` lists are Go's unset slices; treat them as empty.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// A section (`ipam`, `kubernetes`, ...): a JSON object, or `null` for its defaults.
fn section<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<Object<T>>::deserialize(d)?
        .map(|o| o.0)
        .unwrap_or_default())
}

/// `prevResult`: a JSON object, or `null` for none.
fn prev_result<'de, D>(d: D) -> Result<Option<serde_json::Map<String, serde_json::Value>>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<Object<_>>::deserialize(d)?.map(|o| o.0))
}

/// A list of JSON objects (`null` = none).
fn objects<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<Object<T>>>::deserialize(d)?
        .unwrap_or_default()
        .into_iter()
        .map(|o| o.0)
        .collect())
}

/// `null` strings and sections are unset: the field's default.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An optional string or path: `null` and `""` (Go's unset string) are both absent.
fn unset_as_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: From<String>,
{
    Ok(Option::<String>::deserialize(d)?
        .filter(|s| !s.is_empty())
        .map(T::from))
}

/// `calico_api_group`: `null` and `""` are unset; anything else must name a Calico group.
fn api_group<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ApiGroup>, D::Error> {
    match Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// `datastore_type`: `null` and `""` are the default.
fn datastore_type<'de, D: Deserializer<'de>>(d: D) -> Result<DatastoreType, D::Error> {
    let raw = Option::<String>::deserialize(d)?.unwrap_or_default();
    match raw.as_str() {
        "" => Ok(DatastoreType::default()),
        "local" => Ok(DatastoreType::Local),
        "kubernetes" => Ok(DatastoreType::Kubernetes),
        "etcdv3" => Ok(DatastoreType::Etcdv3),
        other => Err(serde::de::Error::custom(format!(
            "datastore_type \"{other}\" is not supported: use \"kubernetes\" (Calico's CRDs through the API server), \"etcdv3\" (Calico's keys in etcd) or \"local\""
        ))),
    }
}

/// `readiness_gates`: a list of URLs (`null` = none). Named in the error, because Calico's
/// own test passes a bare string here and expects the ADD to fail on it.
fn readiness_gates<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let raw = serde_json::Value::deserialize(d)?;
    match raw {
        serde_json::Value::Null => Ok(Vec::new()),
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(s) => Ok(s),
                other => Err(serde::de::Error::custom(format!(
                    "readiness_gates must be a list of URL strings; {other} is not a string"
                ))),
            })
            .collect(),
        other => Err(serde::de::Error::custom(format!(
            "readiness_gates must be a list of URLs, not {other}"
        ))),
    }
}

impl NetConf {
    /// Decode stdin. Broken JSON, and JSON that is not an object, is code 6 (the reference
    /// skel's decoding failure); an object with a field of the wrong type is code 7, naming the
    /// field's path (`ipam.assign_ipv4`, `cni.dev/valid-attachments[0].containerID`).
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let mut de = serde_json::Deserializer::from_slice(stdin);
        let decoded = serde_path_to_error::deserialize::<_, Object<NetConf>>(&mut de)
            .map_err(|e| (e.path().to_string(), e.into_inner()))
            .and_then(|conf| de.end().map(|()| conf.0).map_err(|e| (".".into(), e)));
        decoded.map_err(|(path, e)| {
            let msg = withhold_strings(&e.to_string());
            if !e.is_data() {
                // Broken JSON: its position is what helps.
                CniError::decode(msg)
            } else if path == "." {
                // Every field has a default, so only the whole document can be of a wrong type.
                CniError::decode(format!(
                    "the network configuration must be a JSON object: {msg}"
                ))
            } else if msg.starts_with(&path) {
                CniError::invalid_config(msg)
            } else {
                CniError::invalid_config(format!("{path}: {msg}"))
            }
        })
    }

    /// The spec version of this configuration, or code 1 naming the versions we support.
    pub fn spec_version(&self) -> Result<SpecVersion, CniError> {
        parse_version(&self.cni_version)
    }

    /// The node name: `nodename`, else the first line of `nodename_file` (default
    /// /var/lib/calico/nodename) when it exists, else the OS hostname, lower-cased.
    pub fn node_name(&self) -> Result<String, CniError> {
        if let Some(n) = self.nodename.as_deref().filter(|n| !n.is_empty()) {
            return Ok(n.to_string());
        }
        let file = self
            .nodename_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_NODENAME_FILE));
        if let Some(text) = read_start(&file) {
            let name = text.trim();
            if !name.is_empty() {
                super::bounds::check_node_name(name, &file.display().to_string())?;
                return Ok(name.to_string());
            }
        }
        os_hostname().ok_or_else(|| {
            CniError::invalid_config(format!(
                "cannot determine the node name: set \"nodename\" in the network configuration or write it to {}",
                file.display()
            ))
        })
    }

    /// The `local` datastore directory.
    pub fn datastore_path(&self) -> &Path {
        self.datastore_path
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_DATASTORE_PATH))
    }

    /// The host-wide IPAM lock file.
    pub fn ipam_lock_file(&self) -> &Path {
        self.ipam_lock_file
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_IPAM_LOCK_FILE))
    }

    /// The kubeconfig of the Kubernetes datastore: `kubernetes.kubeconfig`, else KUBECONFIG.
    pub fn kubeconfig(&self) -> Option<PathBuf> {
        self.kubernetes
            .kubeconfig
            .clone()
            .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from))
    }

    /// The API group of Calico's objects when it is given: `calico_api_group`, else
    /// CALICO_API_GROUP (as Calico's plugin reads it; `""` is unset); `None`: ask the API server.
    /// A CALICO_API_GROUP that names no Calico group is code 7.
    pub fn api_group(&self) -> Result<Option<ApiGroup>, CniError> {
        if let Some(g) = self.calico_api_group {
            return Ok(Some(g));
        }
        match std::env::var("CALICO_API_GROUP") {
            Ok(v) if !v.is_empty() => v.parse().map(Some).map_err(|e: BadApiGroup| {
                CniError::invalid_config(format!("CALICO_API_GROUP: {e}"))
            }),
            _ => Ok(None),
        }
    }

    /// The etcd settings of `datastore_type: etcdv3`, each from the netconf, else from the
    /// environment as Calico's plugin reads them (ETCD_ENDPOINTS, ETCD_CA_CERT_FILE,
    /// ETCD_CERT_FILE, ETCD_KEY_FILE): endpoints, CA, certificate, key. A file named by the
    /// environment must be an absolute path, as the netconf's must ([`super::bounds::check_paths`]):
    /// a relative one would be read from the container runtime's working directory (code 7).
    pub fn etcd(&self) -> Result<EtcdSettings, CniError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let file = |field: &Option<PathBuf>, var: &str| -> Result<Option<PathBuf>, CniError> {
            match (field, env(var)) {
                (Some(path), _) => Ok(Some(path.clone())),
                (None, Some(v)) => {
                    let path = PathBuf::from(v);
                    super::bounds::check_absolute(var, &path)?;
                    Ok(Some(path))
                }
                (None, None) => Ok(None),
            }
        };
        Ok(EtcdSettings {
            endpoints: self
                .etcd_endpoints
                .clone()
                .or_else(|| env("ETCD_ENDPOINTS")),
            ca_cert_file: file(&self.etcd_ca_cert_file, "ETCD_CA_CERT_FILE")?,
            cert_file: file(&self.etcd_cert_file, "ETCD_CERT_FILE")?,
            key_file: file(&self.etcd_key_file, "ETCD_KEY_FILE")?,
        })
    }

    /// Where both plugins keep their node-local Kubernetes caches: next to the host-wide IPAM
    /// lock, because they are only valid while it is held.
    pub fn cache_dir(&self) -> PathBuf {
        self.ipam_lock_file()
            .parent()
            .unwrap_or(Path::new("/"))
            .join("ipam-cache")
    }

    /// How long those caches serve configuration objects.
    pub fn cache_ttl(&self) -> Duration {
        self.kubernetes
            .cache_ttl_seconds
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_CACHE_TTL)
    }

    /// The Kubernetes client's rate limit: requests a second (`None`: unlimited) and burst.
    pub fn client_rate(&self) -> (Option<f64>, u32) {
        let qps = match self.qps {
            0 => Some(DEFAULT_CLIENT_QPS),
            q if q < 0 => None,
            q => Some(q as f64),
        };
        let burst = match self.burst {
            0 => DEFAULT_CLIENT_BURST,
            b => b,
        };
        (qps, burst)
    }

    /// `<network name>.<container id>`: Calico's IPAM handle for an attachment.
    pub fn handle_id(&self, container_id: &str) -> String {
        format!("{}.{}", self.name, container_id)
    }
}

/// Parse a `cniVersion` string into a version we support, or code 1.
/// serde quotes the offending value (`invalid type: string "…", expected u32`). A credential put
/// in the wrong field must not come back on stdout or reach the log, so string values are
/// withheld (Go's encoding/json, which Calico uses, never shows them either); the position stays.
fn withhold_strings(msg: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(MARK) {
        out.push_str(&rest[..i]);
        out.push_str("a string");
        // serde writes the value Debug-escaped: the first unescaped quote closes it.
        let mut chars = rest[i + MARK.len()..].char_indices();
        let mut end = None;
        while let Some((j, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    end = Some(i + MARK.len() + j + 1);
                    break;
                }
                _ => {}
            }
        }
        match end {
            Some(e) => rest = &rest[e..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

pub fn parse_version(raw: &str) -> Result<SpecVersion, CniError> {
    SpecVersion::parse(raw).ok_or_else(|| {
        let shown = if raw.is_empty() { "(missing)" } else { raw };
        CniError::new(
            super::code::INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            format!(
                "config is \"{shown}\", plugin supports [{}]",
                SpecVersion::all_strings().join(", ")
            ),
        )
    })
}

/// How much of `nodename_file` is read: a node name is at most 253 bytes.
pub const MAX_NODENAME_FILE_BYTES: u64 = 4096;

/// The start of a small text file (a node name): never more than a few KiB, whatever is there.
fn read_start(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_NODENAME_FILE_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

fn os_hostname() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = raw.trim().to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_withhold_string_values() {
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","mtu":"tok\"en-123"}"#)
            .expect_err("mtu is a number");
        assert!(!e.details.contains("en-123"), "{}", e.details);
        assert!(
            e.details
                .contains("invalid type: a string, expected u32 at line 1"),
            "{}",
            e.details
        );
        assert_eq!(withhold_strings("no strings here"), "no strings here");
        assert_eq!(withhold_strings(r#"x string "unterminated"#), "x a string");
    }

    #[test]
    fn etcdv3_settings_are_read_as_calico_writes_them() {
        let raw = br#"{"name":"k8s-pod-network","cniVersion":"0.3.1","type":"calico",
            "datastore_type":"etcdv3",
            "etcd_endpoints":"https://10.0.0.1:2379,https://10.0.0.2:2379",
            "etcd_ca_cert_file":"/etc/calico/etcd-ca","etcd_cert_file":"/etc/calico/etcd-cert",
            "etcd_key_file":"/etc/calico/etcd-key","ipam":{"type":"calico-ipam"}}"#;
        let c = NetConf::parse(raw).expect("etcdv3 config");
        assert_eq!(c.datastore_type, DatastoreType::Etcdv3);
        let e = c.etcd().expect("absolute paths");
        assert_eq!(
            e.endpoints.as_deref(),
            Some("https://10.0.0.1:2379,https://10.0.0.2:2379")
        );
        assert_eq!(e.ca_cert_file, Some(PathBuf::from("/etc/calico/etcd-ca")));
        assert_eq!(e.cert_file, Some(PathBuf::from("/etc/calico/etcd-cert")));
        assert_eq!(e.key_file, Some(PathBuf::from("/etc/calico/etcd-key")));
        // Go's unset strings.
        let c = NetConf::parse(
            br#"{"name":"n","cniVersion":"1.0.0","etcd_endpoints":"","etcd_key_file":null}"#,
        )
        .expect("unset");
        assert_eq!((c.etcd_endpoints, c.etcd_key_file), (None, None));
    }

    #[test]
    fn seed_config_parses_with_string_booleans() {
        let raw = br#"{"name":"k8s-pod-network","cniVersion":"0.3.1","type":"calico",
            "datastore_type":"kubernetes",
            "ipam":{"type":"calico-ipam","assign_ipv4":"true","assign_ipv6":"true",
                    "ipv4_pools":["10.244.0.0/16"],"ipv6_pools":["fd00:10:244::/48"]}}"#;
        let c = NetConf::parse(raw).expect("seed config");
        assert_eq!(c.datastore_type, DatastoreType::Kubernetes);
        assert!(c.ipam.assign_ipv4 && c.ipam.assign_ipv6);
        assert_eq!(c.ipam.ipv6_pools, ["fd00:10:244::/48"]);
        assert_eq!(c.spec_version().expect("0.3.1"), SpecVersion::V0_3_1);
        assert_eq!(c.handle_id("abc"), "k8s-pod-network.abc");
    }

    #[test]
    fn defaults_match_calico() {
        let c =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"calico-ipam"}}"#)
                .expect("minimal");
        assert!(c.ipam.assign_ipv4);
        assert!(!c.ipam.assign_ipv6);
        assert_eq!(c.datastore_type, DatastoreType::Local);
        assert_eq!(c.datastore_path(), Path::new(DEFAULT_DATASTORE_PATH));
    }

    #[test]
    fn booleans_accept_both_forms_and_nothing_else() {
        let ok = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","ipam":{"assign_ipv4":false,"assign_ipv6":"TRUE"}}"#)
            .expect("bools");
        assert!(!ok.ipam.assign_ipv4 && ok.ipam.assign_ipv6);
        let bad =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","ipam":{"assign_ipv6":"yes"}}"#)
                .expect_err("yes");
        assert_eq!(bad.code, 7);
        assert!(bad.details.contains("\"yes\""), "{}", bad.details);
    }

    #[test]
    fn ipam_in_process_defaults_and_can_be_turned_off() {
        let parse = |extra: &str| {
            NetConf::parse(format!(r#"{{"cniVersion":"1.0.0","name":"n"{extra}}}"#).as_bytes())
        };
        for unset in ["", r#","ipam_in_process":null"#] {
            let c = parse(unset).expect("unset");
            assert_eq!(c.ipam_in_process, DEFAULT_IPAM_IN_PROCESS, "{unset}");
        }
        for (raw, want) in [("false", false), (r#""false""#, false), ("true", true)] {
            let c = parse(&format!(r#","ipam_in_process":{raw}"#)).expect(raw);
            assert_eq!(c.ipam_in_process, want, "{raw}");
        }
        let bad = parse(r#","ipam_in_process":"exec""#).expect_err("exec");
        assert_eq!(bad.code, 7);
        assert!(bad.details.contains("ipam_in_process"), "{}", bad.details);
    }

    #[test]
    fn null_lists_and_unknown_keys_are_tolerated() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","capabilities":{"portMappings":true},
            "runtimeConfig":{"portMappings":[{"HostPort":80}]},"ipam":{"ipv4_pools":null}}"#,
        )
        .expect("tolerant");
        assert!(c.ipam.ipv4_pools.is_empty());
    }

    /// What Calico's test suite feeds the plugins: its Go `NetConf` passed through
    /// `json.Marshal`, so every unset field is written as `null`, `""` or `0`.
    const GO_MARSHALLED: &str = r#"{"cniVersion":"1.0.0","name":"calico-uts","type":"calico","mode":"","vxlan_mac_prefix":"","vxlan_vni":0,"ipam":{"Name":"","type":"calico-ipam","subnet":"","assign_ipv4":null,"assign_ipv6":null},"args":{"org.apache.mesos":{"network_info":{"name":"","labels":{}}}},"mtu":0,"num_queues":0,"nodename":"node-a","nodename_file":"","ipam_lock_file":"","nodename_file_optional":true,"datastore_type":"kubernetes","etcd_endpoints":"http://127.0.0.1:2379","etcd_discovery_srv":"","log_level":"debug","log_file_path":"","log_file_max_size":0,"log_file_max_age":0,"log_file_max_count":0,"policy":{"type":"k8s","k8s_api_root":"","k8s_auth_token":"","k8s_client_certificate":"","k8s_client_key":"","k8s_certificate_authority":""},"kubernetes":{"k8s_api_root":"","kubeconfig":"/etc/kubeconfig","node_name":""},"feature_control":{"ip_addrs_no_ipam":false,"floating_ips":false},"etcd_scheme":"","etcd_key_file":"","etcd_cert_file":"","etcd_ca_cert_file":"","container_settings":{"allow_ip_forwarding":false},"windows_disable_default_deny_all_policy":false,"RuntimeConfig":{"DNS":{}},"readiness_gates":null,"etcd_authority":"","hostname":""}"#;

    #[test]
    fn calicos_go_marshalled_netconf_means_the_defaults() {
        let c = NetConf::parse(GO_MARSHALLED.as_bytes()).expect("Calico's own netconf");
        assert!(c.ipam.assign_ipv4 && !c.ipam.assign_ipv6);
        assert!(c.ipam.ipv4_pools.is_empty() && c.readiness_gates.is_empty());
        assert_eq!(c.datastore_type, DatastoreType::Kubernetes);
        assert_eq!(c.node_name().expect("node"), "node-a");
        assert_eq!(c.ipam_lock_file(), Path::new(DEFAULT_IPAM_LOCK_FILE));
        assert_eq!(c.kubeconfig(), Some(PathBuf::from("/etc/kubeconfig")));
        assert_eq!(c.kubernetes.node_name, None);
        assert_eq!((c.log_file_path, c.nodename_file), (None, None));
        assert_eq!(c.mtu, Some(0));
        assert_eq!(c.policy.policy_type, "k8s");
        assert!(!c.feature_control.ip_addrs_no_ipam && !c.feature_control.floating_ips);
    }

    #[test]
    fn calico_api_group_as_calico_v3_32_writes_it() {
        let group = |json: &str| NetConf::parse(json.as_bytes()).map(|c| c.calico_api_group);
        assert_eq!(group("{}").expect("unset"), None);
        assert_eq!(group(r#"{"calico_api_group":null}"#).expect("null"), None);
        assert_eq!(
            group(r#"{"calico_api_group":""}"#).expect("Go's unset"),
            None
        );
        assert_eq!(
            group(r#"{"calico_api_group":"projectcalico.org/v3"}"#).expect("v3"),
            Some(ApiGroup::V3)
        );
        assert_eq!(
            group(r#"{"calico_api_group":"crd.projectcalico.org/v1"}"#).expect("v1"),
            Some(ApiGroup::V1),
            "the value Calico's installer writes by default"
        );
        let err = group(r#"{"calico_api_group":"projectcalico.org/v1"}"#).expect_err("typo");
        assert_eq!(err.code, 7, "{err:?}");
        assert!(err.details.contains("calico_api_group"), "{err:?}");
    }

    #[test]
    fn qps_and_burst_as_calico_reads_them() {
        let rate = |json: &str| NetConf::parse(json.as_bytes()).expect(json).client_rate();
        assert_eq!(rate("{}"), (Some(5.0), 100), "Calico's defaults");
        assert_eq!(
            rate(r#"{"qps":0,"burst":0}"#),
            (Some(5.0), 100),
            "0 is Go's unset"
        );
        assert_eq!(rate(r#"{"qps":50,"burst":7}"#), (Some(50.0), 7));
        assert_eq!(
            rate(r#"{"qps":-1}"#),
            (None, 100),
            "a negative QPS turns client-go's limiter off"
        );
    }

    #[test]
    fn null_is_unset_in_every_section() {
        let c = NetConf::parse(
            br#"{"cniVersion":null,"name":null,"type":null,"datastore_type":null,
            "datastore_path":null,"nodename":null,"nodename_file":null,"mtu":null,
            "log_level":null,"log_file_path":null,"ipam_lock_file":null,"prevResult":null,
            "readiness_gates":null,"cni.dev/valid-attachments":null,"qps":null,"burst":null,
            "ipam":{"type":null,"assign_ipv4":null,"assign_ipv6":null,"ipv4_pools":null,"ipv6_pools":null},
            "kubernetes":{"kubeconfig":null,"node_name":null,"cache_ttl_seconds":null},
            "policy":{"type":null},"container_settings":{"allow_ip_forwarding":null},
            "feature_control":{"ip_addrs_no_ipam":null,"floating_ips":null}}"#,
        )
        .expect("nulls");
        assert!(c.ipam.assign_ipv4 && !c.ipam.assign_ipv6);
        assert_eq!(c.datastore_type, DatastoreType::Local);
        assert_eq!(c.datastore_path(), Path::new(DEFAULT_DATASTORE_PATH));
        assert_eq!(c.cache_ttl(), DEFAULT_CACHE_TTL);
        assert_eq!(
            c.client_rate(),
            (Some(DEFAULT_CLIENT_QPS), DEFAULT_CLIENT_BURST)
        );
        assert!(!c.container_settings.allow_ip_forwarding);
        let sections = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","ipam":null,"kubernetes":null,"policy":null,"container_settings":null}"#,
        )
        .expect("null sections");
        assert!(sections.ipam.assign_ipv4 && sections.policy.policy_type.is_empty());
    }

    #[test]
    fn wrong_types_are_still_refused() {
        for (bad, says) in [
            (r#"{"ipam":{"assign_ipv4":1}}"#, "ipam.assign_ipv4"),
            (
                r#"{"ipam":{"ipv4_pools":"10.0.0.0/8"}}"#,
                "ipam.ipv4_pools: invalid type",
            ),
            (
                r#"{"ipam":{"ipv6_pools":["a",7]}}"#,
                "ipam.ipv6_pools[1]: invalid type",
            ),
            (
                r#"{"mtu":"1500"}"#,
                "mtu: invalid type: a string, expected u32",
            ),
            (r#"{"nodename":7}"#, "nodename: invalid type: integer `7`"),
            (
                r#"{"ipam":7}"#,
                "ipam: invalid type: integer `7`, expected a JSON object",
            ),
            (
                r#"{"ipam":["calico-ipam",true]}"#,
                "ipam: invalid type: sequence",
            ),
            (
                r#"{"kubernetes":{"cache_ttl_seconds":-1}}"#,
                "kubernetes.cache_ttl_seconds:",
            ),
            (r#"{"policy":["k8s"]}"#, "policy: invalid type: sequence"),
            (
                r#"{"qps":"5"}"#,
                "qps: invalid type: a string, expected i64",
            ),
            (
                r#"{"qps":2.5}"#,
                "qps: invalid type: floating point `2.5`, expected i64",
            ),
            (r#"{"burst":-1}"#, "burst: invalid value: integer `-1`"),
            (r#"{"burst":true}"#, "burst: invalid type: boolean"),
            (r#"{"burst":4294967296}"#, "burst: invalid value"),
            (
                r#"{"cni.dev/valid-attachments":[["c1","eth0"]]}"#,
                "cni.dev/valid-attachments[0]: invalid type: sequence",
            ),
            (r#"{"datastore_type":"etcd"}"#, "\"etcd\" is not supported"),
            (
                r#"{"readiness_gates":"http://localhost:9099/x"}"#,
                "readiness_gates must be a list of URLs",
            ),
            (r#"{"readiness_gates":[9099]}"#, "readiness_gates"),
            (
                r#"{"prevResult":[[],[{"address":"10.0.0.2/24"}]]}"#,
                "prevResult: invalid type: sequence, expected a JSON object",
            ),
            (
                r#"{"prevResult":"ok"}"#,
                "prevResult: invalid type: a string, expected a JSON object",
            ),
            (
                r#"{"prevResult":7}"#,
                "prevResult: invalid type: integer `7`, expected a JSON object",
            ),
        ] {
            let e = NetConf::parse(bad.as_bytes()).expect_err(bad);
            assert_eq!(e.code, 7, "{bad}: {e:?}");
            assert!(e.details.contains(says), "{bad}: {}", e.details);
        }
    }

    #[test]
    fn anything_but_an_object_is_code_6() {
        for (doc, says) in [
            (r#"["1.0.0","net"]"#, "sequence"),
            (r#""1.0.0""#, "string"),
            ("7", "integer"),
            ("true", "boolean"),
            ("null", "null"),
        ] {
            let e = NetConf::parse(doc.as_bytes()).expect_err(doc);
            assert_eq!(e.code, 6, "{doc}: {e:?}");
            assert!(
                e.details
                    .starts_with("the network configuration must be a JSON object: invalid type")
                    && e.details.contains(says),
                "{doc}: {}",
                e.details
            );
        }
    }

    #[test]
    fn broken_json_is_code_6_and_unknown_version_code_1() {
        assert_eq!(
            NetConf::parse(b"{\"cniVersion\":").expect_err("eof").code,
            6
        );
        let c = NetConf::parse(br#"{"cniVersion":"9.9.9","name":"n"}"#).expect("parses");
        let e = c.spec_version().expect_err("unknown");
        assert_eq!(e.code, 1);
        assert!(e.details.contains("9.9.9") && e.details.contains("1.1.0"));
    }
}
