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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use kube::Client;
use tokio::sync::OnceCell;

use super::Connection;
use crate::datastore::api_group::ApiGroup;
use crate::datastore::{DatastoreError, DsResult};

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

impl Connection {
    /// The API group of Calico's objects on this server: the one given, else what this
    /// process found earlier, else one discovery request.
    pub async fn api_group(&self) -> DsResult<ApiGroup> {
        self.group
            .cell
            .get_or_try_init(|| async {
                if let Some(g) = remembered(&self.server) {
                    return Ok(g);
                }
                let g = discover(&self.client, &self.server).await?;
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
