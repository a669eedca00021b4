//! The CNI verbs of calico-ipam.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use libipam::alloc::{AssignIpArgs, AutoAssignArgs};
use libipam::cni::netconf::DatastoreType;
use libipam::cni::skel::{self, Outcome, Plugin, Request};
use libipam::cni::{CniError, CniResult, IpConfig, NetConf, Route, code, log};
use libipam::datastore::Datastore;
use libipam::datastore::kube::{
    self, CacheConfig, ClientOptions, Connection as KubeConnection, ReadAhead,
};
use libipam::error::IpamError;
use libipam::model::AllowedUse;
use libipam::model::time;

use crate::errors::cni_error;
use crate::store::{OpenError, Store, StoreConfig};
use crate::{lock, upgrade, with_ipam};

/// How long one verb may take once it holds the host lock (Calico: 90 s).
const VERB_TIMEOUT: Duration = Duration::from_secs(90);

/// The `calico-ipam` plugin.
pub struct CalicoIpam {
    /// ADD allocates nothing once the calico-cni that ran it is gone (`CALICO_CNI_PID`): true
    /// for the binary. Run inside calico-cni's own process there is no other process to
    /// outlive: when calico-cni dies, so does the allocation in progress.
    watch_parent: bool,
}

impl CalicoIpam {
    /// The calico-ipam binary.
    pub const BINARY: CalicoIpam = CalicoIpam { watch_parent: true };
    /// calico-ipam's code run by calico-cni in its own process ([`run_in_process`]).
    pub const IN_PROCESS: CalicoIpam = CalicoIpam {
        watch_parent: false,
    };
}

/// One whole calico-ipam invocation inside another process: the same dispatcher and verbs as the
/// binary, the environment read through `lookup`, and the same log lines (component `ipam`,
/// through the process's logger). The outcome is what the binary would print and exit with.
pub fn run_in_process(lookup: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    log::as_component("ipam", || skel::run(&CalicoIpam::IN_PROCESS, lookup, stdin))
}

