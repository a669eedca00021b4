//! The `calico` CNI plugin: a thin adapter from the process to `plugin::Calico`.

use std::io::{Read, Write};

use calico_cni::plugin::Calico;
use libipam::cni::{NetConf, skel};

fn main() {
    if std::env::var_os("CNI_COMMAND").is_none() {
        let arg = std::env::args().nth(1).unwrap_or_default();
        if arg == "-v" || arg == "--version" {
            println!("calico-cni {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        eprintln!(
            "calico-cni {}: a CNI plugin; run by a container runtime with CNI_COMMAND set.\nCNI protocol versions supported: {}",
            env!("CARGO_PKG_VERSION"),
            libipam::cni::SpecVersion::all_strings().join(", ")
        );
        std::process::exit(1);
    }
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let err =
            libipam::cni::CniError::new(libipam::cni::code::IO, "cannot read stdin", e.to_string());
        println!("{}", err.to_json(libipam::cni::SpecVersion::LATEST));
        std::process::exit(1);
    }
    if let Ok(conf) = NetConf::parse(&stdin) {
        calico_cni::log::init(conf.log_level.as_deref(), conf.log_file_path.as_deref());
    }
    let outcome = skel::run(&Calico, |k| std::env::var(k).ok(), &stdin);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}
