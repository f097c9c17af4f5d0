//! host-local: IP address management from ranges in the network config, with leases in
//! files on the node ([`store`], upstream's format). Reads upstream's fields: `ipam.subnet`
//! / `rangeStart` / `rangeEnd` / `gateway` (one range), `ipam.ranges` (range sets, one
//! address from each), `ipam.routes`, `ipam.dataDir`, `ipam.resolvConf`; requested
//! addresses from `CNI_ARGS` `IP=`, `args.cni.ips` and `runtimeConfig.ips`; extra range
//! sets from `runtimeConfig.ipRanges`. Addresses are handed out round-robin from the one
//! after the last handed out, as upstream does.
//!
//! ADD leases one address per range set (all or none); DEL gives up the container's
//! leases (none is not an error); CHECK finds one; GC gives up every lease whose
//! container and interface are not in `cni.dev/valid-attachments`; STATUS checks that the
//! lease dir can be written.

pub mod range;
pub mod store;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use cni_host::result::{CniResult, Dns, IpConfig, Route};
use serde::Deserialize;
use serde_json::Value;

use crate::cni_plugin::invocation::{Command, Invocation, PluginError};
use range::{canonical, RangeConfig, RangeSet};
use store::Store;

/// The `ipam` section, as upstream reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IpamConfig {
    #[serde(default)]
    ranges: Vec<Vec<RangeConfig>>,
    #[serde(default)]
    routes: Vec<RouteConfig>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    resolv_conf: Option<PathBuf>,
}

/// The old single-range form: the range's fields directly in `ipam`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SingleRange {
    subnet: cni_host::result::IpNetwork,
    #[serde(default)]
    range_start: Option<IpAddr>,
    #[serde(default)]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
}

#[derive(Debug, Deserialize)]
struct RouteConfig {
    dst: cni_host::result::IpNetwork,
    #[serde(default)]
    gw: Option<IpAddr>,
}

/// Everything one call needs, from the config and the invocation.
#[derive(Debug)]
pub struct Config {
    pub network: String,
    pub data_dir: PathBuf,
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub resolv_conf: Option<PathBuf>,
    /// Addresses asked for.
    pub requested: Vec<IpAddr>,
}

impl Config {
    pub fn load(invocation: &Invocation) -> Result<Config, PluginError> {
        let config = &invocation.config;
        let ipam = config
            .get("ipam")
            .ok_or_else(|| PluginError::config("IPAM config missing 'ipam' key"))?;
        let field_error = |e: serde_path_to_error::Error<serde_json::Error>| {
            PluginError::config(format!("ipam.{}: {}", e.path(), e.inner()))
        };
        // The old single-range form has the range's fields in `ipam` itself.
        let single: Option<SingleRange> = match ipam.get("subnet") {
            Some(_) => Some(serde_path_to_error::deserialize(ipam).map_err(field_error)?),
            None => None,
        };
        let ipam: IpamConfig = serde_path_to_error::deserialize(ipam).map_err(field_error)?;
        let mut requested = Vec::new();
        for (key, value) in &invocation.args {
            if key == "IP" {
                requested.push(value.parse::<IpAddr>().map_err(|_| {
                    PluginError::config(format!("CNI_ARGS IP={value} is not an IP address"))
                })?);
            }
        }
        let ips_at = |pointer: &str| -> Result<Vec<IpAddr>, PluginError> {
            let Some(list) = config.pointer(pointer).and_then(Value::as_array) else {
                return Ok(Vec::new());
            };
            list.iter()
                .map(|v| {
                    let text = v.as_str().unwrap_or_default();
                    // runtimeConfig.ips may carry a prefix length.
                    let address = text.split('/').next().unwrap_or_default();
                    address.parse::<IpAddr>().map_err(|_| {
                        PluginError::config(format!("{pointer}: {v} is not an IP address"))
                    })
                })
                .collect()
        };
        requested.extend(ips_at("/args/cni/ips")?);
        requested.extend(ips_at("/runtimeConfig/ips")?);
        let requested: Vec<IpAddr> = requested.into_iter().map(canonical).collect();

        let mut configs: Vec<Vec<RangeConfig>> = Vec::new();
        if let Some(extra) = config.pointer("/runtimeConfig/ipRanges") {
            let extra = crate::cni_plugin::invocation::fields_as_go_reads_them(
                extra,
                &["subnet", "rangeStart", "rangeEnd", "gateway"],
            );
            let extra: Vec<Vec<RangeConfig>> = serde_json::from_value(extra)
                .map_err(|e| PluginError::config(format!("runtimeConfig.ipRanges: {e}")))?;
            configs.extend(extra);
        }
        if let Some(single) = single {
            configs.push(vec![RangeConfig {
                subnet: single.subnet,
                range_start: single.range_start,
                range_end: single.range_end,
                gateway: single.gateway,
            }]);
        }
        configs.extend(ipam.ranges);
        if configs.is_empty() {
            return Err(PluginError::config("no IP ranges specified"));
        }
        let mut range_sets = Vec::new();
        for (i, set) in configs.iter().enumerate() {
            range_sets.push(
                RangeSet::canonicalize(set)
                    .map_err(|e| PluginError::config(format!("invalid range set {i}: {e}")))?,
            );
        }
        for (i, a) in range_sets.iter().enumerate() {
            for (j, b) in range_sets.iter().enumerate().skip(i + 1) {
                if a.overlaps(b) {
                    return Err(PluginError::config(format!(
                        "range set {i} overlaps with {j}"
                    )));
                }
            }
        }
        Ok(Config {
            network: invocation.network_name()?.to_string(),
            data_dir: ipam
                .data_dir
                .unwrap_or_else(|| PathBuf::from(store::DEFAULT_DATA_DIR)),
            range_sets,
            routes: ipam
                .routes
                .into_iter()
                .map(|r| Route::to(r.dst, r.gw))
                .collect(),
            resolv_conf: ipam.resolv_conf,
            requested,
        })
    }

