//! The pod network between nodes, as flannel builds it: each node owns a /24 of the
//! cluster CIDR, and reaches every other node's /24 either through a VXLAN device
//! (`flannel.1`, [`vxlan`]) or, when the nodes share a link, by a plain route via the
//! other node's address ([`host_gw`]).
//!
//! [`Overlay`] keeps the kernel equal to a list of peers: [`Overlay::sync`] reads what the
//! namespace holds, removes the entries of ours no peer wants (in the reverse of the order
//! they are made) and adds the missing ones, so the same call serves a start, a restart
//! (nothing duplicated), a node joining and a node leaving.

pub mod host_gw;
pub mod vxlan;

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::cidr::Ipv4Cidr;
use crate::netlink::link::Link;
use crate::netlink::route::Route;
use crate::netlink::{Family, RouteSocket};
use crate::node::NodeNetns;

/// How packets for another node's pods get there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Encapsulated in VXLAN (VNI 1, UDP 8472) on `flannel.1`: works across any IP
    /// underlay; costs 50 bytes of MTU.
    #[default]
    Vxlan,
    /// Routed to the node's underlay address: the nodes must share a link.
    HostGw,
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "vxlan" => Ok(Backend::Vxlan),
            "host-gw" => Ok(Backend::HostGw),
            other => Err(format!("{other:?} is not a backend (vxlan or host-gw)")),
        }
    }
}

/// Another node, as the overlay needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// Its address on the underlay.
    pub ip: Ipv4Addr,
    /// Its pods' /24.
    pub subnet: Ipv4Cidr,
    /// Its `flannel.1`'s MAC (VXLAN only).
    pub vtep_mac: Option<[u8; 6]>,
}

/// The overlay of one node, in the node's network namespace.
pub struct Overlay {
    backend: Backend,
    socket: RouteSocket,
    cluster_cidr: Ipv4Cidr,
    subnet: Ipv4Cidr,
    underlay: Link,
    /// `flannel.1`, under VXLAN.
    vtep: Option<Link>,
}

impl Overlay {
    /// Sets the node up for `backend`: finds the underlay device (the link holding
    /// `node_ip`), makes `flannel.1` under VXLAN (or removes it under host-gw), and turns
    /// on forwarding. Peers are added by [`Overlay::sync`].
    pub fn open(
        netns: &NodeNetns,
        backend: Backend,
        node_ip: Ipv4Addr,
        subnet: Ipv4Cidr,
        cluster_cidr: Ipv4Cidr,
    ) -> anyhow::Result<Overlay> {
        let mut socket = netns.route_socket().context("open a netlink socket")?;
        let underlay = underlay_of(&mut socket, node_ip)?;
        enable_forwarding(netns)?;
        let vtep = match backend {
            Backend::Vxlan => Some(vxlan::ensure_device(
                &mut socket,
                &underlay,
                node_ip,
                subnet,
            )?),
            Backend::HostGw => {
                vxlan::remove_device(&mut socket)?;
                None
            }
        };
        Ok(Overlay {
            backend,
            socket,
            cluster_cidr,
            subnet,
            underlay,
            vtep,
        })
    }

    /// The device holding the node's address.
    pub fn underlay_name(&self) -> &str {
        &self.underlay.name
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The MTU pods get: the underlay's, less VXLAN's 50 bytes under VXLAN.
    pub fn pod_mtu(&self) -> u32 {
        match &self.vtep {
            Some(vtep) => vtep.mtu,
            None => self.underlay.mtu,
        }
    }

    /// `flannel.1`'s MAC, which other nodes put in their neighbour and FDB entries.
    pub fn vtep_mac(&self) -> Option<[u8; 6]> {
        self.vtep.as_ref().and_then(|v| v.mac)
    }

    /// Makes the kernel hold exactly the entries `peers` need (this node, if listed, is
    /// skipped; a VXLAN peer without a VTEP MAC yet is skipped until it has one).
    pub fn sync(&mut self, peers: &[Peer]) -> anyhow::Result<()> {
        let peers: Vec<&Peer> = peers.iter().filter(|p| p.subnet != self.subnet).collect();
        let routes = self.our_routes()?;
        match &self.vtep {
            Some(vtep) => vxlan::sync(&mut self.socket, vtep, &routes, &peers),
            None => host_gw::sync(&mut self.socket, &self.underlay, &routes, &peers),
        }
    }

    /// Routes this overlay may have made: into the cluster CIDR but not to this node's
    /// own subnet, out of `flannel.1` or via a gateway on the underlay device.
    fn our_routes(&mut self) -> anyhow::Result<Vec<Route>> {
        let vtep = self.vtep.as_ref().map(|v| v.index);
        let underlay = self.underlay.index;
        Ok(self
            .socket
            .routes(Family::V4)
            .context("list the routes")?
            .into_iter()
            .filter(|r| {
                let Some(dst) = ipv4_destination(r) else {
                    return false;
                };
                self.cluster_cidr.covers(&dst)
                    && dst.network() != self.subnet.network()
                    && (r.device == vtep && vtep.is_some()
                        || (r.device == Some(underlay) && r.gateway.is_some()))
            })
            .collect())
    }
}

/// An IPv4 route's destination as a CIDR.
pub fn ipv4_destination(route: &Route) -> Option<Ipv4Cidr> {
    match route.destination {
        IpAddr::V4(addr) => Some(Ipv4Cidr::new(addr, route.prefix)),
        IpAddr::V6(_) => None,
    }
}

/// Removes what the overlay made in a namespace: `flannel.1` (its neighbours, FDB entries
/// and routes go with it) and host-gw's routes into `cluster_cidr`.
pub fn teardown(netns: &NodeNetns, cluster_cidr: Ipv4Cidr) -> anyhow::Result<()> {
    let mut socket = netns.route_socket().context("open a netlink socket")?;
    vxlan::remove_device(&mut socket)?;
    for route in socket.routes(Family::V4).context("list the routes")? {
        let Some(dst) = ipv4_destination(&route) else {
            continue;
        };
        if cluster_cidr.covers(&dst) && route.gateway.is_some() && !route.onlink {
            socket
                .delete_route(&route)
                .with_context(|| format!("delete the route to {dst}"))?;
        }
    }
    Ok(())
}

/// The link holding `ip`: the node's underlay device.
fn underlay_of(socket: &mut RouteSocket, ip: Ipv4Addr) -> anyhow::Result<Link> {
    let address = socket
        .addresses(None)
        .context("list the addresses")?
        .into_iter()
        .find(|a| a.ip == IpAddr::V4(ip));
    let Some(address) = address else {
        bail!("no interface of this node has the node IP {ip} (--node-ip must be an address of the node's own, e.g. eth1's)");
    };
    let links = socket.links().context("list the links")?;
    links
        .into_iter()
        .find(|l| l.index == address.index)
        .with_context(|| format!("the link holding {ip} vanished"))
}

/// Pods' packets to other nodes are routed by the node: forwarding on, in its namespace.
fn enable_forwarding(netns: &NodeNetns) -> anyhow::Result<()> {
    netns
        .run(|| {
            const SYSCTL: &str = "/proc/sys/net/ipv4/ip_forward";
            if std::fs::read_to_string(SYSCTL)?.trim() != "1" {
                std::fs::write(SYSCTL, "1")?;
            }
            Ok(())
        })
        .context("enable IPv4 forwarding (net.ipv4.ip_forward)")
}