impl Plugin for CalicoIpam {
    fn configure(&self, conf: Option<&NetConf>) {
        let settings = conf.map(log::Settings::from_conf).unwrap_or_default();
        log::init("ipam", &settings);
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let node = req.conf.node_name()?;
        let (num4, num6) = (
            u32::from(req.conf.ipam.assign_ipv4),
            u32::from(req.conf.ipam.assign_ipv6),
        );
        if num4 == 0 && num6 == 0 {
            return Err(CniError::invalid_config(
                "ipam.assign_ipv4 and ipam.assign_ipv6 are both false: nothing to assign",
            ));
        }
        check_pool_list("ipv4_pools", &req.conf.ipam.ipv4_pools, true)?;
        check_pool_list("ipv6_pools", &req.conf.ipam.ipv6_pools, false)?;
        let requested_ip = match req.env.args.get("IP") {
            Some(raw) => Some(parse_requested_ip(raw)?),
            None => None,
        };
        let handle_id = req.conf.handle_id(&req.env.container_id);
        let attrs = attributes(req, &node);
        let namespace = req.env.args.pod().map(|(ns, _)| ns.to_string());
        let cfg = store_config(req, Some(&node))?;
        let marker = upgrade::marker_path(req.conf.ipam_lock_file());
        let rt = runtime()?;
        // Free, the lock is taken at once, and the reads below are made holding it (nobody
        // waits for it meanwhile but ADDs that arrive later, which read ahead themselves).
        let early = lock::try_acquire(req.conf.ipam_lock_file())?;
        let ahead = within_verb_time(&rt, read_ahead(&cfg, early.is_some()))??;
        let _lock = match early {
            Some(held) => held,
            None => lock::acquire(req.conf.ipam_lock_file())?,
        };
        // The lock may have taken long; the plugin that ran us may have been killed meanwhile.
        if self.watch_parent {
            check_parent_alive()?;
        }
        let assigned: Result<Vec<IpNet>, CniError> = within_verb_time(&rt, async {
            let store = match ahead {
                Some((conn, read)) => {
                    // The verb's time starts now that it holds the lock.
                    conn.deadline.set(retry_deadline());
                    match Store::kube(conn, &cfg) {
                        Store::Kube(k) => Store::Kube(Box::new(k.with_read_ahead(read))),
                        other => other,
                    }
                }
                None => open(&cfg).await?,
            };
            if let Store::Kube(kube) = &store {
                upgrade::maybe_upgrade(kube, &node, &marker).await?;
            }
            with_ipam!(store, |ipam| {
                let assigned = match requested_ip {
                    Some(ip) => ipam
                        .assign_ip(&AssignIpArgs {
                            ip,
                            handle_id: handle_id.clone(),
                            attrs: attrs.clone(),
                            hostname: node.clone(),
                            intended_use: AllowedUse::Workload,
                        })
                        .await
                        // Calico answers with the address alone (/32, /128), not its block.
                        .map(|_| vec![IpNet::from(ip)])
                        .map_err(|e| cni_error(&e)),
                    None => ipam
                        .auto_assign(&AutoAssignArgs {
                            num4,
                            num6,
                            handle_id: handle_id.clone(),
                            attrs: attrs.clone(),
                            hostname: node.clone(),
                            ipv4_pools: req.conf.ipam.ipv4_pools.clone(),
                            ipv6_pools: req.conf.ipam.ipv6_pools.clone(),
                            max_blocks_per_host: 0,
                            intended_use: AllowedUse::Workload,
                            namespace_labels: None,
                            namespace: namespace.clone(),
                            reuse_existing: true,
                        })
                        .await
                        .map(|r| r.ipv4.into_iter().chain(r.ipv6).collect())
                        .map_err(|e| cni_error(&e)),
                };
                warn_ignored_pools(&ipam);
                assigned
            })
        })?;
        let assigned = assigned?;
        Ok(CniResult {
            ips: assigned
                .iter()
                .map(|net| IpConfig {
                    address: *net,
                    gateway: None,
                    interface: None,
                })
                .collect(),
            // One route per address, with the address's prefix: its block for an automatic
            // assignment, /32 or /128 for a requested one.
            routes: assigned
                .iter()
                .map(|net| Route {
                    dst: *net,
                    gw: None,
                })
                .collect(),
            ..Default::default()
        })
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let primary = req.conf.handle_id(&req.env.container_id);
        let legacy = legacy_handle(req);
        let cfg = store_config(req, req.conf.node_name().ok().as_deref())?;
        let _lock = lock::acquire_for_release(req.conf.ipam_lock_file());
        run(async {
            let store = open(&cfg).await?;
            with_ipam!(store, |ipam| {
                let released = ipam
                    .release_by_handle(&primary)
                    .await
                    .map_err(|e| cni_error(&e))?;
                // The workload handle of Calico before v3 (cni-plugin#446): an attachment made
                // by such a version holds only that one, so it is looked up only when ours
                // held nothing (saving a request per DEL).
                if released.is_empty() {
                    ipam.release_by_handle(&legacy)
                        .await
                        .map_err(|e| cni_error(&e))?;
                }
                Ok::<(), CniError>(())
            })
        })?
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let handle_id = req.conf.handle_id(&req.env.container_id);
        let cfg = store_config(req, None)?;
        let held = run(async {
            let store = open(&cfg).await?;
            with_ipam!(store, |ipam| ipam
                .ips_by_handle(&handle_id)
                .await
                .map_err(|e| cni_error(&e)))
        })??;
        if held.is_empty() {
            return Err(CniError::new(
                code::CHECK_FAILED,
                "no addresses are allocated to this attachment",
                format!("handle {handle_id} holds nothing"),
            ));
        }
        Ok(())
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let cfg = store_config(req, None)?;
        let not_available = |e: CniError| CniError::new(code::NOT_AVAILABLE, e.msg, e.details);
        run(async {
            let store = open(&cfg).await.map_err(not_available)?;
            with_ipam!(store, |ipam| ipam.store().list_pools().await.map(|_| ())).map_err(|e| {
                CniError::new(
                    code::NOT_AVAILABLE,
                    "the IPAM datastore is not usable",
                    e.to_string(),
                )
            })
        })
        .map_err(not_available)?
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let prefix = format!("{}.", req.conf.name);
        let valid: Vec<String> = req
            .conf
            .valid_attachments
            .iter()
            .map(|a| req.conf.handle_id(&a.container_id))
            .collect();
        let cfg = store_config(req, req.conf.node_name().ok().as_deref())?;
        let _lock = lock::acquire_for_release(req.conf.ipam_lock_file());
        run(async {
            let store = open(&cfg).await?;
            with_ipam!(store, |ipam| {
                let handles = ipam
                    .store()
                    .list_handles()
                    .await
                    .map_err(|e| CniError::try_again(e.to_string()))?;
                let mut failures = Vec::new();
                // All the releases in one commit (one sync on the local store).
                ipam.store().begin();
                for h in handles {
                    let id = &h.value.handle_id;
                    if !id.starts_with(&prefix) || valid.contains(id) {
                        continue;
                    }
                    if let Err(e) = ipam.release_by_handle(id).await {
                        failures.push(format!("{id}: {e}"));
                    }
                }
                if let Err(e) = ipam.store().commit().await {
                    failures.push(format!("commit: {e}"));
                }
                if failures.is_empty() {
                    Ok(())
                } else {
                    Err(CniError::try_again(failures.join("; ")))
                }
            })
        })?
    }
}

