//! Plugin results and error objects, typed.
//!
//! Results are held in the 1.x shape ([`CniResult`]) whatever version a plugin printed:
//! 0.3.x/0.4.0 results differ only by a `version` tag on each IP, and 0.1.0/0.2.0 results
//! (`ip4`/`ip6` objects) are converted on the way in. [`CniResult::to_version`] renders a
//! result for a given spec version, which is how `prevResult` reaches each plugin in the
//! version of its network config.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Map, Value};

use crate::version::SpecVersion;

/// An address with its prefix length, as CNI writes it: `10.244.1.5/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNetwork {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNetwork {
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// The network the address is in: `10.244.1.5/24` → `10.244.1.0/24`.
    pub fn network(&self) -> IpNetwork {
        let addr = match self.addr {
            IpAddr::V4(ip) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(ip) & mask).into())
            }
            IpAddr::V6(ip) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(ip) & mask).into())
            }
        };
        IpNetwork {
            addr,
            prefix: self.prefix,
        }
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNetwork {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an address with a prefix length (a.b.c.d/n)"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{prefix:?} is not a prefix length of 0..={max}"))?;
        Ok(IpNetwork { addr, prefix })
    }
}

impl Serialize for IpNetwork {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNetwork {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; empty for host-side ones.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub socket_path: String,
    #[serde(rename = "pciID", default, skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl Route {
    /// A route to `dst` (via `gw`, or the interface's gateway) with nothing else set.
    pub fn to(dst: IpNetwork, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

/// The result of an ADD, in the 1.x shape.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    #[error("output is not JSON: {0}")]
    NotJson(String),
    #[error("result has no cniVersion")]
    NoVersion,
    #[error("result is for CNI version {0}, which this runtime does not support")]
    UnsupportedVersion(String),
    #[error("result does not match the CNI {version} result schema: {reason}")]
    Schema { version: String, reason: String },
    #[error("cannot convert a {from} result to version {to}: {reason}")]
    Conversion {
        from: String,
        to: String,
        reason: String,
    },
}

/// The 0.1.0/0.2.0 shape: one object per address family.
#[derive(Deserialize)]
struct LegacyIp {
    ip: IpNetwork,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<LegacyRoute>,
}

#[derive(Deserialize)]
struct LegacyRoute {
    dst: IpNetwork,
    #[serde(default)]
    gw: Option<IpAddr>,
}

#[derive(Deserialize)]
struct LegacyResult {
    #[serde(default)]
    ip4: Option<LegacyIp>,
    #[serde(default)]
    ip6: Option<LegacyIp>,
    #[serde(default)]
    dns: Dns,
}

impl CniResult {
    /// Parses a result of any supported version; the 1.x shape keeps the version it came in.
    pub fn parse(bytes: &[u8]) -> Result<CniResult, ResultError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ResultError::NotJson(e.to_string()))?;
        Self::from_value(value)
    }

    pub fn from_value(value: Value) -> Result<CniResult, ResultError> {
        let version_text = value
            .get("cniVersion")
            .and_then(Value::as_str)
            .ok_or(ResultError::NoVersion)?
            .to_string();
        let version: SpecVersion = version_text
            .parse()
            .ok()
            .filter(SpecVersion::is_supported)
            .ok_or_else(|| ResultError::UnsupportedVersion(version_text.clone()))?;
        let schema = |e: serde_json::Error| ResultError::Schema {
            version: version_text.clone(),
            reason: e.to_string(),
        };
        if !version.has_legacy_result() {
            // 0.3.x/0.4.0 only add the `version` tag on IPs, which serde ignores here.
            return serde_json::from_value(value).map_err(schema);
        }
        let legacy: LegacyResult = serde_json::from_value(value).map_err(schema)?;
        let mut result = CniResult {
            cni_version: version_text.clone(),
            dns: legacy.dns,
            ..CniResult::default()
        };
        for ip in [legacy.ip4, legacy.ip6].into_iter().flatten() {
            result.ips.push(IpConfig {
                address: ip.ip,
                gateway: ip.gateway,
                interface: None,
            });
            result
                .routes
                .extend(ip.routes.into_iter().map(|r| Route::to(r.dst, r.gw)));
        }
        Ok(result)
    }

    /// Renders the result in the version it carries (as [`CniHost::add`](crate::CniHost::add)
    /// returns it: the version the chain was spoken in).
    pub fn to_value(&self) -> Result<Value, ResultError> {
        let version: SpecVersion = self
            .cni_version
            .parse()
            .map_err(|_| ResultError::UnsupportedVersion(self.cni_version.clone()))?;
        self.to_version(version)
    }

    /// Renders the result as a plugin of spec `version` expects it (e.g. as `prevResult`).
    pub fn to_version(&self, version: SpecVersion) -> Result<Value, ResultError> {
        let conversion = |reason: &str| ResultError::Conversion {
            from: self.cni_version.clone(),
            to: version.to_string(),
            reason: reason.to_string(),
        };
        if !version.is_supported() {
            return Err(conversion("the target version is not supported"));
        }
        if version.has_legacy_result() {
            // 0.1.0/0.2.0 know one address per family and no interfaces.
            let mut out = Map::new();
            out.insert("cniVersion".into(), json!(version.to_string()));
            for (key, v4) in [("ip4", true), ("ip6", false)] {
                let Some(ip) = self.ips.iter().find(|ip| ip.address.is_ipv4() == v4) else {
                    continue;
                };
                let routes: Vec<Value> = self
                    .routes
                    .iter()
                    .filter(|r| r.dst.is_ipv4() == v4)
                    .map(|r| {
                        let mut route = json!({ "dst": r.dst.to_string() });
                        if let Some(gw) = r.gw {
                            route["gw"] = json!(gw.to_string());
                        }
                        route
                    })
                    .collect();
                let mut obj = json!({ "ip": ip.address.to_string() });
                if let Some(gw) = ip.gateway {
                    obj["gateway"] = json!(gw.to_string());
                }
                if !routes.is_empty() {
                    obj["routes"] = Value::Array(routes);
                }
                out.insert(key.into(), obj);
            }
            if !self.dns.is_empty() {
                out.insert(
                    "dns".into(),
                    serde_json::to_value(&self.dns).expect("dns serializes"),
                );
            }
            return Ok(Value::Object(out));
        }
        let mut copy = self.clone();
        copy.cni_version = version.to_string();
        let mut value = serde_json::to_value(&copy).expect("result serializes");
        if version.tags_ip_version() {
            if let Some(ips) = value.get_mut("ips").and_then(Value::as_array_mut) {
                for (ip, typed) in ips.iter_mut().zip(&self.ips) {
                    ip["version"] = json!(if typed.address.is_ipv4() { "4" } else { "6" });
                }
            }
        }
        Ok(value)
    }
}

