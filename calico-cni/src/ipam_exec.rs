//! IPAM by delegation, the CNI way: run the plugin named in `ipam.type` from `CNI_PATH` with our
//! environment (`CNI_COMMAND` set, `IgnoreUnknown=1` put in front of `CNI_ARGS` as Calico does)
//! and the stdin the verb hands over.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};

use libipam::cni::{CniError, CniResult, Command, code};

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

/// Run `binary` for `command` with `stdin`. Success returns stdout; failure the plugin's own CNI
/// error, or one describing how it failed.
pub fn exec(binary: &Path, command: Command, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    start(binary, command, stdin)?.finish()
}

/// An IPAM plugin that is running; [`Running::finish`] waits for it.
pub struct Running {
    child: Child,
    binary: PathBuf,
}

/// Start `binary` for `command` and hand it `stdin`, without waiting for it to finish (DEL runs
/// the release while the kernel tears the veth down).
pub fn start(binary: &Path, command: Command, stdin: &[u8]) -> Result<Running, CniError> {
    start_with_args(binary, command, stdin, None)
}

/// [`start`] with `extra` appended to `CNI_ARGS` (Calico asks calico-ipam for a specific
/// address with `;IP=<addr>`).
pub fn start_with_args(
    binary: &Path,
    command: Command,
    stdin: &[u8],
    extra: Option<&str>,
) -> Result<Running, CniError> {
    let args = delegated_args(std::env::var("CNI_ARGS").ok().as_deref(), extra);
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
    Ok(Running {
        child,
        binary: binary.to_path_buf(),
    })
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
    pub fn finish(self) -> Result<Vec<u8>, CniError> {
        let binary = self.binary;
        let out = self.child.wait_with_output().map_err(|e| {
            CniError::new(
                code::IPAM_PLUGIN,
                "the IPAM plugin did not finish",
                format!("{}: {e}", binary.display()),
            )
        })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(CniError::from_json(&out.stdout).unwrap_or_else(|| {
            CniError::new(
                code::IPAM_PLUGIN,
                format!("IPAM plugin {} failed", binary.display()),
                format!(
                    "{} with output: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim()
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
pub fn add(binary: &Path, stdin: &[u8]) -> Result<CniResult, CniError> {
    add_with_args(binary, stdin, None)
}

/// [`add`] with `extra` appended to `CNI_ARGS`.
pub fn add_with_args(
    binary: &Path,
    stdin: &[u8],
    extra: Option<&str>,
) -> Result<CniResult, CniError> {
    let stdout = start_with_args(binary, Command::Add, stdin, extra)?.finish()?;
    let value: serde_json::Value = serde_json::from_slice(&stdout).map_err(|e| {
        CniError::new(
            code::IPAM_PLUGIN,
            format!(
                "IPAM plugin {} printed an unreadable result",
                binary.display()
            ),
            e.to_string(),
        )
    })?;
    CniResult::from_value(&value)
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
