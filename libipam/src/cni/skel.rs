//! The verb dispatcher: validates the environment and the configuration version, calls the
//! plugin, and turns the outcome into stdout bytes and an exit status.

use serde_json::json;

use super::{
    CniError, CniResult, Command, Env, NetConf, SpecVersion, bounds, netconf::parse_version,
};

/// Everything a verb needs: the environment, the raw stdin (passed verbatim to a delegated
/// plugin) and its decoded form.
pub struct Request {
    pub env: Env,
    pub stdin: Vec<u8>,
    pub conf: NetConf,
    pub version: SpecVersion,
}

/// A CNI plugin: one method per verb (VERSION is answered here).
pub trait Plugin {
    /// Called before anything is logged (to set up logging): with the configuration once it is
    /// decoded, or with `None` when the invocation failed before that.
    fn configure(&self, _conf: Option<&NetConf>) {}

    fn add(&self, req: &Request) -> Result<CniResult, CniError>;
    fn del(&self, req: &Request) -> Result<(), CniError>;
    fn check(&self, req: &Request) -> Result<(), CniError>;
    fn status(&self, req: &Request) -> Result<(), CniError>;
    fn gc(&self, req: &Request) -> Result<(), CniError>;
}

/// What to print on stdout and the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: i32,
    pub stdout: String,
}

impl Outcome {
    fn ok(stdout: String) -> Outcome {
        Outcome {
            exit_code: 0,
            stdout,
        }
    }

    fn err(e: &CniError, version: SpecVersion) -> Outcome {
        Outcome {
            exit_code: 1,
            stdout: e.to_json(version),
        }
    }
}

/// Run one invocation. `lookup` reads the environment; `stdin` is the whole of stdin.
///
/// Every failure is logged here, at error level with its code, message and details, inside the
/// verb's span (container ID and pod), so both plugins log every failed verb the same way.
pub fn run(plugin: &impl Plugin, lookup: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    if stdin.len() as u64 > bounds::MAX_STDIN_BYTES {
        plugin.configure(None);
        let command = lookup("CNI_COMMAND").unwrap_or_default();
        return failed(&command, &bounds::stdin_too_large(), SpecVersion::LATEST);
    }
    let env = match Env::from_lookup(&lookup) {
        Ok(env) => env,
        Err(e) => {
            plugin.configure(None);
            let command = lookup("CNI_COMMAND").unwrap_or_default();
            return failed(&command, &e, claimed_version(stdin));
        }
    };
    if env.command == Command::Version {
        return version_reply(stdin);
    }
    // The configuration is decoded (the one decode of stdin on the way to a verb), its
    // version read and its bounds checked before the plugin touches anything (its log file
    // included); a configuration that fails is logged to stderr.
    let checked = match NetConf::parse(stdin) {
        Err(e) => Err((e, claimed_version(stdin))),
        Ok(conf) => match parse_version(&conf.cni_version) {
            Err(e) => Err((e, SpecVersion::LATEST)),
            Ok(version) => match bounds::check_netconf(&conf) {
                Err(e) => Err((e, version)),
                Ok(()) => Ok((conf, version)),
            },
        },
    };
    plugin.configure(checked.as_ref().ok().map(|(conf, _)| conf));
    // After `configure`: a span opened before the logger exists would stay silent.
    let span = verb_span(&env);
    let _in_verb = span.enter();
    let command = env.command.as_str();
    let (conf, version) = match checked {
        Ok(ok) => ok,
        Err((e, version)) => return failed(command, &e, version),
    };
    if let Some((_, pod)) = env.args.pod()
        && let Ok(node) = conf.node_name()
    {
        span.record(
            "WorkloadEndpoint",
            workload_endpoint_name(&node, pod, &env.ifname).as_str(),
        );
    }
    tracing::debug!(
        IfName = env.ifname.as_str(),
        Netns = env
            .netns
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
            .as_str(),
        "CNI {command} starting"
    );
    if let Err(e) = gate(env.command, version) {
        return failed(command, &e, version);
    }
    let req = Request {
        env,
        stdin: stdin.to_vec(),
        conf,
        version,
    };
    let result = match req.env.command {
        Command::Add => plugin.add(&req).map(|r| r.to_json(version)),
        Command::Del => plugin.del(&req).map(|_| String::new()),
        Command::Check => plugin.check(&req).map(|_| String::new()),
        Command::Status => plugin.status(&req).map(|_| String::new()),
        Command::Gc => plugin.gc(&req).map(|_| String::new()),
        Command::Version => unreachable_version(),
    };
    match result {
        Ok(out) => {
            tracing::info!("CNI {command} succeeded");
            Outcome::ok(out)
        }
        Err(e) => failed(command, &e, version),
    }
}

