//! The operator CLI (run with arguments and no CNI_COMMAND), with calicoctl's spellings:
//! `ipam show|check|release|configure|split`, `get|apply|patch|delete ippool`, plus the older
//! `pool apply|list|delete` and the `ipam` commands without `ipam`.

mod args;
mod configure;
mod help;
pub mod pool;
mod release;
mod report;
pub mod resources;
mod show;
mod split;
mod table;

use std::path::PathBuf;

use anyhow::{Context, Result};
use libipam::cni::netconf::{DEFAULT_DATASTORE_PATH, DatastoreType, EtcdSettings};

use crate::store::{Store, StoreConfig};
use args::{Args, UsageError, usage};
use libipam::datastore::kube::ClientOptions;

/// Exit codes (documented in the global help and the README).
pub mod exit {
    /// Success; `ipam check` found nothing wrong.
    pub const OK: i32 = 0;
    /// The command failed: bad input, a refused change, a datastore error.
    pub const FAILED: i32 = 1;
    /// The command line is wrong.
    pub const USAGE: i32 = 2;
    /// `ipam check` found problems.
    pub const PROBLEMS: i32 = 3;
}

/// `calico-ipam 0.1.0 (git 0123456789ab)`.
pub fn version() -> String {
    format!(
        "calico-ipam {} (git {})\nbuild {}",
        env!("CARGO_PKG_VERSION"),
        env!("GIT_COMMIT"),
        String::from_utf8_lossy(crate::build_id::id())
    )
}

/// Run the CLI; the returned code is the process exit status.
pub fn main(argv: Vec<String>) -> i32 {
    let words: Vec<String> = argv
        .iter()
        .filter(|a| !a.starts_with('-'))
        .cloned()
        .collect();
    match run(argv) {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            let cmd = command_path(&words);
            eprintln!("error: {e:#}\nRun `calico-ipam {cmd}--help` for usage.");
            exit::USAGE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::FAILED
        }
    }
}

/// `ipam show ` for `["ipam", "show", "10.0.0.1"]`: the words naming the command.
fn command_path(words: &[&str]) -> String {
    const COMMANDS: &[&str] = &[
        "ipam",
        "show",
        "check",
        "release",
        "configure",
        "split",
        "get",
        "apply",
        "patch",
        "delete",
        "pool",
        "version",
    ];
    let mut path = String::new();
    for w in words.iter().take(2) {
        if COMMANDS.contains(w) || (words.first() == Some(&"pool") && !path.is_empty()) {
            path.push_str(w);
            path.push(' ');
        }
    }
    path
}

