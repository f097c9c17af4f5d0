//! bridge: a veth pair per container, its host end a port of a bridge on the node, its
//! container end (`CNI_IFNAME`) given the addresses and routes the IPAM plugin hands out.
//! Reads upstream's fields: `bridge` (default `cni0`), `isGateway` (the bridge takes each
//! subnet's gateway address, forwarding is turned on), `isDefaultGateway` (also a default
//! route via it), `forceAddress`, `mtu`, `hairpinMode`, `promiscMode`, `ipMasq` (in
//! nftables, see [`masquerade`](super::masquerade)), `enabledad`, `macspoofchk` (in
//! nftables, see [`spoofcheck`](super::spoofcheck)), the pod's `mac` (`runtimeConfig`,
//! `args.cni`, `CNI_ARGS`), `ipam`. IPv4, IPv6 and
//! both: each family gets its gateway on the bridge and, with `isDefaultGateway`, its
//! default route. `vlan` is refused as an unsupported field (code 2) rather than ignored.
//! host-local as the IPAM runs in-process; any other IPAM plugin is run from `CNI_PATH`,
//! as upstream delegates.
//!
//! Every ADD step is undone if a later one fails: the lease is given back and the veth
//! pair deleted. DEL gives the lease back and deletes the container's end (taking the
//! pair); a namespace already gone is not an error.

use std::net::IpAddr;
use std::path::Path;

use cni_host::result::{CniResult, Dns, Interface, IpNetwork, Route};
use serde::Deserialize;
use serde_json::Value;

use crate::cni_plugin::interface::Ipv6Dad;
use crate::cni_plugin::invocation::{Command, Invocation, PluginError};
use crate::cni_plugin::veth::{self, kernel, socket};
use crate::cni_plugin::{interface, ipam, masquerade, spoofcheck};
use crate::netlink::address::{AddOptions, Address};
use crate::netlink::link::{format_mac, parse_mac};
use crate::netlink::route::Route as KernelRoute;
use crate::netlink::{Family, RouteSocket};

/// The code the spec gives a field a plugin does not support.
const UNSUPPORTED_FIELD: u32 = 2;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BridgeConfig {
    #[serde(default = "default_bridge")]
    bridge: String,
    #[serde(default)]
    is_gateway: bool,
    #[serde(default)]
    is_default_gateway: bool,
    #[serde(default)]
    force_address: bool,
    #[serde(default)]
    ip_masq: bool,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    promisc_mode: bool,
    #[serde(default)]
    vlan: u32,
    #[serde(default, rename = "enabledad")]
    enable_dad: bool,
    #[serde(default, rename = "macspoofchk")]
    mac_spoof_check: bool,
    #[serde(default)]
    args: MacArgs,
    #[serde(default)]
    runtime_config: MacOnly,
    #[serde(default)]
    dns: Dns,
}

/// `args.cni.mac`.
#[derive(Debug, Default, Deserialize)]
struct MacArgs {
    #[serde(default)]
    cni: MacOnly,
}

/// `runtimeConfig.mac` (the `mac` capability), or `args.cni.mac`.
#[derive(Debug, Default, Deserialize)]
struct MacOnly {
    #[serde(default)]
    mac: String,
}

fn default_bridge() -> String {
    "cni0".into()
}

impl BridgeConfig {
    /// The MAC the container's interface is asked to have: `runtimeConfig.mac`, else
    /// `args.cni.mac`, else `CNI_ARGS` `MAC=`, as upstream ranks them.
    fn requested_mac(&self, invocation: &Invocation) -> Result<Option<[u8; 6]>, PluginError> {
        let from_env = invocation
            .args
            .iter()
            .find(|(k, _)| k == "MAC")
            .map(|(_, v)| ("CNI_ARGS MAC", v.as_str()));
        let (field, text) = [
            ("runtimeConfig.mac", self.runtime_config.mac.as_str()),
            ("args.cni.mac", self.args.cni.mac.as_str()),
        ]
        .into_iter()
        .filter(|(_, mac)| !mac.is_empty())
        .chain(from_env)
        .next()
        .unwrap_or(("", ""));
        if text.is_empty() {
            return Ok(None);
        }
        let mac = parse_mac(text).filter(|m| m[0] & 1 == 0).ok_or_else(|| {
            PluginError::config(format!("{field}: {text:?} is not a unicast MAC address"))
        })?;
        Ok(Some(mac))
    }

