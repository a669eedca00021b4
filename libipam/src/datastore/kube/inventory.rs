//! What `ipam check` reads from the cluster besides IPAM objects: the addresses live pods,
//! nodes and LoadBalancer services use, the nodes, and ClusterInformation's identity — as
//! calicoctl's checker reads them (pods through Calico's WorkloadEndpoint rules).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, ListParams};

use super::objects::{CLUSTER_INFORMATION, ClusterInformationSpec, Crd, SINGLETON};
use super::{Connection, DsResult};
use crate::alloc::audit::Liveness;

/// Calico's pod annotations (`cni-plugin` writes them, Felix and calicoctl read them).
const ANNOTATION_POD_IP: &str = "cni.projectcalico.org/podIP";
const ANNOTATION_POD_IPS: &str = "cni.projectcalico.org/podIPs";
/// calico-node's node annotations holding the node's tunnel and WireGuard addresses.
const NODE_ADDRESS_ANNOTATIONS: [&str; 5] = [
    "projectcalico.org/IPv4VXLANTunnelAddr",
    "projectcalico.org/IPv6VXLANTunnelAddr",
    "projectcalico.org/IPv4IPIPTunnelAddr",
    "projectcalico.org/IPv4WireguardInterfaceAddr",
    "projectcalico.org/IPv6WireguardInterfaceAddr",
];

/// ClusterInformation `default`, as a check report records it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    /// `spec.clusterGUID`.
    pub guid: String,
    /// `metadata.resourceVersion` (a report is current while it is unchanged).
    pub revision: String,
    /// `spec.datastoreReady` is false (`calicoctl datastore migrate lock`).
    pub datastore_locked: bool,
    /// `spec.clusterType`.
    pub cluster_type: String,
}

