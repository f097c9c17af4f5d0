//! VXLAN: `flannel.1` (VNI 1, UDP 8472, learning off, MTU = the underlay's − 50, address
//! `<subnet>.0/32`), and for each other node, in flannel's order:
//!
//! 1. `ip neigh replace <its subnet>.0 lladdr <its VTEP MAC> dev flannel.1 nud permanent`
//! 2. `bridge fdb replace <its VTEP MAC> dev flannel.1 dst <its node IP> self permanent`
//! 3. `ip route replace <its subnet> via <its subnet>.0 dev flannel.1 onlink`
//!
//! removed in the reverse order when it leaves. Nothing is learnt: a packet for a pod of
//! another node finds the route, the route's gateway finds the neighbour's MAC, and the
//! MAC finds the node to send the UDP datagram to.

use std::net::Ipv4Addr;

use anyhow::Context;

use super::Peer;
use crate::cidr::Ipv4Cidr;
use crate::netlink::address::Address;
use crate::netlink::link::{format_mac, Link, Vxlan};
use crate::netlink::route::Route;
use crate::netlink::RouteSocket;

pub const DEVICE: &str = "flannel.1";
pub const VNI: u32 = 1;
/// Linux's default VXLAN port, which flannel uses (IANA's is 4789).
pub const PORT: u16 = 8472;
/// Outer Ethernet (14) + IPv4 (20) + UDP (8) + VXLAN (8) headers.
pub const OVERHEAD: u32 = 50;

fn wanted(underlay: &Link, node_ip: Ipv4Addr) -> Vxlan {
    Vxlan {
        vni: VNI,
        local: Some(node_ip),
        underlay: Some(underlay.index),
        port: PORT,
        learning: false,
    }
}

/// Makes `flannel.1` as wanted, keeping an existing one that already is (so its MAC,
/// which other nodes hold, survives a restart), replacing one that is not.
pub(super) fn ensure_device(
    socket: &mut RouteSocket,
    underlay: &Link,
    node_ip: Ipv4Addr,
    subnet: Ipv4Cidr,
) -> anyhow::Result<Link> {
    let spec = wanted(underlay, node_ip);
    let mtu = underlay.mtu.saturating_sub(OVERHEAD);
    let existing = socket.link(DEVICE).context("look for flannel.1")?;
    if let Some(link) = &existing {
        if link.vxlan != Some(spec) {
            socket
                .delete_link(link.index)
                .context("delete flannel.1, made with other settings")?;
        }
    }
    let mut link = match existing.filter(|l| l.vxlan == Some(spec)) {
        Some(link) => link,
        None => {
            socket.add_vxlan(DEVICE, mtu, &spec).with_context(|| {
                format!("create {DEVICE} (vxlan id {VNI} local {node_ip} dstport {PORT})")
            })?;
            socket
                .link(DEVICE)
                .context("read flannel.1 back")?
                .context("flannel.1 vanished after it was made")?
        }
    };
    if link.mtu != mtu {
        socket
            .set_mtu(link.index, mtu)
            .context("set flannel.1's MTU")?;
        link.mtu = mtu;
    }
    let address = Address {
        index: link.index,
        ip: subnet.network().addr.into(),
        prefix: 32,
    };
    for other in socket
        .addresses(Some(link.index))
        .context("list flannel.1's addresses")?
    {
        if other != address {
            socket
                .delete_address(&other)
                .context("remove an old address of flannel.1")?;
        }
    }
    socket
        .replace_address(&address)
        .with_context(|| format!("give flannel.1 the address {}/32", address.ip))?;
    socket.set_up(link.index).context("set flannel.1 up")?;
    Ok(link)
}

/// Deletes `flannel.1` if there is one (its entries and routes go with it).
pub(super) fn remove_device(socket: &mut RouteSocket) -> anyhow::Result<()> {
    if let Some(link) = socket.link(DEVICE).context("look for flannel.1")? {
        socket.delete_link(link.index).context("delete flannel.1")?;
    }
    Ok(())
}

/// One peer's three entries.
struct Entries {
    gateway: Ipv4Addr,
    mac: [u8; 6],
    node_ip: Ipv4Addr,
    route: Route,
}

fn entries_of(peer: &Peer, vtep: &Link) -> Option<Entries> {
    let gateway = peer.subnet.network().addr;
    Some(Entries {
        gateway,
        mac: peer.vtep_mac?,
        node_ip: peer.ip,
        route: Route {
            destination: gateway.into(),
            prefix: peer.subnet.prefix,
            gateway: Some(gateway.into()),
            device: Some(vtep.index),
            onlink: true,
            source: None,
        },
    })
}

/// Removes the entries no peer wants (routes, then FDB entries, then neighbours), then
/// adds each peer's missing ones (neighbour, FDB entry, route).
pub(super) fn sync(
    socket: &mut RouteSocket,
    vtep: &Link,
    current_routes: &[Route],
    peers: &[&Peer],
) -> anyhow::Result<()> {
    let wanted: Vec<(&Peer, Entries)> = peers
        .iter()
        .filter_map(|p| entries_of(p, vtep).map(|e| (*p, e)))
        .collect();
    let neighbours = socket
        .neighbours(vtep.index)
        .context("list flannel.1's neighbours")?;
    let fdb = socket
        .fdb(vtep.index)
        .context("list flannel.1's FDB entries")?;

    for stale in current_routes
        .iter()
        .filter(|r| !wanted.iter().any(|(_, e)| e.route == **r))
    {
        socket.delete_route(stale).with_context(|| {
            format!(
                "delete the stale route to {}/{}",
                stale.destination, stale.prefix
            )
        })?;
    }
    for stale in fdb.iter().filter(|f| f.ip.is_some()) {
        let (Some(mac), Some(dst)) = (stale.mac, stale.ip) else {
            continue;
        };
        if !wanted.iter().any(|(_, e)| e.mac == mac && e.node_ip == dst) {
            socket.delete_fdb(vtep.index, mac, dst).with_context(|| {
                format!("delete the stale FDB entry {} dst {dst}", format_mac(&mac))
            })?;
        }
    }
    for stale in &neighbours {
        let Some(ip) = stale.ip else { continue };
        if !wanted.iter().any(|(_, e)| e.gateway == ip) {
            socket
                .delete_neighbour(vtep.index, ip)
                .with_context(|| format!("delete the stale neighbour {ip}"))?;
        }
    }

    for (peer, e) in &wanted {
        let node = || format!("node {} ({}, {})", peer.name, peer.ip, peer.subnet);
        let has_neighbour = neighbours
            .iter()
            .any(|n| n.ip == Some(e.gateway) && n.mac == Some(e.mac) && n.is_permanent());
        if !has_neighbour {
            socket
                .replace_neighbour(vtep.index, e.gateway, e.mac)
                .with_context(|| format!("add the neighbour {} of {}", e.gateway, node()))?;
        }
        let has_fdb = fdb
            .iter()
            .any(|f| f.mac == Some(e.mac) && f.ip == Some(e.node_ip));
        if !has_fdb {
            socket
                .replace_fdb(vtep.index, e.mac, e.node_ip)
                .with_context(|| format!("add the FDB entry of {}", node()))?;
        }
        if !current_routes.contains(&e.route) {
            socket
                .replace_route(&e.route)
                .with_context(|| format!("add the route to {}", node()))?;
        }
    }
    Ok(())
}
