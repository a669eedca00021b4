//! The `calico` CNI plugin: a thin adapter from the process to `plugin::Calico`.

use calico_cni::plugin::Calico;
use libipam::cni::{SpecVersion, skel};

fn main() {
    if std::env::var_os("CNI_COMMAND").is_none() {
        if matches!(std::env::args().nth(1).as_deref(), Some("-v" | "--version")) {
            println!("calico-cni {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        eprintln!(
            "calico-cni {}: a CNI plugin, run by a container runtime with CNI_COMMAND set.\nCNI protocol versions supported: {}",
            env!("CARGO_PKG_VERSION"),
            SpecVersion::all_strings().join(", ")
        );
        std::process::exit(1);
    }
    skel::main(&Calico)
}
