//! What the plugins accept from their caller, checked before anything is read from or written
//! to a datastore: the size of each input, the network name's spelling, and paths that must be
//! absolute. libipam/DESIGN.md lists every bound and what happens past it.

use std::io::{self, Read};
use std::path::Path;

use super::{CniError, NetConf};

/// Largest netconf read from stdin. Calico's conflists are a few KiB; a `prevResult` or
/// `cni.dev/valid-attachments` list of thousands of entries still fits.
pub const MAX_STDIN_BYTES: u64 = 1024 * 1024;

/// Longest network `name`. It is part of every handle ID (`<name>.<container ID>`); with
/// [`MAX_CONTAINER_ID_LEN`] a handle ID stays within Kubernetes' 253-character object names.
pub const MAX_NETWORK_NAME_LEN: usize = 100;

/// Longest `CNI_CONTAINERID` (runtimes use 64 hex digits).
pub const MAX_CONTAINER_ID_LEN: usize = 128;

/// Longest `CNI_ARGS`. Runtimes send five or six short pairs (a few hundred bytes).
pub const MAX_CNI_ARGS_LEN: usize = 4096;

/// Longest `K8S_POD_NAME` (a Kubernetes object name).
pub const MAX_POD_NAME_LEN: usize = 253;

/// Longest `K8S_POD_NAMESPACE` (a Kubernetes DNS label).
pub const MAX_NAMESPACE_LEN: usize = 63;

/// Longest node name (a Kubernetes Node's name), from any source.
pub const MAX_NODE_NAME_LEN: usize = 253;

/// Reads all of `r` when it holds at most `limit` bytes; `Ok(None)` when it holds more (it is
/// then left unread past `limit + 1` bytes).
pub fn read_at_most(r: impl Read, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    r.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= limit).then_some(buf))
}

/// A plugin's stdin: at most [`MAX_STDIN_BYTES`], else code 7 naming the limit; a read
/// failure is code 5.
pub fn read_stdin(r: impl Read) -> Result<Vec<u8>, CniError> {
    match read_at_most(r, MAX_STDIN_BYTES) {
        Ok(Some(stdin)) => Ok(stdin),
        Ok(None) => Err(stdin_too_large()),
        Err(e) => Err(CniError::new(
            super::code::IO,
            "cannot read stdin",
            e.to_string(),
        )),
    }
}

/// The error for a netconf over [`MAX_STDIN_BYTES`].
pub fn stdin_too_large() -> CniError {
    CniError::invalid_config(format!(
        "the network configuration on stdin is larger than {MAX_STDIN_BYTES} bytes (1 MiB), the most a plugin reads"
    ))
}

/// How much of a rejected value a message repeats.
const SHOWN: usize = 64;