fn run(argv: Vec<String>) -> Result<i32> {
    let mut args = Args::new(argv);
    if args.flag(&["-h", "--help"]) {
        print!("{}", help::for_words(&args.words()));
        return Ok(exit::OK);
    }
    if args.flag(&["-v", "--version"]) {
        println!("{}", version());
        return Ok(exit::OK);
    }
    let store_cfg = store_config(&mut args)?;
    let Some(command) = args.positional() else {
        eprint!("{}", help::GLOBAL);
        return Ok(exit::USAGE);
    };
    let store = &store_cfg;
    match command.as_str() {
        "ipam" => match args.positional() {
            Some(sub) => ipam(store, &sub, args),
            None => {
                eprint!("{}", help::IPAM);
                Ok(exit::USAGE)
            }
        },
        "show" | "check" | "release" | "configure" | "split" => ipam(store, &command, args),
        "get" => {
            let output = args.value(&["-o", "--output"])?.unwrap_or_default();
            ippool_kind(&mut args, "get")?;
            let name = args.positional();
            args.finish()?;
            pool::get(store, name.as_deref(), &output)
        }
        "apply" | "create" | "replace" => {
            let Some(file) = args.value(&["-f", "--filename"])? else {
                usage!("{command} needs -f FILE");
            };
            args.finish()?;
            pool::apply(store, &file)
        }
        "patch" => {
            let Some(patch) = args.value(&["-p", "--patch"])? else {
                usage!("patch ippool needs -p PATCH");
            };
            ippool_kind(&mut args, "patch")?;
            let Some(name) = args.positional() else {
                usage!("patch ippool needs a NAME");
            };
            args.finish()?;
            pool::patch(store, &name, &patch)
        }
        "delete" => {
            ippool_kind(&mut args, "delete")?;
            let Some(name) = args.positional() else {
                usage!("delete ippool needs a NAME");
            };
            args.finish()?;
            pool::delete(store, &name)
        }
        "pool" => match args.positional().as_deref() {
            Some("apply") => {
                let Some(file) = args.value(&["-f", "--filename"])? else {
                    usage!("pool apply needs -f FILE");
                };
                args.finish()?;
                pool::apply(store, &file)
            }
            Some("list" | "ls" | "get") => {
                let output = args.value(&["-o", "--output"])?.unwrap_or_default();
                let name = args.positional();
                args.finish()?;
                pool::get(store, name.as_deref(), &output)
            }
            Some("delete" | "rm") => {
                let Some(name) = args.positional() else {
                    usage!("pool delete needs a NAME");
                };
                args.finish()?;
                pool::delete(store, &name)
            }
            Some(other) => usage!("unknown pool command {other:?}: use apply, list or delete"),
            None => {
                eprint!("{}", help::POOL);
                Ok(exit::USAGE)
            }
        },
        "version" => {
            args.finish()?;
            println!("{}", version());
            Ok(exit::OK)
        }
        "help" => {
            print!("{}", help::for_words(&args.words()));
            Ok(exit::OK)
        }
        other => usage!("unknown command {other:?}"),
    }
}

/// `ipam SUB ...` (and `SUB ...` without `ipam`). Flag values are taken before positional
/// words, so that a value is never mistaken for one.
fn ipam(store: &StoreConfig, sub: &str, mut args: Args) -> Result<i32> {
    match sub {
        "show" => {
            let opts = show::Options {
                ip: args.value(&["--ip"])?,
                blocks: args.flag(&["--show-blocks"]),
                borrowed: args.flag(&["--show-borrowed"]),
                configuration: args.flag(&["--show-configuration"]),
                output: args.value(&["-o", "--output"])?.unwrap_or_default(),
            };
            args.finish()?;
            show::run(store, &opts)
        }
        "check" => {
            let opts = report::CheckOptions {
                report: args.value(&["-o", "--output"])?,
                show_all_ips: args.flag(&["--show-all-ips"]),
                show_problem_ips: args.flag(&["--show-problem-ips"]),
            };
            args.finish()?;
            report::check(store, &opts)
        }
        "release" => {
            let ip = args.value(&["--ip"])?;
            let reports = args.values(&["--from-report"])?;
            let force = args.flag(&["--force"]);
            args.finish()?;
            match (ip, reports.is_empty()) {
                (Some(ip), true) => release::ip(store, &ip),
                (None, false) => release::from_reports(store, &reports, force),
                (Some(_), false) => usage!("give either --ip or --from-report, not both"),
                (None, true) => usage!("release needs --ip=IP or --from-report=REPORT"),
            }
        }
        "configure" => {
            let opts = configure::Options {
                strict_affinity: args.value(&["--strictaffinity"])?,
                max_blocks_per_host: args.value(&["--max-blocks-per-host"])?,
                auto_allocate_blocks: args.value(&["--autoallocateblocks"])?,
                kubevirt_ip_persistence: args.value(&["--kubevirt-ip-persistence"])?,
            };
            args.finish()?;
            configure::run(store, opts)
        }
        "split" => {
            let cidr = args.value(&["--cidr"])?;
            let name = args.value(&["--name"])?;
            let Some(number) = args.positional() else {
                usage!("split needs the NUMBER of pools to split into");
            };
            args.finish()?;
            split::run(store, &number, cidr.as_deref(), name.as_deref())
        }
        other => {
            usage!("unknown ipam command {other:?}: use check, release, show, split or configure")
        }
    }
}