impl Connection {
    /// ClusterInformation `default`; empty facts when it does not exist.
    pub async fn cluster_facts(&self) -> DsResult<ClusterFacts> {
        let group = self.api_group().await?;
        let api: Api<Crd<ClusterInformationSpec>> =
            Api::all_with(self.client.clone(), &CLUSTER_INFORMATION.resource(group));
        let ci = api
            .get_opt(SINGLETON)
            .await
            .map_err(|e| self.error("read ClusterInformation default", e))?;
        let Some(ci) = ci else {
            return Ok(ClusterFacts::default());
        };
        let text = |k: &str| {
            ci.spec
                .extra
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        Ok(ClusterFacts {
            guid: text("clusterGUID"),
            revision: ci.metadata.resource_version.clone().unwrap_or_default(),
            datastore_locked: ci.spec.datastore_ready == Some(false),
            cluster_type: text("clusterType"),
        })
    }

    /// Every address a live pod, node or LoadBalancer service uses, with its owners, and the
    /// names of the nodes.
    pub async fn workload_liveness(&self) -> DsResult<Liveness> {
        let mut in_use: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        let mut nodes = BTreeSet::new();

        let node_api: Api<Node> = Api::all(self.client.clone());
        let node_list = node_api
            .list(&ListParams::default())
            .await
            .map_err(|e| self.error("list nodes", e))?;
        for n in node_list.items {
            let name = n.metadata.name.clone().unwrap_or_default();
            let annotations = n.metadata.annotations.unwrap_or_default();
            for key in NODE_ADDRESS_ANNOTATIONS {
                if let Some(ip) = annotations.get(key).and_then(|a| parse_ip(a)) {
                    in_use.entry(ip).or_default().push(format!("Node({name})"));
                }
            }
            nodes.insert(name);
        }

        let pod_api: Api<Pod> = Api::all(self.client.clone());
        let pods = pod_api
            .list(&ListParams::default())
            .await
            .map_err(|e| self.error("list pods", e))?;
        for p in pods.items {
            let owner = format!(
                "Workload({}/{})",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default()
            );
            for ip in pod_ips(&p) {
                in_use.entry(ip).or_default().push(owner.clone());
            }
        }

        let svc_api: Api<Service> = Api::all(self.client.clone());
        let services = svc_api
            .list(&ListParams::default())
            .await
            .map_err(|e| self.error("list services", e))?;
        for s in services.items {
            let is_lb = s.spec.as_ref().and_then(|sp| sp.type_.as_deref()) == Some("LoadBalancer");
            if !is_lb {
                continue;
            }
            let owner = format!(
                "Service({}/{})",
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default()
            );
            let ingress = s
                .status
                .and_then(|st| st.load_balancer)
                .and_then(|lb| lb.ingress)
                .unwrap_or_default();
            for ip in ingress
                .iter()
                .filter_map(|i| i.ip.as_deref().and_then(parse_ip))
            {
                in_use.entry(ip).or_default().push(owner.clone());
            }
        }
        Ok(Liveness::Listed { in_use, nodes })
    }
}

/// `10.0.0.1`, `10.0.0.1/32` or `fd00::1/128`.
fn parse_ip(s: &str) -> Option<IpAddr> {
    s.trim().split('/').next()?.parse().ok()
}

/// The addresses Calico counts for a pod (libcalico-go's WorkloadEndpoint conversion): none
/// for host-networked, unscheduled or finished pods; else `status.podIPs`, `status.podIP`,
/// then Calico's `podIPs` / `podIP` annotations.
fn pod_ips(p: &Pod) -> Vec<IpAddr> {
    let spec = p.spec.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true)
        || spec
            .and_then(|s| s.node_name.as_deref())
            .is_none_or(str::is_empty)
    {
        return Vec::new();
    }
    let annotations = p.metadata.annotations.clone().unwrap_or_default();
    let status = p.status.as_ref();
    // Being deleted, and Calico CNI has already taken the addresses away.
    if p.metadata.deletion_timestamp.is_some()
        && annotations
            .get(ANNOTATION_POD_IP)
            .is_some_and(|v| v.is_empty())
    {
        return Vec::new();
    }
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded" | "Completed")
    ) {
        return Vec::new();
    }
    let from_status: Vec<String> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().map(|i| i.ip.clone()).collect())
        .unwrap_or_default();
    let raw: Vec<String> = if !from_status.is_empty() {
        from_status
    } else if let Some(ip) = status
        .and_then(|s| s.pod_ip.clone())
        .filter(|i| !i.is_empty())
    {
        vec![ip]
    } else if let Some(ips) = annotations
        .get(ANNOTATION_POD_IPS)
        .filter(|v| !v.is_empty())
    {
        ips.split(',').map(str::to_string).collect()
    } else if let Some(ip) = annotations.get(ANNOTATION_POD_IP).filter(|v| !v.is_empty()) {
        vec![ip.clone()]
    } else {
        Vec::new()
    };
    raw.iter().filter_map(|s| parse_ip(s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn pod_addresses_follow_calicos_rules() {
        let annotated = pod(serde_json::json!({
            "metadata": {"name": "a", "namespace": "ns",
                "annotations": {"cni.projectcalico.org/podIPs": "10.0.0.1/32,fd00::1/128"}},
            "spec": {"nodeName": "n", "containers": []}
        }));
        assert_eq!(
            pod_ips(&annotated),
            vec![
                parse_ip("10.0.0.1").expect("ip"),
                parse_ip("fd00::1").expect("ip")
            ]
        );
        let status_wins = pod(serde_json::json!({
            "metadata": {"name": "a", "annotations": {"cni.projectcalico.org/podIP": "10.0.0.1/32"}},
            "spec": {"nodeName": "n", "containers": []},
            "status": {"podIPs": [{"ip": "10.0.0.9"}]}
        }));
        assert_eq!(
            pod_ips(&status_wins),
            vec![parse_ip("10.0.0.9").expect("ip")]
        );
        let finished = pod(serde_json::json!({
            "metadata": {"name": "a", "annotations": {"cni.projectcalico.org/podIP": "10.0.0.1/32"}},
            "spec": {"nodeName": "n", "containers": []},
            "status": {"phase": "Succeeded"}
        }));
        assert!(pod_ips(&finished).is_empty());
        let host_net = pod(serde_json::json!({
            "metadata": {"name": "a"},
            "spec": {"nodeName": "n", "hostNetwork": true, "containers": []},
            "status": {"podIP": "192.0.2.1"}
        }));
        assert!(pod_ips(&host_net).is_empty());
        let unscheduled = pod(serde_json::json!({
            "metadata": {"name": "a", "annotations": {"cni.projectcalico.org/podIP": "10.0.0.1/32"}},
            "spec": {"containers": []}
        }));
        assert!(pod_ips(&unscheduled).is_empty());
    }
}