    fn open(&self) -> Result<Store, PluginError> {
        Store::open(&self.data_dir, &self.network).map_err(|e| {
            PluginError::new(
                PluginError::IO_FAILURE,
                format!(
                    "open the lease dir {}: {e}",
                    self.data_dir.join(&self.network).display()
                ),
            )
        })
    }
}

pub fn run(invocation: &Invocation) -> Result<Option<Value>, PluginError> {
    let config = Config::load(invocation)?;
    match invocation.command {
        Command::Add => {
            let result = add(&config, &invocation.container_id, &invocation.ifname)?;
            invocation.render(&result).map(Some)
        }
        Command::Del => {
            del(&config, &invocation.container_id, &invocation.ifname)?;
            Ok(None)
        }
        Command::Check => {
            let store = config.open()?;
            if store
                .leases_of(&invocation.container_id, &invocation.ifname)
                .is_empty()
            {
                return Err(PluginError::internal(format!(
                    "host-local: Failed to find address added by container {}",
                    invocation.container_id
                )));
            }
            Ok(None)
        }
        Command::Gc => {
            gc(&config, &valid_attachments(&invocation.config)?)?;
            Ok(None)
        }
        Command::Status => {
            status(&config)?;
            Ok(None)
        }
        Command::Version => unreachable!("answered by the plugin"),
    }
}

/// Leases one address from each range set for the container: all, or none.
pub fn add(config: &Config, container_id: &str, ifname: &str) -> Result<CniResult, PluginError> {
    let dns = match &config.resolv_conf {
        Some(path) => parse_resolv_conf(path)?,
        None => Dns::default(),
    };
    let store = config.open()?;
    let io = |e: std::io::Error| {
        PluginError::new(
            PluginError::IO_FAILURE,
            format!("write a lease in {}: {e}", store.dir().display()),
        )
    };
    let mut requested: Vec<IpAddr> = config.requested.clone();
    let mut taken: Vec<IpAddr> = Vec::new();
    let mut ips = Vec::new();
    let outcome = (|| -> Result<(), PluginError> {
        for (index, set) in config.range_sets.iter().enumerate() {
            let wanted = requested
                .iter()
                .position(|ip| set.range_for(*ip).is_some())
                .map(|i| requested.remove(i));
            let (ip, range) = match wanted {
                Some(ip) => {
                    let range = *set.range_for(ip).expect("in the set");
                    if ip == range.gateway {
                        return Err(PluginError::internal(format!(
                            "failed to allocate for range {index}: requested ip {ip} is subnet's gateway"
                        )));
                    }
                    if !store.reserve(container_id, ifname, ip, index).map_err(io)? {
                        return Err(PluginError::internal(format!(
                            "failed to allocate for range {index}: requested IP address {ip} is not available in range set {set}"
                        )));
                    }
                    (ip, range)
                }
                None => {
                    if let Some(held) = store
                        .leases_of(container_id, ifname)
                        .into_iter()
                        .find(|l| set.range_for(l.ip).is_some())
                    {
                        return Err(PluginError::internal(format!(
                            "failed to allocate for range {index}: {} has been allocated to {container_id}, duplicate allocation is not allowed",
                            held.ip
                        )));
                    }
                    let mut chosen = None;
                    for (ip, range) in set.candidates(store.last_reserved(index)) {
                        if store.reserve(container_id, ifname, ip, index).map_err(io)? {
                            chosen = Some((ip, range));
                            break;
                        }
                    }
                    chosen.ok_or_else(|| {
                        PluginError::internal(format!(
                            "failed to allocate for range {index}: no IP addresses available in range set: {set}"
                        ))
                    })?
                }
            };
            taken.push(ip);
            ips.push(IpConfig {
                address: cni_host::result::IpNetwork {
                    addr: ip,
                    prefix: range.subnet.prefix,
                },
                gateway: Some(range.gateway),
                interface: None,
            });
        }
        if !requested.is_empty() {
            let list: Vec<String> = requested.iter().map(IpAddr::to_string).collect();
            return Err(PluginError::internal(format!(
                "failed to allocate all requested IPs: {}",
                list.join(" ")
            )));
        }
        Ok(())
    })();
    if let Err(e) = outcome {
        for ip in taken {
            let _ = store.remove(ip);
        }
        return Err(e);
    }
    Ok(CniResult {
        cni_version: "1.1.0".into(),
        interfaces: Vec::new(),
        ips,
        routes: config.routes.clone(),
        dns,
    })
}

