//! `sandboxctl trace`: one request followed hop by hop, as the seeds follow it with tcpdump
//! on each interface in turn. Packet sockets on every interface of the path (each opened
//! in its own namespace) capture while one TCP request is made from the source's network
//! namespace; the frames of that request are then picked out by the tuples conntrack says
//! it had on each node (so a Service's DNAT and a masquerade are followed), put in the
//! order the kernel stamped them, and summed up: where the destination was translated,
//! where the packet was wrapped in VXLAN and unwrapped, and which way the reply went.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::capture::{Capture, Frame, Ipv4Summary, Packet};
use crate::netlink::conntrack::{ConntrackSocket, Tuple};

/// How long after the request the last frames of its close get to arrive everywhere.
const SETTLE: Duration = Duration::from_millis(20);

/// An interface to capture on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The node it is on.
    pub node: String,
    /// How the line names it: `pod-src eth0`, `eth1`, `veth5a1b2c3d (pod-dest)`.
    pub label: String,
    /// Its namespace (None: the caller's).
    pub netns: Option<PathBuf>,
    pub interface: String,
}

/// A node whose conntrack table is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedNode {
    pub name: String,
    pub netns: Option<PathBuf>,
    /// Its underlay address: names the ends of a VXLAN envelope.
    pub ip: Option<Ipv4Addr>,
}

/// What to trace.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Who sends the request (`pod-src`, `k8s-master`).
    pub client: String,
    /// Where the request is sent from: the source pod's or node's namespace.
    pub client_netns: Option<PathBuf>,
    pub target: SocketAddrV4,
    pub hops: Vec<Hop>,
    pub nodes: Vec<TracedNode>,
    /// How long the request may take, connect included.
    pub timeout: Duration,
}

/// How the request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Connected; the first line of what came back (empty if nothing did).
    Answered(String),
    /// Refused or unreachable: the error.
    Failed(String),
    /// No answer within the timeout.
    TimedOut,
}

/// Which way a packet of the flow was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Reply,
}

/// One frame of the flow at one hop.
#[derive(Debug, Clone)]
pub struct Seen {
    pub hop: usize,
    pub frame: Frame,
    pub packet: Packet,
    pub direction: Direction,
}

/// A translation conntrack recorded on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translation {
    pub node: String,
    pub before: Tuple,
    pub after: Tuple,
}

/// A finished trace.
#[derive(Debug, Clone)]
pub struct Report {
    pub plan: Plan,
    /// The source's port, as the client socket had it.
    pub client_port: u16,
    pub outcome: Outcome,
    pub elapsed: Duration,
    /// The flow's frames, in time order.
    pub seen: Vec<Seen>,
    pub translations: Vec<Translation>,
}

