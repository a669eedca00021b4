//! What the `calico` plugin asks of the Kubernetes API in `datastore_type: kubernetes` — the
//! only module of this crate that talks to it:
//!
//! - ClusterInformation `default` must say `datastoreReady: true` before ADD or DEL does
//!   anything (Calico's check; a positive answer is cached for the node cache's TTL);
//! - with `policy.type: k8s`, the pod's and its namespace's annotations choose pools
//!   (`cni.projectcalico.org/ipv4pools`, `ipv6pools`, `ipFamilies`) or addresses
//!   (`cni.projectcalico.org/ipAddrs`);
//! - with host-local IPAM, the Node's `spec.podCIDRs` stand in for `usePodCidr` and
//!   `usePodCidrIPv6` (see `host_local`);
//! - the pod's `cni.projectcalico.org/podIP`, `podIPs` and `containerID` annotations are how
//!   Felix and kube-controllers learn the pod's addresses: set on ADD and cleared on DEL by a
//!   strategic-merge PATCH of `pods/status`, as Calico does (Kubernetes datastore WEPs).
//!
//! Every failure names the API server; an unreachable or failing server is code 11.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use libipam::DatastoreError;
use libipam::cni::netconf::FeatureControl;
use libipam::cni::{CniError, NetConf, code};
use libipam::datastore::kube::{self as kdd, Connection};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What the API server's audit log shows for our requests.
pub const USER_AGENT: &str = concat!("calico-cni/", env!("CARGO_PKG_VERSION"), " (calico-rs)");

/// How long all of one verb's API calls together may take.
pub const API_TIMEOUT: Duration = Duration::from_secs(30);

pub const ANNOTATION_IPV4_POOLS: &str = "cni.projectcalico.org/ipv4pools";
pub const ANNOTATION_IPV6_POOLS: &str = "cni.projectcalico.org/ipv6pools";
pub const ANNOTATION_IP_FAMILIES: &str = "cni.projectcalico.org/ipFamilies";
pub const ANNOTATION_IP_ADDRS: &str = "cni.projectcalico.org/ipAddrs";
pub const ANNOTATION_IP_ADDRS_NO_IPAM: &str = "cni.projectcalico.org/ipAddrsNoIpam";
pub const ANNOTATION_POD_IP: &str = "cni.projectcalico.org/podIP";
pub const ANNOTATION_POD_IPS: &str = "cni.projectcalico.org/podIPs";
pub const ANNOTATION_CONTAINER_ID: &str = "cni.projectcalico.org/containerID";

/// How many times DEL re-reads the pod when clearing its annotations loses a race.
const CLEAR_ATTEMPTS: u32 = 3;

/// A pod's metadata as far as the plugin cares.
#[derive(Debug, Clone, Default)]
pub struct PodMeta {
    pub annotations: BTreeMap<String, String>,
    pub resource_version: Option<String>,
    pub uid: Option<String>,
}

/// A connection to the API server with the plugin's small cache.
pub struct K8s {
    conn: Connection,
    cache: CniCache,
}

fn api_error(e: DatastoreError) -> CniError {
    match e {
        DatastoreError::Unavailable(msg) => CniError::new(
            code::TRY_AGAIN_LATER,
            "the Kubernetes API server is unavailable",
            msg,
        ),
        other => CniError::new(
            code::INTERNAL,
            "Kubernetes API request failed",
            other.to_string(),
        ),
    }
}

/// Connects with the netconf's `kubernetes.kubeconfig` (else `KUBECONFIG`). Sends nothing.
pub async fn connect(conf: &NetConf) -> Result<K8s, CniError> {
    let kubeconfig = conf.kubeconfig().ok_or_else(|| {
        CniError::invalid_config(
            "datastore_type kubernetes needs kubernetes.kubeconfig in the network configuration",
        )
    })?;
    let (qps, burst) = conf.client_rate();
    let opts = kdd::ClientOptions {
        qps,
        burst,
        deadline: Some(tokio::time::Instant::now() + API_TIMEOUT - Duration::from_secs(1)),
        api_group: conf.api_group()?,
        ..kdd::ClientOptions::default()
    };
    let conn = kdd::connect_with(&kubeconfig, USER_AGENT, &opts)
        .await
        .map_err(|e| {
            // The kubeconfig may not be written yet (calico-node installs it): try again later.
            CniError::try_again(e.to_string())
        })?;
    let cache = CniCache::load(
        &conf.cache_dir().join("calico-cni.json"),
        &conn.server,
        conf.cache_ttl(),
    );
    Ok(K8s { conn, cache })
}

/// How long each of `calico -t`'s two requests may take (Calico: 2 s).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

async fn probe_connect(
    kubeconfig: &Path,
    api_group: Option<kdd::ApiGroup>,
) -> Result<Connection, String> {
    let opts = kdd::ClientOptions {
        api_group,
        ..kdd::ClientOptions::default()
    };
    kdd::connect_with(kubeconfig, USER_AGENT, &opts)
        .await
        .map_err(|e| e.to_string())
}