/// The span of one invocation: Calico's identifying fields, on every line logged inside it.
fn verb_span(env: &Env) -> tracing::Span {
    let span = tracing::info_span!(
        "cni",
        ContainerID = env.container_id.as_str(),
        Namespace = tracing::field::Empty,
        Pod = tracing::field::Empty,
        WorkloadEndpoint = tracing::field::Empty,
    );
    if let Some((namespace, pod)) = env.args.pod() {
        span.record("Namespace", namespace);
        span.record("Pod", pod);
    }
    span
}

/// Calico's WorkloadEndpoint name for a Kubernetes pod: node, `k8s`, pod and interface joined by
/// `-`, with each part's own dashes doubled.
fn workload_endpoint_name(node: &str, pod: &str, ifname: &str) -> String {
    let esc = |s: &str| s.replace('-', "--");
    format!("{}-k8s-{}-{}", esc(node), esc(pod), esc(ifname))
}

/// Log a failed verb and turn it into its outcome.
fn failed(command: &str, e: &CniError, version: SpecVersion) -> Outcome {
    tracing::error!(
        code = e.code,
        details = e.details.as_str(),
        "CNI {command} failed: {}",
        e.msg
    );
    Outcome::err(e, version)
}

/// The whole process for a plugin binary: read stdin, run the verb from the process environment,
/// print the outcome on stdout and exit with its status.
///
/// An ADD whose result cannot be written (stdout closed or full) is undone by running DEL
/// with the same input, and the process exits 1: the runtime never learns of that
/// attachment, so nothing may be left of it. Other outcomes that cannot be written only show
/// in the exit status.
pub fn main(plugin: &impl Plugin) -> ! {
    use std::io::Write;
    let env = |k: &str| std::env::var(k).ok();
    let (stdin, outcome) = match bounds::read_stdin(std::io::stdin().lock()) {
        Ok(stdin) => {
            let outcome = run(plugin, env, &stdin);
            (stdin, outcome)
        }
        Err(e) => {
            plugin.configure(None);
            let command = env("CNI_COMMAND").unwrap_or_default();
            (Vec::new(), failed(&command, &e, SpecVersion::LATEST))
        }
    };
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(outcome.stdout.as_bytes())
        .and_then(|()| out.flush());
    if let Err(e) = written
        && outcome.exit_code == 0
        && env("CNI_COMMAND").as_deref() == Some(Command::Add.as_str())
    {
        let undo = run(
            plugin,
            |k| match k {
                "CNI_COMMAND" => Some(Command::Del.as_str().to_owned()),
                _ => env(k),
            },
            &stdin,
        );
        eprintln!(
            "cannot write the ADD result to stdout ({e}); the attachment was {}",
            if undo.exit_code == 0 {
                "undone".to_owned()
            } else {
                format!("not fully undone: {}", undo.stdout)
            }
        );
        std::process::exit(1)
    }
    std::process::exit(outcome.exit_code)
}

/// The `cniVersion` the caller claims, for an error found before the netconf decoded (it is
/// reported in that version when it is one we know). Only failures pay for this second decode.
fn claimed_version(stdin: &[u8]) -> SpecVersion {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().and_then(SpecVersion::parse))
        .unwrap_or(SpecVersion::LATEST)
}

