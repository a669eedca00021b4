//! `calico-ipam`: the CNI IPAM plugin when CNI_COMMAND is set, the operator CLI otherwise.

use calico_ipam::{cli, plugin};
use libipam::cni::skel;

fn main() {
    if std::env::var_os("CNI_COMMAND").is_none() {
        std::process::exit(cli::main(std::env::args().skip(1).collect()));
    }
    skel::main(&plugin::CalicoIpam::BINARY)
}
