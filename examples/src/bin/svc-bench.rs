//! svc-bench: how long programming Services takes, and what a connection to one costs, in
//! both data-plane modes at several numbers of services (2 endpoints each), in network
//! namespaces of its own.
//!
//!   svc-bench [--services 1,1000,10000] [--updates 20] [--connections 1000]
//!             [--modes netlink,nft,iptables]
//!
//! For each N, three ways to program the same ruleset:
//! * nftables over netlink (sandboxd's): the plan encoded as one nf_tables batch;
//! * `nft -f` (the upstream tool, the baseline): a full sync in block syntax, an update as
//!   commands;
//! * iptables (`--proxy-mode iptables`): `iptables-restore --noflush` of every chain, for a
//!   full sync and for an update alike, as kube-proxy's iptables mode does.
//!
//! Full sync: from an empty namespace. Update: the median of `--updates` changes of one
//! service's endpoints. First packet: `--connections` new TCP connections from the node to
//! the last service's ClusterIP (a real server behind it in a namespace of its own),
//! connect() time p50/p99 (`--connections 0` skips it; `nft -f` builds the same rules as
//! netlink, so it is measured once); the last service is the worst case for iptables' list.
//! Prints Markdown rows for BENCHMARKS.md. Needs root, nft, iptables.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sandboxd::lab::machine::Machine;
use sandboxd::netlink::nftables::NftSocket;
use sandboxd::service::plan::{self, Cluster, ProgrammedPort, ProgrammedService};
use sandboxd::service::{iptables, nftables, Protocol};

/// The server behind the measured service.
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const SERVER_PORTS: [u16; 2] = [8080, 8081];

fn cluster() -> Cluster {
    Cluster::new((Ipv4Addr::new(10, 244, 0, 0), 16))
}

/// Service i: ClusterIP 10.96.x.y port 80, two endpoints on 10.244.x.y, NodePort 30000 + i
/// for the first 2,768. The last one (`real`) forwards to the server instead.
fn service(i: u32, generation: u32, real: bool) -> ProgrammedService {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i);
    let ep = |n: u32| {
        if real {
            SocketAddrV4::new(SERVER, SERVER_PORTS[n as usize])
        } else {
            SocketAddrV4::new(
                Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(10, 244, 0, 2)) + 2 * i + n + generation * 7,
                ),
                8080,
            )
        }
    };
    ProgrammedService {
        key: format!("bench/svc-{i}"),
        cluster_ip: ip,
        ports: vec![ProgrammedPort {
            protocol: Protocol::Tcp,
            port: 80,
            node_port: (i < 2768).then(|| 30000 + i as u16),
            endpoints: vec![ep(0), ep(1)],
        }],
        affinity_seconds: None,
    }
}

fn services(count: u32) -> Vec<ProgrammedService> {
    (0..count).map(|i| service(i, 0, i == count - 1)).collect()
}

fn feed(netns: &Path, command: &[&str], input: &str) -> Result<Duration> {
    let start = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {command:?}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(start.elapsed())
}

fn iptables_save(netns: &Path) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["iptables-save", "-t", "nat"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

/// Runs `f` in a thread that joined the namespace at `netns`.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = std::fs::File::open(netns).with_context(|| format!("open {}", netns.display()))?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread panicked"))?
}

fn ip(netns: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new("ip")
        .arg("-n")
        .arg(netns.file_name().unwrap())
        .args(args)
        .status()?;
    if !status.success() {
        bail!("ip {args:?} failed");
    }
    Ok(())
}

/// The node and the server namespaces, pinned in /run/netns (so `ip -n` finds them) under
/// names of this process, removed on drop.
struct Namespaces {
    node: PathBuf,
    server: PathBuf,
}

