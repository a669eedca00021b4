//! Comparing IPAM with what uses it (calicoctl's `ipam check`): every allocation is matched
//! against the addresses live workloads and nodes hold. Pure: the caller gathers the IPAM
//! objects and the [`Liveness`] evidence; nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::datastore::Versioned;
use crate::model::{IpPool, IpamBlock, IpamHandle};

/// The handle Calico reserves Windows addresses under; such addresses are always in use.
pub const WINDOWS_RESERVED_HANDLE: &str = "windows-reserved-ipam-handle";

/// The allocation attribute naming the network namespace an ADD was given (recorded by
/// calico-ipam in the local datastore only, where no pod list exists).
pub const NETNS_ATTRIBUTE: &str = "netns";

/// What is known about the users of addresses.
#[derive(Debug, Clone, PartialEq)]
pub enum Liveness {
    /// The datastore lists workloads and nodes (Kubernetes): each address in use with its
    /// owners (`Workload(ns/pod)`, `Node(name)`, `Service(ns/name)`), and the nodes.
    Listed {
        in_use: BTreeMap<IpAddr, Vec<String>>,
        nodes: BTreeSet<String>,
    },
    /// No workload list (local datastore): an allocation is in use while the network namespace
    /// recorded with it exists. The set holds the recorded paths that exist.
    Netns { alive: BTreeSet<String> },
}

/// One allocated address, as calicoctl's report records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub block: IpNet,
    pub handle: Option<String>,
    pub sequence_number: Option<u64>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// The node that allocated it (attribute), else the block's host.
    pub node: Option<String>,
    pub kind: Option<String>,
    pub creation_timestamp: Option<String>,
    /// All attributes, for printing.
    pub attributes: BTreeMap<String, String>,
    /// `Some(true)`: in use; `Some(false)`: leaked; `None`: cannot be judged (local store,
    /// no network namespace recorded).
    pub in_use: Option<bool>,
    /// Allocated by a node other than the block's host.
    pub borrowed: bool,
    pub owners: Vec<String>,
}

/// A handle no allocation refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakedHandle {
    pub id: String,
    pub revision: String,
}

/// The result of [`audit`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Audit {
    /// Every allocated address (addresses cooling down after release are not allocations).
    pub allocations: Vec<Allocation>,
    /// In use by a workload or node, inside an enabled pool, but not allocated.
    pub in_use_not_allocated: Vec<(IpAddr, Vec<String>)>,
    /// In use by a workload or node, outside every enabled pool, not allocated.
    pub not_in_active_pool: Vec<(IpAddr, Vec<String>)>,
    /// Used by several owners at once.
    pub multiple_owners: Vec<(IpAddr, Vec<String>)>,
    /// Handles without allocations.
    pub leaked_handles: Vec<LeakedHandle>,
    /// Handles named by allocations that do not exist.
    pub missing_handles: Vec<String>,
    /// Blocks affine to a node that does not exist (only with a node list).
    pub blocks_of_missing_nodes: Vec<(IpNet, String)>,
    /// Number of workload and node addresses in use (with a workload list).
    pub in_use_count: usize,
}

impl Audit {
    /// Allocations whose user is gone.
    pub fn leaked(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.iter().filter(|a| a.in_use == Some(false))
    }

    /// Allocations that cannot be judged.
    pub fn unknown(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.iter().filter(|a| a.in_use.is_none())
    }

    /// Problems found: leaked addresses, unallocated or out-of-pool addresses in use, leaked
    /// handles, blocks of missing nodes. Missing handles are not counted: the consistency
    /// check ([`super::Ipam::check`]) reports each block holding addresses for one.
    pub fn problem_count(&self) -> usize {
        self.leaked().count()
            + self.in_use_not_allocated.len()
            + self.not_in_active_pool.len()
            + self.leaked_handles.len()
            + self.blocks_of_missing_nodes.len()
    }
}