/// calico-cni names itself in `CALICO_CNI_PID` when it runs us. If our parent is no longer that
/// process, calico-cni has died (normally the kernel's SIGKILL, requested by calico-cni, ends
/// us first): nobody will use what an ADD allocates now, and the runtime's DEL for it may
/// already have run, so nothing is allocated.
fn check_parent_alive() -> Result<(), CniError> {
    let Some(pid) = std::env::var("CALICO_CNI_PID")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    else {
        return Ok(());
    };
    if std::os::unix::process::parent_id() == pid {
        return Ok(());
    }
    Err(CniError::try_again(format!(
        "calico-cni (pid {pid}), which ran this IPAM request, has exited: nothing was allocated"
    )))
}

/// Pools the allocator left out because they cannot be read or do not validate are logged as
/// warnings (stderr and the log file): one bad pool must be visible, not silently unused.
fn warn_ignored_pools<D>(ipam: &libipam::alloc::Ipam<D>) {
    for (name, why) in ipam.ignored_pools() {
        tracing::warn!(
            reason = why.as_str(),
            "IPPool {name} is ignored, and no other pool allocates in its CIDR (replace it with \
             calico-ipam apply -f, or delete it with calico-ipam delete ippool {name})"
        );
    }
}

/// Calico's legacy workload handle, also released by DEL: `<namespace>.<pod>` for a
/// Kubernetes pod, the container ID otherwise.
fn legacy_handle(req: &Request) -> String {
    match req.env.args.pod() {
        Some((namespace, pod)) => format!("{namespace}.{pod}"),
        None => req.env.container_id.clone(),
    }
}

/// Calico's allocation attributes: kube-controllers' garbage collector needs node, pod and namespace.
/// The local datastore, which has no pod list, also records the network namespace, so that
/// `calico-ipam ipam check` can tell an allocation whose namespace is gone (a leak).
fn attributes(req: &Request, node: &str) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    attrs.insert("node".to_string(), node.to_string());
    if let Some((namespace, pod)) = req.env.args.pod() {
        attrs.insert("namespace".to_string(), namespace.to_string());
        attrs.insert("pod".to_string(), pod.to_string());
    }
    if req.conf.datastore_type == DatastoreType::Local
        && let Some(netns) = req
            .env
            .netns
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
    {
        attrs.insert(
            libipam::alloc::audit::NETNS_ATTRIBUTE.to_string(),
            netns.to_string_lossy().into_owned(),
        );
    }
    attrs.insert("timestamp".to_string(), go_timestamp(time::now_nanos()));
    attrs
}

/// Entries that parse as CIDRs must be of the list's family; others are pool names.
fn check_pool_list(list: &str, entries: &[String], want_v4: bool) -> Result<(), CniError> {
    for entry in entries {
        if let Ok(net) = entry.parse::<IpNet>() {
            if net.addr().is_ipv4() != want_v4 {
                let family = if want_v4 { "IPv6" } else { "IPv4" };
                return Err(CniError::invalid_config(format!(
                    "ipam.{list} contains {entry}, an {family} CIDR: put it in ipam.{}",
                    if want_v4 { "ipv6_pools" } else { "ipv4_pools" }
                )));
            }
        } else if entry.contains('/') || entry.parse::<IpAddr>().is_ok() {
            return Err(CniError::invalid_config(format!(
                "ipam.{list} entry \"{entry}\" is neither a valid CIDR nor a pool name"
            )));
        }
    }
    Ok(())
}

/// `IP=<addr>` or `IP=<addr>/<prefix>` from CNI_ARGS.
fn parse_requested_ip(raw: &str) -> Result<IpAddr, CniError> {
    let addr = raw.split('/').next().unwrap_or(raw);
    addr.parse()
        .map_err(|_| CniError::invalid_env(format!("CNI_ARGS IP=\"{raw}\" is not an IP address")))
}

/// The datastore the netconf names. With `node`, the Kubernetes datastore keeps a node cache
/// (only valid under the host-wide IPAM lock, see [`NetConf::cache_dir`]).
///
/// [`NetConf::cache_dir`]: libipam::cni::NetConf::cache_dir
fn store_config(req: &Request, node: Option<&str>) -> Result<StoreConfig, CniError> {
    Ok(StoreConfig {
        kind: req.conf.datastore_type,
        path: req.conf.datastore_path().to_path_buf(),
        kubeconfig: req.conf.kubeconfig(),
        etcd: req.conf.etcd()?,
        cache: node.map(|node| CacheConfig {
            path: req.conf.cache_dir().join(format!(
                "calico-ipam.{}.json",
                libipam::datastore::local::file_stem(node)
            )),
            node: node.to_string(),
            ttl: req.conf.cache_ttl(),
        }),
        client: client_options(&req.conf)?,
    })
}

