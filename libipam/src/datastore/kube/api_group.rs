//! Finding which API group holds Calico's objects (`datastore::api_group`): the explicit
//! choice when there is one, else one discovery request (`GET /apis`, the group list), whose
//! answer is kept for the life of the process (per API server) and, by calico-ipam, in its
//! node cache until a request finds the group not served (a LIST or create answered 404: the
//! CRDs of that group are gone), when both forget it and the next process asks again.
//!
//! Calico's client asks `ServerGroups` (`GET /api` and `GET /apis`); only `/apis` can list
//! either Calico group, so one request is enough. An answer that says the client may not ask
//! (401, 403) or that there is no such path (404) chooses v1, as Calico does when discovery
//! fails; an unreachable or failing server is reported (the requests that would follow go to
//! the same server and would fail the same way).
//!
//! Before discovery, the question is folded into a request the plugin makes anyway: `GET
//! crd.projectcalico.org/v1 ipamconfigs/default`. Its object, or a 404 `Status` naming the
//! object (`details.name`), proves the v1 kind is served, and v1 is what Calico chooses
//! whenever v1 is served (`UsingV3CRDs`: v3 only when v1 is absent and v3 present); the
//! IPAMConfig it read is kept for the process's configuration read that follows
//! (`take_probed_config`), so a node's first ADD on v1 sends no request for the group. A 404
//! for the path itself (`404 page not found`, or a `Status` naming no object: the kind is not
//! served), or 401/403, leaves the choice to discovery as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kube::{Api, Client};
use tokio::sync::OnceCell;

use super::Connection;
use super::objects::{Crd, IPAM_CONFIG, SINGLETON};
use crate::datastore::api_group::ApiGroup;
use crate::datastore::{DatastoreError, DsResult};
use crate::model::IpamConfig;

/// How long the IPAMConfig read by the probe stands in for a read of it (the node cache's
/// default TTL: the allocator reads it moments after).
const PROBED_CONFIG_FOR: Duration = Duration::from_secs(10);

/// The group each API server of this process was found to use.
fn process_cache() -> &'static Mutex<HashMap<String, ApiGroup>> {
    static CACHE: OnceLock<Mutex<HashMap<String, ApiGroup>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn remembered(server: &str) -> Option<ApiGroup> {
    process_cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(server)
        .copied()
}

fn remember(server: &str, group: ApiGroup) {
    process_cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(server.to_owned(), group);
}

/// Forgets the group found for `server` (it was found not served since).
pub fn forget(server: &str) {
    process_cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(server);
}

/// The IPAMConfig the probe read (`None`: there is none), and when.
type Probed = (Instant, Option<IpamConfig>);

