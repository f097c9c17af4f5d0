//! CNI specification versions: parsing, ordering, and what this runtime speaks.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Every spec version this runtime can send to plugins and read results of.
pub const SUPPORTED: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// A `major.minor.patch` CNI spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpecVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl SpecVersion {
    pub const V0_4_0: SpecVersion = SpecVersion::new(0, 4, 0);
    pub const V1_0_0: SpecVersion = SpecVersion::new(1, 0, 0);
    pub const V1_1_0: SpecVersion = SpecVersion::new(1, 1, 0);

    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        SpecVersion {
            major,
            minor,
            patch,
        }
    }

    /// Whether this runtime knows the version (see [`SUPPORTED`]).
    pub fn is_supported(&self) -> bool {
        SUPPORTED.iter().any(|v| v.parse() == Ok(*self))
    }

    /// Results before 0.3.0 carry `ip4`/`ip6` objects instead of the `ips` list.
    pub fn has_legacy_result(&self) -> bool {
        *self < SpecVersion::new(0, 3, 0)
    }

    /// 0.3.x and 0.4.0 results tag each IP with `"version": "4"|"6"`.
    pub fn tags_ip_version(&self) -> bool {
        !self.has_legacy_result() && *self < SpecVersion::V1_0_0
    }

    /// CHECK and cached results for DEL arrived in 0.4.0.
    pub fn has_check(&self) -> bool {
        *self >= SpecVersion::V0_4_0
    }

    /// STATUS and GC arrived in 1.1.0.
    pub fn has_status_and_gc(&self) -> bool {
        *self >= SpecVersion::V1_1_0
    }
}

impl Ord for SpecVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch).cmp(&(other.major, other.minor, other.patch))
    }
}

impl PartialOrd for SpecVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a CNI version (expected major.minor.patch, e.g. \"1.0.0\")")]
pub struct BadVersion(pub String);

impl FromStr for SpecVersion {
    type Err = BadVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadVersion(s.to_string());
        let mut parts = s.split('.');
        let mut next = || -> Result<u32, BadVersion> {
            let part = parts.next().ok_or_else(bad)?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse().map_err(|_| bad())
        };
        let version = SpecVersion::new(next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(version)
    }
}

/// What a plugin answered to VERSION.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PluginVersions {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions", default)]
    pub supported_versions: Vec<String>,
}

impl PluginVersions {
    pub fn supports(&self, version: SpecVersion) -> bool {
        self.supported_versions
            .iter()
            .any(|v| v.parse() == Ok(version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders_versions() {
        let v: SpecVersion = "0.3.1".parse().unwrap();
        assert_eq!(v, SpecVersion::new(0, 3, 1));
        assert!(v < SpecVersion::V0_4_0);
        assert!(SpecVersion::V1_1_0 > SpecVersion::V1_0_0);
        assert_eq!(SpecVersion::V1_0_0.to_string(), "1.0.0");
    }

    #[test]
    fn rejects_malformed_versions() {
        for bad in [
            "", "1", "1.0", "1.0.0.0", "v1.0.0", "1.x.0", "1..0", "-1.0.0",
        ] {
            assert!(bad.parse::<SpecVersion>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn knows_what_each_version_brought() {
        let v = |s: &str| s.parse::<SpecVersion>().unwrap();
        assert!(v("0.2.0").has_legacy_result());
        assert!(v("0.3.1").tags_ip_version() && !v("0.3.1").has_check());
        assert!(v("0.4.0").has_check() && !v("1.0.0").tags_ip_version());
        assert!(v("1.1.0").has_status_and_gc() && !v("1.0.0").has_status_and_gc());
        assert!(!v("2.0.0").is_supported() && v("1.1.0").is_supported());
    }
}