/// `calico -t`'s datastore half (Calico's `testConnection`): ClusterInformation `default`, read
/// afresh (never from the node cache), must say `datastoreReady: true`. The messages are
/// Calico's, with the server named.
/// `api_group`: the netconf's `calico_api_group` (else CALICO_API_GROUP), else discovery.
pub async fn probe_datastore(
    kubeconfig: &Path,
    api_group: Option<kdd::ApiGroup>,
) -> Result<(), String> {
    let conn = probe_connect(kubeconfig, api_group)
        .await
        .map_err(|e| format!("error getting ClusterInformation: {e}"))?;
    let ready = tokio::time::timeout(PROBE_TIMEOUT, conn.datastore_ready())
        .await
        .map_err(|_| {
            format!(
                "error getting ClusterInformation: no answer from {} within {PROBE_TIMEOUT:?}",
                conn.server
            )
        })?
        .map_err(|e| format!("error getting ClusterInformation: {e}"))?;
    match ready {
        Some(true) => Ok(()),
        Some(false) => Err("Calico is currently not ready to process requests".to_owned()),
        None => Err(format!(
            "error getting ClusterInformation: ClusterInformation default does not exist at {}",
            conn.server
        )),
    }
}

/// `calico -t`'s Kubernetes half: the API server answers `GET /version`.
pub async fn probe_server_version(kubeconfig: &Path) -> Result<(), String> {
    let unable = |e: String| format!("unable to connect to K8s server: {e}");
    let conn = probe_connect(kubeconfig, None).await.map_err(unable)?;
    tokio::time::timeout(PROBE_TIMEOUT, conn.client.apiserver_version())
        .await
        .map_err(|_| {
            unable(format!(
                "no answer from {} within {PROBE_TIMEOUT:?}",
                conn.server
            ))
        })?
        .map(drop)
        .map_err(|e| unable(conn.error("GET /version", e).to_string()))
}