/// What the probe read, per API server, for the first configuration read of the process: in
/// calico-cni the IPAM has a connection of its own, which finds the group remembered.
fn probed_configs() -> &'static Mutex<HashMap<String, Probed>> {
    static PROBED: OnceLock<Mutex<HashMap<String, Probed>>> = OnceLock::new();
    PROBED.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The IPAMConfig that the request which found the group on `server` read (`Some(None)`: it
/// does not exist), once, and only while it is fresh: it answers the configuration read that
/// follows without a request of its own.
pub fn take_probed_config(server: &str) -> Option<Option<IpamConfig>> {
    let taken = probed_configs()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(server);
    taken
        .filter(|(at, _)| at.elapsed() < PROBED_CONFIG_FOR)
        .map(|(_, c)| c)
}

/// A connection's API group: set at once when it was given, else found on first use.
#[derive(Debug, Clone, Default)]
pub struct GroupCell {
    cell: Arc<OnceCell<ApiGroup>>,
    explicit: bool,
}

impl GroupCell {
    /// A cell holding `given` (explicit), or empty (found by discovery).
    pub fn new(given: Option<ApiGroup>) -> GroupCell {
        GroupCell {
            cell: Arc::new(OnceCell::new_with(given)),
            explicit: given.is_some(),
        }
    }

    /// The group if known without a request.
    pub fn known(&self) -> Option<ApiGroup> {
        self.cell.get().copied()
    }

    /// Whether the group was given rather than found.
    pub fn is_explicit(&self) -> bool {
        self.explicit
    }

    /// Sets the group from a copy found earlier (calico-ipam's node cache), unless known.
    pub fn seed(&self, group: ApiGroup) {
        let _ = self.cell.set(group);
    }
}

/// What the first request on `crd.projectcalico.org/v1` proved.
enum Probe {
    /// The v1 kind is served, and this is its IPAMConfig (`None`: there is none).
    Read(Option<IpamConfig>),
    /// The v1 kind is served, but its IPAMConfig does not decode (the config read says so).
    Served,
    /// Nothing: the kind is not served, or the client may not ask. Discovery decides.
    Unknown,
}

async fn probe_v1(client: &Client, server: &str) -> DsResult<Probe> {
    let api: Api<Crd<IpamConfig>> =
        Api::all_with(client.clone(), &IPAM_CONFIG.resource(ApiGroup::V1));
    match api.get(SINGLETON).await {
        Ok(obj) => Ok(Probe::Read(Some(obj.spec))),
        // A `Status` naming the object: the kind is served, the object is not there.
        Err(kube::Error::Api(s))
            if s.code == 404 && s.details.as_ref().is_some_and(|d| !d.name.is_empty()) =>
        {
            Ok(Probe::Read(None))
        }
        Err(kube::Error::Api(s)) if matches!(s.code, 401 | 403 | 404) => Ok(Probe::Unknown),
        Err(kube::Error::SerdeError(_)) => Ok(Probe::Served),
        Err(e) => Err(Connection::map_error(
            server,
            "read IPAMConfig default (crd.projectcalico.org/v1)",
            e,
        )),
    }
}

/// Asks the API server which Calico groups it serves (one `GET /apis`).
pub async fn discover(client: &Client, server: &str) -> DsResult<ApiGroup> {
    match client.list_api_groups().await {
        Ok(list) => {
            let group = ApiGroup::from_server_groups(list.groups.iter().map(|g| g.name.as_str()));
            tracing::info!("API server {server}: Calico's objects are in {group} (discovery)");
            Ok(group)
        }
        Err(kube::Error::Api(s)) if matches!(s.code, 401 | 403 | 404) => {
            tracing::warn!(
                "API server {server} answered {} to the API group discovery; using {} \
                 (set calico_api_group to choose)",
                s.code,
                ApiGroup::V1
            );
            Ok(ApiGroup::V1)
        }
        Err(e) => Err(
            match Connection::map_error(server, "discover the API groups", e) {
                DatastoreError::NotFound => DatastoreError::Other(format!(
                    "discover the API groups: API server {server} answered 404"
                )),
                other => other,
            },
        ),
    }
}

/// `conn`'s group, shown by a request made for its own sake (`why`), when none was given or
/// found before: kept as discovery's answer would be.
pub(super) fn learned(conn: &Connection, group: ApiGroup, why: &str) {
    if conn.group.known().is_none() {
        tracing::info!(
            "API server {}: Calico's objects are in {group} ({why})",
            conn.server
        );
        conn.group.seed(group);
        remember(&conn.server, group);
    }
}

/// The group this process found for `server` earlier, if any.
pub(super) fn found_earlier(server: &str) -> Option<ApiGroup> {
    remembered(server)
}

impl Connection {
    /// The API group of Calico's objects on this server: the one given, else what this
    /// process found earlier, else the v1 probe, else one discovery request.
    pub async fn api_group(&self) -> DsResult<ApiGroup> {
        self.group
            .cell
            .get_or_try_init(|| async {
                if let Some(g) = remembered(&self.server) {
                    return Ok(g);
                }
                let probe = probe_v1(&self.client, &self.server).await?;
                if let Probe::Read(config) = &probe {
                    probed_configs()
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(self.server.clone(), (Instant::now(), config.clone()));
                }
                let g = match probe {
                    Probe::Read(_) | Probe::Served => {
                        tracing::info!(
                            "API server {}: Calico's objects are in {} (it serves its IPAMConfig)",
                            self.server,
                            ApiGroup::V1
                        );
                        ApiGroup::V1
                    }
                    Probe::Unknown => discover(&self.client, &self.server).await?,
                };
                remember(&self.server, g);
                Ok(g)
            })
            .await
            .copied()
    }

    /// The group cell (shared by clones of this connection).
    pub fn group_cell(&self) -> &GroupCell {
        &self.group
    }
}