/// Gives up the container's leases; none is not an error.
pub fn del(config: &Config, container_id: &str, ifname: &str) -> Result<(), PluginError> {
    let store = match config.open() {
        Ok(store) => store,
        Err(cannot_write) => {
            // A lease dir that cannot be written (read-only, full) may still show that the
            // container holds nothing there: then DEL has nothing to do and succeeds, so
            // the rest of the chain's cleanup is not reported as failed.
            return match Store::open_to_read(&config.data_dir, &config.network) {
                Ok(None) => Ok(()),
                Ok(Some(store)) if store.leases_of(container_id, ifname).is_empty() => Ok(()),
                _ => Err(cannot_write),
            };
        }
    };
    store.release(container_id, ifname).map_err(|e| {
        PluginError::new(
            PluginError::IO_FAILURE,
            format!(
                "release the leases of {container_id} in {}: {e}",
                store.dir().display()
            ),
        )
    })?;
    Ok(())
}

/// The attachments a GC keeps, as (container id, ifname).
pub fn valid_attachments(config: &Value) -> Result<HashSet<(String, String)>, PluginError> {
    let Some(list) = config.get("cni.dev/valid-attachments") else {
        return Ok(HashSet::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| PluginError::config("cni.dev/valid-attachments is not a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            let field = |name: &str| {
                a.get(name)
                    .and_then(Value::as_str)
                    .map(|s| s.trim().to_string())
                    .ok_or_else(|| {
                        PluginError::config(format!(
                            "cni.dev/valid-attachments[{i}].{name} is missing"
                        ))
                    })
            };
            Ok((field("containerID")?, field("ifname")?))
        })
        .collect()
}

/// Gives up every lease of an attachment not in `valid` (an old lease, without its
/// ifname, is kept if its container has any valid attachment).
pub fn gc(config: &Config, valid: &HashSet<(String, String)>) -> Result<Vec<IpAddr>, PluginError> {
    let store = config.open()?;
    let containers: HashSet<&str> = valid.iter().map(|(id, _)| id.as_str()).collect();
    let mut released = Vec::new();
    for lease in store.leases() {
        let kept = if lease.ifname.is_empty() {
            containers.contains(lease.container_id.as_str())
        } else {
            valid.contains(&(lease.container_id.clone(), lease.ifname.clone()))
        };
        if !kept {
            store.remove(lease.ip).map_err(|e| {
                PluginError::new(
                    PluginError::IO_FAILURE,
                    format!("release {} in {}: {e}", lease.ip, store.dir().display()),
                )
            })?;
            released.push(lease.ip);
        }
    }
    Ok(released)
}

/// Whether leases can be taken: the lease dir opens and can be written.
pub fn status(config: &Config) -> Result<(), PluginError> {
    let store = config.open().map_err(|e| PluginError {
        code: PluginError::NOT_AVAILABLE,
        ..e
    })?;
    let probe = store.dir().join(".status");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| {
            PluginError::new(
                PluginError::NOT_AVAILABLE,
                format!(
                    "the lease dir {} cannot be written: {e}",
                    store.dir().display()
                ),
            )
        })
}

