//! `sandboxctl lab graph`: the live cluster drawn from the kernel and the store — nodes
//! with their eth1, flannel.1 and cni0, each pod's veth pair with the interface indexes as
//! the seeds show them (`eth0@if10`), the tunnels between nodes as the FDB entries (or
//! host-gw's routes) say, and Services with their endpoints. Written as Graphviz's DOT and
//! laid out by Graphviz's `dot`, never by hand-placed coordinates.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use super::machine::Machine;
use crate::cidr::Ipv4Cidr;
use crate::netlink::link::Link;
use crate::netlink::Family;
use crate::overlay::Backend;

/// One interface as the picture labels it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    /// The veth peer's index in the other namespace (`@ifN`).
    pub peer_index: Option<u32>,
    pub address: Option<Ipv4Cidr>,
}

impl Interface {
    fn of(link: &Link, addresses: &[crate::netlink::address::Address]) -> Interface {
        Interface {
            name: link.name.clone(),
            index: link.index,
            peer_index: link
                .peer_index
                .filter(|_| link.kind.as_deref() == Some("veth")),
            address: addresses.iter().find_map(|a| match a.ip {
                IpAddr::V4(ip) if a.index == link.index => Some(Ipv4Cidr::new(ip, a.prefix)),
                _ => None,
            }),
        }
    }

    /// As `ip -br link` names it: `10: vethab12@if2`.
    fn title(&self) -> String {
        match self.peer_index {
            Some(peer) => format!("{}: {}@if{peer}", self.index, self.name),
            None => format!("{}: {}", self.index, self.name),
        }
    }
}

/// A pod as the picture shows it: its eth0 and the node's end of the pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub eth0: Interface,
    pub veth: Option<Interface>,
}

/// A node's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub eth1: Option<Interface>,
    pub vtep: Option<Interface>,
    pub bridge: Option<Interface>,
    /// The other nodes' underlay addresses it has tunnels (FDB entries) or routes to.
    pub peers: Vec<Ipv4Addr>,
    pub pods: Vec<PodView>,
}

/// A Service and the pods behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub name: String,
    pub cluster_ip: String,
    /// `8080/TCP`, `8080:31080/TCP`.
    pub ports: Vec<String>,
    /// The endpoints' pod names.
    pub endpoints: Vec<String>,
}

/// The whole picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub backend: Backend,
    pub underlay: Ipv4Cidr,
    pub nodes: Vec<NodeView>,
    pub services: Vec<ServiceView>,
}

/// A pod to read: its name and its network namespace's pin.
pub struct PodPin {
    pub name: String,
    pub netns: PathBuf,
}

/// Reads a node's interfaces, its tunnels, and its pods' veth pairs from the kernel.
pub fn read_node(name: &str, machine: &Machine, pods: &[PodPin]) -> anyhow::Result<NodeView> {
    let mut socket = machine
        .netns()
        .route_socket()
        .with_context(|| format!("open a netlink socket on {name}"))?;
    let links = socket.links()?;
    let addresses = socket.addresses(None)?;
    let find = |wanted: &str| {
        links
            .iter()
            .find(|l| l.name == wanted)
            .map(|l| Interface::of(l, &addresses))
    };
    let vtep = find(crate::overlay::vxlan::DEVICE);
    let mut peers: Vec<Ipv4Addr> = match &vtep {
        Some(vtep) => socket
            .fdb(vtep.index)?
            .iter()
            .filter_map(|entry| entry.ip)
            .collect(),
        None => socket
            .routes(Family::V4)?
            .iter()
            .filter_map(|r| match r.gateway {
                Some(IpAddr::V4(gateway)) => Some(gateway),
                _ => None,
            })
            .collect(),
    };
    peers.sort();
    peers.dedup();
    let mut views = Vec::new();
    for pod in pods {
        let mut inside = crate::netlink::RouteSocket::open_in(Some(&pod.netns))
            .with_context(|| format!("open pod {}'s network namespace", pod.name))?;
        let pod_addresses = inside.addresses(None)?;
        let Some(eth0) = inside.link("eth0")? else {
            continue;
        };
        let eth0 = Interface::of(&eth0, &pod_addresses);
        let veth = eth0
            .peer_index
            .and_then(|peer| links.iter().find(|l| l.index == peer))
            .map(|l| Interface::of(l, &addresses));
        views.push(PodView {
            name: pod.name.clone(),
            eth0,
            veth,
        });
    }
    Ok(NodeView {
        name: name.to_string(),
        eth1: find(super::underlay::NODE_DEVICE),
        vtep,
        bridge: find("cni0"),
        peers,
        pods: views,
    })
}