/// The netconf's `qps`/`burst`; retries of a 429/503 end in time for the verb's answer (a
/// second before [`VERB_TIMEOUT`] runs out, counted from now: the store is opened first).
fn client_options(conf: &libipam::cni::NetConf) -> Result<ClientOptions, CniError> {
    let (qps, burst) = conf.client_rate();
    Ok(ClientOptions {
        qps,
        burst,
        deadline: Some(retry_deadline()),
        api_group: conf.api_group()?,
        ..ClientOptions::default()
    })
}

async fn open(cfg: &StoreConfig) -> Result<Store, CniError> {
    Store::open(cfg).await.map_err(open_error)
}

fn open_error(e: OpenError) -> CniError {
    if e.is_transient() {
        CniError::try_again(e.to_string())
    } else {
        CniError::invalid_config(e.to_string())
    }
}

/// Drive `f` on a current_thread runtime with the verb timeout.
fn run<F: std::future::Future>(f: F) -> Result<F::Output, CniError> {
    within_verb_time(&runtime()?, f)
}

fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::internal(format!("cannot start the async runtime: {e}")))
}

/// Drive `f` on `rt` with the verb timeout. The runtime may be driven again later: what it
/// keeps between (the API server connection) waits meanwhile.
fn within_verb_time<F: std::future::Future>(
    rt: &tokio::runtime::Runtime,
    f: F,
) -> Result<F::Output, CniError> {
    rt.block_on(async { tokio::time::timeout(VERB_TIMEOUT, f).await })
        .map_err(|_| CniError::try_again(format!("IPAM did not finish within {VERB_TIMEOUT:?}")))
}

/// What an ADD reads before it waits for the host-wide lock: with the Kubernetes datastore and
/// a node cache (the plugin), the connection, the IPPools and, when the node cache holds no
/// fresh copy, the IPAMConfig and IPReservations (`kube::read_ahead`: the API server's waits
/// then overlap the wait for the lock and each other, and the TLS handshake is out of it);
/// nothing for the other datastores, whose reads wait on nothing. The configuration objects
/// are left to the turn under the lock when another ADD holds it (`lock_free` false) and the
/// cache has a TTL: that ADD refreshes them for the node before this one's turn, so the ADDs
/// of a burst do not each read them. A failed LIST of the pools fails the ADD as the same read
/// under the lock would.
async fn read_ahead(
    cfg: &StoreConfig,
    lock_free: bool,
) -> Result<Option<(KubeConnection, ReadAhead)>, CniError> {
    let (DatastoreType::Kubernetes, Some(cache)) = (cfg.kind, &cfg.cache) else {
        return Ok(None);
    };
    let configs = lock_free || cache.ttl.is_zero();
    let conn = Store::connect_kube(cfg).await.map_err(open_error)?;
    let read = kube::read_ahead(&conn, cache, configs)
        .await
        .map_err(|source| {
            cni_error(&IpamError::Datastore {
                op: "list IP pools".to_string(),
                source,
            })
        })?;
    Ok(Some((conn, read)))
}

/// No 429/503 retry wait may end after this: a second before the verb's time is up.
fn retry_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + VERB_TIMEOUT - Duration::from_secs(1)
}

/// Go's `time.Now().UTC().String()` form, which Calico stores in the `timestamp` attribute:
/// `2026-08-01 10:00:05.123456789 +0000 UTC`.
fn go_timestamp(nanos: u64) -> String {
    let rfc = time::rfc3339(nanos); // 2026-08-01T10:00:05Z
    let date_time = rfc.trim_end_matches('Z').replacen('T', " ", 1);
    format!("{date_time}.{:09} +0000 UTC", nanos % 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_timestamp_format() {
        assert_eq!(
            go_timestamp(1_785_578_405_123_456_789),
            "2026-08-01 10:00:05.123456789 +0000 UTC"
        );
    }

    #[test]
    fn pool_lists_are_checked_by_family() {
        assert!(
            check_pool_list(
                "ipv4_pools",
                &["10.0.0.0/16".into(), "my-pool".into()],
                true
            )
            .is_ok()
        );
        assert_eq!(
            check_pool_list("ipv4_pools", &["fd00::/48".into()], true)
                .expect_err("v6")
                .code,
            7
        );
        assert_eq!(
            check_pool_list("ipv6_pools", &["10.0.0.0/16".into()], false)
                .expect_err("v4")
                .code,
            7
        );
        assert_eq!(
            check_pool_list("ipv4_pools", &["10.0.0.0/33".into()], true)
                .expect_err("bad")
                .code,
            7
        );
    }
}