impl Namespaces {
    fn new(tag: &str) -> Result<Namespaces> {
        std::fs::create_dir_all("/run/netns")?;
        let pid = std::process::id();
        let ns = Namespaces {
            node: PathBuf::from(format!("/run/netns/svcb-{pid}-{tag}-node")),
            server: PathBuf::from(format!("/run/netns/svcb-{pid}-{tag}-srv")),
        };
        // Held from here, so a failure below still removes what was made.
        Machine::create(&ns.node)?;
        Machine::create(&ns.server)?;
        let server_name = ns.server.file_name().unwrap().to_str().unwrap().to_string();
        ip(
            &ns.node,
            &[
                "link",
                "add",
                "to-server",
                "type",
                "veth",
                "peer",
                "eth0",
                "netns",
                &server_name,
            ],
        )?;
        ip(
            &ns.node,
            &["addr", "add", "10.250.0.1/24", "dev", "to-server"],
        )?;
        ip(&ns.node, &["link", "set", "to-server", "up"])?;
        ip(&ns.server, &["addr", "add", "10.250.0.2/24", "dev", "eth0"])?;
        ip(&ns.server, &["link", "set", "eth0", "up"])?;
        ip(
            &ns.server,
            &["route", "add", "default", "via", "10.250.0.1"],
        )?;
        // A default route, as a node has: the route lookup before DNAT needs one.
        ip(
            &ns.node,
            &[
                "link",
                "add",
                "uplink",
                "type",
                "veth",
                "peer",
                "name",
                "uplink-peer",
            ],
        )?;
        ip(&ns.node, &["addr", "add", "192.0.2.1/24", "dev", "uplink"])?;
        ip(&ns.node, &["link", "set", "uplink", "up"])?;
        ip(&ns.node, &["link", "set", "uplink-peer", "up"])?;
        ip(&ns.node, &["route", "add", "default", "via", "192.0.2.254"])?;
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = Machine::at(&self.node).remove();
        let _ = Machine::at(&self.server).remove();
    }
}

/// Listening sockets in the server namespace that accept and close, until the process
/// ends.
fn start_server(netns: &Path) -> Result<()> {
    let listeners = in_netns(netns, || {
        SERVER_PORTS
            .iter()
            .map(|port| Ok(TcpListener::bind((SERVER, *port))?))
            .collect::<Result<Vec<_>>>()
    })?;
    for listener in listeners {
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
            }
        });
    }
    Ok(())
}

/// The address of the last service (the one with a server behind it).
fn last_service(all: &[ProgrammedService]) -> SocketAddrV4 {
    SocketAddrV4::new(all[all.len() - 1].cluster_ip, 80)
}

/// connect() times of new connections from the node to `target`: (p50, p99) in ms; None
/// for no connections.
fn first_packet(
    netns: &Path,
    target: SocketAddrV4,
    connections: u32,
) -> Result<Option<(f64, f64)>> {
    if connections == 0 {
        return Ok(None);
    }
    let mut samples = in_netns(netns, move || {
        let mut samples = Vec::with_capacity(connections as usize);
        for _ in 0..connections {
            let start = Instant::now();
            let stream = TcpStream::connect_timeout(&target.into(), Duration::from_secs(2))
                .with_context(|| format!("connect to {target}"))?;
            samples.push(start.elapsed());
            drop(stream);
        }
        Ok(samples)
    })?;
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    Ok(Some((at(0.5), at(0.99))))
}

struct Row {
    mode: &'static str,
    full_sync: Duration,
    update_ms: f64,
    latency: Option<(f64, f64)>,
}

fn print(count: u32, row: &Row) {
    let latency = row
        .latency
        .map(|(p50, p99)| format!("{p50:.3} | {p99:.3}"))
        .unwrap_or_else(|| " | ".to_string());
    println!(
        "| {} | {count} | {:.1} | {:.2} | {latency} |",
        row.mode,
        row.full_sync.as_secs_f64() * 1e3,
        row.update_ms
    );
}

/// `updates` changes of service 0's endpoints, each a plan `apply` programs: their times.
fn time_updates(
    all: &[ProgrammedService],
    count: u32,
    updates: u32,
    mut apply: impl FnMut(&plan::Plan) -> Result<()>,
) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    let mut current = all[0].clone();
    for generation in 1..=updates {
        let next = service(0, generation, count == 1);
        let plan = plan::update(&cluster(), Some(&current), Some(&next));
        let start = Instant::now();
        apply(&plan)?;
        times.push(start.elapsed());
        current = next;
    }
    Ok(times)
}

