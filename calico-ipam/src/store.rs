//! Opening the datastore a configuration names, and running allocator code on it.

use std::path::PathBuf;

use libipam::DatastoreError;
use libipam::cni::netconf::{DatastoreType, EtcdSettings};
use libipam::datastore::etcd::{self, EtcdConfig, EtcdStore};
use libipam::datastore::kube::{self, CacheConfig, ClientOptions, KubeStore};
use libipam::datastore::local::LocalStore;

/// What the API server's audit log shows for our requests.
pub const USER_AGENT: &str = concat!("calico-ipam/", env!("CARGO_PKG_VERSION"), " (calico-rs)");

/// An opened datastore of one of the supported kinds.
pub enum Store {
    Local(LocalStore),
    Kube(Box<KubeStore>),
    Etcd(Box<EtcdStore>),
}

/// Where to find the datastore: the netconf's fields or the CLI's flags, normalised.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub kind: DatastoreType,
    pub path: PathBuf,
    pub kubeconfig: Option<PathBuf>,
    /// The node-local cache of the Kubernetes datastore (the plugin's; the CLI has none).
    pub cache: Option<CacheConfig>,
    /// The Kubernetes client's rate limit and retry deadline.
    pub client: ClientOptions,
    /// The etcd cluster of `etcdv3`.
    pub etcd: EtcdSettings,
}

/// Why a datastore could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the local IPAM datastore at {path}: {reason}")]
    Local { path: PathBuf, reason: String },
    #[error(
        "datastore_type kubernetes needs a kubeconfig: set kubernetes.kubeconfig in the network configuration (or KUBECONFIG / --kubeconfig for the CLI)"
    )]
    NoKubeconfig,
    #[error("cannot connect to the Kubernetes datastore: {0}")]
    Kubernetes(#[source] DatastoreError),
    #[error(
        "datastore_type etcdv3 needs the etcd endpoints: set etcd_endpoints in the network configuration (or ETCD_ENDPOINTS / --etcd-endpoints for the CLI)"
    )]
    NoEtcdEndpoints,
    #[error("cannot use the etcd datastore: {0}")]
    Etcd(#[source] DatastoreError),
}

impl OpenError {
    /// True when retrying later may help (the kubeconfig may not be written yet, the server
    /// may be down).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            OpenError::Kubernetes(DatastoreError::Unavailable(_) | DatastoreError::Other(_))
                | OpenError::Etcd(DatastoreError::Unavailable(_))
        )
    }
}

impl Store {
    /// Opens the datastore. For `kubernetes` this reads the kubeconfig but sends nothing; an
    /// unreachable server shows up on the first request, naming its URL.
    pub async fn open(cfg: &StoreConfig) -> Result<Store, OpenError> {
        match cfg.kind {
            DatastoreType::Local => {
                LocalStore::open(&cfg.path)
                    .map(Store::Local)
                    .map_err(|e| OpenError::Local {
                        path: cfg.path.clone(),
                        reason: e.to_string(),
                    })
            }
            DatastoreType::Kubernetes => Ok(Store::kube(Store::connect_kube(cfg).await?, cfg)),
            DatastoreType::Etcdv3 => {
                let endpoints = cfg
                    .etcd
                    .endpoints
                    .as_deref()
                    .map(EtcdConfig::parse_endpoints)
                    .filter(|e| !e.is_empty())
                    .ok_or(OpenError::NoEtcdEndpoints)?;
                let conn = etcd::connect(&EtcdConfig {
                    endpoints,
                    ca_cert_file: cfg.etcd.ca_cert_file.clone(),
                    cert_file: cfg.etcd.cert_file.clone(),
                    key_file: cfg.etcd.key_file.clone(),
                })
                .await
                .map_err(OpenError::Etcd)?;
                Ok(Store::Etcd(Box::new(EtcdStore::new(conn))))
            }
        }
    }
}

impl Store {
    /// The Kubernetes client of `cfg` (reads the kubeconfig, sends nothing).
    pub async fn connect_kube(cfg: &StoreConfig) -> Result<kube::Connection, OpenError> {
        let kubeconfig = cfg.kubeconfig.as_deref().ok_or(OpenError::NoKubeconfig)?;
        kube::connect_with(kubeconfig, USER_AGENT, &cfg.client)
            .await
            .map_err(OpenError::Kubernetes)
    }

    /// The Kubernetes datastore on `conn`, with `cfg`'s node cache if it names one (load it
    /// only under the host-wide lock).
    pub fn kube(conn: kube::Connection, cfg: &StoreConfig) -> Store {
        Store::Kube(Box::new(match &cfg.cache {
            Some(cache) => KubeStore::with_cache(conn, cache),
            None => KubeStore::new(conn),
        }))
    }
}

/// Run `$body` with `$ipam` bound to an `Ipam` over whichever backend `$store` holds. The body
/// is generic code, instantiated once per backend.
#[macro_export]
macro_rules! with_ipam {
    ($store:expr, |$ipam:ident| $body:expr) => {
        match $store {
            $crate::store::Store::Local(s) => {
                let $ipam = libipam::alloc::Ipam::new(s);
                $body
            }
            $crate::store::Store::Kube(s) => {
                let $ipam = libipam::alloc::Ipam::new(*s);
                $body
            }
            $crate::store::Store::Etcd(s) => {
                let $ipam = libipam::alloc::Ipam::new(*s);
                $body
            }
        }
    };
}
