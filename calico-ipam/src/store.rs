//! Opening the datastore a configuration names, and running allocator code on it.

use std::path::{Path, PathBuf};

use libipam::cni::netconf::DatastoreType;
use libipam::datastore::local::LocalStore;

/// An opened datastore of one of the supported kinds.
pub enum Store {
    Local(LocalStore),
}

/// Where to find the datastore: the netconf's fields or the CLI's flags, normalised.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub kind: DatastoreType,
    pub path: PathBuf,
    pub kubeconfig: Option<PathBuf>,
}

/// Why a datastore could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the local IPAM datastore at {path}: {reason}")]
    Local { path: PathBuf, reason: String },
    #[error("the kubernetes datastore is not available in this build: {0}")]
    Kubernetes(String),
}

impl Store {
    pub fn open(cfg: &StoreConfig) -> Result<Store, OpenError> {
        match cfg.kind {
            DatastoreType::Local => {
                LocalStore::open(&cfg.path)
                    .map(Store::Local)
                    .map_err(|e| OpenError::Local {
                        path: cfg.path.clone(),
                        reason: e.to_string(),
                    })
            }
            DatastoreType::Kubernetes => Err(OpenError::Kubernetes(format!(
                "kubeconfig {}",
                cfg.kubeconfig
                    .as_deref()
                    .unwrap_or(Path::new("(none)"))
                    .display()
            ))),
        }
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
        }
    };
}
