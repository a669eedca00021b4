//! The CNI wire layer shared by `calico-ipam` and `calico-cni`: spec versions, the environment
//! contract, error codes, Calico's netconf, results and the verb dispatcher.
//!
//! Everything here is plain serde and std: no datastore, no kernel.

pub mod args;
pub mod bounds;
pub mod env;
pub mod error;
#[cfg(feature = "cni-log")]
pub mod log;
pub mod netconf;
pub mod result;
pub mod skel;
pub mod version;

pub use args::CniArgs;
pub use env::{Command, Env};
pub use error::{CniError, code};
pub use netconf::NetConf;
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::SpecVersion;