    fn load(config: &Value) -> Result<BridgeConfig, PluginError> {
        let mut bridge: BridgeConfig = serde_path_to_error::deserialize(config)
            .map_err(|e| PluginError::config(format!("{}: {}", e.path(), e.inner())))?;
        if bridge.vlan != 0 {
            return Err(PluginError::new(
                UNSUPPORTED_FIELD,
                "vlan: sandboxd-cni's bridge does not tag VLANs",
            ));
        }
        if bridge.bridge.is_empty() || bridge.bridge.len() > 15 {
            return Err(PluginError::config(format!(
                "bridge: {:?} is not an interface name",
                bridge.bridge
            )));
        }
        if bridge.is_default_gateway {
            bridge.is_gateway = true;
        }
        Ok(bridge)
    }
}

/// Where the node's side lives: None, the caller's namespace.
pub type HostNetns<'a> = Option<&'a Path>;

pub fn run(invocation: &Invocation) -> Result<Option<Value>, PluginError> {
    run_in(invocation, None)
}

/// Runs the bridge with its node side in `host` (sandboxd's node namespace in-process).
pub fn run_in(invocation: &Invocation, host: HostNetns<'_>) -> Result<Option<Value>, PluginError> {
    let bridge = BridgeConfig::load(&invocation.config)?;
    let ipam = ipam::config(invocation, "the bridge")?;
    match invocation.command {
        Command::Add => {
            let result = add(invocation, &bridge, ipam, host)?;
            invocation.render(&result).map(Some)
        }
        Command::Del => {
            interface::release(invocation, ipam, host, bridge.ip_masq)?;
            if bridge.mac_spoof_check {
                spoofcheck::remove(invocation, host)?;
            }
            Ok(None)
        }
        Command::Check => {
            check(invocation, &bridge, host)?;
            ipam::call(invocation, ipam, Command::Check)?;
            Ok(None)
        }
        Command::Gc | Command::Status => {
            interface::network_wide(invocation, ipam, host, bridge.ip_masq)?;
            if bridge.mac_spoof_check && invocation.command == Command::Gc {
                spoofcheck::collect_garbage(invocation, host)?;
            }
            Ok(None)
        }
        Command::Version => unreachable!("answered by the plugin"),
    }
}