/// Matches allocations in `blocks` against `liveness`.
pub fn audit(
    blocks: &[IpamBlock],
    handles: &[Versioned<IpamHandle>],
    pools: &[IpPool],
    liveness: &Liveness,
) -> Audit {
    let mut out = Audit::default();
    let mut used_handles: BTreeSet<String> = BTreeSet::new();
    for b in blocks {
        let host = b.host().map(str::to_string);
        for (ord, slot) in b.allocations.iter().enumerate() {
            let Some(attr) = slot.and_then(|i| b.attributes.get(i as usize)) else {
                continue;
            };
            if attr.released_at().is_some() {
                continue; // cooling down: already released
            }
            let Some(ip) = u32::try_from(ord).ok().and_then(|o| b.ip(o)) else {
                continue;
            };
            let attrs = attr.secondary.clone().unwrap_or_default();
            let get = |k: &str| attrs.get(k).filter(|v| !v.is_empty()).cloned();
            let handle = attr.handle().map(str::to_string);
            if let Some(h) = &handle {
                used_handles.insert(h.clone());
            }
            let node = get("node").or_else(|| host.clone());
            let mut a = Allocation {
                ip,
                block: b.cidr,
                handle: handle.clone(),
                sequence_number: b
                    .sequence_number_for_allocation
                    .get(&ord.to_string())
                    .copied(),
                pod: get("pod"),
                namespace: get("namespace"),
                borrowed: node != host,
                node,
                kind: get("type"),
                creation_timestamp: get("timestamp"),
                attributes: attrs.clone(),
                in_use: None,
                owners: Vec::new(),
            };
            if handle.as_deref() == Some(WINDOWS_RESERVED_HANDLE) {
                a.in_use = Some(true);
                a.owners.push("Reserved for Windows".into());
            } else {
                match liveness {
                    Liveness::Listed { in_use, .. } => match in_use.get(&ip) {
                        Some(owners) => {
                            a.in_use = Some(true);
                            a.owners = owners.clone();
                        }
                        None => a.in_use = Some(false),
                    },
                    Liveness::Netns { alive } => {
                        if let Some(ns) = get(NETNS_ATTRIBUTE) {
                            let live = alive.contains(&ns);
                            a.in_use = Some(live);
                            if live {
                                a.owners.push(match (&a.namespace, &a.pod) {
                                    (Some(n), Some(p)) => format!("Workload({n}/{p})"),
                                    _ => format!("Netns({ns})"),
                                });
                            }
                        }
                    }
                }
            }
            out.allocations.push(a);
        }
    }
    out.allocations.sort_by_key(|a| a.ip);

    if let Liveness::Listed { in_use, nodes } = liveness {
        out.in_use_count = in_use.len();
        let allocated: BTreeSet<IpAddr> = out.allocations.iter().map(|a| a.ip).collect();
        let active: Vec<IpNet> = pools
            .iter()
            .filter(|p| !p.spec.disabled)
            .filter_map(IpPool::cidr)
            .collect();
        for (ip, owners) in in_use {
            if owners.len() > 1 {
                out.multiple_owners.push((*ip, owners.clone()));
            }
            if allocated.contains(ip) {
                continue;
            }
            if active.iter().any(|c| c.contains(ip)) {
                out.in_use_not_allocated.push((*ip, owners.clone()));
            } else {
                out.not_in_active_pool.push((*ip, owners.clone()));
            }
        }
        for b in blocks {
            if let Some(host) = b.host()
                && !nodes.contains(host)
            {
                out.blocks_of_missing_nodes.push((b.cidr, host.to_string()));
            }
        }
    }

    let known: BTreeSet<&str> = handles.iter().map(|h| h.value.handle_id.as_str()).collect();
    for h in handles {
        if !used_handles.contains(&h.value.handle_id) {
            out.leaked_handles.push(LeakedHandle {
                id: h.value.handle_id.clone(),
                revision: h.revision.0.clone(),
            });
        }
    }
    out.missing_handles = used_handles
        .into_iter()
        .filter(|h| !known.contains(h.as_str()))
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::Revision;

    fn block(cidr: &str, host: &str) -> IpamBlock {
        IpamBlock::new(cidr.parse().expect("cidr"), Some(format!("host:{host}")), 0).expect("block")
    }

    fn assign(b: &mut IpamBlock, ip: &str, handle: &str, attrs: &[(&str, &str)]) {
        let attrs: BTreeMap<String, String> = attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        b.assign(ip.parse().expect("ip"), Some(handle), &attrs)
            .expect("assign");
    }

    fn handle(id: &str) -> Versioned<IpamHandle> {
        Versioned {
            value: IpamHandle::new(id),
            revision: Revision("7".into()),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn listed_workloads_find_leaks_unallocated_and_stale_objects() {
        let mut b = block("10.0.0.0/29", "node-a");
        assign(
            &mut b,
            "10.0.0.1",
            "h-live",
            &[("node", "node-a"), ("namespace", "ns"), ("pod", "live")],
        );
        assign(
            &mut b,
            "10.0.0.2",
            "h-gone",
            &[("node", "node-b"), ("namespace", "ns"), ("pod", "gone")],
        );
        let stale = block("10.0.0.8/29", "node-gone");
        let pools = vec![IpPool::new("p", "10.0.0.0/24")];
        let handles = vec![handle("h-live"), handle("h-orphan")];
        let liveness = Liveness::Listed {
            in_use: BTreeMap::from([
                (ip("10.0.0.1"), vec!["Workload(ns/live)".to_string()]),
                (ip("10.0.0.5"), vec!["Workload(ns/unallocated)".to_string()]),
                (ip("192.0.2.1"), vec!["Workload(ns/elsewhere)".to_string()]),
            ]),
            nodes: BTreeSet::from(["node-a".to_string(), "node-b".to_string()]),
        };
        let a = audit(&[b, stale], &handles, &pools, &liveness);
        let leaked: Vec<IpAddr> = a.leaked().map(|x| x.ip).collect();
        assert_eq!(leaked, [ip("10.0.0.2")]);
        let gone = a.leaked().next().expect("leak");
        assert_eq!(gone.pod.as_deref(), Some("gone"));
        assert!(gone.borrowed, "node-b allocated in node-a's block");
        assert_eq!(a.in_use_not_allocated[0].0, ip("10.0.0.5"));
        assert_eq!(a.not_in_active_pool[0].0, ip("192.0.2.1"));
        assert_eq!(a.leaked_handles[0].id, "h-orphan");
        assert_eq!(a.missing_handles, ["h-gone"]);
        assert_eq!(
            a.blocks_of_missing_nodes,
            [("10.0.0.8/29".parse().expect("net"), "node-gone".to_string())]
        );
        assert_eq!(a.problem_count(), 5);
        assert_eq!(a.allocations[0].sequence_number, Some(0));
    }

    #[test]
    fn netns_liveness_judges_only_recorded_namespaces() {
        let mut b = block("10.0.0.0/29", "node-a");
        assign(&mut b, "10.0.0.1", "h1", &[("netns", "/run/netns/alive")]);
        assign(&mut b, "10.0.0.2", "h2", &[("netns", "/run/netns/gone")]);
        assign(&mut b, "10.0.0.3", "h3", &[("node", "node-a")]);
        let handles = vec![handle("h1"), handle("h2"), handle("h3")];
        let liveness = Liveness::Netns {
            alive: BTreeSet::from(["/run/netns/alive".to_string()]),
        };
        let a = audit(&[b], &handles, &[], &liveness);
        let states: Vec<Option<bool>> = a.allocations.iter().map(|x| x.in_use).collect();
        assert_eq!(states, [Some(true), Some(false), None]);
        assert_eq!(a.problem_count(), 1);
        assert!(
            a.blocks_of_missing_nodes.is_empty(),
            "no node list, no verdict"
        );
    }
}
