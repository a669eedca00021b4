//! `calico-ipam` as a library: the CNI verbs (`plugin`) and the operator CLI (`cli`). The binary
//! only dispatches between them; calico-cni runs the verbs in its own process when the
//! calico-ipam it would run is this same build (`build_id`), and the fuzz harness (`fuzz/`)
//! drives the same parsers in-process.

pub mod build_id;
pub mod cli;
pub mod errors;
pub mod lock;
pub mod plugin;
pub mod store;
pub mod upgrade;