fn bench_netlink(count: u32, updates: u32, connections: u32) -> Result<Row> {
    let ns = Namespaces::new("nl")?;
    start_server(&ns.server)?;
    let mut socket = NftSocket::open_in(Some(&ns.node))?;
    let all = services(count);
    let start = Instant::now();
    socket.apply(&plan::full_sync(&cluster(), &all))?;
    let full_sync = start.elapsed();
    let update_times = time_updates(&all, count, updates, |plan| socket.apply(plan))?;
    let latency = first_packet(&ns.node, last_service(&all), connections)?;
    Ok(Row {
        mode: "nftables (netlink, sandboxd)",
        full_sync,
        update_ms: median(update_times),
        latency,
    })
}

fn bench_nft_text(count: u32, updates: u32) -> Result<Row> {
    let ns = Namespaces::new("nft")?;
    let all = services(count);
    let start = Instant::now();
    let blocks = nftables::render_blocks(&plan::full_sync(&cluster(), &all))
        .context("a full sync renders as blocks")?;
    feed(&ns.node, &["nft", "-f", "-"], &blocks)?;
    let full_sync = start.elapsed();
    let update_times = time_updates(&all, count, updates, |plan| {
        feed(&ns.node, &["nft", "-f", "-"], &nftables::render(plan)).map(drop)
    })?;
    Ok(Row {
        mode: "nftables (`nft -f`)",
        full_sync,
        update_ms: median(update_times),
        latency: None,
    })
}

fn bench_iptables(count: u32, updates: u32, connections: u32) -> Result<Row> {
    let ns = Namespaces::new("ipt")?;
    start_server(&ns.server)?;
    let netns = ns.node.clone();
    // Every sync is a full restore.
    let sync = |services: &[ProgrammedService]| -> Result<Duration> {
        let start = Instant::now();
        let saved = iptables_save(&netns)?;
        let jumps = saved.contains("-j SBX-SERVICES");
        let stale = iptables::stale_chains(&saved, &iptables::chains(services));
        let text = iptables::restore(&cluster(), services, jumps, &stale);
        feed(&netns, &["iptables-restore", "--noflush"], &text)?;
        Ok(start.elapsed())
    };
    let mut all = services(count);
    let full_sync = sync(&all)?;
    let mut update_times = Vec::new();
    for generation in 1..=updates {
        all[0] = service(0, generation, count == 1);
        update_times.push(sync(&all)?);
    }
    let latency = first_packet(&ns.node, last_service(&all), connections)?;
    Ok(Row {
        mode: "iptables (`iptables-restore`)",
        full_sync,
        update_ms: median(update_times),
        latency,
    })
}

fn main() -> Result<()> {
    let mut counts = vec![1u32, 1000, 10000];
    let mut updates = 20;
    let mut connections = 1000;
    let mut modes = vec!["netlink".to_string(), "nft".into(), "iptables".into()];
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--services" => {
                counts = value()?
                    .split(',')
                    .map(|n| n.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--updates" => updates = value()?.parse()?,
            "--connections" => connections = value()?.parse()?,
            "--modes" => modes = value()?.split(',').map(|m| m.trim().to_string()).collect(),
            other => bail!("unknown argument {other:?}"),
        }
    }
    if let Some(unknown) = modes
        .iter()
        .find(|m| !["netlink", "nft", "iptables"].contains(&m.as_str()))
    {
        bail!("--modes: unknown mode {unknown:?} (netlink, nft, iptables)");
    }
    if counts.contains(&0) {
        bail!("--services: each count must be at least 1");
    }
    println!(
        "| mode | services | full sync ms | one-service update ms (median) | first packet p50 ms | p99 ms |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for count in counts {
        for mode in &modes {
            let row = match mode.as_str() {
                "netlink" => bench_netlink(count, updates, connections)?,
                "nft" => bench_nft_text(count, updates)?,
                _ => bench_iptables(count, updates, connections)?,
            };
            print(count, &row);
        }
    }
    Ok(())
}
