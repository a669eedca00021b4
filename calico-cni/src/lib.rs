//! `calico-cni`: Calico's dual-stack veth dataplane as a CNI plugin.

pub mod dataplane;
pub mod flags;
pub mod host_local;
pub mod ipam_exec;
pub mod ipam_identity;
pub mod k8s;
pub mod mtu;
pub mod plugin;
pub mod probe;
pub mod readiness;