fn unreachable_version() -> Result<String, CniError> {
    Err(CniError::internal("VERSION is answered before dispatch"))
}

/// CHECK needs 0.4.0, STATUS and GC need 1.1.0 (the reference skel's rules).
fn gate(command: Command, version: SpecVersion) -> Result<(), CniError> {
    let allowed = match command {
        Command::Check => version.allows_check(),
        Command::Status | Command::Gc => version.allows_status_and_gc(),
        _ => true,
    };
    if allowed {
        Ok(())
    } else {
        Err(CniError::new(
            super::code::INCOMPATIBLE_VERSION,
            format!("config version does not allow {}", command.as_str()),
            format!("the configuration says cniVersion {version}"),
        ))
    }
}

fn version_reply(stdin: &[u8]) -> Outcome {
    let asked = if stdin.iter().all(u8::is_ascii_whitespace) {
        SpecVersion::LATEST.as_str().to_string()
    } else {
        match serde_json::from_slice::<serde_json::Value>(stdin) {
            Ok(v) => v
                .get("cniVersion")
                .and_then(|v| v.as_str())
                .unwrap_or(SpecVersion::LATEST.as_str())
                .to_string(),
            Err(e) => {
                return Outcome::err(&CniError::decode(e.to_string()), SpecVersion::LATEST);
            }
        }
    };
    let reply = json!({"cniVersion": asked, "supportedVersions": SpecVersion::all_strings()});
    Outcome::ok(reply.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Echo;
    impl Plugin for Echo {
        fn add(&self, _req: &Request) -> Result<CniResult, CniError> {
            Ok(CniResult::default())
        }
        fn del(&self, _req: &Request) -> Result<(), CniError> {
            Ok(())
        }
        fn check(&self, _req: &Request) -> Result<(), CniError> {
            Ok(())
        }
        fn status(&self, _req: &Request) -> Result<(), CniError> {
            Err(CniError::new(50, "not available", ""))
        }
        fn gc(&self, _req: &Request) -> Result<(), CniError> {
            Ok(())
        }
    }

    fn run_with(cmd: &str, stdin: &str) -> Outcome {
        let vars: HashMap<&str, &str> = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
        .into();
        run(
            &Echo,
            |k| vars.get(k).map(|v| v.to_string()),
            stdin.as_bytes(),
        )
    }

    #[test]
    fn version_echoes_and_lists() {
        let o = run_with("VERSION", r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(o.exit_code, 0);
        assert_eq!(
            o.stdout,
            r#"{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
        );
    }

    #[test]
    fn gates_and_errors_use_config_version() {
        let o = run_with("CHECK", r#"{"cniVersion":"0.3.1","name":"n"}"#);
        assert_eq!(o.exit_code, 1);
        assert!(
            o.stdout.contains(r#""cniVersion":"0.3.1","code":1"#),
            "{}",
            o.stdout
        );
        let o = run_with("STATUS", r#"{"cniVersion":"1.1.0","name":"n"}"#);
        assert!(o.stdout.contains(r#""code":50"#), "{}", o.stdout);
        let o = run_with("ADD", r#"{"cniVersion":"0.2.0","name":"n"}"#);
        assert!(o.stdout.contains(r#""code":1"#), "{}", o.stdout);
        let o = run_with("ADD", "not json");
        assert!(o.stdout.contains(r#""code":6"#), "{}", o.stdout);
    }

    #[test]
    fn add_prints_result_in_config_version() {
        let o = run_with("ADD", r#"{"cniVersion":"1.0.0","name":"n"}"#);
        assert_eq!(o.exit_code, 0);
        assert_eq!(o.stdout, r#"{"cniVersion":"1.0.0","ips":[],"dns":{}}"#);
        assert_eq!(
            run_with("DEL", r#"{"cniVersion":"1.0.0","name":"n"}"#).stdout,
            ""
        );
    }
}
