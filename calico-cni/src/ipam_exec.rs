//! IPAM by delegation, the CNI way: run the plugin named in `ipam.type` from `CNI_PATH` with our
//! environment (`CNI_COMMAND` set, `IgnoreUnknown=1` put in front of `CNI_ARGS` as Calico does)
//! and the stdin the verb hands over.
//!
//! When that plugin is calico-ipam of this very build ([`crate::ipam_identity`]) and the
//! netconf allows it (`ipam_in_process`, default on), its code runs in this process instead, on
//! a thread of its own: the same dispatcher and verbs with the same environment and stdin, so
//! the same stdout bytes and exit status, read back the same way; the same host lock and store
//! lock; the same log lines (component `ipam`, this process's pid). A calico-cni that is
//! killed takes the allocation in progress with it, as the kernel takes an exec'd calico-ipam
//! with it (`PR_SET_PDEATHSIG`, below).

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, ExitStatus, Stdio};
use std::thread::JoinHandle;

use libipam::cni::skel::Outcome;
use libipam::cni::{CniError, CniResult, Command, code};

use crate::ipam_identity;

/// The IPAM plugin of an invocation: the binary `ipam.type` names in `CNI_PATH`, and whether
/// its code runs in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamPlugin {
    pub binary: PathBuf,
    pub in_process: bool,
}

impl IpamPlugin {
    /// `binary`, run in this process when `allow_in_process` and it is calico-ipam of this
    /// build; run as a process otherwise.
    pub fn new(binary: PathBuf, allow_in_process: bool) -> IpamPlugin {
        let in_process = allow_in_process && ipam_identity::same_build(&binary);
        IpamPlugin { binary, in_process }
    }
}

/// calico-ipam's verbs run on a thread with the main thread's stack size, so in-process code
/// has the room the binary's main thread has.
const IN_PROCESS_STACK: usize = 8 << 20;

/// Find `plugin` in the `CNI_PATH` directories (first hit wins).
pub fn find_plugin(plugin: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(CniError::invalid_config(format!(
            "ipam.type \"{plugin}\" must be the file name of an IPAM plugin in CNI_PATH"
        )));
    }
    path.iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            let dirs: Vec<String> = path.iter().map(|d| d.display().to_string()).collect();
            CniError::invalid_config(format!(
                "IPAM plugin \"{plugin}\" not found in CNI_PATH [{}]",
                dirs.join(":")
            ))
        })
}

/// How many delegations deep this calico-cni runs: absent (0) when a runtime ran it; every
/// plugin calico-cni runs gets one more.
pub const DEPTH_VAR: &str = "CALICO_CNI_DELEGATION_DEPTH";

/// The depth at which calico-cni refuses to delegate again. A sane chain is one deep (calico-cni
/// → calico-ipam); an `ipam.type` that leads back to calico-cni (a wrapper script, a copy under
/// another name) would otherwise fork without end.
pub const MAX_DELEGATION_DEPTH: u32 = 4;

