//! portmap: a pod's hostPorts (`runtimeConfig.portMappings`, the `portMappings`
//! capability) forwarded to its address, in nftables over netlink instead of upstream's
//! iptables chains, in a table of its own in the node's namespace:
//!
//! ```text
//! table ip sandboxd-hostports
//!   nat-prerouting / nat-output ─► hostports:
//!       ip daddr . meta l4proto . th dport vmap @hostip-hostports   (a mapping's hostIP)
//!       fib daddr type local meta l4proto . th dport vmap @hostports (any local address)
//!   @…hostports ─► hp/<container>/[<hostIP>/]<proto>/<hostPort>:
//!       ip saddr <pod> jump mark-for-masquerade        (hairpin: the pod to itself)
//!       ip saddr 127.0.0.0/8 jump mark-for-masquerade  (from the node's loopback)
//!       meta l4proto <proto> dnat to <pod>:<containerPort>
//!   nat-postrouting ─► masquerading: marked packets (0x2000, markMasqBit 13) masqueraded
//! ```
//!
//! A hostPort held by another pod is refused (the map's key is claimed, not replaced),
//! where iptables would silently shadow one with the other. DEL finds a container's
//! chains by their names, so it needs neither the mappings nor a cache; CHECK finds them.
//! Fields read as upstream's: `snat` (default true), `markMasqBit` (default 13); the
//! iptables-only `externalSetMarkChain` and `conditionsV4`/`V6` are refused.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::Path;

use cni_host::result::CniResult;
use serde::Deserialize;
use serde_json::Value;

use crate::cni_plugin::invocation::{fields_as_go_reads_them, Command, Invocation, PluginError};
use crate::cni_plugin::nft;
use crate::service::plan::{ChainType, Hook, Key, MapKey, Op, Plan, Rule, Verdict};
use crate::service::Protocol;

pub const TABLE: &str = "sandboxd-hostports";
const HOSTPORTS: &str = "hostports";
const HOSTIP_HOSTPORTS: &str = "hostip-hostports";
const DISPATCH: &str = "hostports";
const MARK: &str = "mark-for-masquerade";
const MASQUERADING: &str = "masquerading";
const UNSUPPORTED_FIELD: u32 = 2;
/// Base chains and rules are added once; concurrent first ADDs take turns.
const LOCK: &str = "/run/sandboxd-cni-portmap.lock";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortmapConfig {
    #[serde(default)]
    snat: Option<bool>,
    #[serde(default)]
    mark_masq_bit: Option<u32>,
    #[serde(default)]
    external_set_mark_chain: Option<String>,
    #[serde(default)]
    conditions_v4: Option<Vec<String>>,
    #[serde(default)]
    conditions_v6: Option<Vec<String>>,
    #[serde(default)]
    runtime_config: RuntimeConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    #[serde(default)]
    port_mappings: Vec<PortMapping>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortMapping {
    host_port: i64,
    container_port: i64,
    #[serde(default)]
    protocol: String,
    #[serde(default, rename = "hostIP")]
    host_ip: String,
}

/// One mapping, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Forward {
    protocol: Protocol,
    host_port: u16,
    host_ip: Option<Ipv4Addr>,
    container_port: u16,
}

impl Forward {
    fn chain(&self, container_id: &str) -> String {
        match self.host_ip {
            Some(ip) => format!(
                "hp/{container_id}/{ip}/{}/{}",
                self.protocol.nft(),
                self.host_port
            ),
            None => format!(
                "hp/{container_id}/{}/{}",
                self.protocol.nft(),
                self.host_port
            ),
        }
    }

    fn key(&self) -> (&'static str, Key) {
        match self.host_ip {
            Some(ip) => (
                HOSTIP_HOSTPORTS,
                Key::Service(ip, self.protocol, self.host_port),
            ),
            None => (HOSTPORTS, Key::NodePort(self.protocol, self.host_port)),
        }
    }

    /// The mapping a chain of `container_id` is named for.
    fn from_chain(name: &str, container_id: &str) -> Option<Forward> {
        let rest = name
            .strip_prefix("hp/")?
            .strip_prefix(container_id)?
            .strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        let (host_ip, protocol, port) = match parts.as_slice() {
            [protocol, port] => (None, *protocol, *port),
            [ip, protocol, port] => (Some(ip.parse().ok()?), *protocol, *port),
            _ => return None,
        };
        let protocol = match protocol {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return None,
        };
        Some(Forward {
            protocol,
            host_port: port.parse().ok()?,
            host_ip,
            container_port: 0,
        })
    }
}

