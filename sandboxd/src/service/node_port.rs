//! Node ports held open: a listening socket on 0.0.0.0:<nodePort> in the node's network
//! namespace for as long as a service has the port, as kube-proxy holds them (the seeds'
//! `netstat -anp | grep 31080` shows it). Nothing is ever accepted on it (traffic to the
//! port is translated before it could arrive); the socket is there so that no process on
//! the node can take the port and then silently lose its traffic to the service.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;

use crate::node::NodeNetns;
use crate::service::Protocol;

pub struct NodePorts {
    netns: NodeNetns,
    /// The sockets, kept only to be open: dropping one closes it.
    held: BTreeMap<(Protocol, u16), OwnedFd>,
}

impl NodePorts {
    pub fn new(netns: &NodeNetns) -> NodePorts {
        NodePorts {
            netns: netns.clone(),
            held: BTreeMap::new(),
        }
    }

    /// Opens the port unless it is held already.
    pub fn hold(&mut self, protocol: Protocol, port: u16) -> anyhow::Result<()> {
        if self.held.contains_key(&(protocol, port)) {
            return Ok(());
        }
        let open = move || -> std::io::Result<OwnedFd> {
            let address = (Ipv4Addr::UNSPECIFIED, port);
            Ok(match protocol {
                Protocol::Tcp => TcpListener::bind(address)?.into(),
                Protocol::Udp => UdpSocket::bind(address)?.into(),
            })
        };
        let held = self.netns.run(open);
        let held = held.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                anyhow::anyhow!(
                    "node port {port}/{} is in use by another process on this node",
                    protocol.nft()
                )
            } else {
                anyhow::anyhow!("open node port {port}/{}: {e}", protocol.nft())
            }
        })?;
        self.held.insert((protocol, port), held);
        Ok(())
    }

    pub fn release(&mut self, protocol: Protocol, port: u16) {
        self.held.remove(&(protocol, port));
    }

    /// The ports held, by protocol.
    pub fn held(&self) -> impl Iterator<Item = (Protocol, u16)> + '_ {
        self.held.keys().copied()
    }

    pub fn is_held(&self, protocol: Protocol, port: u16) -> bool {
        self.held.contains_key(&(protocol, port))
    }
}
