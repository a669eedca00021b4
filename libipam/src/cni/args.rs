//! `CNI_ARGS`: `K1=V1;K2=V2`, with the Kubernetes keys Calico reads.

use super::{CniError, bounds};

/// Parsed `CNI_ARGS`. Unknown keys are kept and ignored (runtimes send `IgnoreUnknown=1`,
/// `K8S_POD_UID`, `MAC` and more).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

impl CniArgs {
    /// Parse the raw variable. A pair without exactly one `=` is an error (code 4), like libcni;
    /// so is a variable over [`bounds::MAX_CNI_ARGS_LEN`] bytes, or a pod name or namespace
    /// longer than Kubernetes allows (they are stored with every address).
    pub fn parse(raw: &str) -> Result<CniArgs, CniError> {
        if raw.len() > bounds::MAX_CNI_ARGS_LEN {
            return Err(CniError::invalid_env(format!(
                "CNI_ARGS is {} bytes long; the limit is {}",
                raw.len(),
                bounds::MAX_CNI_ARGS_LEN
            )));
        }
        let mut pairs = Vec::new();
        for item in raw.split(';').filter(|s| !s.is_empty()) {
            let mut parts = item.splitn(3, '=');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(k), Some(v), None) if !k.is_empty() => {
                    pairs.push((k.to_string(), v.to_string()))
                }
                _ => {
                    return Err(CniError::invalid_env(format!(
                        "CNI_ARGS: \"{item}\" is not KEY=VALUE (values may not contain '=' or ';')"
                    )));
                }
            }
        }
        let args = CniArgs { pairs };
        for (key, limit) in [
            ("K8S_POD_NAME", bounds::MAX_POD_NAME_LEN),
            ("K8S_POD_NAMESPACE", bounds::MAX_NAMESPACE_LEN),
        ] {
            if let Some(v) = args.get(key)
                && v.len() > limit
            {
                return Err(CniError::invalid_env(format!(
                    "CNI_ARGS {key} \"{}\" is {} bytes long; Kubernetes allows at most {limit}",
                    bounds::shown(v),
                    v.len()
                )));
            }
        }
        Ok(args)
    }

    /// The value of `key`, if present and non-empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME`, when both are set (Calico's "k8s orchestrator").
    pub fn pod(&self) -> Option<(&str, &str)> {
        Some((self.get("K8S_POD_NAMESPACE")?, self.get("K8S_POD_NAME")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_containerd_style_args_in_any_order() {
        let a = CniArgs::parse(
            "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u;IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx",
        )
        .expect("valid args");
        assert_eq!(a.pod(), Some(("default", "nginx")));
        assert_eq!(a.get("IgnoreUnknown"), Some("1"));
        assert_eq!(a.get("IP"), None);
    }

    #[test]
    fn empty_is_fine_and_malformed_is_code_4() {
        assert_eq!(CniArgs::parse("").expect("empty").pod(), None);
        assert_eq!(CniArgs::parse("A=1;B").expect_err("bad").code, 4);
        assert_eq!(CniArgs::parse("A=1=2").expect_err("bad").code, 4);
        let long = format!("A={}", "x".repeat(bounds::MAX_CNI_ARGS_LEN));
        let e = CniArgs::parse(&long).expect_err("too long");
        assert_eq!(e.code, 4);
        assert!(e.details.contains("the limit is 4096"), "{}", e.details);
        let pod = format!("K8S_POD_NAMESPACE=ns;K8S_POD_NAME={}", "p".repeat(254));
        assert!(
            CniArgs::parse(&pod)
                .expect_err("pod")
                .details
                .contains("at most 253")
        );
        let ns = format!("K8S_POD_NAMESPACE={};K8S_POD_NAME=p", "n".repeat(64));
        assert!(
            CniArgs::parse(&ns)
                .expect_err("ns")
                .details
                .contains("at most 63")
        );
    }
}
