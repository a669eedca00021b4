//! The operator CLI (run with arguments and no CNI_COMMAND), following calicoctl's conventions:
//! `pool apply|list|delete`, `show`, `release`, `check`, `configure`.

mod args;
pub mod pool;
mod report;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use libipam::cni::netconf::{DEFAULT_DATASTORE_PATH, DatastoreType};

use crate::store::{Store, StoreConfig};
use args::Args;

const USAGE: &str = "\
usage: calico-ipam [GLOBAL FLAGS] COMMAND

commands:
  pool apply -f FILE              create or update IPPools from YAML or JSON (one or many documents;
                                  projectcalico.org/v3 or crd.projectcalico.org/v1; FILE may be -)
  pool list [-o wide|json]        list IPPools
  pool delete NAME                delete an IPPool (its allocations stay until released)
  show [--show-blocks] [--show-configuration] [-o json]
                                  pool usage (and blocks, and the IPAM configuration)
  show --ip IP [-o json]          who holds one address: block, handle, pod, node
  release --ip IP                 release one address
  check                           verify that allocations, handles and blocks agree (exit 1 if not)
  configure [--strictaffinity true|false] [--max-blocks-per-host N] [--autoallocateblocks true|false]
                                  change the IPAM configuration

global flags (else the environment):
  --datastore-type local|kubernetes   DATASTORE_TYPE   (default local)
  --datastore-path DIR                DATASTORE_PATH   (default /var/lib/calico/ipam)
  --kubeconfig FILE                   KUBECONFIG
";

/// Run the CLI; the returned code is the process exit status.
pub fn main(argv: Vec<String>) -> i32 {
    match run(argv) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn run(argv: Vec<String>) -> Result<i32> {
    let mut args = Args::new(argv);
    if args.flag("-h") || args.flag("--help") {
        print!("{USAGE}");
        return Ok(0);
    }
    let store_cfg = store_config(&mut args)?;
    let Some(command) = args.positional() else {
        eprint!("{USAGE}");
        return Ok(2);
    };
    let store = &store_cfg;
    match command.as_str() {
        "pool" => match args.positional().as_deref() {
            Some("apply") => {
                let file = args.value("-f")?.or(args.value("--filename")?);
                let Some(file) = file else {
                    bail!("pool apply needs -f FILE")
                };
                args.finish()?;
                pool::apply(store, &file)
            }
            Some("list") | Some("ls") | Some("get") => {
                let output = args.value("-o")?.unwrap_or_default();
                args.finish()?;
                pool::list(store, &output)
            }
            Some("delete") | Some("rm") => {
                let Some(name) = args.positional() else {
                    bail!("pool delete needs a NAME")
                };
                args.finish()?;
                pool::delete(store, &name)
            }
            other => bail!("unknown pool command {:?}\n\n{USAGE}", other.unwrap_or("")),
        },
        "show" => {
            let blocks = args.flag("--show-blocks");
            let config = args.flag("--show-configuration");
            let ip = args.value("--ip")?;
            let output = args.value("-o")?.unwrap_or_default();
            args.finish()?;
            match ip {
                Some(ip) => report::show_ip(store, &ip, &output),
                None => report::show(store, blocks, config, &output),
            }
        }
        "release" => {
            let Some(ip) = args.value("--ip")? else {
                bail!("release needs --ip IP")
            };
            args.finish()?;
            report::release(store, &ip)
        }
        "check" => {
            args.finish()?;
            report::check(store)
        }
        "configure" => {
            let strict = args.value("--strictaffinity")?;
            let max_blocks = args.value("--max-blocks-per-host")?;
            let auto = args.value("--autoallocateblocks")?;
            args.finish()?;
            report::configure(store, strict, max_blocks, auto)
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

/// `--datastore-type`, `--datastore-path`, `--kubeconfig`, else DATASTORE_TYPE, DATASTORE_PATH,
/// KUBECONFIG.
fn store_config(args: &mut Args) -> Result<StoreConfig> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let kind = args
        .value("--datastore-type")?
        .or_else(|| env("DATASTORE_TYPE"));
    let kind = match kind.as_deref() {
        None | Some("local") => DatastoreType::Local,
        Some("kubernetes") => DatastoreType::Kubernetes,
        Some(other) => bail!("unknown datastore type {other:?}: use local or kubernetes"),
    };
    let path = args
        .value("--datastore-path")?
        .or_else(|| env("DATASTORE_PATH"))
        .unwrap_or_else(|| DEFAULT_DATASTORE_PATH.to_string());
    let kubeconfig = args.value("--kubeconfig")?.or_else(|| env("KUBECONFIG"));
    Ok(StoreConfig {
        kind,
        path: PathBuf::from(path),
        kubeconfig: kubeconfig.map(PathBuf::from),
        // The operator sees the datastore as it is: no cache.
        cache: None,
    })
}

/// Open the datastore and run `f` on it, on a current_thread runtime, within [`CLI_TIMEOUT`].
fn with_store<T>(cfg: &StoreConfig, f: impl AsyncFnOnce(Store) -> T) -> Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        tokio::time::timeout(CLI_TIMEOUT, async {
            let store = Store::open(cfg).await.context("opening the datastore")?;
            Ok(f(store).await)
        })
        .await
        .map_err(|_| anyhow::anyhow!("the datastore did not answer within {CLI_TIMEOUT:?}"))?
    })
}

/// How long one CLI command may take.
const CLI_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