impl K8s {
    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.conn.server
    }

    /// Calico refuses to work until ClusterInformation `default` says `datastoreReady: true`
    /// (set by calico-node / kube-controllers; false during a datastore migration).
    pub async fn check_ready(&mut self) -> Result<(), CniError> {
        if self.cache.ready() {
            return Ok(());
        }
        match self.conn.datastore_ready().await.map_err(api_error)? {
            Some(true) => {
                self.cache.set_ready();
                Ok(())
            }
            Some(false) => Err(CniError::try_again(format!(
                "Calico is currently not ready to process requests: ClusterInformation \
                 default has datastoreReady false at {}",
                self.conn.server
            ))),
            None => Err(CniError::try_again(format!(
                "Calico is currently not ready to process requests: ClusterInformation \
                 default does not exist at {} (calico-node creates it)",
                self.conn.server
            ))),
        }
    }

    /// The pod's metadata; `None` when it does not exist.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodMeta>, CniError> {
        let api: Api<Pod> = Api::namespaced(self.conn.client.clone(), namespace);
        let meta = api
            .get_metadata_opt(name)
            .await
            .map_err(|e| api_error(self.conn.error(&format!("read pod {namespace}/{name}"), e)))?;
        Ok(meta.map(|m| PodMeta {
            annotations: m.metadata.annotations.unwrap_or_default(),
            resource_version: m.metadata.resource_version,
            uid: m.metadata.uid,
        }))
    }

    /// The namespace's annotations (cached for the TTL); empty when it does not exist.
    pub async fn namespace_annotations(
        &mut self,
        namespace: &str,
    ) -> Result<BTreeMap<String, String>, CniError> {
        if let Some(a) = self.cache.namespace(namespace) {
            return Ok(a);
        }
        let api: Api<Namespace> = Api::all(self.conn.client.clone());
        let meta = api
            .get_metadata_opt(namespace)
            .await
            .map_err(|e| api_error(self.conn.error(&format!("read namespace {namespace}"), e)))?;
        let annotations = meta
            .and_then(|m| m.metadata.annotations)
            .unwrap_or_default();
        self.cache.set_namespace(namespace, &annotations);
        Ok(annotations)
    }

    /// The pod CIDRs of Node `name`: `spec.podCIDRs`, else the older single `spec.podCIDR`.
    pub async fn node_pod_cidrs(&self, name: &str) -> Result<Vec<String>, CniError> {
        let api: Api<Node> = Api::all(self.conn.client.clone());
        let node = api
            .get_opt(name)
            .await
            .map_err(|e| api_error(self.conn.error(&format!("read node {name}"), e)))?
            .ok_or_else(|| {
                CniError::invalid_config(format!(
                    "nodes \"{name}\" not found at {}: host-local's usePodCidr takes the pod \
                     CIDRs of the Kubernetes Node named by kubernetes.node_name or nodename",
                    self.conn.server
                ))
            })?;
        let spec = node.spec.unwrap_or_default();
        Ok(spec
            .pod_cidrs
            .filter(|c| !c.is_empty())
            .or_else(|| spec.pod_cidr.map(|c| vec![c]))
            .unwrap_or_default())
    }

    /// ADD: publishes the pod's addresses (Calico's WEP write in the Kubernetes datastore).
    pub async fn set_pod_addresses(
        &self,
        namespace: &str,
        name: &str,
        addresses: &[IpNet],
        container_id: &str,
    ) -> Result<(), CniError> {
        let (ip, ips) = pod_ip_annotations(addresses);
        let mut annotations = serde_json::Map::new();
        annotations.insert(ANNOTATION_POD_IP.into(), json!(ip));
        annotations.insert(ANNOTATION_POD_IPS.into(), json!(ips));
        if !container_id.is_empty() {
            annotations.insert(ANNOTATION_CONTAINER_ID.into(), json!(container_id));
        }
        let body = json!({"metadata": {"annotations": annotations}});
        self.patch_status(namespace, name, &body)
            .await
            .map_err(|e| match e {
                DatastoreError::NotFound => CniError::new(
                    code::UNKNOWN_CONTAINER,
                    "the pod does not exist",
                    format!(
                        "pod {namespace}/{name} not found at {} when publishing its addresses",
                        self.conn.server
                    ),
                ),
                other => api_error(other),
            })
    }

    /// DEL: clears `podIP` and `podIPs` (keeping `containerID`), unless the pod now belongs to
    /// another container (a DEL for a stale sandbox must not unpublish the live one). A
    /// missing pod is fine.
    ///
    /// One request when the pod names this container: a JSON patch whose `test` operation
    /// makes the server apply it only while `containerID` is `container_id` (the server
    /// evaluates it against the object it writes, so it is as exact as a resourceVersion
    /// guard). When the test fails (another container, or no `containerID` at all, as on a
    /// pod annotated by something else), the pod is read and patched as before: guarded by its
    /// resourceVersion and UID.
    pub async fn clear_pod_addresses(
        &self,
        namespace: &str,
        name: &str,
        container_id: &str,
    ) -> Result<(), CniError> {
        if !container_id.is_empty() {
            let pointer = |key: &str| {
                format!(
                    "/metadata/annotations/{}",
                    key.replace('~', "~0").replace('/', "~1")
                )
            };
            let ops = json!([
                {"op": "test", "path": pointer(ANNOTATION_CONTAINER_ID), "value": container_id},
                {"op": "add", "path": pointer(ANNOTATION_POD_IP), "value": ""},
                {"op": "add", "path": pointer(ANNOTATION_POD_IPS), "value": ""},
            ]);
            let path = format!(
                "/api/v1/namespaces/{}/pods/{}/status",
                path_segment(namespace),
                path_segment(name)
            );
            let req = http::Request::patch(path)
                .header(http::header::CONTENT_TYPE, "application/json-patch+json")
                .body(ops.to_string().into_bytes())
                .map_err(|e| CniError::try_again(format!("build the pod annotation patch: {e}")))?;
            match self.conn.client.request::<Pod>(req).await {
                Ok(_) => return Ok(()),
                // The test failed: the pod names another container or none.
                Err(kube::Error::Api(s)) if s.code == 422 => {}
                Err(e) => match self
                    .conn
                    .error(&format!("update pod {namespace}/{name} annotations"), e)
                {
                    DatastoreError::NotFound => return Ok(()),
                    other => return Err(api_error(other)),
                },
            }
        }
        for _ in 0..CLEAR_ATTEMPTS {
            let Some(pod) = self.pod(namespace, name).await? else {
                return Ok(());
            };
            let owner = pod
                .annotations
                .get(ANNOTATION_CONTAINER_ID)
                .map(String::as_str)
                .unwrap_or("");
            if !owner.is_empty() && owner != container_id {
                return Ok(());
            }
            let body = json!({"metadata": {
                "resourceVersion": pod.resource_version,
                "uid": pod.uid,
                "annotations": {ANNOTATION_POD_IP: "", ANNOTATION_POD_IPS: ""},
            }});
            match self.patch_status(namespace, name, &body).await {
                Ok(()) | Err(DatastoreError::NotFound) => return Ok(()),
                Err(DatastoreError::Conflict) => continue,
                Err(e) => return Err(api_error(e)),
            }
        }
        Err(CniError::try_again(format!(
            "pod {namespace}/{name} kept changing while its addresses were being cleared at {}",
            self.conn.server
        )))
    }

    /// Strategic-merge PATCH of `pods/status` (where Calico writes its annotations).
    async fn patch_status(
        &self,
        namespace: &str,
        name: &str,
        body: &Value,
    ) -> Result<(), DatastoreError> {
        let api: Api<Pod> = Api::namespaced(self.conn.client.clone(), namespace);
        api.patch_status(name, &PatchParams::default(), &Patch::Strategic(body))
            .await
            .map(|_| ())
            .map_err(|e| {
                self.conn
                    .error(&format!("update pod {namespace}/{name} annotations"), e)
            })
    }

    /// Writes the cache back (errors are ignored: it is an optimisation).
    pub fn save(&mut self) {
        self.cache.save();
    }
}