impl PortmapConfig {
    fn load(config: &Value) -> Result<PortmapConfig, PluginError> {
        let mut config = config.clone();
        if let Some(mappings) = config.pointer_mut("/runtimeConfig/portMappings") {
            *mappings = fields_as_go_reads_them(
                mappings,
                &["hostPort", "containerPort", "protocol", "hostIP"],
            );
        }
        let parsed: PortmapConfig = serde_path_to_error::deserialize(&config)
            .map_err(|e| PluginError::config(format!("{}: {}", e.path(), e.inner())))?;
        for (field, present) in [
            (
                "externalSetMarkChain",
                parsed.external_set_mark_chain.is_some(),
            ),
            ("conditionsV4", parsed.conditions_v4.is_some()),
            ("conditionsV6", parsed.conditions_v6.is_some()),
        ] {
            if present {
                return Err(PluginError::new(
                    UNSUPPORTED_FIELD,
                    format!("{field}: an iptables setting; sandboxd-cni's portmap uses nftables"),
                ));
            }
        }
        if parsed.mark_masq_bit.is_some_and(|bit| bit > 31) {
            return Err(PluginError::config("markMasqBit: must be 0..=31"));
        }
        Ok(parsed)
    }

    fn mark(&self) -> u32 {
        1 << self.mark_masq_bit.unwrap_or(13)
    }

    fn forwards(&self) -> Result<Vec<Forward>, PluginError> {
        let mut forwards = Vec::new();
        for (i, m) in self.runtime_config.port_mappings.iter().enumerate() {
            let field = |name: &str| format!("runtimeConfig.portMappings[{i}].{name}");
            let port = |value: i64, name: &str| {
                u16::try_from(value).ok().filter(|p| *p > 0).ok_or_else(|| {
                    PluginError::config(format!("{}: {value} is not a port", field(name)))
                })
            };
            let protocol = match m.protocol.to_ascii_lowercase().as_str() {
                "" | "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                other => {
                    return Err(PluginError::new(
                        UNSUPPORTED_FIELD,
                        format!("{}: {other:?} is not tcp or udp", field("protocol")),
                    ))
                }
            };
            let host_ip = match m.host_ip.as_str() {
                "" | "0.0.0.0" => None,
                text => match text.parse::<IpAddr>() {
                    Ok(IpAddr::V4(ip)) => Some(ip),
                    // An IPv6 hostIP is for IPv6 pods, which this plugin does not forward.
                    Ok(IpAddr::V6(_)) => continue,
                    Err(_) => {
                        return Err(PluginError::config(format!(
                            "{}: {text:?} is not an IP address",
                            field("hostIP")
                        )))
                    }
                },
            };
            forwards.push(Forward {
                protocol,
                host_port: port(m.host_port, "hostPort")?,
                host_ip,
                container_port: port(m.container_port, "containerPort")?,
            });
        }
        Ok(forwards)
    }
}

pub fn run(invocation: &Invocation) -> Result<Option<Value>, PluginError> {
    run_in(invocation, None)
}

pub fn run_in(invocation: &Invocation, host: Option<&Path>) -> Result<Option<Value>, PluginError> {
    if invocation.command == Command::Del {
        // DEL finds the forwards by name: a config the ADD refused (or a newer runtime's
        // arguments) must not keep a failed attachment from being cleaned up.
        del(&invocation.container_id, host)?;
        return Ok(None);
    }
    let config = PortmapConfig::load(&invocation.config)?;
    let previous = match invocation.config.get("prevResult") {
        Some(previous) => Some(
            CniResult::from_value(previous.clone())
                .map_err(|e| PluginError::config(format!("prevResult: {e}")))?,
        ),
        None => None,
    };
    match invocation.command {
        Command::Add => {
            let previous = previous.ok_or_else(|| {
                PluginError::config("prevResult: missing (portmap runs after the interface plugin)")
            })?;
            let forwards = config.forwards()?;
            if !forwards.is_empty() {
                let pod = pod_address(&previous)?;
                add(&config, &invocation.container_id, pod, &forwards, host)?;
                enable_localnet_routing(&previous, host)?;
            }
            invocation.render(&previous).map(Some)
        }
        Command::Del => unreachable!("handled above"),
        Command::Check => {
            let names = chains(host)?;
            for forward in config.forwards()? {
                let chain = forward.chain(&invocation.container_id);
                if !names.contains(&chain) {
                    return Err(PluginError::internal(format!(
                        "hostPort {}/{} of {} is not forwarded",
                        forward.protocol.nft(),
                        forward.host_port,
                        invocation.container_id
                    )));
                }
            }
            Ok(None)
        }
        Command::Gc => {
            let valid = crate::cni_plugin::host_local::valid_attachments(&invocation.config)?;
            let keep: std::collections::HashSet<&str> =
                valid.iter().map(|(id, _)| id.as_str()).collect();
            let mut stale = std::collections::BTreeSet::new();
            for name in chains(host)? {
                if let Some(id) = name.strip_prefix("hp/").and_then(|r| r.split('/').next()) {
                    if !keep.contains(id) {
                        stale.insert(id.to_string());
                    }
                }
            }
            for id in stale {
                del(&id, host)?;
            }
            Ok(None)
        }
        Command::Status => {
            nft::socket(host)?;
            Ok(None)
        }
        Command::Version => unreachable!("answered by the plugin"),
    }
}