/// The resource kind after `get`/`patch`/`delete`: only IPPools are managed here.
fn ippool_kind(args: &mut Args, verb: &str) -> Result<()> {
    match args.positional().as_deref() {
        Some("ippool" | "ippools" | "ipp" | "ipps" | "pool" | "pools") => Ok(()),
        Some(other) => {
            usage!("{verb}: this CLI manages IPPools only, not {other:?} (use `{verb} ippool`)")
        }
        None => usage!("{verb} needs a resource kind: {verb} ippool ..."),
    }
}

/// `--datastore-type`, `--datastore-path`, `--kubeconfig`, `--calico-api-group`,
/// `--etcd-endpoints`, `--etcd-ca-cert-file`, `--etcd-cert-file`, `--etcd-key-file`, else
/// DATASTORE_TYPE, DATASTORE_PATH, KUBECONFIG, CALICO_API_GROUP, ETCD_ENDPOINTS,
/// ETCD_CA_CERT_FILE, ETCD_CERT_FILE, ETCD_KEY_FILE.
fn store_config(args: &mut Args) -> Result<StoreConfig> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let kind = args
        .value(&["--datastore-type"])?
        .or_else(|| env("DATASTORE_TYPE"));
    let kind = match kind.as_deref() {
        None | Some("local") => DatastoreType::Local,
        Some("kubernetes") => DatastoreType::Kubernetes,
        Some("etcdv3") => DatastoreType::Etcdv3,
        Some(other) => usage!("unknown datastore type {other:?}: use local, kubernetes or etcdv3"),
    };
    let path = args
        .value(&["--datastore-path"])?
        .or_else(|| env("DATASTORE_PATH"))
        .unwrap_or_else(|| DEFAULT_DATASTORE_PATH.to_string());
    let kubeconfig = args.value(&["--kubeconfig"])?.or_else(|| env("KUBECONFIG"));
    let api_group = match args
        .value(&["--calico-api-group"])?
        .or_else(|| env("CALICO_API_GROUP"))
    {
        None => None,
        Some(g) => match g.parse::<libipam::datastore::api_group::ApiGroup>() {
            Ok(g) => Some(g),
            Err(e) => usage!("{e}"),
        },
    };
    let mut etcd_value = |flag: &str, var: &str| -> Result<Option<String>> {
        Ok(args.value(&[flag])?.or_else(|| env(var)))
    };
    let etcd = EtcdSettings {
        endpoints: etcd_value("--etcd-endpoints", "ETCD_ENDPOINTS")?,
        ca_cert_file: etcd_value("--etcd-ca-cert-file", "ETCD_CA_CERT_FILE")?.map(PathBuf::from),
        cert_file: etcd_value("--etcd-cert-file", "ETCD_CERT_FILE")?.map(PathBuf::from),
        key_file: etcd_value("--etcd-key-file", "ETCD_KEY_FILE")?.map(PathBuf::from),
    };
    Ok(StoreConfig {
        kind,
        path: PathBuf::from(path),
        kubeconfig: kubeconfig.map(PathBuf::from),
        // The operator sees the datastore as it is: no cache.
        cache: None,
        client: ClientOptions {
            deadline: Some(tokio::time::Instant::now() + CLI_TIMEOUT),
            api_group,
            ..ClientOptions::default()
        },
        etcd,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_is_per_command() {
        assert_eq!(help::for_words(&["pool"]), help::POOL);
        assert_eq!(help::for_words(&["ipam", "check"]), help::CHECK);
        assert_eq!(help::for_words(&["check"]), help::CHECK);
        assert_eq!(help::for_words(&["pool", "delete", "x"]), help::DELETE);
        assert_eq!(help::for_words(&["help", "get"]), help::GET);
        assert_eq!(help::for_words(&[]), help::GLOBAL);
    }

    #[test]
    fn usage_errors_name_the_command() {
        assert_eq!(command_path(&["ipam", "show", "x"]), "ipam show ");
        assert_eq!(command_path(&["pool", "apply"]), "pool apply ");
        assert_eq!(command_path(&["bogus"]), "");
    }
}