/// A path segment for a URL: Kubernetes names and namespaces are DNS labels and subdomains,
/// which need no escaping; anything else is percent-encoded.
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `podIP` = the first address, `podIPs` = all, comma-separated; always /32 and /128.
pub fn pod_ip_annotations(addresses: &[IpNet]) -> (String, String) {
    let host: Vec<String> = addresses
        .iter()
        .map(|n| IpNet::from(n.addr()).to_string())
        .collect();
    (host.first().cloned().unwrap_or_default(), host.join(","))
}

/// What the pod's (and its namespace's) annotations ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRequests {
    pub ipv4_pools: Option<Vec<String>>,
    pub ipv6_pools: Option<Vec<String>>,
    /// `(assign_ipv4, assign_ipv6)` from `ipFamilies`.
    pub families: Option<(bool, bool)>,
    /// Specific addresses from IPAM (`ipAddrs`), at most one per family.
    pub ip_addrs: Option<Vec<IpAddr>>,
    /// Specific addresses without IPAM (`ipAddrsNoIpam`), at most one per family.
    pub ip_addrs_no_ipam: Option<Vec<IpAddr>>,
    /// The pod interface's MAC (`hwAddr`).
    pub pod_mac: Option<[u8; 6]>,
    /// Where `ipv4_pools` and `ipv6_pools` came from (`the pod's cni.projectcalico.org/ipv4pools
    /// annotation`), for errors: calico-ipam only sees `ipam.ipv4_pools`.
    pub pools_from: [Option<String>; 2],
}

pub const ANNOTATION_FLOATING_IPS: &str = "cni.projectcalico.org/floatingIPs";
pub const ANNOTATION_HW_ADDR: &str = "cni.projectcalico.org/hwAddr";
pub const ANNOTATION_ALLOWED_SOURCE_PREFIXES: &str = "cni.projectcalico.org/allowedSourcePrefixes";

impl PodRequests {
    /// Reads Calico's annotations as Calico does: pool and family choices (calico-ipam only)
    /// from the namespace, overridden by the pod; addresses, floating IPs and the MAC from the
    /// pod only. Malformed values, features the netconf does not enable and combinations
    /// Calico refuses are configuration errors, worded as Calico words them.
    pub fn from_annotations(
        pod: &BTreeMap<String, String>,
        namespace: &BTreeMap<String, String>,
        ipam_type: &str,
        features: &FeatureControl,
    ) -> Result<PodRequests, CniError> {
        let calico_ipam = ipam_type == CALICO_IPAM;
        let pick = |key: &str| {
            pod.get(key)
                .filter(|v| !v.is_empty())
                .or_else(|| namespace.get(key))
                .filter(|v| !v.is_empty())
        };
        // Which object's annotation `pick` takes, for messages.
        let origin = |key: &str| {
            let on = if pod.get(key).is_some_and(|v| !v.is_empty()) {
                "pod's"
            } else {
                "namespace's"
            };
            format!("the {on} {key} annotation")
        };
        let list = |key: &str| -> Result<Option<Vec<String>>, CniError> {
            if !calico_ipam {
                return Ok(None);
            }
            pick(key)
                .map(|raw| {
                    serde_json::from_str::<Vec<String>>(raw).map_err(|e| {
                        CniError::invalid_config(format!(
                            "annotation {key} must be a JSON array of strings, not {raw:?}: {e}"
                        ))
                    })
                })
                .transpose()
        };
        let families = list(ANNOTATION_IP_FAMILIES)?
            .map(|fams| {
                let mut v4v6 = (false, false);
                for f in &fams {
                    match f.as_str() {
                        "IPv4" => v4v6.0 = true,
                        "IPv6" => v4v6.1 = true,
                        _ => {
                            return Err(CniError::invalid_config(format!(
                                "error parsing ipFamilies: {} (each entry is IPv4 or IPv6)",
                                pick(ANNOTATION_IP_FAMILIES).map_or("", String::as_str)
                            )));
                        }
                    }
                }
                Ok(v4v6)
            })
            .transpose()?;
        let own = |key: &str| pod.get(key).filter(|v| !v.is_empty());
        let (ip_addrs, ip_addrs_no_ipam) = match (
            own(ANNOTATION_IP_ADDRS),
            own(ANNOTATION_IP_ADDRS_NO_IPAM),
        ) {
            (Some(_), Some(_)) => {
                return Err(CniError::invalid_config(
                    "can't have both annotations: 'ipAddrs' and 'ipAddrsNoIpam' in use at the same time",
                ));
            }
            (Some(raw), None) => {
                if !calico_ipam {
                    return Err(CniError::invalid_config(format!(
                        "ipAddrs is not compatible with configured IPAM: {ipam_type}"
                    )));
                }
                (Some(one_per_family(raw, ANNOTATION_IP_ADDRS)?), None)
            }
            (None, Some(raw)) => {
                if !calico_ipam {
                    return Err(CniError::invalid_config(format!(
                        "ipAddrsNoIpam is not compatible with configured IPAM: {ipam_type}"
                    )));
                }
                if !features.ip_addrs_no_ipam {
                    return Err(CniError::invalid_config(
                        "requested feature is not enabled: ip_addrs_no_ipam",
                    ));
                }
                (
                    None,
                    Some(one_per_family(raw, ANNOTATION_IP_ADDRS_NO_IPAM)?),
                )
            }
            (None, None) => (None, None),
        };
        if let Some(raw) = own(ANNOTATION_FLOATING_IPS) {
            if !features.floating_ips {
                return Err(CniError::invalid_config(
                    "requested feature is not enabled: floating_ips",
                ));
            }
            // Felix reads the addresses from the pod; only their form is checked here.
            json_strings(raw)?;
        }
        if let Some(raw) = own(ANNOTATION_ALLOWED_SOURCE_PREFIXES) {
            // Felix reads the prefixes from the pod; Calico refuses the ADD if one is malformed.
            for prefix in json_strings(raw)? {
                prefix.parse::<IpNet>().map_err(|e| {
                    CniError::invalid_config(format!("failed to parse '{prefix}' as a CIDR: {e}"))
                })?;
            }
        }
        let pod_mac = own(ANNOTATION_HW_ADDR)
            .map(|raw| {
                parse_mac(raw).ok_or_else(|| {
                    CniError::invalid_config(format!(
                        "failed to parse MAC address {raw} provided via {ANNOTATION_HW_ADDR}: \
                         expected six hexadecimal bytes separated by ':' or '-'"
                    ))
                })
            })
            .transpose()?;
        let ipv4_pools = list(ANNOTATION_IPV4_POOLS)?;
        let ipv6_pools = list(ANNOTATION_IPV6_POOLS)?;
        let mut pools_from = [None, None];
        for (i, (key, pools, ipv6)) in [
            (ANNOTATION_IPV4_POOLS, &ipv4_pools, false),
            (ANNOTATION_IPV6_POOLS, &ipv6_pools, true),
        ]
        .into_iter()
        .enumerate()
        {
            let Some(pools) = pools else { continue };
            let from = origin(key);
            // Entries are pool names or CIDRs; a CIDR's family is known here, a name's only
            // to calico-ipam (see `name_pool_origin`).
            if let Some(cidr) = pools
                .iter()
                .filter_map(|p| p.trim().parse::<IpNet>().ok())
                .find(|c| c.addr().is_ipv6() != ipv6)
            {
                let (is, wants) = if ipv6 {
                    ("IPv4", "IPv6")
                } else {
                    ("IPv6", "IPv4")
                };
                return Err(CniError::invalid_config(format!(
                    "{from} lists {cidr}, an {is} CIDR: it takes {wants} pools (names or CIDRs) only"
                )));
            }
            pools_from[i] = Some(from);
        }
        Ok(PodRequests {
            ipv4_pools,
            ipv6_pools,
            families,
            ip_addrs,
            ip_addrs_no_ipam,
            pod_mac,
            pools_from,
        })
    }

