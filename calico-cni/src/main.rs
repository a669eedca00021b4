//! The `calico` CNI plugin: a thin adapter from the process to `plugin::Calico`, plus Calico's
//! two flags (`-v`, `-t`).

use calico_cni::plugin::Calico;
use calico_cni::{flags, probe};
use libipam::cni::{SpecVersion, bounds, skel};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags = match flags::parse(&args) {
        Ok(f) => f,
        Err(e) => {
            eprint!("{e}\n{}", flags::USAGE);
            std::process::exit(2);
        }
    };
    if flags.help {
        eprint!("{}", flags::USAGE);
        return;
    }
    if flags.version {
        // The second line: the build identity of the calico-ipam code inside, which runs
        // in-process for a calico-ipam whose `--version` prints the same.
        println!(
            "calico-cni {} (git {})\nipam build {}",
            env!("CARGO_PKG_VERSION"),
            env!("GIT_COMMIT"),
            String::from_utf8_lossy(calico_ipam::build_id::id())
        );
        return;
    }
    if flags.test_connection {
        let outcome = bounds::read_stdin(std::io::stdin().lock())
            .map_err(|e| format!("failed to read from stdin: {}", e.details))
            .and_then(|stdin| probe::run(&stdin));
        if let Err(e) = outcome {
            eprintln!("calico-cni: data store connection failed: {e}");
            print!("{}", probe::failure_json(&e));
            std::process::exit(1);
        }
        return;
    }
    if std::env::var_os("CNI_COMMAND").is_none() {
        eprintln!(
            "calico-cni {}: a CNI plugin, run by a container runtime with CNI_COMMAND set.\nCNI protocol versions supported: {}",
            env!("CARGO_PKG_VERSION"),
            SpecVersion::all_strings().join(", ")
        );
        std::process::exit(1);
    }
    skel::main(&Calico)
}
