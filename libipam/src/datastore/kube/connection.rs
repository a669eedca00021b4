//! The connection to one API server: the client (timeouts, user agent, `client.rs`'s rate limit
//! and 429/503 retries) and how its errors become datastore errors.

use std::fmt::Debug;
use std::path::Path;
use std::time::Duration;

use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::GroupCell;
use super::client::{self, ClientOptions, Deadline};
use super::objects::{CLUSTER_INFORMATION, ClusterInformationSpec, Crd, SINGLETON};
use crate::datastore::{DatastoreError, DsResult};
use crate::error::error_chain;

/// How long a TCP connection to the API server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the API server may take to answer one request (kube's default is no limit).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for one API server, and its URL for messages.
#[derive(Clone)]
pub struct Connection {
    /// The kube client.
    pub client: Client,
    /// The API server's URL, e.g. `https://10.0.0.1:443`.
    pub server: String,
    /// The API group of Calico's objects (`api_group.rs`).
    pub group: GroupCell,
    /// When retry waits of `client` must end (`ClientOptions::deadline`, movable).
    pub deadline: Deadline,
}

impl Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server)
            .field("group", &self.group.known())
            .finish()
    }
}

/// A client from a kubeconfig file (the CNI netconf's `kubernetes.kubeconfig`) with the default
/// [`ClientOptions`]: see [`connect_with`].
pub async fn connect(kubeconfig: &Path, user_agent: &str) -> DsResult<Connection> {
    connect_with(kubeconfig, user_agent, &ClientOptions::default()).await
}

/// A client from a kubeconfig file, with the timeouts above, `opts`' rate limit and bounded
/// retries of 429/503 (`client.rs`; nothing else is retried: a failing server is reported, as
/// code 11, and the runtime retries), and `user_agent` on every request so audit logs name the
/// plugin. Nothing is sent until the first request.
pub async fn connect_with(
    kubeconfig: &Path,
    user_agent: &str,
    opts: &ClientOptions,
) -> DsResult<Connection> {
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| {
        DatastoreError::Other(format!(
            "cannot read kubeconfig {}: {e}",
            kubeconfig.display()
        ))
    })?;
    let mut cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| {
            DatastoreError::Other(format!(
                "cannot use kubeconfig {}: {e}",
                kubeconfig.display()
            ))
        })?;
    let server = cfg.cluster_url.to_string().trim_end_matches('/').to_owned();
    cfg.connect_timeout = Some(CONNECT_TIMEOUT);
    cfg.read_timeout = Some(READ_TIMEOUT);
    cfg.write_timeout = Some(READ_TIMEOUT);
    cfg.reset_reader_on_write = true;
    cfg.default_retry = false;
    let agent = http::HeaderValue::from_str(user_agent)
        .map_err(|e| DatastoreError::Other(format!("user agent {user_agent:?}: {e}")))?;
    cfg.headers.push((http::header::USER_AGENT, agent));
    let deadline = Deadline::new(opts.deadline);
    let client = client::client_with_deadline(cfg, opts, &deadline)
        .map_err(|e| DatastoreError::Other(format!("cannot create a client for {server}: {e}")))?;
    Ok(Connection {
        client,
        server,
        group: GroupCell::new(opts.api_group),
        deadline,
    })
}

impl Connection {
    /// Maps a kube error to a datastore error naming the server. Unreachable, timed out,
    /// overloaded or failing (5xx, 429) servers are `Unavailable`.
    pub fn error(&self, what: &str, e: kube::Error) -> DatastoreError {
        Connection::map_error(&self.server, what, e)
    }

    /// [`Connection::error`] for the server at `server`.
    pub fn map_error(server: &str, what: &str, e: kube::Error) -> DatastoreError {
        match e {
            kube::Error::Api(s) if s.is_already_exists() => DatastoreError::AlreadyExists,
            kube::Error::Api(s) if s.is_conflict() => DatastoreError::Conflict,
            kube::Error::Api(s) if s.is_not_found() => DatastoreError::NotFound,
            kube::Error::Api(s) if s.code >= 500 || s.code == 429 => {
                DatastoreError::Unavailable(format!(
                    "{what}: API server {} answered {} {}: {}",
                    server, s.code, s.reason, s.message
                ))
            }
            kube::Error::Api(s) => DatastoreError::Other(format!(
                "{what}: API server {} answered {} {}: {}",
                server, s.code, s.reason, s.message
            )),
            kube::Error::SerdeError(e) => DatastoreError::Other(format!(
                "{what}: unexpected answer from API server {}: {e}",
                server
            )),
            other => DatastoreError::Unavailable(format!(
                "{what}: API server {} unreachable: {}",
                server,
                error_chain(&other)
            )),
        }
    }

    /// ClusterInformation `default`'s `spec.datastoreReady`: `None` when the object does not
    /// exist, `Some(false)` when the field is false or missing.
    pub async fn datastore_ready(&self) -> DsResult<Option<bool>> {
        let group = self.api_group().await?;
        let api: Api<Crd<ClusterInformationSpec>> =
            Api::all_with(self.client.clone(), &CLUSTER_INFORMATION.resource(group));
        match api.get_opt(SINGLETON).await {
            Ok(Some(ci)) => Ok(Some(ci.spec.datastore_ready.unwrap_or(false))),
            Ok(None) => Ok(None),
            Err(e) => Err(self.error("read ClusterInformation default", e)),
        }
    }
}
