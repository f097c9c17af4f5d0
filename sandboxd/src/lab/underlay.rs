//! The lab's network: an underlay bridge in a namespace of its own (never on the
//! machine's network or firewall), and for each node a namespace whose `eth1` is cabled
//! to that bridge by a veth pair, as the seeds' VMs have `eth1` on a host-only network.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::Context;

use super::machine::Machine;
use crate::cidr::Ipv4Cidr;
use crate::netlink::address::Address;

/// The bridge in the underlay namespace.
pub const BRIDGE: &str = "underlay";
/// Each node's interface on the underlay, as on the seeds' VMs.
pub const NODE_DEVICE: &str = "eth1";

/// Makes the underlay namespace at `pin` with its bridge up.
pub fn create(pin: &Path) -> anyhow::Result<Machine> {
    let underlay = Machine::create(pin)?;
    let mut socket = underlay.netns().route_socket()?;
    socket
        .add_bridge(BRIDGE)
        .context("create the underlay bridge")?;
    let bridge = socket
        .link(BRIDGE)?
        .context("the underlay bridge vanished")?;
    socket.set_up(bridge.index).context("set the bridge up")?;
    Ok(underlay)
}

/// Makes the node's machine at `node_pin` and cables it: `eth1` in the node with
/// `address`, its peer (named after the node) a port of the underlay bridge; both up.
pub fn attach_node(
    underlay: &Machine,
    node_pin: &Path,
    node: &str,
    address: Ipv4Cidr,
) -> anyhow::Result<Machine> {
    let machine = Machine::create(node_pin)?;
    let node_ns =
        std::fs::File::open(node_pin).with_context(|| format!("open {}", node_pin.display()))?;
    let mut underlay = underlay.netns().route_socket()?;
    underlay
        .add_veth(node, NODE_DEVICE, Some(node_ns.as_fd()))
        .with_context(|| format!("cable node {node} to the underlay"))?;
    let port = underlay
        .link(node)?
        .with_context(|| format!("the underlay end of {node}'s cable vanished"))?;
    let bridge = underlay
        .link(BRIDGE)?
        .context("the underlay bridge is gone")?;
    underlay.set_master(port.index, bridge.index)?;
    underlay.set_up(port.index)?;

    let mut inside = machine.netns().route_socket()?;
    let eth1 = inside
        .link(NODE_DEVICE)?
        .with_context(|| format!("{NODE_DEVICE} did not arrive in node {node}"))?;
    inside
        .replace_address(&Address {
            index: eth1.index,
            ip: address.addr.into(),
            prefix: address.prefix,
        })
        .with_context(|| format!("give {node}'s {NODE_DEVICE} {address}"))?;
    inside.set_up(eth1.index)?;
    Ok(machine)
}

/// The address node `index` gets: .10 for the control plane, .11, .12, … for workers.
pub fn node_address(underlay: Ipv4Cidr, index: u32) -> Ipv4Addr {
    underlay.host(10 + index)
}