/// Runs the trace.
pub fn trace(plan: &Plan) -> anyhow::Result<Report> {
    // Each namespace is entered once, for its captures and its conntrack socket.
    let mut captures: Vec<Option<Capture>> = plan.hops.iter().map(|_| None).collect();
    let mut tracked = Vec::new();
    let mut namespaces: Vec<Option<PathBuf>> = Vec::new();
    for netns in plan
        .hops
        .iter()
        .map(|h| &h.netns)
        .chain(plan.nodes.iter().map(|n| &n.netns))
    {
        if !namespaces.contains(netns) {
            namespaces.push(netns.clone());
        }
    }
    // All at once: entering a network namespace waits for the kernel (an RCU grace
    // period), and the waits overlap.
    let opened = std::thread::scope(|scope| {
        let openers: Vec<_> = namespaces
            .into_iter()
            .map(|netns| {
                scope.spawn(move || {
                    let hops: Vec<usize> = (0..plan.hops.len())
                        .filter(|&i| plan.hops[i].netns == netns)
                        .collect();
                    let interfaces: Vec<String> = hops
                        .iter()
                        .map(|&i| plan.hops[i].interface.clone())
                        .collect();
                    let node = plan
                        .nodes
                        .iter()
                        .find(|n| n.netns == netns)
                        .map(|n| n.name.clone());
                    let wants_conntrack = node.is_some();
                    let (captures, conntrack) = crate::netns::run_in(netns.as_deref(), move || {
                        let captures = Capture::open_all(None, &interfaces)?;
                        let conntrack = match wants_conntrack {
                            true => Some(ConntrackSocket::open()?),
                            false => None,
                        };
                        Ok((captures, conntrack))
                    })
                    .with_context(|| {
                        let hops: Vec<String> = hops
                            .iter()
                            .map(|&i| format!("{} {}", plan.hops[i].node, plan.hops[i].label))
                            .collect();
                        format!("capture on {}", hops.join(", "))
                    })?;
                    anyhow::Ok((hops, captures, node.zip(conntrack)))
                })
            })
            .collect();
        openers
            .into_iter()
            .map(|opener| opener.join().expect("an opener panicked"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    for (hops, opened, conntrack) in opened {
        for (i, capture) in hops.into_iter().zip(opened) {
            captures[i] = Some(capture);
        }
        tracked.extend(conntrack);
    }
    let mut captures: Vec<Capture> = captures.into_iter().map(|c| c.expect("opened")).collect();
    let started = Instant::now();
    let (client_port, outcome) = request(plan)?;
    let elapsed = started.elapsed();
    // What crossed during the request is queued on each socket already; one moment more
    // lets the last packets of the close cross every hop.
    std::thread::sleep(SETTLE);
    let mut frames = Vec::new();
    for (hop, capture) in captures.iter_mut().enumerate() {
        while let Some(frame) = capture.next(Duration::ZERO)? {
            frames.push((hop, frame));
        }
    }
    frames.sort_by_key(|(_, frame)| frame.at);
    let decoded: Vec<(usize, Frame, Packet)> = frames
        .into_iter()
        .filter_map(|(hop, frame)| Packet::parse(&frame.data).map(|p| (hop, frame, p)))
        .collect();

    // The flow's tuples: the client's, then each translation conntrack recorded.
    let first = decoded.iter().find_map(|(_, _, packet)| {
        let l4 = flow_header(packet);
        (l4.protocol == 6
            && l4.src_port == Some(client_port)
            && l4.dst == *plan.target.ip()
            && l4.dst_port == Some(plan.target.port()))
        .then(|| tuple(&l4))
        .flatten()
    });
    let mut known: BTreeSet<TupleKey> = first.iter().map(key).collect();
    let mut translations = Vec::new();
    let tables: Vec<(String, Vec<crate::netlink::conntrack::Connection>)> = tracked
        .into_iter()
        .map(|(node, mut socket)| {
            let connections = socket
                .connections()
                .with_context(|| format!("read {node}'s conntrack table"))?;
            Ok((node, connections))
        })
        .collect::<anyhow::Result<_>>()?;
    loop {
        let mut grew = false;
        for (node, connections) in &tables {
            for connection in connections {
                let after = connection.translated();
                if known.contains(&key(&connection.original)) && known.insert(key(&after)) {
                    grew = true;
                    if after != connection.original {
                        translations.push(Translation {
                            node: node.clone(),
                            before: connection.original,
                            after,
                        });
                    }
                }
            }
        }
        if !grew {
            break;
        }
    }
    let seen = decoded
        .into_iter()
        .filter_map(|(hop, frame, packet)| {
            let l4 = flow_header(&packet);
            let direction = match tuple(&l4) {
                Some(t) if known.contains(&key(&t)) => Direction::Request,
                Some(t) if known.contains(&key(&t.reversed())) => Direction::Reply,
                // Before conntrack can say (nothing translated, no table): the client's
                // port on the target's address.
                _ if first.is_none()
                    && l4.protocol == 6
                    && (l4.src_port == Some(client_port) || l4.dst_port == Some(client_port)) =>
                {
                    if l4.src_port == Some(client_port) {
                        Direction::Request
                    } else {
                        Direction::Reply
                    }
                }
                _ => return None,
            };
            Some(Seen {
                hop,
                frame,
                packet,
                direction,
            })
        })
        .collect();
    Ok(Report {
        plan: plan.clone(),
        client_port,
        outcome,
        elapsed,
        seen,
        translations,
    })
}

/// One TCP request from the client's namespace: connect, `GET / HTTP/1.0`, the first
/// line of the answer. Returns the client's port and how it ended.
fn request(plan: &Plan) -> anyhow::Result<(u16, Outcome)> {
    let (target, timeout) = (plan.target, plan.timeout);
    let exchange = async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into())?;
        let port = socket.local_addr()?.port();
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = match tokio::time::timeout_at(deadline, socket.connect(target.into())).await {
            Err(_) => return Ok((port, Outcome::TimedOut)),
            Ok(Err(e)) => return Ok((port, Outcome::Failed(e.to_string()))),
            Ok(Ok(stream)) => stream,
        };
        let answer = tokio::time::timeout_at(deadline, async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = stream;
            let request = format!("GET / HTTP/1.0\r\nHost: {target}\r\n\r\n");
            stream.write_all(request.as_bytes()).await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            std::io::Result::Ok(answer)
        })
        .await;
        Ok(match answer {
            Err(_) => (port, Outcome::TimedOut),
            Ok(Err(e)) => (port, Outcome::Failed(e.to_string())),
            Ok(Ok(answer)) => {
                let text = String::from_utf8_lossy(&answer);
                let line = text.lines().next().unwrap_or_default().to_string();
                (port, Outcome::Answered(line))
            }
        })
    };
    let outcome: std::io::Result<(u16, Outcome)> = match &plan.client_netns {
        Some(netns) => crate::netns::block_on_in(netns, exchange)
            .with_context(|| format!("enter {}", netns.display()))?,
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(exchange),
    };
    outcome.context("make the request")
}

/// The header a flow is known by: the packet inside a VXLAN envelope, else the packet.
fn flow_header(packet: &Packet) -> Ipv4Summary {
    packet.vxlan.map(|(_, inner)| inner).unwrap_or(packet.outer)
}

fn tuple(header: &Ipv4Summary) -> Option<Tuple> {
    Some(Tuple {
        src: header.src,
        dst: header.dst,
        protocol: header.protocol,
        src_port: header.src_port?,
        dst_port: header.dst_port?,
    })
}

type TupleKey = (Ipv4Addr, Ipv4Addr, u8, u16, u16);

fn key(t: &Tuple) -> TupleKey {
    (t.src, t.dst, t.protocol, t.src_port, t.dst_port)
}

fn endpoint(ip: Ipv4Addr, port: u16) -> String {
    format!("{ip}:{port}")
}

impl Report {
    /// The request and the reply at every hop they crossed, one line each (the first
    /// packet each way: the SYN and its answer), then the summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let plan = &self.plan;
        let outcome = match &self.outcome {
            Outcome::Answered(line) if line.is_empty() => "connected; nothing came back".into(),
            Outcome::Answered(line) => format!("answered {line:?}"),
            Outcome::Failed(e) => format!("failed: {e}"),
            Outcome::TimedOut => format!("no answer within {:?}", plan.timeout),
        };
        let _ = writeln!(
            out,
            "trace {} → {}: {outcome} ({:.1} ms)",
            plan.client,
            plan.target,
            self.elapsed.as_secs_f64() * 1e3
        );
        let start = self.seen.first().map(|s| s.frame.at).unwrap_or_default();
        let width = plan
            .hops
            .iter()
            .map(|h| h.node.len() + h.label.len() + 1)
            .max()
            .unwrap_or(0);
        for direction in [Direction::Request, Direction::Reply] {
            // The first packet of the direction (the SYN, the SYN-ACK) at each hop.
            let first = self.seen.iter().find(|s| s.direction == direction);
            let Some(first) = first else { continue };
            let l4 = flow_header(&first.packet);
            let _ = writeln!(
                out,
                "{}:",
                match direction {
                    Direction::Request => "request",
                    Direction::Reply => "reply",
                }
            );
            let mut hops_done = BTreeSet::new();
            for seen in self.seen.iter().filter(|s| {
                s.direction == direction && flow_header(&s.packet).tcp_flags == l4.tcp_flags
            }) {
                // An interface a packet enters and leaves again wrapped (a node's eth1
                // on a NodePort's path) shows it both ways.
                if !hops_done.insert((seen.hop, seen.packet.vxlan.is_some())) {
                    continue;
                }
                let hop = &plan.hops[seen.hop];
                let at = seen.frame.at.saturating_sub(start).as_secs_f64() * 1e3;
                let place = format!("{} {}", hop.node, hop.label);
                let mut lines = seen.packet.to_string();
                lines = lines.replace('\n', &format!("\n  {:>9}   {:width$}   ", "", ""));
                let _ = writeln!(out, "  {at:>7.3}ms   {place:width$}   {lines}");
            }
        }
        let flow_packets = self.seen.len();
        if flow_packets > 0 {
            let _ = writeln!(
                out,
                "({flow_packets} frames of the flow in all, at every hop; -w FILE.pcap keeps them)"
            );
        }
        let _ = writeln!(out, "summary:");
        for line in self.summary() {
            let _ = writeln!(out, "  {line}");
        }
        out
    }

    /// Where the destination was translated, where the packet was encapsulated and
    /// decapsulated, the way back; or, unanswered, where it was last seen.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let plan = &self.plan;
        if self.seen.is_empty() {
            lines.push(format!(
                "no packet of the request was seen on any of the {} interfaces captured",
                plan.hops.len()
            ));
        }
        for t in &self.translations {
            let mut parts = Vec::new();
            if (t.before.dst, t.before.dst_port) != (t.after.dst, t.after.dst_port) {
                parts.push(format!(
                    "destination {} → {} (DNAT)",
                    endpoint(t.before.dst, t.before.dst_port),
                    endpoint(t.after.dst, t.after.dst_port)
                ));
            }
            if (t.before.src, t.before.src_port) != (t.after.src, t.after.src_port) {
                parts.push(format!(
                    "source {} → {} (masquerade)",
                    endpoint(t.before.src, t.before.src_port),
                    endpoint(t.after.src, t.after.src_port)
                ));
            }
            lines.push(format!(
                "translated on {} (conntrack): {}",
                t.node,
                parts.join(", ")
            ));
        }
        let node_of = |ip: Ipv4Addr| {
            plan.nodes
                .iter()
                .find(|n| n.ip == Some(ip))
                .map(|n| n.name.clone())
                .unwrap_or_else(|| ip.to_string())
        };
        let mut envelopes = BTreeSet::new();
        for seen in &self.seen {
            if let Some((vni, _)) = seen.packet.vxlan {
                let (from, to) = (seen.packet.outer.src, seen.packet.outer.dst);
                if envelopes.insert((from, to, seen.direction == Direction::Request)) {
                    lines.push(format!(
                        "{}: encapsulated on {} in VXLAN VNI {vni} (UDP {} → {}:{}), decapsulated on {}",
                        match seen.direction {
                            Direction::Request => "request",
                            Direction::Reply => "reply",
                        },
                        node_of(from),
                        from,
                        to,
                        seen.packet.outer.dst_port.unwrap_or_default(),
                        node_of(to)
                    ));
                }
            }
        }
        let path = |direction: Direction| {
            let mut hops: Vec<usize> = Vec::new();
            for seen in self.seen.iter().filter(|s| s.direction == direction) {
                if !hops.contains(&seen.hop) {
                    hops.push(seen.hop);
                }
            }
            hops.iter()
                .map(|&h| format!("{} {}", plan.hops[h].node, plan.hops[h].label))
                .collect::<Vec<_>>()
        };
        let reply = path(Direction::Reply);
        if !reply.is_empty() {
            lines.push(format!("reply path: {}", reply.join(" → ")));
        }
        if !matches!(self.outcome, Outcome::Answered(_)) {
            match self.last_seen() {
                Some(seen) => {
                    let hop = &plan.hops[seen.hop];
                    lines.push(format!(
                        "last seen: {} {} ({})",
                        hop.node,
                        hop.label,
                        flow_header(&seen.packet)
                    ));
                }
                None => lines.push("last seen: nowhere (it never left the source)".into()),
            }
        }
        lines
    }

    /// The last frame of the request, in time.
    pub fn last_seen(&self) -> Option<&Seen> {
        self.seen
            .iter()
            .filter(|s| s.direction == Direction::Request)
            .max_by_key(|s| s.frame.at)
    }

    /// Writes every frame of the flow, in time order, as a pcap file.
    pub fn write_pcap(&self, path: &Path) -> anyhow::Result<()> {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
        );
        crate::capture::write_pcap(&mut file, self.seen.iter().map(|s| &s.frame))
            .with_context(|| format!("write {}", path.display()))
    }
}
