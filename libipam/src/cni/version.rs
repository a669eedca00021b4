//! CNI specification versions and which verbs each allows.

use std::fmt;

/// A CNI specification version this project speaks.
///
/// 0.1.0 and 0.2.0 (the `ip4`/`ip6` result layout) are not supported: every runtime still in
/// use sends 0.3.0 or later, and Calico's own manifests use 0.3.1 or 1.0.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpecVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl SpecVersion {
    /// Every version we accept, oldest first (what VERSION reports).
    pub const ALL: [SpecVersion; 5] = [
        SpecVersion::V0_3_0,
        SpecVersion::V0_3_1,
        SpecVersion::V0_4_0,
        SpecVersion::V1_0_0,
        SpecVersion::V1_1_0,
    ];

    /// The newest version, used for errors when the caller's version is unknown.
    pub const LATEST: SpecVersion = SpecVersion::V1_1_0;

    pub fn parse(s: &str) -> Option<SpecVersion> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SpecVersion::V0_3_0 => "0.3.0",
            SpecVersion::V0_3_1 => "0.3.1",
            SpecVersion::V0_4_0 => "0.4.0",
            SpecVersion::V1_0_0 => "1.0.0",
            SpecVersion::V1_1_0 => "1.1.0",
        }
    }

    /// 0.3.x and 0.4.0 results carry `ips[].version`; 1.x results do not.
    pub fn has_ip_version_field(self) -> bool {
        self < SpecVersion::V1_0_0
    }

    /// CHECK exists from 0.4.0.
    pub fn allows_check(self) -> bool {
        self >= SpecVersion::V0_4_0
    }

    /// STATUS and GC exist from 1.1.0.
    pub fn allows_status_and_gc(self) -> bool {
        self >= SpecVersion::V1_1_0
    }

    /// The supported versions as strings, for messages and the VERSION reply.
    pub fn all_strings() -> Vec<&'static str> {
        Self::ALL.iter().map(|v| v.as_str()).collect()
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_and_rejects_unknown() {
        for v in SpecVersion::ALL {
            assert_eq!(SpecVersion::parse(v.as_str()), Some(v));
        }
        assert_eq!(SpecVersion::parse("0.2.0"), None);
        assert_eq!(SpecVersion::parse("2.0.0"), None);
        assert_eq!(SpecVersion::parse(""), None);
    }

    #[test]
    fn verb_gates() {
        assert!(!SpecVersion::V0_3_1.allows_check());
        assert!(SpecVersion::V0_4_0.allows_check());
        assert!(!SpecVersion::V1_0_0.allows_status_and_gc());
        assert!(SpecVersion::V1_1_0.allows_status_and_gc());
        assert!(SpecVersion::V0_4_0.has_ip_version_field());
        assert!(!SpecVersion::V1_0_0.has_ip_version_field());
    }
}