/// The start of a value for a message, cut at a character boundary.
pub fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}...", &value[..cut]),
        None => value.to_owned(),
    }
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`: the spec's rule for network names and container IDs.
pub fn is_cni_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Checks a decoded netconf (code 7, naming the field): the network name as the spec spells
/// it and within [`MAX_NETWORK_NAME_LEN`], the node name within [`MAX_NODE_NAME_LEN`], and
/// every path the plugins create or read absolute (a relative one would land in the runtime's
/// working directory, `/` under containerd).
pub fn check_netconf(conf: &NetConf) -> Result<(), CniError> {
    check_network_name(&conf.name)?;
    if let Some(node) = &conf.nodename {
        check_node_name(node, "nodename")?;
    }
    check_paths(conf)
}

/// Every path of `conf` the plugins create or read must be absolute (code 7, naming the field).
pub fn check_paths(conf: &NetConf) -> Result<(), CniError> {
    for (field, path) in [
        ("datastore_path", conf.datastore_path.as_deref()),
        ("ipam_lock_file", conf.ipam_lock_file.as_deref()),
        ("log_file_path", conf.log_file_path.as_deref()),
        ("nodename_file", conf.nodename_file.as_deref()),
        ("etcd_ca_cert_file", conf.etcd_ca_cert_file.as_deref()),
        ("etcd_cert_file", conf.etcd_cert_file.as_deref()),
        ("etcd_key_file", conf.etcd_key_file.as_deref()),
    ] {
        if let Some(path) = path {
            check_absolute(field, path)?;
        }
    }
    Ok(())
}

/// The network `name`: required, the spec's characters, at most [`MAX_NETWORK_NAME_LEN`] bytes.
pub fn check_network_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::invalid_config(
            "missing network name: set \"name\" in the network configuration (e.g. \"k8s-pod-network\")",
        ));
    }
    if name.len() > MAX_NETWORK_NAME_LEN {
        return Err(CniError::invalid_config(format!(
            "network name \"{}\" is {} bytes long; the limit is {MAX_NETWORK_NAME_LEN}",
            shown(name),
            name.len()
        )));
    }
    if !is_cni_name(name) {
        return Err(CniError::invalid_config(format!(
            "invalid characters in network name \"{}\": it must start with a letter or digit, followed by letters, digits, '_', '.' or '-'",
            shown(name)
        )));
    }
    Ok(())
}

/// A node name from `field`: at most [`MAX_NODE_NAME_LEN`] bytes, no control characters.
pub fn check_node_name(node: &str, field: &str) -> Result<(), CniError> {
    if node.len() > MAX_NODE_NAME_LEN {
        return Err(CniError::invalid_config(format!(
            "{field}: node name \"{}\" is {} bytes long; Kubernetes node names are at most {MAX_NODE_NAME_LEN}",
            shown(node),
            node.len()
        )));
    }
    if node.chars().any(char::is_control) {
        return Err(CniError::invalid_config(format!(
            "{field}: node name {node:?} contains control characters"
        )));
    }
    Ok(())
}

pub(crate) fn check_absolute(field: &str, path: &Path) -> Result<(), CniError> {
    if path.as_os_str().is_empty() {
        return Err(CniError::invalid_config(format!(
            "{field} is empty: give an absolute path, or leave the field out for the default"
        )));
    }
    if !path.is_absolute() {
        return Err(CniError::invalid_config(format!(
            "{field} \"{}\" is not an absolute path: a relative path would be resolved against the container runtime's working directory",
            shown(&path.to_string_lossy())
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: &str) -> NetConf {
        NetConf::parse(json.as_bytes()).expect("parses")
    }

    #[test]
    fn network_names_follow_the_spec() {
        for ok in [
            "k8s-pod-network",
            "a",
            "A_b.c-9",
            &"n".repeat(MAX_NETWORK_NAME_LEN),
        ] {
            assert_eq!(check_network_name(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("", "missing network name"),
            ("-net", "invalid characters"),
            ("my net", "invalid characters"),
            ("net/../x", "invalid characters"),
            ("réseau", "invalid characters"),
            (
                &"n".repeat(MAX_NETWORK_NAME_LEN + 1),
                "101 bytes long; the limit is 100",
            ),
        ] {
            let e = check_network_name(bad).expect_err(bad);
            assert_eq!(e.code, 7, "{bad}");
            assert!(e.details.contains(says), "{bad}: {}", e.details);
        }
        let huge = "x".repeat(50 << 20);
        let e = check_network_name(&huge).expect_err("huge");
        assert!(e.details.len() < 200, "a message repeats only the start");
    }

    #[test]
    fn stdin_is_read_up_to_its_bound() {
        let limit = MAX_STDIN_BYTES as usize;
        let exact = vec![b' '; limit];
        assert_eq!(read_stdin(&exact[..]).expect("at the limit").len(), limit);
        let over = vec![b' '; limit + 1];
        let e = read_stdin(&over[..]).expect_err("over");
        assert_eq!(e.code, 7);
        assert!(
            e.details.contains("larger than 1048576 bytes"),
            "{}",
            e.details
        );
        // An endless stream is read only up to the bound.
        let e = read_stdin(std::io::repeat(b'x')).expect_err("endless");
        assert_eq!(e.code, 7);
    }

    #[test]
    fn paths_must_be_absolute() {
        let base = r#"{"cniVersion":"1.0.0","name":"n""#;
        assert_eq!(check_netconf(&conf(&format!("{base}}}"))), Ok(()));
        for (field, value, says) in [
            ("datastore_path", "\"\"", "datastore_path is empty"),
            (
                "datastore_path",
                "\"store\"",
                "datastore_path \"store\" is not an absolute",
            ),
            ("datastore_path", "\"./x\"", "datastore_path \"./x\""),
            ("ipam_lock_file", "\"ipam.lock\"", "ipam_lock_file"),
            ("log_file_path", "\"cni.log\"", "log_file_path"),
            ("nodename_file", "\"nodename\"", "nodename_file"),
            (
                "etcd_ca_cert_file",
                "\"etcd-ca\"",
                "etcd_ca_cert_file \"etcd-ca\" is not an absolute path",
            ),
            ("etcd_cert_file", "\"certs/etcd-cert\"", "etcd_cert_file"),
            (
                "etcd_key_file",
                "\"./etcd-key\"",
                "etcd_key_file \"./etcd-key\"",
            ),
        ] {
            let e =
                check_netconf(&conf(&format!("{base},\"{field}\":{value}}}"))).expect_err(field);
            assert_eq!(e.code, 7);
            assert!(e.details.contains(says), "{field}: {}", e.details);
        }
        let long_node = format!("{base},\"nodename\":\"{}\"}}", "n".repeat(254));
        assert!(check_netconf(&conf(&long_node)).is_err());
    }
}
