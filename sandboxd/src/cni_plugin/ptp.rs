//! ptp: a routed pod network, as Calico builds it. Each container gets a veth pair with no
//! bridge: the pod reaches everything through its gateway, which is the host end itself,
//! and the node reaches the pod by a /32 route out of that host end. So pods on a node
//! talk through the node's routing table (where policy and the overlay see them), not
//! through a shared L2 segment.
//!
//! As upstream's ptp does it (and reading its fields: `ipMasq`, `mtu`, `ipam`, `dns`):
//! * in the pod, the address keeps the IPAM prefix but comes without the kernel's prefix
//!   route (`noprefixroute`); instead `<gw>/32 dev <if> scope link` and
//!   `<subnet> via <gw>`, so every packet, even to a neighbour of the same subnet, goes to
//!   the gateway; then IPAM's routes;
//! * on the node, the host end holds `<gw>/32` (every host end holds it: it only answers
//!   ARP on its own link) and the route `<pod ip>/32 dev <host end>`; forwarding is on.
//!
//! IPv4, IPv6 or both: each family's gateway on the host end (/128 for IPv6, as the pod's
//! route to it). Every ADD step is undone if a later one fails; DEL gives the lease back
//! and deletes the pair (the host route and address go with it).

use std::net::IpAddr;
use std::path::Path;

use cni_host::result::{CniResult, Dns, Interface};
use serde::Deserialize;
use serde_json::Value;

use crate::cni_plugin::interface::Ipv6Dad;
use crate::cni_plugin::invocation::{Command, Invocation, PluginError};
use crate::cni_plugin::masquerade;
use crate::cni_plugin::veth::{self, kernel, socket};
use crate::cni_plugin::{interface, ipam};
use crate::netlink::address::{AddOptions, Address};
use crate::netlink::link::format_mac;
use crate::netlink::route::Route as KernelRoute;
use crate::netlink::{Family, RouteSocket};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PtpConfig {
    #[serde(default)]
    ip_masq: bool,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    dns: Option<Dns>,
}

impl PtpConfig {
    fn load(config: &Value) -> Result<PtpConfig, PluginError> {
        serde_path_to_error::deserialize(config)
            .map_err(|e| PluginError::config(format!("{}: {}", e.path(), e.inner())))
    }
}

/// Runs ptp with its node side in `host` (None: the caller's namespace).
pub fn run_in(invocation: &Invocation, host: Option<&Path>) -> Result<Option<Value>, PluginError> {
    let ptp = PtpConfig::load(&invocation.config)?;
    let ipam = ipam::config(invocation, "ptp")?;
    match invocation.command {
        Command::Add => {
            let result = add(invocation, &ptp, ipam, host)?;
            invocation.render(&result).map(Some)
        }
        Command::Del => {
            interface::release(invocation, ipam, host, ptp.ip_masq)?;
            Ok(None)
        }
        Command::Check => {
            check(invocation)?;
            ipam::call(invocation, ipam, Command::Check)?;
            Ok(None)
        }
        Command::Gc | Command::Status => {
            interface::network_wide(invocation, ipam, host, ptp.ip_masq)?;
            Ok(None)
        }
        Command::Version => unreachable!("answered by the plugin"),
    }
}

/// One address of the result with the gateway the pod routes through.
struct Routed {
    address: IpAddr,
    prefix: u8,
    /// The address masked to its prefix.
    subnet: IpAddr,
    gateway: IpAddr,
    family: Family,
}

fn routed(result: &CniResult) -> Result<Vec<Routed>, PluginError> {
    result
        .ips
        .iter()
        .map(|ip| {
            let family = Family::of(&ip.address.addr);
            let gateway = ip
                .gateway
                .filter(|gw| Family::of(gw) == family)
                .ok_or_else(|| {
                    PluginError::config(format!(
                        "ipam: {} has no gateway of its family; ptp routes the pod through it",
                        ip.address
                    ))
                })?;
            Ok(Routed {
                address: ip.address.addr,
                prefix: ip.address.prefix,
                subnet: ip.address.network().addr,
                gateway,
                family,
            })
        })
        .collect()
}

