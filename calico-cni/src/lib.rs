//! `calico-cni`: Calico's dual-stack veth dataplane as a CNI plugin.

pub mod dataplane;
pub mod ipam_exec;
#[macro_use]
pub mod log;
pub mod plugin;
