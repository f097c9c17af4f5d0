//! The node one sandboxd serves: its name, the network namespace its kernel objects live
//! in, and, once it has joined a cluster, where it sits on the underlay. Made once at start
//! and handed to every part that touches the node's network (CNI, pause, the overlay, the
//! service proxy), so none of them takes a namespace path of its own.

use std::fmt;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cidr::Ipv4Cidr;
use crate::netlink::nftables::NftSocket;
use crate::netlink::RouteSocket;

/// The node's network namespace: sandboxd's own (a machine, a VM), or a pinned one that
/// sandboxd reaches into without entering it (a lab node, a test's node, where bridges,
/// host-side veths, `flannel.1` and service rules must be made while the daemon itself stays
/// on the machine's network).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeNetns(Option<PathBuf>);

impl NodeNetns {
    /// sandboxd's own namespace.
    pub fn own() -> NodeNetns {
        NodeNetns(None)
    }

    /// The namespace pinned at `path` (`--node-netns`).
    pub fn pinned(path: impl Into<PathBuf>) -> NodeNetns {
        NodeNetns(Some(path.into()))
    }

    /// The pin, when the namespace is not sandboxd's own.
    pub fn path(&self) -> Option<&Path> {
        self.0.as_deref()
    }

    /// Runs `f` in the node's namespace (see [`crate::netns::run_in`]): what it opens there
    /// stays bound to the node.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        crate::netns::run_in(self.path(), f)
    }

    /// A route netlink socket of the node (`ip link`, `ip addr`, `ip route`, `ip neigh`,
    /// `bridge fdb` there).
    pub fn route_socket(&self) -> io::Result<RouteSocket> {
        RouteSocket::open_in(self.path())
    }

    /// An nf_tables netlink socket of the node (`nft` there).
    pub fn nft_socket(&self) -> io::Result<NftSocket> {
        NftSocket::open_in(self.path())
    }

    /// `program` as a command run in the node's namespace: through `nsenter --net` when it
    /// is pinned (for the tools that have no netlink API of ours: iptables-save/-restore).
    pub fn command(&self, program: &str) -> Command {
        match self.path() {
            Some(path) => {
                let mut command = Command::new("nsenter");
                command
                    .arg(format!("--net={}", path.display()))
                    .arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    /// How CNI plugins are run: with the node's namespace as their own, as on a real node
    /// (the bridge plugin makes `cni0` and the host-side veths where it runs).
    pub fn plugin_exec(&self) -> cni_host::ProcessExec {
        match self.path() {
            Some(path) => cni_host::ProcessExec::in_netns(path),
            None => cni_host::ProcessExec::new(),
        }
    }

    /// The namespace's file, for a child that must enter it (a hostNetwork pod's pause);
    /// None for sandboxd's own, which children inherit.
    pub fn open(&self) -> io::Result<Option<File>> {
        self.path().map(File::open).transpose()
    }
}

impl fmt::Display for NodeNetns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path() {
            Some(path) => write!(f, "the network namespace {}", path.display()),
            None => f.write_str("sandboxd's own network namespace"),
        }
    }
}

/// The node: who it is and where its network lives.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Node {
    /// As `get pods -o wide` shows it and a nodeSelector names it.
    pub name: String,
    pub netns: NodeNetns,
    /// Where the node sits in its cluster; None until it has joined one (a node alone).
    pub addresses: Option<NodeAddresses>,
}

/// A cluster node's place on the network.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeAddresses {
    /// The address other nodes reach it at.
    pub ip: Ipv4Addr,
    /// The device holding `ip` (`eth1` in the lab and on the seeds' VMs).
    pub underlay: String,
    /// Its pods' /24, leased from the cluster CIDR.
    pub subnet: Ipv4Cidr,
}

impl Node {
    /// A node alone named `name`, its network in `netns`.
    pub fn new(name: impl Into<String>, netns: NodeNetns) -> Node {
        Node {
            name: name.into(),
            netns,
            addresses: None,
        }
    }
}