fn add(
    invocation: &Invocation,
    bridge: &BridgeConfig,
    ipam: &Value,
    host: HostNetns<'_>,
) -> Result<CniResult, PluginError> {
    let netns = invocation.netns.as_deref().expect("ADD has a netns");
    let mac = bridge.requested_mac(invocation)?;
    let mut node = socket(host)?;
    let br = ensure_bridge(&mut node, bridge, host)?;
    let mut pod = socket(Some(netns))?;
    let veth::Pair {
        host: host_veth,
        container,
    } = veth::create(&mut node, &mut pod, invocation)?;
    let host_name = host_veth.name.clone();
    // From here a failure deletes the pair (and gives the lease back, once taken).
    let mut leased = false;
    let mut masqueraded = false;
    let mut spoof_checked = false;
    let outcome = (|| -> Result<CniResult, PluginError> {
        // The pod's MAC before its port joins the bridge: the spoof check holds it to it.
        if let Some(mac) = mac {
            pod.set_mac(container.index, mac)
                .map_err(kernel("give the container's interface its MAC"))?;
        }
        if bridge.mac_spoof_check {
            let mac = mac.or(container.mac).ok_or_else(|| {
                PluginError::internal(format!("{} has no MAC to check", invocation.ifname))
            })?;
            spoof_checked = true;
            spoofcheck::add(invocation, host, &host_name, mac)?;
        }
        if let Some(mtu) = bridge.mtu {
            node.set_mtu(host_veth.index, mtu)
                .map_err(kernel("set the host veth's mtu"))?;
        }
        node.set_master(host_veth.index, br.index)
            .map_err(kernel("attach the host veth to the bridge"))?;
        if bridge.hairpin_mode {
            node.set_hairpin(host_veth.index, true)
                .map_err(kernel("turn hairpin mode on"))?;
        }
        node.set_up(host_veth.index)
            .map_err(kernel("bring the host veth up"))?;

        let mut result = ipam::add(invocation, ipam)?;
        leased = true;
        if bridge.is_gateway {
            fill_in_gateways(&mut result);
        }
        let dad = if bridge.enable_dad {
            Ipv6Dad::On
        } else {
            Ipv6Dad::Off
        };
        interface::prepare_ipv6(netns, &invocation.ifname, &result, dad)?;
        if let Some(mtu) = bridge.mtu {
            pod.set_mtu(container.index, mtu)
                .map_err(kernel("set the container interface's mtu"))?;
        }
        pod.set_up(container.index)
            .map_err(kernel("bring the container's interface up"))?;
        for ip in &mut result.ips {
            pod.replace_address(&Address {
                index: container.index,
                ip: ip.address.addr,
                prefix: ip.address.prefix,
            })
            .map_err(kernel("give the container its address"))?;
            ip.interface = Some(2);
        }
        if bridge.enable_dad {
            interface::settle_ipv6(&mut pod, container.index, &invocation.ifname)?;
        }
        if bridge.is_gateway {
            for ip in &result.ips {
                if let Some(gateway) = ip.gateway {
                    ensure_gateway_address(
                        &mut node,
                        br.index,
                        gateway,
                        ip.address,
                        bridge.force_address,
                    )?;
                }
            }
        }
        // The first gateway of each family: the default route's, and any route's that
        // names none.
        let gateway_of = |family: Family| {
            result
                .ips
                .iter()
                .filter(|ip| Family::of(&ip.address.addr) == family)
                .find_map(|ip| ip.gateway)
        };
        let gateways = [Family::V4, Family::V6].map(|f| (f, gateway_of(f)));
        if bridge.is_default_gateway {
            for (family, gateway) in gateways {
                let has_default = result.routes.iter().any(|r| {
                    r.dst.prefix == 0 && Family::of(&r.dst.addr) == family && r.gw.is_some()
                });
                if gateway.is_some() && !has_default {
                    result.routes.push(Route::to(
                        IpNetwork {
                            addr: family.unspecified(),
                            prefix: 0,
                        },
                        gateway,
                    ));
                }
            }
        }
        for route in &result.routes {
            let family = Family::of(&route.dst.addr);
            let via = route
                .gw
                .filter(|gw| Family::of(gw) == family)
                .or_else(|| gateways.iter().find(|(f, _)| *f == family)?.1);
            pod.replace_route(&KernelRoute {
                destination: route.dst.addr,
                prefix: route.dst.prefix,
                gateway: via,
                device: Some(container.index),
                onlink: false,
                source: None,
            })
            .map_err(kernel("add the container's route"))?;
        }
        if bridge.is_gateway {
            interface::enable_forwarding(host, &result)?;
        }
        if bridge.ip_masq {
            masqueraded = true;
            masquerade::add(invocation, host, &result)?;
        }
        let container = pod
            .link(&invocation.ifname)
            .map_err(kernel("read the container's interface"))?
            .unwrap_or(container);
        // As upstream's: the result's DNS is the config's `dns`, whatever IPAM said.
        result.dns = bridge.dns.clone();
        let br = node.link(&bridge.bridge).ok().flatten().unwrap_or(br);
        let mac = |m: Option<[u8; 6]>| m.map(|m| format_mac(&m)).unwrap_or_default();
        result.interfaces = vec![
            Interface {
                name: br.name.clone(),
                mac: mac(br.mac),
                ..Interface::default()
            },
            Interface {
                name: host_veth.name.clone(),
                mac: mac(host_veth.mac),
                ..Interface::default()
            },
            Interface {
                name: container.name.clone(),
                mac: mac(container.mac),
                sandbox: netns.display().to_string(),
                ..Interface::default()
            },
        ];
        Ok(result)
    })();
    if outcome.is_err() {
        if masqueraded {
            let _ = masquerade::remove(invocation, host);
        }
        if spoof_checked {
            let _ = spoofcheck::remove(invocation, host);
        }
        if leased {
            let _ = ipam::call(invocation, ipam, Command::Del);
        }
        veth::remove_host_end(&mut node, &host_name);
    }
    outcome
}