/// DOT's quoted string; a line break is DOT's `\n` (centred).
fn quoted(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

/// A DOT identifier for an object of a node.
fn id(parts: &[&str]) -> String {
    quoted(&parts.join("/"))
}

impl Topology {
    /// The picture as Graphviz's DOT.
    pub fn dot(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph cluster {{");
        let _ = writeln!(
            out,
            "  graph [rankdir=TB, fontname=\"Helvetica\", fontsize=12, compound=true, newrank=true, label={}, labelloc=t];",
            quoted(&format!(
                "sandboxd lab: {} nodes, {} backend, underlay {}",
                self.nodes.len(),
                self.backend.name(),
                self.underlay
            ))
        );
        let _ = writeln!(
            out,
            "  node [shape=box, style=\"rounded,filled\", fillcolor=white, fontname=\"Helvetica\", fontsize=10];"
        );
        let _ = writeln!(
            out,
            "  edge [fontname=\"Helvetica\", fontsize=9, dir=none];"
        );
        let underlay = id(&["underlay"]);
        let _ = writeln!(
            out,
            "  {underlay} [label={}, shape=box, fillcolor=\"#e8e8e8\"];",
            quoted(&format!("underlay bridge\n{}", self.underlay))
        );
        for node in &self.nodes {
            let n = node.name.as_str();
            let _ = writeln!(out, "  subgraph {} {{", quoted(&format!("cluster_{n}")));
            let _ = writeln!(
                out,
                "    label={}; style=\"rounded,filled\"; fillcolor=\"#f4f8ff\";",
                quoted(n)
            );
            let iface = |out: &mut String, what: &str, i: &Interface, color: &str| {
                let mut label = i.title();
                if let Some(address) = &i.address {
                    let _ = write!(label, "\n{address}");
                }
                let _ = writeln!(
                    out,
                    "    {} [label={}, fillcolor={}];",
                    id(&[n, what]),
                    quoted(&label),
                    quoted(color)
                );
            };
            if let Some(eth1) = &node.eth1 {
                iface(&mut out, "eth1", eth1, "#fff2cc");
            }
            if let Some(vtep) = &node.vtep {
                iface(&mut out, "flannel.1", vtep, "#d9ead3");
            }
            if let Some(bridge) = &node.bridge {
                iface(&mut out, "cni0", bridge, "#cfe2f3");
            }
            for pod in &node.pods {
                let p = pod.name.as_str();
                let _ = writeln!(
                    out,
                    "    subgraph {} {{",
                    quoted(&format!("cluster_{n}_{p}"))
                );
                let _ = writeln!(
                    out,
                    "      label={}; style=\"rounded,filled\"; fillcolor=\"#fdecea\";",
                    quoted(&format!("pod {p}"))
                );
                let mut label = pod.eth0.title();
                if let Some(address) = &pod.eth0.address {
                    let _ = write!(label, "\n{address}");
                }
                let _ = writeln!(
                    out,
                    "      {} [label={}];",
                    id(&[n, p, "eth0"]),
                    quoted(&label)
                );
                let _ = writeln!(out, "    }}");
                if let Some(veth) = &pod.veth {
                    iface(&mut out, &format!("{p}/veth"), veth, "#ffffff");
                }
            }
            let _ = writeln!(out, "  }}");
            // Inside the node: pod eth0 ═ veth (a pair) — cni0 (a port) — flannel.1 —
            // eth1 — the underlay.
            for pod in &node.pods {
                let p = pod.name.as_str();
                if pod.veth.is_some() {
                    let _ = writeln!(
                        out,
                        "  {} -> {} [label=\"veth pair\", penwidth=2];",
                        id(&[n, p, "eth0"]),
                        id(&[n, &format!("{p}/veth")])
                    );
                    if node.bridge.is_some() {
                        let _ = writeln!(
                            out,
                            "  {} -> {} [label=\"port\"];",
                            id(&[n, &format!("{p}/veth")]),
                            id(&[n, "cni0"])
                        );
                    }
                }
            }
            let to_eth1 = match (&node.bridge, &node.vtep) {
                (Some(_), Some(_)) => {
                    let _ = writeln!(
                        out,
                        "  {} -> {} [label=\"route\", style=dashed];",
                        id(&[n, "cni0"]),
                        id(&[n, "flannel.1"])
                    );
                    Some("flannel.1")
                }
                (None, Some(_)) => Some("flannel.1"),
                (Some(_), None) => Some("cni0"),
                (None, None) => None,
            };
            if let (Some(from), Some(_)) = (to_eth1, &node.eth1) {
                let _ = writeln!(
                    out,
                    "  {} -> {} [label={}, style=dashed];",
                    id(&[n, from]),
                    id(&[n, "eth1"]),
                    quoted(if from == "flannel.1" {
                        "encap UDP 8472"
                    } else {
                        "route"
                    })
                );
            }
            if node.eth1.is_some() {
                let _ = writeln!(out, "  {} -> {underlay};", id(&[n, "eth1"]));
            }
        }
        // Tunnels (VXLAN: one per pair of nodes with FDB entries both ways) or host-gw
        // routes, between the nodes' devices.
        let address_of = |ip: Ipv4Addr| {
            self.nodes.iter().find(|n| {
                n.eth1
                    .as_ref()
                    .and_then(|e| e.address)
                    .is_some_and(|a| a.addr == ip)
            })
        };
        for (i, node) in self.nodes.iter().enumerate() {
            for peer_ip in &node.peers {
                let Some(peer) = address_of(*peer_ip) else {
                    continue;
                };
                let j = self
                    .nodes
                    .iter()
                    .position(|n| n.name == peer.name)
                    .unwrap_or(0);
                if j <= i {
                    continue;
                }
                let (device, label) = match self.backend {
                    Backend::Vxlan => ("flannel.1", "VXLAN VNI 1"),
                    Backend::HostGw => ("eth1", "host-gw route"),
                };
                let _ = writeln!(
                    out,
                    "  {} -> {} [label={}, style=bold, color=\"#38761d\", constraint=false];",
                    id(&[&node.name, device]),
                    id(&[&peer.name, device]),
                    quoted(&format!("tunnel {} ⇄ {}: {label}", node.name, peer.name))
                );
            }
        }
        for service in &self.services {
            let s = id(&["service", &service.name]);
            let _ = writeln!(
                out,
                "  {s} [label={}, shape=component, fillcolor=\"#fce5cd\"];",
                quoted(&format!(
                    "service {}\n{} {}",
                    service.name,
                    service.cluster_ip,
                    service.ports.join(", ")
                ))
            );
            for endpoint in &service.endpoints {
                for node in &self.nodes {
                    if node.pods.iter().any(|p| &p.name == endpoint) {
                        let _ = writeln!(
                            out,
                            "  {s} -> {} [label=\"endpoint\", style=dotted, dir=forward, color=\"#b45f06\"];",
                            id(&[&node.name, endpoint, "eth0"])
                        );
                    }
                }
            }
        }
        let _ = writeln!(out, "}}");
        out
    }
}

/// Lays `dot_text` out with Graphviz's `dot` in `format` (`svg`, `png`, …).
pub fn render(dot_text: &str, format: &str) -> anyhow::Result<Vec<u8>> {
    let Some(dot) = crate::config::find_in_path(Path::new("dot")) else {
        bail!("Graphviz's dot is not installed (Debian: apt-get install graphviz; scripts/install-deps.sh does)");
    };
    let mut child = Command::new(dot)
        .arg(format!("-T{format}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run dot")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(dot_text.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "dot -T{format} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, index: u32, peer: Option<u32>, address: Option<&str>) -> Interface {
        Interface {
            name: name.into(),
            index,
            peer_index: peer,
            address: address.map(|a| a.parse().unwrap()),
        }
    }

    #[test]
    fn the_dot_names_every_node_pod_tunnel_and_service() {
        let node = |name: &str, n: u8, peers: Vec<Ipv4Addr>, pods: Vec<PodView>| NodeView {
            name: name.into(),
            eth1: Some(iface(
                "eth1",
                2,
                None,
                Some(&format!("192.168.102.{}/24", 10 + n)),
            )),
            vtep: Some(iface(
                "flannel.1",
                3,
                None,
                Some(&format!("10.244.{n}.0/32")),
            )),
            bridge: Some(iface("cni0", 4, None, Some(&format!("10.244.{n}.1/24")))),
            peers,
            pods,
        };
        let pod = PodView {
            name: "pod-dest".into(),
            eth0: iface("eth0", 2, Some(10), Some("10.244.1.2/24")),
            veth: Some(iface("veth1234", 10, Some(2), None)),
        };
        let topology = Topology {
            backend: Backend::Vxlan,
            underlay: "192.168.102.0/24".parse().unwrap(),
            nodes: vec![
                node(
                    "k8s-master",
                    0,
                    vec![Ipv4Addr::new(192, 168, 102, 11)],
                    vec![],
                ),
                node(
                    "k8s-node1",
                    1,
                    vec![Ipv4Addr::new(192, 168, 102, 10)],
                    vec![pod],
                ),
            ],
            services: vec![ServiceView {
                name: "svc-clusterip".into(),
                cluster_ip: "10.96.0.2".into(),
                ports: vec!["8080/TCP".into()],
                endpoints: vec!["pod-dest".into()],
            }],
        };
        let dot = topology.dot();
        for seen in [
            "\"cluster_k8s-master\"",
            "\"cluster_k8s-node1_pod-dest\"",
            "2: eth0@if10\\n10.244.1.2/24",
            "10: veth1234@if2",
            "tunnel k8s-master ⇄ k8s-node1: VXLAN VNI 1",
            "service svc-clusterip\\n10.96.0.2 8080/TCP",
            "\"service/svc-clusterip\" -> \"k8s-node1/pod-dest/eth0\"",
        ] {
            assert!(dot.contains(seen), "{seen:?} missing:\n{dot}");
        }
        // One tunnel per pair, though both ends list each other.
        assert_eq!(dot.matches("tunnel ").count(), 1);
    }
}
