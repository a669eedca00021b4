//! The CNI wire surfaces: what a container runtime hands the two plugins (environment and
//! stdin), what an IPAM plugin prints back, and the pod annotations calico-cni reads.
//!
//! The plugin surfaces take `KEY=VALUE` lines (the `CNI_*` environment), an empty line, then
//! stdin; an input without an empty line is all stdin, with a valid ADD environment.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use calico_cni::dataplane::{DEFAULT_HOST_PREFIX, host_veth_name, host_veth_name_for_container};
use calico_cni::ipam_exec::find_plugin;
use calico_cni::k8s::PodRequests;
use calico_ipam::plugin::CalicoIpam;
use libipam::Datastore;
use libipam::cni::netconf::{DatastoreType, FeatureControl};
use libipam::cni::skel::{self, Outcome, Plugin, Request};
use libipam::cni::{CniArgs, CniError, CniResult, Env, NetConf, SpecVersion};
use libipam::datastore::local::LocalStore;
use libipam::model::IpPool;
use serde_json::Value;

use super::{Scratch, Surface};
use crate::engine::signature;

const CNI_TOKENS: &[&str] = &[
    "CNI_COMMAND=",
    "CNI_CONTAINERID=",
    "CNI_NETNS=",
    "CNI_IFNAME=",
    "CNI_PATH=",
    "CNI_ARGS=",
    "ADD",
    "DEL",
    "CHECK",
    "VERSION",
    "STATUS",
    "GC",
    "K8S_POD_NAMESPACE=",
    "K8S_POD_NAME=",
    "K8S_POD_INFRA_CONTAINER_ID=",
    "IgnoreUnknown=1",
    "IP=",
    ";",
    "\"cniVersion\"",
    "\"name\"",
    "\"type\"",
    "\"ipam\"",
    "\"calico-ipam\"",
    "\"host-local\"",
    "\"calico\"",
    "\"assign_ipv4\"",
    "\"assign_ipv6\"",
    "\"ipv4_pools\"",
    "\"ipv6_pools\"",
    "\"datastore_type\"",
    "\"kubernetes\"",
    "\"local\"",
    "\"nodename\"",
    "\"mtu\"",
    "\"policy\"",
    "\"k8s\"",
    "\"prevResult\"",
    "\"interfaces\"",
    "\"ips\"",
    "\"routes\"",
    "\"address\"",
    "\"gateway\"",
    "\"sandbox\"",
    "\"cni.dev/valid-attachments\"",
    "\"containerID\"",
    "\"ifname\"",
    "\"container_settings\"",
    "\"allow_ip_forwarding\"",
    "\"cache_ttl_seconds\"",
    "\"0.3.0\"",
    "\"0.3.1\"",
    "\"0.4.0\"",
    "\"1.0.0\"",
    "\"1.1.0\"",
    "\"true\"",
    "\"false\"",
    "10.244.0.0/16",
    "fd00:10:244::/48",
    "10.244.1.5",
    "fd00:10:244::5",
    "10.244.1.5/26",
    "0.0.0.0/0",
    "::/0",
    "/run/netns/pod",
    "eth0",
    "..",
];

/// A valid ADD environment, used when an input has no environment header.
const DEFAULT_ENV: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "fuzz-container"),
    ("CNI_NETNS", "/run/netns/fuzz"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_PATH", "/nonexistent/cni/bin"),
    (
        "CNI_ARGS",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=fuzz",
    ),
];

/// Splits an input into its environment and stdin.
fn split_env(input: &[u8]) -> (HashMap<String, String>, &[u8]) {
    let Some(at) = input.windows(2).position(|w| w == b"\n\n") else {
        let env = DEFAULT_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        return (env, input);
    };
    (env_lines(&input[..at]), &input[at + 2..])
}

