//! portmap: a pod's hostPorts (`runtimeConfig.portMappings`, the `portMappings`
//! capability) forwarded to its address, in nftables over netlink instead of upstream's
//! iptables chains, in a table of its own in the node's namespace:
//!
//! ```text
//! table ip sandboxd-hostports                   (and ip6 sandboxd-hostports, alike)
//!   nat-prerouting / nat-output ─► hostports:
//!       ip daddr . meta l4proto . th dport vmap @hostip-hostports   (a mapping's hostIP)
//!       fib daddr type local meta l4proto . th dport vmap @hostports (any local address)
//!   @…hostports ─► hp/<container>/[<hostIP>/]<proto>/<hostPort>:
//!       ip saddr <pod> jump mark-for-masquerade        (hairpin: the pod to itself)
//!       ip saddr 127.0.0.0/8 jump mark-for-masquerade  (from the node's loopback; IPv4)
//!       meta l4proto <proto> dnat to <pod>:<containerPort>
//!   nat-postrouting ─► masquerading: marked packets (0x2000, markMasqBit 13) masqueraded
//! ```
//!
//! Each family of the pod's addresses is forwarded in its own table: a mapping without a
//! hostIP in both, one with a hostIP (or `0.0.0.0`, `::`) in that address's family only,
//! as upstream's. A hostIP of a family the pod has no address of is an error. As
//! upstream's, IPv6 has no forward from the node's loopback (`::1` cannot be routed out).
//!
//! A hostPort held by another pod is refused (the map's key is claimed, not replaced),
//! where iptables would silently shadow one with the other. DEL finds a container's
//! chains by their names, so it needs neither the mappings nor a cache; CHECK finds them.
//! Fields read as upstream's: `snat` (default true), `markMasqBit` (default 13); the
//! iptables-only `externalSetMarkChain` and `conditionsV4`/`V6` are refused.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use cni_host::result::CniResult;
use serde::Deserialize;
use serde_json::Value;

use crate::cni_plugin::invocation::{fields_as_go_reads_them, Command, Invocation, PluginError};
use crate::cni_plugin::nft;
use crate::netlink::Family;
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

/// Which of the node's addresses a mapping listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostAddress {
    /// No hostIP: every address of both families.
    Any,
    /// `0.0.0.0` or `::`: every address of one family.
    AnyOf(Family),
    Address(IpAddr),
}

impl std::fmt::Display for HostAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostAddress::Any => write!(f, "no hostIP"),
            HostAddress::AnyOf(Family::V4) => write!(f, "hostIP 0.0.0.0"),
            HostAddress::AnyOf(Family::V6) => write!(f, "hostIP ::"),
            HostAddress::Address(ip) => write!(f, "hostIP {ip}"),
        }
    }
}

impl HostAddress {
    fn serves(self, family: Family) -> bool {
        match self {
            HostAddress::Any => true,
            HostAddress::AnyOf(f) => f == family,
            HostAddress::Address(ip) => Family::of(&ip) == family,
        }
    }
}

/// One mapping, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Forward {
    protocol: Protocol,
    host_port: u16,
    host: HostAddress,
    container_port: u16,
}

impl Forward {
    /// Its chain, in the table of each family it serves.
    fn chain(&self, container_id: &str) -> String {
        match self.host {
            HostAddress::Address(ip) => format!(
                "hp/{container_id}/{ip}/{}/{}",
                self.protocol.nft(),
                self.host_port
            ),
            HostAddress::Any | HostAddress::AnyOf(_) => format!(
                "hp/{container_id}/{}/{}",
                self.protocol.nft(),
                self.host_port
            ),
        }
    }

    fn key(&self) -> (&'static str, Key) {
        match self.host {
            HostAddress::Address(ip) => (
                HOSTIP_HOSTPORTS,
                Key::Service(ip, self.protocol, self.host_port),
            ),
            HostAddress::Any | HostAddress::AnyOf(_) => {
                (HOSTPORTS, Key::NodePort(self.protocol, self.host_port))
            }
        }
    }

