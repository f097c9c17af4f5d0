//! host-gw: a route to each other node's /24 via that node's underlay address, as
//! flannel's host-gw backend makes it (`10.244.2.0/24 via 192.168.102.12 dev eth1`).

use anyhow::Context;

use super::Peer;
use crate::netlink::link::Link;
use crate::netlink::route::Route;
use crate::netlink::RouteSocket;

fn route_to(peer: &Peer, underlay: &Link) -> Route {
    Route {
        destination: peer.subnet.network().addr.into(),
        prefix: peer.subnet.prefix,
        gateway: Some(peer.ip.into()),
        device: Some(underlay.index),
        onlink: false,
        source: None,
    }
}

/// Removes `current` routes no peer wants, then adds the missing ones.
pub(super) fn sync(
    socket: &mut RouteSocket,
    underlay: &Link,
    current: &[Route],
    peers: &[&Peer],
) -> anyhow::Result<()> {
    let wanted: Vec<Route> = peers.iter().map(|p| route_to(p, underlay)).collect();
    for stale in current.iter().filter(|r| !wanted.contains(r)) {
        socket.delete_route(stale).with_context(|| {
            format!(
                "delete the stale route to {}/{}",
                stale.destination, stale.prefix
            )
        })?;
    }
    for (peer, route) in peers.iter().zip(&wanted) {
        if !current.contains(route) {
            socket.replace_route(route).with_context(|| {
                format!(
                    "add the route to node {}'s pods ({}) via {}",
                    peer.name, peer.subnet, peer.ip
                )
            })?;
        }
    }
    Ok(())
}