/// `KEY=VALUE` lines (the first `=` splits; later lines win), as a process environment holds them.
fn env_lines(text: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(text)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The oracle every plugin outcome must satisfy: success prints a result (or nothing), failure
/// prints a CNI error object with a numeric code and a message.
fn check_outcome(o: &Outcome) -> String {
    if o.exit_code == 0 {
        if !o.stdout.is_empty() {
            let v: Value = serde_json::from_str(&o.stdout)
                .unwrap_or_else(|e| panic!("success printed non-JSON ({e}): {}", o.stdout));
            assert!(
                v.get("cniVersion").is_some_and(Value::is_string),
                "success output without cniVersion: {}",
                o.stdout
            );
        }
        return "ok".into();
    }
    let v: Value = serde_json::from_str(&o.stdout)
        .unwrap_or_else(|e| panic!("failure printed non-JSON ({e}): {}", o.stdout));
    let code = v
        .get("code")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("error without a numeric code: {}", o.stdout));
    let msg = v
        .get("msg")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("error without a message: {}", o.stdout));
    assert!(!msg.is_empty(), "error with an empty message: {}", o.stdout);
    signature(&code.to_string(), msg)
}

/// calico-ipam's real verbs, confined to a scratch local store: whatever the netconf says, the
/// datastore, lock, node-name file and kubeconfig are replaced by scratch paths (a fuzzed
/// `datastore_path` must not write around the host). Everything else is as the binary runs it.
struct ConfinedIpam {
    scratch: Scratch,
}

impl ConfinedIpam {
    fn store_dir(&self) -> PathBuf {
        self.scratch.0.join("store")
    }

    /// A fresh store holding the seed pools and a tiny pool that fills up.
    fn reset(&self) {
        let _ = std::fs::remove_dir_all(self.store_dir());
        let store = match LocalStore::open(self.store_dir()) {
            Ok(s) => s,
            Err(e) => panic!("scratch store: {e}"),
        };
        let pools = [
            pool("ipv4-pool", "10.244.0.0/16", 26),
            pool("ipv6-pool", "fd00:10:244::/48", 122),
            pool("tiny-v4", "10.99.0.0/30", 30),
        ];
        let rt = runtime();
        for p in &pools {
            if let Err(e) = rt.block_on(store.apply_pool(p)) {
                panic!("scratch store: {e}");
            }
        }
    }

    fn confine(&self, req: &Request) -> Request {
        let mut conf = req.conf.clone();
        conf.datastore_type = DatastoreType::Local;
        conf.datastore_path = Some(self.store_dir());
        conf.ipam_lock_file = Some(self.scratch.0.join("ipam.lock"));
        conf.nodename_file = Some(self.scratch.0.join("nodename"));
        conf.kubernetes.kubeconfig = Some(self.scratch.0.join("no-kubeconfig"));
        conf.log_file_path = None;
        Request {
            env: req.env.clone(),
            stdin: req.stdin.clone(),
            conf,
            version: req.version,
        }
    }
}

fn pool(name: &str, cidr: &str, block: u32) -> IpPool {
    let mut p = IpPool::new(name, cidr);
    p.spec.block_size = Some(block);
    p
}

/// A current_thread runtime for the datastore calls the harness makes itself.
pub(super) fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => panic!("cannot start a runtime: {e}"),
    }
}

impl Plugin for ConfinedIpam {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        CalicoIpam::IN_PROCESS.add(&self.confine(req))
    }
    fn del(&self, req: &Request) -> Result<(), CniError> {
        CalicoIpam::IN_PROCESS.del(&self.confine(req))
    }
    fn check(&self, req: &Request) -> Result<(), CniError> {
        CalicoIpam::IN_PROCESS.check(&self.confine(req))
    }
    fn status(&self, req: &Request) -> Result<(), CniError> {
        CalicoIpam::IN_PROCESS.status(&self.confine(req))
    }
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        CalicoIpam::IN_PROCESS.gc(&self.confine(req))
    }
}

pub const IPAM_PLUGIN: Surface = Surface {
    name: "ipam-plugin",
    about: "calico-ipam's CNI verbs: CNI_* environment + netconf on stdin, through skel::run and \
            the real verbs on a scratch local store",
    tokens: CNI_TOKENS,
    make: || {
        let plugin = ConfinedIpam {
            scratch: Scratch::new("ipam-plugin"),
        };
        plugin.reset();
        let mut runs = 0u32;
        Box::new(move |input| {
            // A fresh store now and then, so pools do not stay full for the rest of the run.
            runs += 1;
            if runs.is_multiple_of(500) {
                plugin.reset();
            }
            let (env, stdin) = split_env(input);
            check_outcome(&skel::run(&plugin, |k| env.get(k).cloned(), stdin))
        })
    },
};

