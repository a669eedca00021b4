//! IPAM by delegation, the CNI way: run the plugin named in `ipam.type` from `CNI_PATH` with our
//! environment (`CNI_COMMAND` overridden) and the exact stdin we received.

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
    let mut process = Process::new(binary);
    if let Some(extra) = extra {
        let args = match std::env::var("CNI_ARGS") {
            Ok(orig) if !orig.is_empty() => format!("{orig};{extra}"),
            _ => extra.to_string(),
        };
        process.env("CNI_ARGS", args);
    }
    let mut child = process
        .env("CNI_COMMAND", command.as_str())
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
        // The netconf is far smaller than a pipe buffer, so this never waits on the child.
        let _ = pipe.write_all(stdin);
    }
    Ok(Running {
        child,
        binary: binary.to_path_buf(),
    })
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