    /// The mapping a chain of `container_id` is named for.
    fn from_chain(name: &str, container_id: &str) -> Option<Forward> {
        let rest = name
            .strip_prefix("hp/")?
            .strip_prefix(container_id)?
            .strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        let (host, protocol, port) = match parts.as_slice() {
            [protocol, port] => (HostAddress::Any, *protocol, *port),
            [ip, protocol, port] => (HostAddress::Address(ip.parse().ok()?), *protocol, *port),
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
            host,
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
            let host = match m.host_ip.as_str() {
                "" => HostAddress::Any,
                text => match text.parse::<IpAddr>() {
                    Ok(ip) if ip.is_unspecified() => HostAddress::AnyOf(Family::of(&ip)),
                    Ok(ip) => HostAddress::Address(ip),
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
                host,
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
                let pod = pod_addresses(&previous, &forwards)?;
                add(&config, &invocation.container_id, &pod, &forwards, host)?;
                if pod.iter().any(|ip| ip.is_ipv4()) {
                    enable_localnet_routing(&previous, host)?;
                }
            }
            invocation.render(&previous).map(Some)
        }
        Command::Del => unreachable!("handled above"),
        Command::Check => {
            let forwards = config.forwards()?;
            let pod = match &previous {
                Some(previous) if !forwards.is_empty() => pod_addresses(previous, &forwards)?,
                _ => Vec::new(),
            };
            for family in pod.iter().map(Family::of) {
                let names = chains(host, family)?;
                for forward in forwards.iter().filter(|f| f.host.serves(family)) {
                    let chain = forward.chain(&invocation.container_id);
                    if names.contains(&chain) {
                        continue;
                    }
                    return Err(PluginError::internal(format!(
                        "hostPort {}/{} of {} is not forwarded over {family:?}",
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
            let mut names = chains(host, Family::V4)?;
            names.extend(chains(host, Family::V6)?);
            for name in names {
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

fn chains(host: Option<&Path>, family: Family) -> Result<Vec<String>, PluginError> {
    nft::socket(host)?
        .chains(family, TABLE)
        .map_err(|e| PluginError::internal(format!("{e:#}")))
}

/// The pod's address of each family a mapping serves: the first of the previous
/// result's on an interface in the pod (or on none named). A mapping whose family the
/// pod has no address of is an error.
fn pod_addresses(previous: &CniResult, forwards: &[Forward]) -> Result<Vec<IpAddr>, PluginError> {
    let in_pod: Vec<IpAddr> = previous
        .ips
        .iter()
        .filter(|ip| {
            ip.interface
                .and_then(|i| previous.interfaces.get(i))
                .is_none_or(|interface| !interface.sandbox.is_empty())
        })
        .map(|ip| ip.address.addr)
        .collect();
    let first_of = |family: Family| in_pod.iter().copied().find(|ip| Family::of(ip) == family);
    for forward in forwards {
        if ![Family::V4, Family::V6]
            .iter()
            .any(|f| forward.host.serves(*f) && first_of(*f).is_some())
        {
            let has: Vec<String> = in_pod.iter().map(IpAddr::to_string).collect();
            return Err(PluginError::config(format!(
                "runtimeConfig.portMappings: hostPort {}/{} ({}) has no pod address of its family to go to (the pod has {})",
                forward.protocol.nft(),
                forward.host_port,
                forward.host,
                if has.is_empty() { "none".to_string() } else { has.join(", ") }
            )));
        }
    }
    Ok([Family::V4, Family::V6]
        .into_iter()
        .filter_map(first_of)
        .collect())
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

/// Forwards each family's share of `forwards` to the pod's address of that family.
fn add(
    config: &PortmapConfig,
    container_id: &str,
    pod: &[IpAddr],
    forwards: &[Forward],
    host: Option<&Path>,
) -> Result<(), PluginError> {
    let _lock = lock()?;
    let mut nft = nft::socket(host)?;
    let mut done = Vec::new();
    for &address in pod {
        let family = Family::of(&address);
        let served: Vec<&Forward> = forwards.iter().filter(|f| f.host.serves(family)).collect();
        if served.is_empty() {
            continue;
        }
        let outcome = add_in(&mut nft, family, config, container_id, address, &served);
        if let Err(e) = outcome {
            // The families done so far go too: the ADD fails whole.
            drop(nft);
            for family in done {
                let _ = del_in(container_id, host, family);
            }
            return Err(e);
        }
        done.push(family);
    }
    Ok(())
}

fn add_in(
    nft: &mut nft::Held,
    family: Family,
    config: &PortmapConfig,
    container_id: &str,
    pod: IpAddr,
    forwards: &[&Forward],
) -> Result<(), PluginError> {
    let existing = nft
        .chains(family, TABLE)
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
            let mut rules = vec![Rule::FromAddress(pod, Verdict::Jump(MARK.into()))];
            if family == Family::V4 {
                rules.push(Rule::FromNetwork(
                    (Ipv4Addr::new(127, 0, 0, 0).into(), 8),
                    Verdict::Jump(MARK.into()),
                ));
            }
            for rule in rules {
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
                SocketAddr::new(pod, forward.container_port),
            ),
        });
        let (map, key) = forward.key();
        plan.ops.push(Op::ClaimElement {
            map,
            key,
            verdict: Verdict::Goto(chain),
        });
    }
    nft.apply_to(family, TABLE, &plan).map_err(|e| {
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

/// Removes every forward of the container, of both families; none is not an error.
fn del(container_id: &str, host: Option<&Path>) -> Result<(), PluginError> {
    let _lock = lock()?;
    for family in [Family::V4, Family::V6] {
        del_in(container_id, host, family)?;
    }
    Ok(())
}

fn del_in(container_id: &str, host: Option<&Path>, family: Family) -> Result<(), PluginError> {
    let mut nft = nft::socket(host)?;
    let names = nft
        .chains(family, TABLE)
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
    nft.apply_to(family, TABLE, &plan).map_err(|e| {
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
        assert_eq!(forwards.len(), 3);
        let id = "c0ffee-1";
        for forward in &forwards {
            let back = Forward::from_chain(&forward.chain(id), id).unwrap();
            assert_eq!(
                (back.protocol, back.host_port, back.host),
                (forward.protocol, forward.host_port, forward.host)
            );
        }
        assert_eq!(forwards[1].chain(id), "hp/c0ffee-1/192.0.2.7/udp/53");
        assert_eq!(forwards[2].chain(id), "hp/c0ffee-1/::1/tcp/9");
        assert!(forwards[0].host.serves(Family::V6) && forwards[0].host.serves(Family::V4));
        assert!(!forwards[2].host.serves(Family::V4));
        let unspecified = PortmapConfig::load(&json!({
            "runtimeConfig": { "portMappings": [
                { "hostPort": 80, "containerPort": 80, "hostIP": "::" },
            ]}
        }))
        .unwrap()
        .forwards()
        .unwrap();
        assert_eq!(unspecified[0].host, HostAddress::AnyOf(Family::V6));
        assert_eq!(unspecified[0].chain(id), "hp/c0ffee-1/tcp/80");

        // Each family goes to the pod's address of it; one the pod lacks is an error.
        let v4_only = CniResult::from_value(json!({
            "cniVersion": "1.0.0",
            "interfaces": [{ "name": "eth0", "sandbox": "/var/run/netns/p" }],
            "ips": [{ "address": "10.244.1.5/24", "interface": 0 }],
        }))
        .unwrap();
        assert_eq!(
            pod_addresses(&v4_only, &forwards[..2]).unwrap(),
            vec!["10.244.1.5".parse::<IpAddr>().unwrap()]
        );
        let err = pod_addresses(&v4_only, &unspecified).unwrap_err();
        assert!(
            err.msg.contains("hostPort tcp/80 (hostIP ::)") && err.msg.contains("10.244.1.5"),
            "{err}"
        );
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
                containerd[0].host
            ),
            (18081, 80, HostAddress::Any)
        );
    }
}