fn add(
    invocation: &Invocation,
    ptp: &PtpConfig,
    ipam_config: &Value,
    host: Option<&Path>,
) -> Result<CniResult, PluginError> {
    let netns = invocation.netns.as_deref().expect("ADD has a netns");
    let mut result = ipam::add(invocation, ipam_config)?;
    // From here a failure gives the lease back (and deletes the pair and masquerade, once
    // made).
    let mut made: Option<String> = None;
    let mut masqueraded = false;
    let mut node = None;
    let outcome = (|| -> Result<CniResult, PluginError> {
        let addresses = routed(&result)?;
        interface::enable_forwarding(host, &result)?;

        let node = node.insert(socket(host)?);
        let mut pod = socket(Some(netns))?;
        let veth::Pair {
            host: host_veth,
            container,
        } = veth::create(node, &mut pod, invocation)?;
        made = Some(host_veth.name.clone());
        interface::prepare_ipv6(netns, &invocation.ifname, &result, Ipv6Dad::Unchanged)?;

        if let Some(mtu) = ptp.mtu {
            node.set_mtu(host_veth.index, mtu)
                .map_err(kernel("set the host veth's mtu"))?;
            pod.set_mtu(container.index, mtu)
                .map_err(kernel("set the container interface's mtu"))?;
        }
        // The host end first: the pod's routes via the gateway need a live link to it.
        node.set_up(host_veth.index)
            .map_err(kernel("bring the host veth up"))?;
        pod.set_up(container.index)
            .map_err(kernel("bring the container's interface up"))?;
        for a in &addresses {
            configure_pod(&mut pod, container.index, a)?;
            configure_host(node, host_veth.index, a)?;
        }
        for route in &result.routes {
            let family = Family::of(&route.dst.addr);
            // A route of a family the pod has no address of goes out of the interface
            // with no gateway, as upstream's ConfigureIface adds it.
            let via = route.gw.filter(|gw| Family::of(gw) == family).or_else(|| {
                addresses
                    .iter()
                    .find(|a| a.family == family)
                    .map(|a| a.gateway)
            });
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
        if ptp.ip_masq {
            masqueraded = true;
            masquerade::add(invocation, host, &result)?;
        }

        let container = pod
            .link(&invocation.ifname)
            .map_err(kernel("read the container's interface"))?
            .unwrap_or(container);
        let mac = |m: Option<[u8; 6]>| m.map(|m| format_mac(&m)).unwrap_or_default();
        result.interfaces = vec![
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
        for ip in &mut result.ips {
            ip.interface = Some(1);
        }
        if let Some(dns) = &ptp.dns {
            if !dns.is_empty() {
                result.dns = dns.clone();
            }
        }
        Ok(result)
    })();
    if outcome.is_err() {
        if masqueraded {
            let _ = masquerade::remove(invocation, host);
        }
        if let (Some(node), Some(host_name)) = (node.as_mut(), made.as_deref()) {
            veth::remove_host_end(node, host_name);
        }
        let _ = ipam::call(invocation, ipam_config, Command::Del);
    }
    outcome
}

/// The pod side of one address: the address, and every packet routed to the gateway.
/// The address comes without the kernel's `<subnet> dev <if>` route, which would have the
/// pod resolve its neighbours directly, and without duplicate address detection (it is
/// the IPAM's to hand out; upstream's waits out the detection instead).
fn configure_pod(pod: &mut RouteSocket, index: u32, a: &Routed) -> Result<(), PluginError> {
    pod.replace_address_with(
        &Address {
            index,
            ip: a.address,
            prefix: a.prefix,
        },
        AddOptions {
            skip_dad: a.family == Family::V6,
            no_prefix_route: true,
        },
    )
    .map_err(kernel("give the container its address"))?;
    pod.replace_route(&KernelRoute {
        destination: a.gateway,
        prefix: a.family.host_prefix(),
        gateway: None,
        device: Some(index),
        onlink: false,
        source: Some(a.address),
    })
    .map_err(kernel("add the container's route to its gateway"))?;
    if a.prefix < a.family.host_prefix() {
        pod.replace_route(&KernelRoute {
            destination: a.subnet,
            prefix: a.prefix,
            gateway: Some(a.gateway),
            device: Some(index),
            onlink: false,
            source: Some(a.address),
        })
        .map_err(kernel("add the container's subnet route via its gateway"))?;
    }
    Ok(())
}

/// The node side of one address: the host end answers for the gateway and leads to the
/// pod. Every host end holds the gateway, so an IPv6 one skips duplicate address
/// detection (which would find it on the other host ends' links only by accident, and
/// leave the pod without a gateway for a second).
fn configure_host(node: &mut RouteSocket, index: u32, a: &Routed) -> Result<(), PluginError> {
    node.replace_address_with(
        &Address {
            index,
            ip: a.gateway,
            prefix: a.family.host_prefix(),
        },
        AddOptions {
            skip_dad: a.family == Family::V6,
            no_prefix_route: false,
        },
    )
    .map_err(kernel("give the host veth the gateway address"))?;
    node.replace_route(&KernelRoute {
        destination: a.address,
        prefix: a.family.host_prefix(),
        gateway: None,
        device: Some(index),
        onlink: false,
        source: None,
    })
    .map_err(kernel("route the pod's address to its host veth"))
}

/// CHECK: the container's interface is the veth of the previous result (same MAC), up,
/// with its addresses and routes.
fn check(invocation: &Invocation) -> Result<(), PluginError> {
    let netns = invocation.netns.as_deref().expect("CHECK has a netns");
    let previous = invocation
        .config
        .get("prevResult")
        .ok_or_else(|| PluginError::config("prevResult: missing (ptp's CHECK needs it)"))?;
    let previous = CniResult::from_value(previous.clone())
        .map_err(|e| PluginError::config(format!("prevResult: {e}")))?;
    let mut pod = socket(Some(netns))?;
    let container = pod
        .link(&invocation.ifname)
        .map_err(kernel("find the container's interface"))?
        .ok_or_else(|| PluginError::internal(format!("{} is missing", invocation.ifname)))?;
    if container.kind.as_deref() != Some("veth") {
        return Err(PluginError::internal(format!(
            "{} is not a veth",
            invocation.ifname
        )));
    }
    let recorded = previous
        .interfaces
        .iter()
        .find(|i| i.name == invocation.ifname && Path::new(&i.sandbox) == netns);
    if let (Some(recorded), Some(mac)) = (recorded, container.mac) {
        if !recorded.mac.is_empty() && !recorded.mac.eq_ignore_ascii_case(&format_mac(&mac)) {
            return Err(PluginError::internal(format!(
                "{} has MAC {}, not {} as at ADD",
                invocation.ifname,
                format_mac(&mac),
                recorded.mac
            )));
        }
    }
    let present = pod
        .addresses(Some(container.index))
        .map_err(kernel("read the container's addresses"))?;
    for ip in &previous.ips {
        if !present.iter().any(|a| a.ip == ip.address.addr) {
            return Err(PluginError::internal(format!(
                "{} lacks its address {}",
                invocation.ifname, ip.address
            )));
        }
    }
    let mut routes = Vec::new();
    for family in [Family::V4, Family::V6] {
        if previous
            .routes
            .iter()
            .any(|r| Family::of(&r.dst.addr) == family)
        {
            routes.extend(
                pod.routes(family)
                    .map_err(kernel("read the container's routes"))?,
            );
        }
    }
    for route in &previous.routes {
        if !routes
            .iter()
            .any(|r| r.destination == route.dst.addr && r.prefix == route.dst.prefix)
        {
            return Err(PluginError::internal(format!(
                "the container lacks its route to {}",
                route.dst
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configs_are_read_as_upstream_writes_them() {
        let config = PtpConfig::load(&json!({
            "type": "ptp", "ipMasq": true, "mtu": 1400,
            "dns": { "nameservers": ["10.96.0.10"] },
        }))
        .unwrap();
        assert!(config.ip_masq);
        assert_eq!(config.mtu, Some(1400));
        assert_eq!(config.dns.unwrap().nameservers, ["10.96.0.10"]);
        let bad = PtpConfig::load(&json!({ "mtu": -1 })).unwrap_err();
        assert!(bad.msg.starts_with("mtu:"), "{bad}");
    }
}
