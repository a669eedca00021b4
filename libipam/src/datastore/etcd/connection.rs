//! The connection to one etcd cluster: where it is ([`EtcdConfig`]), one client per member
//! with TLS when files are given ([`connect`]), and what an etcd client error means. A request
//! that fails is `Unavailable` when the cluster or the member could not be reached, had no
//! leader or did not answer in time ([`is_unavailable`]); it may go to the next member only
//! when the member asked cannot have acted on it ([`not_acted_on`]).

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::datastore::{DatastoreError, DsResult};

/// How long connecting to one member may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take, whatever it waits for (a connection, a leader, an answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the cluster is and how to prove who we are: Calico's `etcd_endpoints`,
/// `etcd_ca_cert_file`, `etcd_cert_file`, `etcd_key_file` (or `ETCD_ENDPOINTS`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `https://host:port` (or `http://`) of each member; at least one.
    pub endpoints: Vec<String>,
    /// The CA that signed the members' certificates (PEM).
    pub ca_cert_file: Option<PathBuf>,
    /// This client's certificate (PEM); with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// This client's private key (PEM); with `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl EtcdConfig {
    /// The endpoints of Calico's comma-separated `etcd_endpoints`.
    pub fn parse_endpoints(list: &str) -> Vec<String> {
        list.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The endpoints as one string, for messages.
    pub fn describe(&self) -> String {
        format!("etcd {}", self.endpoints.join(","))
    }
}

/// Clients for one etcd cluster: one per member.
#[derive(Clone)]
pub struct Connection {
    pub(super) members: Vec<(String, Client)>,
    /// The endpoints, for messages: `etcd https://127.0.0.1:2379,...`.
    pub server: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server)
            .finish()
    }
}

fn read_file(what: &str, path: &std::path::Path) -> DsResult<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| DatastoreError::Other(format!("cannot read {what} {}: {e}", path.display())))
}

/// Clients for the cluster of `config`. Nothing is sent until the first request.
pub async fn connect(config: &EtcdConfig) -> DsResult<Connection> {
    let server = config.describe();
    if config.endpoints.is_empty() {
        return Err(DatastoreError::Other(
            "datastore_type etcdv3 needs etcd_endpoints (or ETCD_ENDPOINTS): no endpoint given"
                .into(),
        ));
    }
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_require_leader(true);
    let tls_files = (&config.ca_cert_file, &config.cert_file, &config.key_file);
    if !matches!(tls_files, (None, None, None)) {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &config.ca_cert_file {
            tls = tls.ca_certificate(Certificate::from_pem(read_file("etcd_ca_cert_file", ca)?));
        }
        match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read_file("etcd_cert_file", cert)?,
                    read_file("etcd_key_file", key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(DatastoreError::Other(
                    "etcd_cert_file and etcd_key_file go together: give both or neither".into(),
                ));
            }
        }
        options = options.with_tls(tls);
    }
    let mut members = Vec::new();
    for endpoint in &config.endpoints {
        let client = tokio::time::timeout(
            REQUEST_TIMEOUT,
            Client::connect([endpoint.as_str()], Some(options.clone())),
        )
        .await
        .map_err(|_| DatastoreError::Unavailable(format!("{server}: connecting timed out")))?
        .map_err(|e| error(&server, &format!("endpoint {endpoint}"), e))?;
        members.push((endpoint.clone(), client));
    }
    Ok(Connection { members, server })
}

/// Whether an etcd client error means the cluster (or the member asked) could not be reached,
/// has no leader, or did not answer in time.
pub(super) fn is_unavailable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) | E::EndpointError(_) => true,
        // gRPC codes: 1 Cancelled, 2 Unknown, 4 DeadlineExceeded, 8 ResourceExhausted,
        // 10 Aborted, 13 Internal, 14 Unavailable (etcd's "no leader", "request timed out").
        E::GRpcStatus(s) => matches!(s.code() as i32, 1 | 2 | 4 | 8 | 10 | 13 | 14),
        _ => false,
    }
}

/// An etcd client error as a datastore error naming the cluster or member: see
/// [`is_unavailable`] for what is `Unavailable`.
pub(super) fn error(server: &str, what: &str, e: etcd_client::Error) -> DatastoreError {
    let msg = format!("{server}: {what}: {e}");
    if is_unavailable(&e) {
        DatastoreError::Unavailable(msg)
    } else {
        DatastoreError::Other(msg)
    }
}

/// Whether the member asked cannot have acted on the request: it was never delivered (the
/// connection was refused, timed out or failed its handshake), or the member refused it for
/// want of a leader.
pub(super) fn not_acted_on(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::EndpointError(_) => true,
        E::GRpcStatus(s) => {
            let msg = s.message();
            if msg.contains("no leader") || msg.contains("not capable") {
                return true;
            }
            let mut source = std::error::Error::source(s);
            while let Some(err) = source {
                let text = err.to_string();
                if text.contains("connect error") || text.contains("tcp connect") {
                    return true;
                }
                if let Some(io) = err.downcast_ref::<std::io::Error>()
                    && matches!(
                        io.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::AddrNotAvailable
                            | std::io::ErrorKind::NotConnected
                    )
                {
                    return true;
                }
                source = err.source();
            }
            false
        }
        _ => false,
    }
}