/// The bridge, made (and brought up) if it is not there yet. A bridge made here takes no
/// IPv6 router advertisements: its routes are the plugin's, not a pod's to announce.
fn ensure_bridge(
    node: &mut RouteSocket,
    bridge: &BridgeConfig,
    host: HostNetns<'_>,
) -> Result<crate::netlink::link::Link, PluginError> {
    let existing = node
        .link(&bridge.bridge)
        .map_err(kernel("look for the bridge"))?;
    let link = match existing {
        Some(link) => link,
        None => {
            match node.add_bridge(&bridge.bridge) {
                // Another ADD made it first.
                Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
                    return Err(kernel("create the bridge")(e))
                }
                _ => {}
            }
            let link = node
                .link(&bridge.bridge)
                .map_err(kernel("find the bridge"))?
                .ok_or_else(|| PluginError::internal(format!("{} vanished", bridge.bridge)))?;
            if let Some(mtu) = bridge.mtu {
                node.set_mtu(link.index, mtu)
                    .map_err(kernel("set the bridge's mtu"))?;
            }
            interface::refuse_router_advertisements(host, &bridge.bridge);
            link
        }
    };
    if link.kind.as_deref() != Some("bridge") {
        return Err(PluginError::internal(format!(
            "{} already exists but is not a bridge",
            bridge.bridge
        )));
    }
    if bridge.promisc_mode {
        node.set_promiscuous(link.index)
            .map_err(kernel("make the bridge promiscuous"))?;
    }
    if !link.up {
        node.set_up(link.index)
            .map_err(kernel("bring the bridge up"))?;
    }
    Ok(link)
}

/// Where upstream puts a gateway IPAM did not name: the subnet's first address.
fn fill_in_gateways(result: &mut CniResult) {
    use crate::cni_plugin::host_local::range::{address, number};
    for ip in result.ips.iter_mut().filter(|ip| ip.gateway.is_none()) {
        let network = ip.address.network().addr;
        ip.gateway = Some(address(number(network).wrapping_add(1), network.is_ipv4()));
    }
}

/// Gives the bridge the gateway address of a pod subnet, unless it has it. An address of
/// the same family whose subnet overlaps is an error, or, with forceAddress, replaced
/// (IPv6 subnets that do not overlap live side by side, as upstream allows). An IPv6
/// gateway skips duplicate address detection: it is this node's by the IPAM's say, and
/// pods would otherwise find no gateway for a second after the first ADD.
fn ensure_gateway_address(
    node: &mut RouteSocket,
    bridge: u32,
    gateway: IpAddr,
    pod_address: IpNetwork,
    force: bool,
) -> Result<(), PluginError> {
    let subnet = IpNetwork {
        addr: gateway,
        prefix: pod_address.prefix,
    };
    let present = node
        .addresses(Some(bridge))
        .map_err(kernel("read the bridge's addresses"))?;
    for address in present {
        if address.ip == gateway {
            return Ok(());
        }
        let theirs = IpNetwork {
            addr: address.ip,
            prefix: address.prefix,
        };
        let overlaps = subnet.contains(address.ip) || theirs.contains(gateway);
        if Family::of(&address.ip) == Family::of(&gateway) && overlaps {
            if !force {
                return Err(PluginError::internal(format!(
                    "the bridge has {}/{} in the subnet of gateway {gateway}; set forceAddress to replace it",
                    address.ip, address.prefix
                )));
            }
            node.delete_address(&address)
                .map_err(kernel("remove the bridge's old address"))?;
        }
    }
    node.replace_address_with(
        &Address {
            index: bridge,
            ip: gateway,
            prefix: pod_address.prefix,
        },
        AddOptions {
            skip_dad: Family::of(&gateway) == Family::V6,
            no_prefix_route: false,
        },
    )
    .map_err(kernel("give the bridge the gateway address"))
}

