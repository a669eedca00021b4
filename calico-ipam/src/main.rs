//! `calico-ipam`: the CNI IPAM plugin when CNI_COMMAND is set, the operator CLI otherwise.

use libipam::cni::skel;

mod cli;
mod errors;
mod lock;
mod plugin;
mod store;
mod upgrade;

fn main() {
    if std::env::var_os("CNI_COMMAND").is_none() {
        std::process::exit(cli::main(std::env::args().skip(1).collect()));
    }
    skel::main(&plugin::CalicoIpam)
}