fn chains(host: Option<&Path>) -> Result<Vec<String>, PluginError> {
    nft::socket(host)?
        .chains(TABLE)
        .map_err(|e| PluginError::internal(format!("{e:#}")))
}

/// The pod's IPv4 address: the first of the previous result's on an interface in the
/// pod (or on none named).
fn pod_address(previous: &CniResult) -> Result<Ipv4Addr, PluginError> {
    previous
        .ips
        .iter()
        .filter(|ip| {
            ip.interface
                .and_then(|i| previous.interfaces.get(i))
                .is_none_or(|interface| !interface.sandbox.is_empty())
        })
        .find_map(|ip| match ip.address.addr {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .ok_or_else(|| {
            PluginError::new(
                UNSUPPORTED_FIELD,
                "prevResult: the pod has no IPv4 address; sandboxd-cni's portmap forwards IPv4 only",
            )
        })
}

fn lock() -> Result<std::fs::File, PluginError> {
    crate::lockfile::lock(Path::new(LOCK), crate::lockfile::LockMode::Exclusive)
        .map_err(|e| PluginError::internal(format!("lock {LOCK}: {e}")))
}

/// The table's fixed objects, for a table that does not exist yet.
fn base(plan: &mut Plan, mark: u32) {
    let chain = |plan: &mut Plan, name: &str| {
        plan.ops.push(Op::AddChain {
            name: name.into(),
            base: None,
        })
    };
    let rule = |plan: &mut Plan, chain: &str, rule: Rule| {
        plan.ops.push(Op::AddRule {
            chain: chain.into(),
            rule,
        })
    };
    plan.ops.push(Op::AddTable);
    plan.ops.push(Op::AddMap {
        name: HOSTPORTS,
        key: MapKey::ProtocolPort,
    });
    plan.ops.push(Op::AddMap {
        name: HOSTIP_HOSTPORTS,
        key: MapKey::AddressProtocolPort,
    });
    chain(plan, MARK);
    rule(plan, MARK, Rule::SetMark(mark));
    chain(plan, MASQUERADING);
    rule(plan, MASQUERADING, Rule::ReturnUnlessMarked(mark));
    rule(plan, MASQUERADING, Rule::ToggleMark(mark));
    rule(plan, MASQUERADING, Rule::MasqueradeFullyRandom);
    chain(plan, DISPATCH);
    rule(plan, DISPATCH, Rule::DestinationVmap(HOSTIP_HOSTPORTS));
    rule(plan, DISPATCH, Rule::AnyLocalPortVmap(HOSTPORTS));
    for (name, hook, priority, target) in [
        ("nat-prerouting", Hook::Prerouting, -100, DISPATCH),
        ("nat-output", Hook::Output, -100, DISPATCH),
        ("nat-postrouting", Hook::Postrouting, 100, MASQUERADING),
    ] {
        plan.ops.push(Op::AddChain {
            name: name.into(),
            base: Some(crate::service::plan::BaseChain {
                chain_type: ChainType::Nat,
                hook,
                priority,
            }),
        });
        rule(plan, name, Rule::Always(Verdict::Jump(target.into())));
    }
}

fn add(
    config: &PortmapConfig,
    container_id: &str,
    pod: Ipv4Addr,
    forwards: &[Forward],
    host: Option<&Path>,
) -> Result<(), PluginError> {
    let _lock = lock()?;
    let mut nft = nft::socket(host)?;
    let existing = nft
        .chains(TABLE)
        .map_err(|e| PluginError::internal(format!("{e:#}")))?;
    let mut plan = Plan::default();
    let mark = config.mark();
    if existing.is_empty() {
        base(&mut plan, mark);
    }
    for forward in forwards {
        let chain = forward.chain(container_id);
        if existing.contains(&chain) {
            // A repeated ADD replaces its own mapping.
            let (map, key) = forward.key();
            plan.ops.push(Op::DeleteElement { map, key });
            plan.ops.push(Op::FlushChain(chain.clone()));
        } else {
            plan.ops.push(Op::AddChain {
                name: chain.clone(),
                base: None,
            });
        }
        if config.snat.unwrap_or(true) {
            for rule in [
                Rule::FromAddress(pod, Verdict::Jump(MARK.into())),
                Rule::FromNetwork((Ipv4Addr::new(127, 0, 0, 0), 8), Verdict::Jump(MARK.into())),
            ] {
                plan.ops.push(Op::AddRule {
                    chain: chain.clone(),
                    rule,
                });
            }
        }
        plan.ops.push(Op::AddRule {
            chain: chain.clone(),
            rule: Rule::Dnat(
                forward.protocol,
                SocketAddrV4::new(pod, forward.container_port),
            ),
        });
        let (map, key) = forward.key();
        plan.ops.push(Op::ClaimElement {
            map,
            key,
            verdict: Verdict::Goto(chain),
        });
    }
    nft.apply_to(TABLE, &plan).map_err(|e| {
        let text = format!("{e:#}");
        if text.contains("File exists") {
            PluginError::internal(format!(
                "a hostPort of {container_id} is held by another pod: {text}"
            ))
        } else {
            PluginError::internal(format!("forward the hostPorts of {container_id}: {text}"))
        }
    })
}

/// Removes every forward of the container; none is not an error.
fn del(container_id: &str, host: Option<&Path>) -> Result<(), PluginError> {
    let _lock = lock()?;
    let mut nft = nft::socket(host)?;
    let names = nft
        .chains(TABLE)
        .map_err(|e| PluginError::internal(format!("{e:#}")))?;
    let mut plan = Plan::default();
    for name in names {
        let Some(forward) = Forward::from_chain(&name, container_id) else {
            continue;
        };
        let (map, key) = forward.key();
        plan.ops.push(Op::DeleteElement { map, key });
        plan.ops.push(Op::FlushChain(name.clone()));
        plan.ops.push(Op::DeleteChain(name));
    }
    nft.apply_to(TABLE, &plan).map_err(|e| {
        PluginError::internal(format!("remove the hostPorts of {container_id}: {e:#}"))
    })
}

/// A forward to 127.0.0.1:hostPort needs the kernel to route loopback-sourced packets out
/// of the node's side of the pod (upstream sets route_localnet there, as here).
fn enable_localnet_routing(previous: &CniResult, host: Option<&Path>) -> Result<(), PluginError> {
    let Some(interface) = previous.interfaces.iter().find(|i| i.sandbox.is_empty()) else {
        return Ok(());
    };
    let path = format!("/proc/sys/net/ipv4/conf/{}/route_localnet", interface.name);
    crate::netns::run_in(host, move || {
        std::fs::write(&path, "1")?;
        Ok(())
    })
    .map_err(|e| {
        PluginError::internal(format!("turn on route_localnet on {}: {e}", interface.name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mappings_are_checked_and_named_for_their_key() {
        let config = PortmapConfig::load(&json!({
            "runtimeConfig": { "portMappings": [
                { "hostPort": 8080, "containerPort": 80, "protocol": "tcp" },
                { "hostPort": 53, "containerPort": 53, "protocol": "UDP", "hostIP": "192.0.2.7" },
                { "hostPort": 9, "containerPort": 9, "hostIP": "::1" },
            ]}
        }))
        .unwrap();
        let forwards = config.forwards().unwrap();
        assert_eq!(forwards.len(), 2, "the IPv6 hostIP is not this plugin's");
        let id = "c0ffee-1";
        for forward in &forwards {
            let back = Forward::from_chain(&forward.chain(id), id).unwrap();
            assert_eq!(
                (back.protocol, back.host_port, back.host_ip),
                (forward.protocol, forward.host_port, forward.host_ip)
            );
        }
        assert_eq!(forwards[1].chain(id), "hp/c0ffee-1/192.0.2.7/udp/53");
        assert!(
            Forward::from_chain("hp/c0ffee-10/tcp/1", id).is_none(),
            "another container"
        );
        assert_eq!(config.mark(), 0x2000);

        let bad = PortmapConfig::load(&json!({
            "runtimeConfig": { "portMappings": [{ "hostPort": 0, "containerPort": 80 }] }
        }))
        .unwrap()
        .forwards()
        .unwrap_err();
        assert!(bad.msg.contains("portMappings[0].hostPort"), "{bad}");
        let sctp = PortmapConfig::load(&json!({
            "runtimeConfig": { "portMappings": [{ "hostPort": 1, "containerPort": 1, "protocol": "sctp" }] }
        }))
        .unwrap()
        .forwards()
        .unwrap_err();
        assert_eq!(sctp.code, UNSUPPORTED_FIELD);
        assert!(PortmapConfig::load(&json!({ "conditionsV4": ["-s", "1.2.3.4"] })).is_err());
        // containerd's go-cni spells the fields as its Go struct does.
        let containerd = PortmapConfig::load(&json!({
            "runtimeConfig": { "portMappings": [
                { "HostPort": 18081, "ContainerPort": 80, "Protocol": "tcp", "HostIP": "" }
            ]}
        }))
        .unwrap()
        .forwards()
        .unwrap();
        assert_eq!(
            (
                containerd[0].host_port,
                containerd[0].container_port,
                containerd[0].host_ip
            ),
            (18081, 80, None)
        );
    }
}