fn depth() -> u32 {
    std::env::var(DEPTH_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Refuses (code 7) an IPAM plugin that is this very binary (`ipam.type: calico`, compared by
/// device and inode, so symlinks and hard links are caught), and any delegation from a
/// calico-cni already [`MAX_DELEGATION_DEPTH`] deep.
pub fn check_delegation(ipam_type: &str, binary: &Path) -> Result<(), CniError> {
    use std::os::unix::fs::MetadataExt;
    let depth = depth();
    if depth >= MAX_DELEGATION_DEPTH {
        return Err(CniError::invalid_config(format!(
            "IPAM delegation is {depth} plugins deep ({DEPTH_VAR}={depth}), the most calico-cni allows is {MAX_DELEGATION_DEPTH}: ipam.type \"{ipam_type}\" leads back to calico-cni; name an IPAM plugin such as calico-ipam or host-local"
        )));
    }
    let (Ok(me), Ok(it)) = (
        std::fs::metadata("/proc/self/exe"),
        std::fs::metadata(binary),
    ) else {
        // Not knowing ourselves is no reason to refuse; the depth bound still holds.
        return Ok(());
    };
    if (me.dev(), me.ino()) == (it.dev(), it.ino()) {
        return Err(CniError::invalid_config(format!(
            "ipam.type \"{ipam_type}\" is calico-cni itself ({}): a CNI plugin cannot be its own IPAM plugin; name an IPAM plugin such as calico-ipam or host-local",
            binary.display()
        )));
    }
    Ok(())
}

/// Run the IPAM plugin for `command` with `stdin`. Success returns stdout; failure the plugin's
/// own CNI error, or one describing how it failed.
pub fn exec(ipam: &IpamPlugin, command: Command, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    start(ipam, command, stdin)?.finish()
}

/// An IPAM plugin that is running; [`Running::finish`] waits for it.
pub struct Running {
    job: Job,
    binary: PathBuf,
}

enum Job {
    Process(Child),
    InProcess(JoinHandle<Outcome>),
}

/// Start the IPAM plugin for `command` and hand it `stdin`, without waiting for it to finish
/// (DEL runs the release while the kernel tears the veth down).
pub fn start(ipam: &IpamPlugin, command: Command, stdin: &[u8]) -> Result<Running, CniError> {
    start_with_args(ipam, command, stdin, None)
}

/// [`start`] with `extra` appended to `CNI_ARGS` (Calico asks calico-ipam for a specific
/// address with `;IP=<addr>`).
pub fn start_with_args(
    ipam: &IpamPlugin,
    command: Command,
    stdin: &[u8],
    extra: Option<&str>,
) -> Result<Running, CniError> {
    let args = delegated_args(std::env::var("CNI_ARGS").ok().as_deref(), extra);
    let job = if ipam.in_process {
        start_in_process(&ipam.binary, command, stdin, args)?
    } else {
        start_process(&ipam.binary, command, stdin, args)?
    };
    Ok(Running {
        job,
        binary: ipam.binary.clone(),
    })
}

/// calico-ipam's code on a thread, with the environment the binary would get: ours, with
/// `CNI_COMMAND` and the delegated `CNI_ARGS`. (`CALICO_CNI_PID` is the binary's only: in this
/// process there is no parent to watch.)
fn start_in_process(
    binary: &Path,
    command: Command,
    stdin: &[u8],
    args: String,
) -> Result<Job, CniError> {
    let stdin = stdin.to_vec();
    let vars = [
        ("CNI_COMMAND", command.as_str().to_string()),
        ("CNI_ARGS", args),
    ];
    let lookup = move |key: &str| match vars.iter().find(|(name, _)| *name == key) {
        Some((_, value)) => Some(value.clone()),
        None => std::env::var(key).ok(),
    };
    std::thread::Builder::new()
        .name("calico-ipam".to_string())
        .stack_size(IN_PROCESS_STACK)
        .spawn(move || calico_ipam::plugin::run_in_process(lookup, &stdin))
        .map(Job::InProcess)
        .map_err(|e| {
            CniError::new(
                code::IPAM_PLUGIN,
                "cannot run the IPAM plugin",
                format!("{} (in-process): {e}", binary.display()),
            )
        })
}

fn start_process(
    binary: &Path,
    command: Command,
    stdin: &[u8],
    args: String,
) -> Result<Job, CniError> {
    let mut process = Process::new(binary);
    die_with_parent(&mut process);
    let mut child = process
        .env("CNI_ARGS", args)
        .env("CNI_COMMAND", command.as_str())
        .env(PARENT_PID_VAR, std::process::id().to_string())
        .env(DEPTH_VAR, (depth() + 1).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(
                code::IPAM_PLUGIN,
                "cannot run the IPAM plugin",
                format!("{}: {e}", binary.display()),
            )
        })?;
    if let Some(mut pipe) = child.stdin.take() {
        // A plugin that exits without reading stdin closes the pipe; its exit status tells.
        // Plugins read all of stdin before they write anything, so a netconf larger than the
        // pipe buffer only waits for the plugin to read it.
        let _ = pipe.write_all(stdin);
    }
    Ok(Job::Process(child))
}

/// Tells a delegated plugin which process ran it, so that it can tell when that process is
/// gone: calico-ipam allocates nothing once its parent is not this pid any more.
pub const PARENT_PID_VAR: &str = "CALICO_CNI_PID";

/// A delegated plugin must not outlive calico-cni: when the runtime kills calico-cni (its ADD
/// timeout), an IPAM plugin left running would finish an allocation nobody will ever use,
/// after the runtime's DEL has already run. The kernel sends the child SIGKILL when calico-cni
/// dies (`PR_SET_PDEATHSIG`, kept across `execve` for a binary that is not set-user-ID).
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked exits; calico-cni forks from its
/// main thread only, which lives until the process exits. A parent that died between `fork`
/// and the `prctl` is caught by comparing `getppid` with our pid afterwards: the child then
/// fails before `exec`, and the spawn reports an error nobody is left to read.
fn die_with_parent(process: &mut Process) {
    use std::os::unix::process::CommandExt;
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before `execve`, where only
    // async-signal-safe operations are allowed. It makes two system calls (prctl, getppid)
    // and builds `io::Error`s from an errno or an `ErrorKind`, neither of which allocates; it
    // takes no lock and touches no state shared with other threads.
    unsafe {
        process.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            if nix::unistd::getppid() != parent {
                return Err(std::io::ErrorKind::Other.into());
            }
            Ok(())
        });
    }
}

