//! `calico -t`: Calico's datastore connectivity test. Calico's installer runs it before it
//! writes the CNI configuration, so a node is only offered pods once the plugin can reach its
//! datastore. Reads the network configuration on stdin, like a CNI verb:
//!
//! - `datastore_type: kubernetes`: ClusterInformation `default` must be readable and say
//!   `datastoreReady: true`;
//! - `datastore_type: local`: the store must open;
//! - `datastore_type: etcdv3`: the IPAM configuration key must be readable from the cluster
//!   (`etcd_endpoints` and the `etcd_*_file`s, else `ETCD_*`);
//! - then, if `kubernetes.kubeconfig` is set, the API server must answer `GET /version`.
//!
//! Success prints nothing and exits 0. Failure prints Calico's CNI error (code 100, msg
//! `data store connection failed`, the reason in `details`) on stdout and exits 1.

use libipam::cni::NetConf;
use libipam::cni::netconf::DatastoreType;
use libipam::datastore::Datastore;
use libipam::datastore::etcd::{self, EtcdConfig, EtcdStore};
use libipam::datastore::local::LocalStore;
use serde::Serialize;

use crate::k8s;

/// Calico's code and message for a failed test.
const CODE: u32 = 100;
const MSG: &str = "data store connection failed";

/// Runs the test on the configuration `stdin`; `Err` holds the reason.
pub fn run(stdin: &[u8]) -> Result<(), String> {
    let conf =
        NetConf::parse(stdin).map_err(|e| format!("failed to load netconf: {}", e.details))?;
    libipam::cni::bounds::check_paths(&conf)
        .map_err(|e| format!("failed to load netconf: {}", e.details))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    match conf.datastore_type {
        DatastoreType::Kubernetes => {
            let kubeconfig = conf.kubeconfig().ok_or_else(|| {
                "datastore_type kubernetes needs kubernetes.kubeconfig in the network \
                 configuration"
                    .to_owned()
            })?;
            let group = conf
                .api_group()
                .map_err(|e| format!("failed to load netconf: {}", e.details))?;
            rt.block_on(k8s::probe_datastore(&kubeconfig, group))?;
        }
        DatastoreType::Etcdv3 => {
            let settings = conf
                .etcd()
                .map_err(|e| format!("failed to load netconf: {}", e.details))?;
            let config = EtcdConfig {
                endpoints: settings
                    .endpoints
                    .as_deref()
                    .map(EtcdConfig::parse_endpoints)
                    .unwrap_or_default(),
                ca_cert_file: settings.ca_cert_file,
                cert_file: settings.cert_file,
                key_file: settings.key_file,
            };
            rt.block_on(async {
                let store = EtcdStore::new(etcd::connect(&config).await?);
                store.get_config().await.map(|_| ())
            })
            .map_err(|e| format!("cannot read the etcd datastore: {e}"))?;
        }
        DatastoreType::Local => {
            LocalStore::open(conf.datastore_path()).map_err(|e| {
                format!(
                    "cannot open the local IPAM datastore at {}: {e}",
                    conf.datastore_path().display()
                )
            })?;
        }
    }
    if let Some(kubeconfig) = &conf.kubernetes.kubeconfig {
        rt.block_on(k8s::probe_server_version(kubeconfig))?;
    }
    Ok(())
}

#[derive(Serialize)]
struct Failure<'a> {
    code: u32,
    msg: &'a str,
    details: &'a str,
}

/// What a failed test prints: the CNI error as Calico prints it (four-space indentation).
pub fn failure_json(details: &str) -> String {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    let failure = Failure {
        code: CODE,
        msg: MSG,
        details,
    };
    // Serialising a struct of strings and a number into memory cannot fail.
    let _ = failure.serialize(&mut ser);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_is_calicos_cni_error() {
        assert_eq!(
            failure_json("why"),
            "{\n    \"code\": 100,\n    \"msg\": \"data store connection failed\",\n    \"details\": \"why\"\n}"
        );
    }

    #[test]
    fn bad_netconf_is_named() {
        let e = run(b"{not json").expect_err("bad");
        assert!(e.starts_with("failed to load netconf: "), "{e}");
    }
}
