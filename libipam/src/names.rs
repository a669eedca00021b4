//! Object names and labels, exactly as Calico derives them. Changing any of these strands
//! existing objects, so each has a test vector.

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use sha3::Sha3_256;

/// Label carrying [`hostname_hash`] of an affinity's node.
pub const LABEL_HOSTNAME_HASH: &str = "projectcalico.org/hostname-hash";
/// Label carrying an affinity's type (`host` / `virtual`).
pub const LABEL_AFFINITY_TYPE: &str = "projectcalico.org/affinity-type";
/// Label carrying an affinity's IP version (`4` / `6`).
pub const LABEL_IP_VERSION: &str = "projectcalico.org/ip-version";

/// Longest Kubernetes object name is 253; Calico shortens affinity names that reach it.
const MAX_NAME_LEN: usize = 253;

/// `10.244.104.64/26` → `10-244-104-64-26`; `fd00:10:244::/122` → `fd00-10-244---122`.
pub fn cidr_to_name(cidr: &IpNet) -> String {
    cidr.to_string().replace(['.', ':', '/'], "-")
}

/// Inverse of [`cidr_to_name`].
pub fn name_to_cidr(name: &str) -> Option<IpNet> {
    let (addr, prefix) = name.rsplit_once('-')?;
    let v4 = format!("{}/{prefix}", addr.replace('-', "."));
    if let Ok(n) = v4.parse::<IpNet>() {
        return matches!(n, IpNet::V4(_)).then_some(n);
    }
    format!("{}/{prefix}", addr.replace('-', ":")).parse().ok()
}

/// The BlockAffinity object name: `<host>-<cidrname>`, or when that is 253 characters or
/// more, a truncated host, the cidr name and 11 hex digits of SHA-256(`host+cidrname`), so
/// that near-identical long hostnames still get distinct names.
pub fn affinity_name(host: &str, cidr: &IpNet) -> String {
    let cidr_name = cidr_to_name(cidr);
    let name = format!("{host}-{cidr_name}");
    if name.len() < MAX_NAME_LEN {
        return name;
    }
    let digest = Sha256::digest(format!("{host}+{cidr_name}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let mut keep = (MAX_NAME_LEN - 1)
        .saturating_sub(cidr_name.len())
        .saturating_sub(13)
        .min(host.len());
    while !host.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}-{cidr_name}-{}", &host[..keep], &hex[..11])
}

/// The IPAMHandle object name: the handle in lowercase.
pub fn handle_object_name(handle_id: &str) -> String {
    handle_id.to_lowercase()
}

/// Value of the `projectcalico.org/hostname-hash` label: base32 (RFC 4648 alphabet, no
/// padding) of SHA3-256 of the node name. Always 52 characters.
pub fn hostname_hash(host: &str) -> String {
    base32_nopad(&Sha3_256::digest(host.as_bytes()))
}

fn base32_nopad(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    #[test]
    fn cidr_names() {
        for (cidr, name) in [
            ("10.244.104.64/26", "10-244-104-64-26"),
            (
                "fd00:10:244:0:9a2b:c3d4:e5f6:1c0/122",
                "fd00-10-244-0-9a2b-c3d4-e5f6-1c0-122",
            ),
            ("fd00:10:244::/122", "fd00-10-244---122"),
            ("::1/128", "--1-128"),
            ("1::2:3/128", "1--2-3-128"),
        ] {
            assert_eq!(cidr_to_name(&net(cidr)), name);
            assert_eq!(name_to_cidr(name), Some(net(cidr)), "{name}");
        }
        assert_eq!(name_to_cidr("not-a-cidr"), None);
    }

    #[test]
    fn affinity_names() {
        assert_eq!(
            affinity_name("node-a", &net("10.244.104.64/26")),
            "node-a-10-244-104-64-26"
        );
        let cidr = net("10.244.104.64/26");
        let short = "a".repeat(253 - 1 - 16 - 1);
        assert_eq!(
            affinity_name(&short, &cidr).len(),
            252,
            "below the limit: kept"
        );
        let long_a = format!("{}x", "a".repeat(236));
        let long_b = format!("{}y", "a".repeat(236));
        let (na, nb) = (affinity_name(&long_a, &cidr), affinity_name(&long_b, &cidr));
        assert_eq!(na.len(), 252);
        assert_ne!(na, nb, "hash keeps near-identical hostnames apart");
        let keep = 252 - "10-244-104-64-26".len() - 13;
        assert!(na.starts_with(&format!("{}-10-244-104-64-26-", &long_a[..keep])));
        let digest = Sha256::digest(format!("{long_a}+10-244-104-64-26").as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert!(na.ends_with(&hex[..11]));
    }

    #[test]
    fn hostname_hashes() {
        assert_eq!(
            hostname_hash("node-a"),
            "PY3TQE2E3XMTETLM2MJO3UITKPFB27YUJ4T4E5XGPEJON3SM4QAA"
        );
        assert_eq!(
            hostname_hash("node1"),
            "7DS2CCNJGGLTHBDQLLFO6SX24SY2YDDEG3W2VN556FA2W4DLLV5A"
        );
    }

    #[test]
    fn handle_names() {
        assert_eq!(handle_object_name("K8s-Pod.ABC"), "k8s-pod.abc");
    }
}