impl Running {
    /// Wait for the plugin: its stdout on success, its CNI error (or a description) otherwise.
    /// Both ways of running it are read back by the same code.
    pub fn finish(self) -> Result<Vec<u8>, CniError> {
        let binary = self.binary;
        let did_not_finish = |why: String| {
            CniError::new(
                code::IPAM_PLUGIN,
                "the IPAM plugin did not finish",
                format!("{}: {why}", binary.display()),
            )
        };
        let (status, stdout) = match self.job {
            Job::Process(child) => {
                let out = child
                    .wait_with_output()
                    .map_err(|e| did_not_finish(e.to_string()))?;
                (out.status, out.stdout)
            }
            // A panic unwinds only in builds that unwind (release builds abort, as the
            // binary would).
            Job::InProcess(thread) => {
                let outcome = thread
                    .join()
                    .map_err(|_| did_not_finish("it panicked (in-process)".to_string()))?;
                // The wait status of a process that exited with the outcome's code.
                (
                    ExitStatus::from_raw((outcome.exit_code & 0xff) << 8),
                    outcome.stdout.into_bytes(),
                )
            }
        };
        if status.success() {
            return Ok(stdout);
        }
        Err(CniError::from_json(&stdout).unwrap_or_else(|| {
            CniError::new(
                code::IPAM_PLUGIN,
                format!("IPAM plugin {} failed", binary.display()),
                format!(
                    "{} with output: {}",
                    status,
                    String::from_utf8_lossy(&stdout).trim()
                ),
            )
        }))
    }
}

/// The `CNI_ARGS` an IPAM plugin is run with: `IgnoreUnknown=1` first, as Calico always puts
/// it, because the pod arguments the runtime sends (`K8S_POD_NAME=...`) are unknown to plugins
/// such as host-local, which refuse unknown arguments without it; then the runtime's
/// arguments, then `extra`.
fn delegated_args(runtime: Option<&str>, extra: Option<&str>) -> String {
    let mut args = String::from("IgnoreUnknown=1");
    for part in [runtime, extra].into_iter().flatten() {
        if !part.is_empty() {
            args.push(';');
            args.push_str(part);
        }
    }
    args
}

/// ADD through the IPAM plugin and parse its (abbreviated) result.
pub fn add(ipam: &IpamPlugin, stdin: &[u8]) -> Result<CniResult, CniError> {
    add_with_args(ipam, stdin, None)
}

/// [`add`] with `extra` appended to `CNI_ARGS`.
///
/// A plugin that succeeded has allocated, whatever it printed: when its result cannot be used
/// (not JSON, not a JSON object, a field of the wrong shape) the plugin's DEL releases what it
/// allocated before the error (code 106, naming the plugin and what is wrong) is returned.
pub fn add_with_args(
    ipam: &IpamPlugin,
    stdin: &[u8],
    extra: Option<&str>,
) -> Result<CniResult, CniError> {
    let stdout = start_with_args(ipam, Command::Add, stdin, extra)?.finish()?;
    let parsed = serde_json::from_slice::<serde_json::Value>(&stdout)
        .map_err(|e| e.to_string())
        .and_then(|value| CniResult::from_value(&value));
    parsed.map_err(|why| {
        let mut details = why;
        if let Err(e) = exec(ipam, Command::Del, stdin) {
            details.push_str(&format!("; releasing what it allocated also failed: {e}"));
        }
        CniError::new(
            code::IPAM_PLUGIN,
            format!(
                "IPAM plugin {} printed a result calico-cni cannot use",
                ipam.binary.display()
            ),
            details,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_unknown_comes_first_as_calico_puts_it() {
        assert_eq!(delegated_args(None, None), "IgnoreUnknown=1");
        assert_eq!(delegated_args(Some(""), None), "IgnoreUnknown=1");
        assert_eq!(
            delegated_args(
                Some("K8S_POD_NAME=p;K8S_POD_NAMESPACE=n"),
                Some("IP=10.0.0.5")
            ),
            "IgnoreUnknown=1;K8S_POD_NAME=p;K8S_POD_NAMESPACE=n;IP=10.0.0.5"
        );
        assert_eq!(
            delegated_args(None, Some("IP=fd00::5")),
            "IgnoreUnknown=1;IP=fd00::5"
        );
    }
}