/// The error object a failing plugin prints on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorObject {
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cni_version: String,
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl ErrorObject {
    /// Well-known codes of the spec, for messages.
    pub fn code_meaning(&self) -> Option<&'static str> {
        Some(match self.code {
            1 => "incompatible CNI version",
            2 => "unsupported field in network configuration",
            3 => "container unknown or does not exist",
            4 => "invalid necessary environment variables",
            5 => "I/O failure",
            6 => "failed to decode content",
            7 => "invalid network config",
            11 => "try again later",
            50 => "the plugin is not available",
            51 => "the plugin is not available, existing containers may be damaged",
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.msg.is_empty(), self.code_meaning()) {
            (false, _) => f.write_str(&self.msg)?,
            (true, Some(meaning)) => f.write_str(meaning)?,
            (true, None) => f.write_str("plugin reported an error")?,
        }
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        write!(f, " (code {})", self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE_1_0: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
            {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
            {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/p"}
        ],
        "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
        "dns": {}
    }"#;

    #[test]
    fn parses_a_1_0_result() {
        let r = CniResult::parse(BRIDGE_1_0.as_bytes()).unwrap();
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.ips[0].address.to_string(), "10.244.1.5/24");
        assert_eq!(r.ips[0].interface, Some(2));
        assert_eq!(r.routes[0].gw, Some("10.244.1.1".parse().unwrap()));
        assert!(r.dns.is_empty());
    }

    #[test]
    fn converts_0_3_1_results_both_ways() {
        let text = r#"{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.1.0.2/16","gateway":"10.1.0.1"}]}"#;
        let r = CniResult::parse(text.as_bytes()).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.2/16");
        let back = r.to_version("0.3.1".parse().unwrap()).unwrap();
        assert_eq!(back["ips"][0]["version"], "4");
        let v1 = r.to_version(SpecVersion::V1_0_0).unwrap();
        assert_eq!(v1["cniVersion"], "1.0.0");
        assert!(v1["ips"][0].get("version").is_none());
    }

    #[test]
    fn converts_0_2_0_results_both_ways() {
        let text = r#"{"cniVersion":"0.2.0","ip4":{"ip":"10.1.0.2/16","gateway":"10.1.0.1",
            "routes":[{"dst":"0.0.0.0/0"}]},"dns":{"nameservers":["10.96.0.10"]}}"#;
        let r = CniResult::parse(text.as_bytes()).unwrap();
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.routes[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(r.dns.nameservers, vec!["10.96.0.10"]);
        let legacy = r.to_version("0.2.0".parse().unwrap()).unwrap();
        assert_eq!(legacy["ip4"]["ip"], "10.1.0.2/16");
        assert_eq!(legacy["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
        assert!(legacy.get("ips").is_none());
    }

    #[test]
    fn rejects_unknown_versions_and_garbage() {
        assert!(matches!(
            CniResult::parse(br#"{"cniVersion":"9.9.9"}"#),
            Err(ResultError::UnsupportedVersion(v)) if v == "9.9.9"
        ));
        assert!(matches!(
            CniResult::parse(b"hello"),
            Err(ResultError::NotJson(_))
        ));
        assert!(matches!(
            CniResult::parse(b"{}"),
            Err(ResultError::NoVersion)
        ));
        assert!(matches!(
            CniResult::parse(br#"{"cniVersion":"1.0.0","ips":[{"address":"nope"}]}"#),
            Err(ResultError::Schema { .. })
        ));
    }

    #[test]
    fn networks_are_addresses_masked() {
        let net = |s: &str| s.parse::<IpNetwork>().unwrap();
        assert_eq!(net("10.244.1.5/24").network(), net("10.244.1.0/24"));
        assert_eq!(net("10.244.1.5/32").network(), net("10.244.1.5/32"));
        assert_eq!(net("10.244.1.5/0").network(), net("0.0.0.0/0"));
        assert_eq!(net("fd00::5/64").network(), net("fd00::/64"));
    }

    #[test]
    fn networks_contain_their_addresses() {
        let net: IpNetwork = "10.244.1.0/24".parse().unwrap();
        assert!(net.contains("10.244.1.200".parse().unwrap()));
        assert!(!net.contains("10.244.2.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNetwork>().is_err());
        let all: IpNetwork = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn error_objects_read_like_the_spec() {
        let e: ErrorObject = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","code":11,"msg":"busy","details":"lock held"}"#,
        )
        .unwrap();
        assert_eq!(e.to_string(), "busy: lock held (code 11)");
        let bare = ErrorObject {
            cni_version: String::new(),
            code: 7,
            msg: String::new(),
            details: String::new(),
        };
        assert_eq!(bare.to_string(), "invalid network config (code 7)");
    }
}
