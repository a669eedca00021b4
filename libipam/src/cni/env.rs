//! The `CNI_*` environment, validated per verb the way the reference skel does.

use std::path::PathBuf;

use super::{CniArgs, CniError, bounds};

/// The CNI verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

/// The validated invocation parameters.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// `None` when unset or empty (allowed on DEL).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Read and validate the environment through `get` (so tests need not touch the process env).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let raw_command = get("CNI_COMMAND").unwrap_or_default();
        let command = Command::parse(&raw_command).ok_or_else(|| {
            CniError::invalid_env(format!(
                "unknown CNI_COMMAND \"{raw_command}\" (expected ADD, DEL, CHECK, VERSION, STATUS or GC)"
            ))
        })?;
        let var = |k: &str| get(k).filter(|v| !v.is_empty());

        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let needs_netns = matches!(command, Command::Add | Command::Check);
        let needs_path = command != Command::Version;
        let mut missing = Vec::new();
        if needs_attachment && var("CNI_CONTAINERID").is_none() {
            missing.push("CNI_CONTAINERID");
        }
        if needs_netns && var("CNI_NETNS").is_none() {
            missing.push("CNI_NETNS");
        }
        if needs_attachment && var("CNI_IFNAME").is_none() {
            missing.push("CNI_IFNAME");
        }
        if needs_path && var("CNI_PATH").is_none() {
            missing.push("CNI_PATH");
        }
        if !missing.is_empty() {
            return Err(CniError::new(
                super::code::INVALID_ENV,
                format!(
                    "required environment variables [{}] missing",
                    missing.join(",")
                ),
                format!(
                    "{} needs them; the container runtime sets them",
                    command.as_str()
                ),
            ));
        }

        let container_id = var("CNI_CONTAINERID").unwrap_or_default();
        let ifname = var("CNI_IFNAME").unwrap_or_default();
        if needs_attachment {
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
        }
        let args = CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?;
        let path = var("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Env {
            command,
            container_id,
            netns: var("CNI_NETNS").map(PathBuf::from),
            ifname,
            args,
            path,
        })
    }

    /// Read the process environment.
    pub fn from_process() -> Result<Env, CniError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, as the spec requires, and at most
/// [`bounds::MAX_CONTAINER_ID_LEN`] bytes (it is part of every handle ID).
fn validate_container_id(id: &str) -> Result<(), CniError> {
    if id.len() > bounds::MAX_CONTAINER_ID_LEN {
        return Err(CniError::invalid_env(format!(
            "CNI_CONTAINERID \"{}\" is {} bytes long; the limit is {}",
            bounds::shown(id),
            id.len(),
            bounds::MAX_CONTAINER_ID_LEN
        )));
    }
    if bounds::is_cni_name(id) {
        Ok(())
    } else {
        Err(CniError::invalid_env(format!(
            "invalid characters in CNI_CONTAINERID \"{}\": it must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$",
            bounds::shown(id)
        )))
    }
}

/// Linux interface names: at most 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        Err(CniError::invalid_env(format!(
            "invalid CNI_IFNAME \"{name}\": at most 15 bytes, not '.' or '..', no '/', ':' or spaces"
        )))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| map.get(k).cloned())
    }

    const FULL: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    #[test]
    fn add_with_everything_parses() {
        let e = env(&FULL).expect("valid");
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.path.len(), 2);
    }

    #[test]
    fn missing_vars_are_named() {
        let e = env(&[("CNI_COMMAND", "ADD")]).expect_err("missing");
        assert_eq!(e.code, 4);
        assert!(
            e.msg
                .contains("CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn del_may_omit_netns() {
        let vars: Vec<_> = FULL
            .iter()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .map(|&(k, v)| {
                if k == "CNI_COMMAND" {
                    (k, "DEL")
                } else {
                    (k, v)
                }
            })
            .collect();
        assert!(env(&vars).expect("del").netns.is_none());
    }

    #[test]
    fn bad_ids_and_ifnames_are_code_4() {
        let mut vars = FULL.to_vec();
        vars[1] = ("CNI_CONTAINERID", "-bad");
        assert_eq!(env(&vars).expect_err("id").code, 4);
        let mut vars = FULL.to_vec();
        vars[3] = ("CNI_IFNAME", "a-very-long-interface");
        assert_eq!(env(&vars).expect_err("ifname").code, 4);
        assert_eq!(env(&[("CNI_COMMAND", "FOO")]).expect_err("cmd").code, 4);
    }

    #[test]
    fn version_needs_nothing_else() {
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }
}