/// CHECK: the container's interface is up with the addresses of the previous result, and
/// its peer is a port of the bridge.
fn check(
    invocation: &Invocation,
    bridge: &BridgeConfig,
    host: HostNetns<'_>,
) -> Result<(), PluginError> {
    let netns = invocation.netns.as_deref().expect("CHECK has a netns");
    let mut pod = socket(Some(netns))?;
    let container = pod
        .link(&invocation.ifname)
        .map_err(kernel("find the container's interface"))?
        .ok_or_else(|| PluginError::internal(format!("{} is missing", invocation.ifname)))?;
    if !container.up {
        return Err(PluginError::internal(format!(
            "{} is down",
            invocation.ifname
        )));
    }
    let present = pod
        .addresses(Some(container.index))
        .map_err(kernel("read the container's addresses"))?;
    if let Some(previous) = invocation.config.get("prevResult") {
        let previous = CniResult::from_value(previous.clone())
            .map_err(|e| PluginError::config(format!("prevResult: {e}")))?;
        for ip in &previous.ips {
            if !present.iter().any(|a| a.ip == ip.address.addr) {
                return Err(PluginError::internal(format!(
                    "{} lacks its address {}",
                    invocation.ifname, ip.address
                )));
            }
        }
    }
    let mut node = socket(host)?;
    let br = node
        .link(&bridge.bridge)
        .map_err(kernel("find the bridge"))?
        .ok_or_else(|| PluginError::internal(format!("the bridge {} is missing", bridge.bridge)))?;
    let peer = container.peer_index;
    let attached = node
        .links()
        .map_err(kernel("list the node's links"))?
        .into_iter()
        .any(|l| Some(l.index) == peer && l.master == Some(br.index));
    if !attached {
        return Err(PluginError::internal(format!(
            "the host end of {} is not a port of {}",
            invocation.ifname, bridge.bridge
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configs_are_read_as_upstream_writes_them() {
        let config = BridgeConfig::load(&json!({
            "type": "bridge", "isDefaultGateway": true, "hairpinMode": true, "mtu": 1400,
        }))
        .unwrap();
        assert_eq!(config.bridge, "cni0");
        assert!(config.is_gateway, "isDefaultGateway implies isGateway");
        assert_eq!(config.mtu, Some(1400));
        assert!(
            BridgeConfig::load(&json!({ "ipMasq": true }))
                .unwrap()
                .ip_masq
        );
        let vlan = BridgeConfig::load(&json!({ "vlan": 10 })).unwrap_err();
        assert_eq!(vlan.code, UNSUPPORTED_FIELD);
        let bad = BridgeConfig::load(&json!({ "mtu": "big" })).unwrap_err();
        assert!(bad.msg.starts_with("mtu:"), "{bad}");
        let long = BridgeConfig::load(&json!({ "bridge": "a-very-long-bridge-name" })).unwrap_err();
        assert!(long.msg.contains("bridge"), "{long}");
    }

    #[test]
    fn the_pods_mac_is_ranked_as_upstream_ranks_it() {
        let invocation = |config: serde_json::Value, args: &str| {
            let env = |name: &str| match name {
                "CNI_COMMAND" => Some("ADD".to_string()),
                "CNI_CONTAINERID" => Some("c1".to_string()),
                "CNI_NETNS" => Some("/proc/self/ns/net".to_string()),
                "CNI_IFNAME" => Some("eth0".to_string()),
                "CNI_ARGS" => Some(args.to_string()),
                _ => None,
            };
            let mut config = config;
            config["cniVersion"] = json!("1.0.0");
            config["name"] = json!("pods");
            config["type"] = json!("bridge");
            let invocation = Invocation::from_env(env, config.to_string().as_bytes()).unwrap();
            let bridge = BridgeConfig::load(&invocation.config).unwrap();
            bridge.requested_mac(&invocation)
        };
        let mac = |text: &str| Some(parse_mac(text).unwrap());
        assert_eq!(invocation(json!({}), "").unwrap(), None);
        assert_eq!(
            invocation(json!({}), "MAC=02:00:00:00:00:01").unwrap(),
            mac("02:00:00:00:00:01")
        );
        assert_eq!(
            invocation(
                json!({ "args": { "cni": { "mac": "02:00:00:00:00:02" } } }),
                "MAC=02:00:00:00:00:01"
            )
            .unwrap(),
            mac("02:00:00:00:00:02")
        );
        assert_eq!(
            invocation(
                json!({ "args": { "cni": { "mac": "02:00:00:00:00:02" } },
                        "runtimeConfig": { "mac": "02:00:00:00:00:03" } }),
                ""
            )
            .unwrap(),
            mac("02:00:00:00:00:03")
        );
        let bad = invocation(
            json!({ "runtimeConfig": { "mac": "01:00:5e:00:00:01" } }),
            "",
        )
        .unwrap_err();
        assert!(bad.msg.starts_with("runtimeConfig.mac:"), "{bad}");
        let garbage = invocation(json!({}), "MAC=nope").unwrap_err();
        assert!(garbage.msg.starts_with("CNI_ARGS MAC:"), "{garbage}");
    }
}