/// calico-cni's checks that run before it touches IPAM or the kernel: the IPAM plugin lookup,
/// the host-side veth name, CHECK's `prevResult`, and the stdin it passes on.
struct CniProbe;

impl CniProbe {
    fn common(req: &Request) -> Result<(), CniError> {
        if !req.conf.ipam.ipam_type.is_empty() {
            // Only stats files in CNI_PATH; an error is an outcome like any other.
            let _ = find_plugin(&req.conf.ipam.ipam_type, &req.env.path);
        }
        let host = match req.env.args.pod() {
            Some((namespace, pod)) => host_veth_name(DEFAULT_HOST_PREFIX, namespace, pod),
            None => host_veth_name_for_container(&req.env.container_id),
        };
        assert!(
            host.len() <= 15,
            "host veth name {host:?} is longer than 15 bytes"
        );
        PodRequests::default().rewrite_stdin(&req.stdin)?;
        Ok(())
    }
}

impl Plugin for CniProbe {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        Self::common(req)?;
        Ok(CniResult::default())
    }
    fn del(&self, req: &Request) -> Result<(), CniError> {
        Self::common(req)
    }
    fn check(&self, req: &Request) -> Result<(), CniError> {
        Self::common(req)?;
        let prev = req
            .conf
            .prev_result
            .as_ref()
            .ok_or_else(|| CniError::invalid_config("CHECK needs prevResult"))?;
        CniResult::from_value(&serde_json::Value::Object(prev.clone()))
            .map(|_| ())
            .map_err(CniError::invalid_config)
    }
    fn status(&self, req: &Request) -> Result<(), CniError> {
        Self::common(req)
    }
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        Self::common(req)
    }
}

pub const CNI_PLUGIN: Surface = Surface {
    name: "cni-plugin",
    about: "calico-cni: CNI_* environment + netconf (with prevResult) on stdin, through \
            skel::run and the plugin's checks that need neither IPAM nor the kernel",
    tokens: CNI_TOKENS,
    make: || {
        Box::new(|input| {
            let (env, stdin) = split_env(input);
            check_outcome(&skel::run(&CniProbe, |k| env.get(k).cloned(), stdin))
        })
    },
};

pub const NETCONF: Surface = Surface {
    name: "netconf",
    about: "the netconf on stdin alone: NetConf::parse and everything derived from it",
    tokens: CNI_TOKENS,
    make: || {
        Box::new(|input| match NetConf::parse(input) {
            Ok(c) => {
                let _ = c.spec_version();
                let _ = c.handle_id("fuzz-container");
                let _ = (c.datastore_path(), c.ipam_lock_file(), c.cache_dir());
                let _ = (c.cache_ttl(), c.kubeconfig());
                "ok".into()
            }
            Err(e) => signature(&e.code.to_string(), &e.msg),
        })
    },
};

pub const CNI_ENV: Surface = Surface {
    name: "cni-env",
    about: "the CNI_* environment as KEY=VALUE lines: Env::from_lookup, CNI_ARGS and the host \
            veth name derived from the pod",
    tokens: CNI_TOKENS,
    make: || {
        Box::new(|input| {
            let env = env_lines(input);
            let _ = CniArgs::parse(env.get("CNI_ARGS").map_or("", String::as_str));
            match Env::from_lookup(|k| env.get(k).cloned()) {
                Ok(e) => {
                    if let Some((namespace, pod)) = e.args.pod() {
                        let name = host_veth_name(DEFAULT_HOST_PREFIX, namespace, pod);
                        assert!(name.len() <= 15, "host veth name {name:?} too long");
                    }
                    let name = host_veth_name_for_container(&e.container_id);
                    assert!(name.len() <= 15, "host veth name {name:?} too long");
                    let _ = e.args.get("IP");
                    format!("ok:{}", e.command.as_str())
                }
                Err(e) => signature(&e.code.to_string(), &e.msg),
            }
        })
    },
};