    /// The IPAM plugin's stdin with the pool and family choices written into `ipam`
    /// (`ipv4_pools`, `ipv6_pools`, `assign_ipv4`/`assign_ipv6` as Calico's strings). Unchanged
    /// when there is nothing to override.
    pub fn rewrite_stdin(&self, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
        if self.ipv4_pools.is_none() && self.ipv6_pools.is_none() && self.families.is_none() {
            return Ok(stdin.to_vec());
        }
        let mut conf: Value =
            serde_json::from_slice(stdin).map_err(|e| CniError::decode(e.to_string()))?;
        let Some(ipam) = conf.get_mut("ipam").and_then(Value::as_object_mut) else {
            return Err(CniError::invalid_config(
                "pool annotations need an ipam section in the network configuration",
            ));
        };
        if let Some(p) = &self.ipv4_pools {
            ipam.insert("ipv4_pools".into(), json!(p));
        }
        if let Some(p) = &self.ipv6_pools {
            ipam.insert("ipv6_pools".into(), json!(p));
        }
        if let Some((v4, v6)) = self.families {
            ipam.insert("assign_ipv4".into(), json!(v4.to_string()));
            ipam.insert("assign_ipv6".into(), json!(v6.to_string()));
        }
        serde_json::to_vec(&conf).map_err(|e| CniError::internal(e.to_string()))
    }
}

const CALICO_IPAM: &str = "calico-ipam";

impl PodRequests {
    /// An IPAM error about `ipam.ipv4_pools` / `ipv6_pools` (calico-ipam's wording) that an
    /// annotation filled in, with the annotation named instead.
    pub fn name_pool_origin(&self, mut e: CniError) -> CniError {
        for (list, from) in ["ipv4_pools", "ipv6_pools"].iter().zip(&self.pools_from) {
            if let Some(from) = from {
                let named = format!("{from} (ipam.{list})");
                for text in [&mut e.msg, &mut e.details] {
                    if text.starts_with(list) {
                        *text = text.replacen(list, &named, 1);
                    }
                }
            }
        }
        e
    }
}

/// A JSON list of strings, or Calico's error.
fn json_strings(raw: &str) -> Result<Vec<String>, CniError> {
    serde_json::from_str(raw)
        .map_err(|e| CniError::invalid_config(format!("failed to parse '{raw}' as JSON: {e}")))
}