/// DNS settings from a resolv.conf, as upstream reads them.
fn parse_resolv_conf(path: &Path) -> Result<Dns, PluginError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        PluginError::new(
            PluginError::IO_FAILURE,
            format!("read resolvConf {}: {e}", path.display()),
        )
    })?;
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.nameservers.extend(words.next().map(String::from)),
            Some("domain") => dns.domain = words.next().unwrap_or_default().to_string(),
            Some("search") => dns.search = words.map(String::from).collect(),
            Some("options") => dns.options.extend(words.map(String::from)),
            _ => {}
        }
    }
    Ok(dns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn invocation(command: Command, config: Value, id: &str) -> Invocation {
        Invocation {
            command,
            container_id: id.into(),
            netns: Some("/proc/self/ns/net".into()),
            ifname: "eth0".into(),
            args: Vec::new(),
            cni_path: Vec::new(),
            version: "1.0.0".parse().unwrap(),
            config,
        }
    }

    fn network(dir: &Path) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "net",
            "ipam": {
                "type": "host-local",
                "subnet": "10.9.0.0/29",
                "dataDir": dir,
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        })
    }

    #[test]
    fn a_small_range_fills_up_and_frees() {
        let dir = tempfile::tempdir().unwrap();
        let mut given = Vec::new();
        for i in 0..5 {
            let out = run(&invocation(
                Command::Add,
                network(dir.path()),
                &format!("c{i}"),
            ))
            .unwrap()
            .unwrap();
            assert_eq!(out["ips"][0]["gateway"], "10.9.0.1");
            assert_eq!(out["routes"][0]["dst"], "0.0.0.0/0");
            given.push(out["ips"][0]["address"].as_str().unwrap().to_string());
        }
        assert_eq!(
            given,
            [
                "10.9.0.2/29",
                "10.9.0.3/29",
                "10.9.0.4/29",
                "10.9.0.5/29",
                "10.9.0.6/29"
            ]
        );
        let full = run(&invocation(Command::Add, network(dir.path()), "c5")).unwrap_err();
        assert!(full.msg.contains("no IP addresses available"), "{full}");
        let again = run(&invocation(Command::Add, network(dir.path()), "c0")).unwrap_err();
        assert!(again.msg.contains("duplicate allocation"), "{again}");
        run(&invocation(Command::Check, network(dir.path()), "c1")).unwrap();
        run(&invocation(Command::Del, network(dir.path()), "c1")).unwrap();
        run(&invocation(Command::Del, network(dir.path()), "c1")).unwrap();
        assert!(run(&invocation(Command::Check, network(dir.path()), "c1")).is_err());
        // Round robin: the freed .3 is next only after the rest were tried.
        let out = run(&invocation(Command::Add, network(dir.path()), "c6"))
            .unwrap()
            .unwrap();
        assert_eq!(out["ips"][0]["address"], "10.9.0.3/29");
    }

    #[test]
    fn requested_addresses_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let mut asked = invocation(Command::Add, network(dir.path()), "c1");
        asked.args = vec![("IP".into(), "10.9.0.5".into())];
        let out = run(&asked).unwrap().unwrap();
        assert_eq!(out["ips"][0]["address"], "10.9.0.5/29");
        let mut gateway = invocation(Command::Add, network(dir.path()), "c2");
        gateway.args = vec![("IP".into(), "10.9.0.1".into())];
        assert!(run(&gateway).unwrap_err().msg.contains("gateway"));
        let mut outside = invocation(Command::Add, network(dir.path()), "c3");
        outside.args = vec![("IP".into(), "10.8.0.1".into())];
        assert!(run(&outside).unwrap_err().msg.contains("requested IPs"));
        assert_eq!(
            std::fs::read_dir(dir.path().join("net")).unwrap().count(),
            3,
            "c1's lease, last_reserved, lock"
        );

        run(&invocation(Command::Add, network(dir.path()), "c4")).unwrap();
        let mut gc_config = network(dir.path());
        gc_config["cniVersion"] = json!("1.1.0");
        gc_config["cni.dev/valid-attachments"] = json!([{"containerID": "c4", "ifname": "eth0"}]);
        let config = Config::load(&invocation(Command::Gc, gc_config.clone(), "")).unwrap();
        let released = gc(&config, &valid_attachments(&gc_config).unwrap()).unwrap();
        assert_eq!(released, vec!["10.9.0.5".parse::<IpAddr>().unwrap()]);
        status(&config).unwrap();
    }

    #[test]
    fn bad_configs_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = network(dir.path());
        config["ipam"]["subnet"] = json!("10.0.0.0/33");
        let err = Config::load(&invocation(Command::Add, config, "c")).unwrap_err();
        assert_eq!(err.code, PluginError::INVALID_CONFIG);
        assert!(err.msg.contains("subnet"), "{err}");
        let mut config = network(dir.path());
        config["ipam"] = json!({"type": "host-local"});
        let err = Config::load(&invocation(Command::Add, config, "c")).unwrap_err();
        assert!(err.msg.contains("no IP ranges"), "{err}");
    }
}