pub const CNI_RESULT: Surface = Surface {
    name: "cni-result",
    about: "what an IPAM plugin prints (result or error) and prevResult: CniError::from_json, \
            CniResult::from_value, and the result re-encoded in every version",
    tokens: CNI_TOKENS,
    make: || {
        Box::new(|input| {
            let _ = CniError::from_json(input);
            let Ok(v) = serde_json::from_slice::<Value>(input) else {
                return "not-json".into();
            };
            match CniResult::from_value(&v) {
                Ok(r) => {
                    for version in SpecVersion::ALL {
                        let text = r.to_json(version);
                        let back: Value = serde_json::from_str(&text)
                            .unwrap_or_else(|e| panic!("{version} result is not JSON: {e}"));
                        // What we print, the next plugin in a chain must be able to read.
                        if let Err(e) = CniResult::from_value(&back) {
                            panic!("our {version} result does not read back: {e}: {text}");
                        }
                    }
                    "ok".into()
                }
                Err(e) => signature("refused", &e),
            }
        })
    },
};

/// The netconf the annotation overrides are written into.
const ANNOTATED_NETCONF: &[u8] = br#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"calico","ipam":{"type":"calico-ipam","assign_ipv4":"true","assign_ipv6":"true"}}"#;

/// An annotation map from JSON (non-string values as their JSON text).
fn annotations(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

pub const ANNOTATIONS: Surface = Surface {
    name: "annotations",
    about: "pod and namespace annotations ({\"pod\": {...}, \"namespace\": {...}}): \
            PodRequests::from_annotations and the rewritten IPAM stdin",
    tokens: &[
        "\"cni.projectcalico.org/ipv4pools\"",
        "\"cni.projectcalico.org/ipv6pools\"",
        "\"cni.projectcalico.org/ipFamilies\"",
        "\"cni.projectcalico.org/ipAddrs\"",
        "\"cni.projectcalico.org/ipAddrsNoIpam\"",
        "\"cni.projectcalico.org/floatingIPs\"",
        "\"cni.projectcalico.org/hwAddr\"",
        "\"pod\"",
        "\"namespace\"",
        "[\\\"10.244.0.0/16\\\"]",
        "[\\\"fd00:10:244::/48\\\"]",
        "[\\\"IPv4\\\",\\\"IPv6\\\"]",
        "[\\\"10.244.1.5\\\",\\\"fd00:10:244::5\\\"]",
        "\\\"",
        "IPv4",
        "IPv6",
    ],
    make: || {
        Box::new(|input| {
            let Ok(v) = serde_json::from_slice::<Value>(input) else {
                return "not-json".into();
            };
            let pod = annotations(v.get("pod"));
            let namespace = annotations(v.get("namespace"));
            // Every feature on, so every annotation is parsed.
            let features = FeatureControl {
                ip_addrs_no_ipam: true,
                floating_ips: true,
            };
            match PodRequests::from_annotations(&pod, &namespace, "calico-ipam", &features) {
                Ok(o) => {
                    let stdin = o
                        .rewrite_stdin(ANNOTATED_NETCONF)
                        .unwrap_or_else(|e| panic!("rewriting a valid netconf failed: {e}"));
                    // calico-ipam must be able to read what calico-cni hands it.
                    if let Err(e) = NetConf::parse(&stdin) {
                        panic!(
                            "the rewritten netconf does not parse: {e}: {}",
                            String::from_utf8_lossy(&stdin)
                        );
                    }
                    format!(
                        "ok:{}{}{}{}{}{}",
                        o.ipv4_pools.is_some(),
                        o.ipv6_pools.is_some(),
                        o.families.is_some(),
                        o.ip_addrs.is_some(),
                        o.ip_addrs_no_ipam.is_some(),
                        o.pod_mac.is_some()
                    )
                }
                Err(e) => signature(&e.code.to_string(), &e.msg),
            }
        })
    },
};