/// Calico's `validateAndExtractIPs`: a non-empty JSON list of addresses, at most one per family.
fn one_per_family(raw: &str, annotation: &str) -> Result<Vec<IpAddr>, CniError> {
    let strs = json_strings(raw).map_err(|e| {
        CniError::invalid_config(format!(
            "failed to parse IPs {raw} for annotation \"{annotation}\": {}",
            e.details
        ))
    })?;
    if strs.is_empty() {
        return Err(CniError::invalid_config(format!(
            "annotation \"{annotation}\" specified but empty"
        )));
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for s in &strs {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| CniError::invalid_config(format!("invalid IP format: {s}")))?;
        if ips.iter().any(|have| have.is_ipv4() == ip.is_ipv4()) {
            let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(CniError::invalid_config(format!(
                "cannot have more than one {family} address for \"{annotation}\" annotation"
            )));
        }
        ips.push(ip);
    }
    Ok(ips)
}

/// `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`.
fn parse_mac(raw: &str) -> Option<[u8; 6]> {
    let sep = if raw.contains('-') { '-' } else { ':' };
    let mut mac = [0u8; 6];
    let mut parts = raw.split(sep);
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The plugin's own small cache: a positive ClusterInformation check and namespace
/// annotations, each served for the TTL. Rewritten whole (temporary file + rename), read
/// without a lock; losing an update to a concurrent plugin only costs a request.
struct CniCache {
    path: PathBuf,
    ttl: u64,
    file: CniCacheFile,
    dirty: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CniCacheFile {
    server: String,
    #[serde(default)]
    ready_at: u64,
    #[serde(default)]
    namespaces: BTreeMap<String, (u64, BTreeMap<String, String>)>,
}

fn now_ms() -> u64 {
    libipam::model::time::now_nanos() / 1_000_000
}

/// The largest cache file read; a larger one was not written by calico-cni and is ignored
/// (the cache starts empty).
pub const MAX_CACHE_FILE_BYTES: u64 = 16 << 20;

impl CniCache {
    fn load(path: &Path, server: &str, ttl: Duration) -> CniCache {
        let file = fs::File::open(path)
            .ok()
            .and_then(|f| libipam::cni::bounds::read_at_most(f, MAX_CACHE_FILE_BYTES).ok()?)
            .and_then(|d| serde_json::from_slice::<CniCacheFile>(&d).ok())
            .filter(|f| f.server == server)
            .unwrap_or_else(|| CniCacheFile {
                server: server.to_owned(),
                ..CniCacheFile::default()
            });
        CniCache {
            path: path.to_owned(),
            ttl: ttl.as_millis() as u64,
            file,
            dirty: false,
        }
    }

    fn fresh(&self, at: u64) -> bool {
        now_ms().checked_sub(at).is_some_and(|age| age < self.ttl)
    }

    fn ready(&self) -> bool {
        self.fresh(self.file.ready_at)
    }

    fn set_ready(&mut self) {
        self.file.ready_at = now_ms();
        self.dirty = true;
    }

    fn namespace(&self, ns: &str) -> Option<BTreeMap<String, String>> {
        let (at, a) = self.file.namespaces.get(ns)?;
        self.fresh(*at).then(|| a.clone())
    }

    fn set_namespace(&mut self, ns: &str, annotations: &BTreeMap<String, String>) {
        let now = now_ms();
        let ttl = self.ttl;
        self.file
            .namespaces
            .retain(|_, (at, _)| now.saturating_sub(*at) < ttl);
        self.file
            .namespaces
            .insert(ns.to_owned(), (now, annotations.clone()));
        self.dirty = true;
    }

    fn save(&mut self) {
        if !self.dirty || self.ttl == 0 {
            return;
        }
        let Ok(data) = serde_json::to_vec(&self.file) else {
            return;
        };
        let Some(dir) = self.path.parent() else {
            return;
        };
        let tmp = dir.join(format!(".calico-cni.{}.tmp", std::process::id()));
        let written = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .and_then(|()| {
                let mut f = fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&data)
            })
            .and_then(|()| fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        } else {
            self.dirty = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn read(
        pod: &BTreeMap<String, String>,
        ns: &BTreeMap<String, String>,
    ) -> Result<PodRequests, CniError> {
        PodRequests::from_annotations(pod, ns, "calico-ipam", &FeatureControl::default())
    }

    #[test]
    fn pod_annotations_win_over_namespace() {
        let ns = map(&[
            (ANNOTATION_IPV4_POOLS, r#"["ns-v4"]"#),
            (ANNOTATION_IPV6_POOLS, r#"["ns-v6"]"#),
        ]);
        let pod = map(&[(ANNOTATION_IPV4_POOLS, r#"["10.9.0.0/16"]"#)]);
        let o = read(&pod, &ns).expect("valid");
        assert_eq!(o.ipv4_pools, Some(vec!["10.9.0.0/16".to_string()]));
        assert_eq!(o.ipv6_pools, Some(vec!["ns-v6".to_string()]));
        let stdin = br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"calico-ipam","assign_ipv6":"true"}}"#;
        let out: Value =
            serde_json::from_slice(&o.rewrite_stdin(stdin).expect("rewrite")).expect("json");
        assert_eq!(out["ipam"]["ipv4_pools"], json!(["10.9.0.0/16"]));
        assert_eq!(out["ipam"]["ipv6_pools"], json!(["ns-v6"]));
        assert_eq!(out["ipam"]["assign_ipv6"], "true");
        let none = PodRequests::default();
        assert_eq!(none.rewrite_stdin(stdin).expect("same"), stdin.to_vec());
    }

    /// Issue 10 item 8: a pool annotation of the wrong family names the annotation, not
    /// `ipam.ipv4_pools`.
    #[test]
    fn a_pool_cidr_of_the_wrong_family_names_its_annotation() {
        let ns = map(&[(ANNOTATION_IPV6_POOLS, r#"["10.9.0.0/16"]"#)]);
        let pod = map(&[(ANNOTATION_IPV4_POOLS, r#"["v4-pool", "fd00:10:244::/48"]"#)]);
        let e = read(&pod, &ns).expect_err("IPv6 CIDR in ipv4pools");
        assert_eq!(e.code, 7);
        assert_eq!(
            e.details,
            "the pod's cni.projectcalico.org/ipv4pools annotation lists fd00:10:244::/48, an \
             IPv6 CIDR: it takes IPv4 pools (names or CIDRs) only"
        );
        let e = read(&BTreeMap::new(), &ns).expect_err("IPv4 CIDR in ipv6pools");
        assert_eq!(
            e.details,
            "the namespace's cni.projectcalico.org/ipv6pools annotation lists 10.9.0.0/16, an \
             IPv4 CIDR: it takes IPv6 pools (names or CIDRs) only"
        );
        // A pool name's family is calico-ipam's to find; its error names the annotation.
        let o = read(
            &map(&[(ANNOTATION_IPV4_POOLS, r#"["v6-pool"]"#)]),
            &BTreeMap::new(),
        )
        .expect("names pass");
        let e = o.name_pool_origin(CniError::invalid_config(
            "ipv4_pools contains fd00::/48 which is an IPv6 pool",
        ));
        assert_eq!(
            e.details,
            "the pod's cni.projectcalico.org/ipv4pools annotation (ipam.ipv4_pools) contains \
             fd00::/48 which is an IPv6 pool"
        );
        let untouched = PodRequests::default()
            .name_pool_origin(CniError::invalid_config("ipv4_pools contains x"));
        assert_eq!(untouched.details, "ipv4_pools contains x");
    }

    #[test]
    fn ip_addrs_and_families() {
        let pod = map(&[
            (ANNOTATION_IP_ADDRS, r#"["10.0.0.5","fd00::5"]"#),
            (ANNOTATION_IP_FAMILIES, r#"["IPv6"]"#),
        ]);
        let o = read(&pod, &BTreeMap::new()).expect("valid");
        assert_eq!(
            o.ip_addrs,
            Some(vec![
                "10.0.0.5".parse().expect("ip"),
                "fd00::5".parse().expect("ip")
            ])
        );
        assert_eq!(o.families, Some((false, true)));
        for bad in [
            r#"["10.0.0.5","10.0.0.6"]"#,
            r#"[]"#,
            r#"["nope"]"#,
            r#"10.0.0.5"#,
        ] {
            let pod = map(&[(ANNOTATION_IP_ADDRS, bad)]);
            assert_eq!(read(&pod, &BTreeMap::new()).expect_err(bad).code, 7);
        }
        let bad_pools = map(&[(ANNOTATION_IPV4_POOLS, "pool-a")]);
        assert_eq!(
            read(&BTreeMap::new(), &bad_pools)
                .expect_err("not json")
                .code,
            7
        );
    }

    #[test]
    fn calicos_checks_and_messages() {
        let say = |pod: &[(&str, &str)], ipam: &str, features: FeatureControl| {
            PodRequests::from_annotations(&map(pod), &BTreeMap::new(), ipam, &features)
                .map(|_| ())
                .map_err(|e| e.details)
        };
        let off = FeatureControl::default;
        let on = || FeatureControl {
            ip_addrs_no_ipam: true,
            floating_ips: true,
        };
        for (pod, ipam, features, says) in [
            (
                vec![
                    (ANNOTATION_IP_ADDRS, r#"["10.0.0.1"]"#),
                    (ANNOTATION_IP_ADDRS_NO_IPAM, r#"["10.0.0.2"]"#),
                ],
                "calico-ipam",
                on(),
                "can't have both annotations: 'ipAddrs' and 'ipAddrsNoIpam' in use at the same time",
            ),
            (
                vec![(ANNOTATION_IP_ADDRS, r#"["10.0.0.1"]"#)],
                "host-local",
                on(),
                "ipAddrs is not compatible with configured IPAM: host-local",
            ),
            (
                vec![(ANNOTATION_IP_ADDRS_NO_IPAM, r#"["10.0.0.1"]"#)],
                "calico-ipam",
                off(),
                "requested feature is not enabled: ip_addrs_no_ipam",
            ),
            (
                vec![(ANNOTATION_IP_ADDRS_NO_IPAM, r#"["10.0.0.1"]"#)],
                "host-local",
                on(),
                "ipAddrsNoIpam is not compatible with configured IPAM: host-local",
            ),
            (
                vec![(ANNOTATION_IP_ADDRS_NO_IPAM, r#"["10.0.0.1","10.0.0.2"]"#)],
                "calico-ipam",
                on(),
                "cannot have more than one IPv4 address for \"cni.projectcalico.org/ipAddrsNoIpam\" annotation",
            ),
            (
                vec![(ANNOTATION_IP_ADDRS, "[]")],
                "calico-ipam",
                on(),
                "annotation \"cni.projectcalico.org/ipAddrs\" specified but empty",
            ),
            (
                vec![(ANNOTATION_IP_ADDRS, r#"["nope"]"#)],
                "calico-ipam",
                on(),
                "invalid IP format: nope",
            ),
            (
                vec![(ANNOTATION_FLOATING_IPS, r#"["1.1.1.1"]"#)],
                "calico-ipam",
                off(),
                "requested feature is not enabled: floating_ips",
            ),
            (
                vec![(ANNOTATION_FLOATING_IPS, "1.1.1.1")],
                "calico-ipam",
                on(),
                "failed to parse '1.1.1.1' as JSON",
            ),
            (
                vec![(ANNOTATION_HW_ADDR, "invalid MAC address")],
                "host-local",
                off(),
                "failed to parse MAC address invalid MAC address provided via cni.projectcalico.org/hwAddr",
            ),
            (
                vec![(ANNOTATION_IP_FAMILIES, r#"["IPv5"]"#)],
                "calico-ipam",
                off(),
                "error parsing ipFamilies: [\"IPv5\"]",
            ),
            (
                vec![(
                    ANNOTATION_ALLOWED_SOURCE_PREFIXES,
                    r#"["8.8.8.8/32","1.1.1.0"]"#,
                )],
                "host-local",
                off(),
                "failed to parse '1.1.1.0' as a CIDR",
            ),
            (
                vec![(ANNOTATION_ALLOWED_SOURCE_PREFIXES, "8.8.8.8/32")],
                "host-local",
                off(),
                "failed to parse '8.8.8.8/32' as JSON",
            ),
        ] {
            let got = say(&pod, ipam, features).expect_err(says);
            assert!(got.starts_with(says), "{got:?} should start with {says:?}");
        }
        let ok = PodRequests::from_annotations(
            &map(&[
                (ANNOTATION_IP_ADDRS_NO_IPAM, r#"["10.0.0.1"]"#),
                (ANNOTATION_FLOATING_IPS, r#"["1.1.1.1"]"#),
                (ANNOTATION_HW_ADDR, "ca:fe:ca:fe:ca:fe"),
                (
                    ANNOTATION_ALLOWED_SOURCE_PREFIXES,
                    r#"["8.8.8.8/32","1.1.1.0/24"]"#,
                ),
            ]),
            &BTreeMap::new(),
            "calico-ipam",
            &on(),
        )
        .expect("enabled");
        assert_eq!(
            ok.ip_addrs_no_ipam,
            Some(vec!["10.0.0.1".parse().expect("ip")])
        );
        assert_eq!(ok.pod_mac, Some([0xca, 0xfe, 0xca, 0xfe, 0xca, 0xfe]));
        // Pools and families are calico-ipam's: another IPAM ignores them, as in Calico.
        let hl = PodRequests::from_annotations(
            &map(&[
                (ANNOTATION_IPV4_POOLS, r#"["p"]"#),
                (ANNOTATION_IP_FAMILIES, "junk"),
            ]),
            &BTreeMap::new(),
            "host-local",
            &off(),
        )
        .expect("ignored");
        assert_eq!(hl, PodRequests::default());
        assert_eq!(
            parse_mac("CA-FE-00-00-00-01"),
            Some([0xca, 0xfe, 0, 0, 0, 1])
        );
        assert_eq!(parse_mac("ca:fe:00:00:00"), None);
        assert_eq!(parse_mac("ca:fe:00:00:00:01:02"), None);
    }

    #[test]
    fn pod_ip_annotation_values() {
        let (ip, ips) = pod_ip_annotations(&[
            "10.244.104.65/26".parse().expect("v4"),
            "fd00:10:244::1c1/122".parse().expect("v6"),
        ]);
        assert_eq!(ip, "10.244.104.65/32");
        assert_eq!(ips, "10.244.104.65/32,fd00:10:244::1c1/128");
    }

    #[test]
    fn cache_serves_within_ttl_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c").join("calico-cni.json");
        let mut c = CniCache::load(&path, "https://s", Duration::from_secs(60));
        assert!(!c.ready());
        c.set_ready();
        c.set_namespace("default", &map(&[("a", "b")]));
        c.save();
        let c = CniCache::load(&path, "https://s", Duration::from_secs(60));
        assert!(c.ready());
        assert_eq!(c.namespace("default"), Some(map(&[("a", "b")])));
        assert!(!CniCache::load(&path, "https://other", Duration::from_secs(60)).ready());
        assert!(!CniCache::load(&path, "https://s", Duration::ZERO).ready());
    }
}
