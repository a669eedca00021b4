//! `calico-ipam` as a library: the CNI verbs (`plugin`) and the operator CLI (`cli`). The binary
//! only dispatches between them; the fuzz harness (`fuzz/`) drives the same parsers in-process.

pub mod cli;
pub mod errors;
pub mod lock;
pub mod plugin;
pub mod store;
pub mod upgrade;
