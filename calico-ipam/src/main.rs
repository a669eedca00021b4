//! `calico-ipam`: the CNI IPAM plugin when CNI_COMMAND is set, the operator CLI otherwise.

use std::io::{Read, Write};

use libipam::cni::{CniError, SpecVersion, code, skel};

mod cli;
mod errors;
mod lock;
mod plugin;
mod store;

fn main() {
    if std::env::var_os("CNI_COMMAND").is_none() {
        std::process::exit(cli::main(std::env::args().skip(1).collect()));
    }
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        println!(
            "{}",
            CniError::new(code::IO, "cannot read stdin", e.to_string())
                .to_json(SpecVersion::LATEST)
        );
        std::process::exit(1);
    }
    let outcome = skel::run(&plugin::CalicoIpam, |k| std::env::var(k).ok(), &stdin);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}
