//! svc-bench: how long programming Services takes, in both data-plane modes, at several
//! numbers of services (2 endpoints each), in a network namespace of its own.
//!
//!   svc-bench [--services 1,1000,10000] [--updates 20]
//!
//! For each N: a full sync (render + `nft -f`, or render + `iptables-restore --noflush`),
//! then `--updates` changes of one service's endpoints (nftables: one transaction touching
//! that service only; iptables: a full restore, as kube-proxy's iptables mode does), and
//! the median of those. Prints Markdown rows for BENCHMARKS.md. Needs root, nft, iptables.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sandboxd::service::nftables::{self, Cluster, ProgrammedPort, ProgrammedService};
use sandboxd::service::{iptables, Protocol};

fn cluster() -> Cluster {
    Cluster {
        pod_cidr: (Ipv4Addr::new(10, 244, 0, 0), 16),
    }
}

/// Service i: ClusterIP 10.96.x.y, two endpoints on 10.244.x.y, NodePort 30000 + i for the
/// first 2,768.
fn service(i: u32, generation: u32) -> ProgrammedService {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i);
    let ep = |n: u32| {
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 2)) + 2 * i + n + generation * 7),
            8080,
        )
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

fn bench(netns: &Path, count: u32, updates: u32) -> Result<()> {
    let services: Vec<ProgrammedService> = (0..count).map(|i| service(i, 0)).collect();

    // nftables
    let start = Instant::now();
    let script = nftables::full_sync(&cluster(), &services);
    let render = start.elapsed();
    let apply = feed(netns, &["nft", "-f", "-"], &script)?;
    let mut update_times = Vec::new();
    let mut current = services[0].clone();
    for generation in 1..=updates {
        let next = service(0, generation);
        let script = nftables::update(&cluster(), Some(&current), Some(&next));
        let start = Instant::now();
        feed(netns, &["nft", "-f", "-"], &script)?;
        update_times.push(start.elapsed());
        current = next;
    }
    println!(
        "| nftables | {count} | {:.1} | {:.2} |",
        (render + apply).as_secs_f64() * 1e3,
        median(update_times)
    );
    feed(netns, &["nft", "-f", "-"], &nftables::cleanup())?;

    // iptables: every sync is a full restore.
    let sync = |services: &[ProgrammedService]| -> Result<Duration> {
        let start = Instant::now();
        let saved = iptables_save(netns)?;
        let jumps = saved.contains("-j SBX-SERVICES");
        let stale = iptables::stale_chains(&saved, &iptables::chains(services));
        let text = iptables::restore(&cluster(), services, jumps, &stale);
        feed(netns, &["iptables-restore", "--noflush"], &text)?;
        Ok(start.elapsed())
    };
    let full = sync(&services)?;
    let mut update_times = Vec::new();
    let mut all = services.clone();
    for generation in 1..=updates {
        all[0] = service(0, generation);
        update_times.push(sync(&all)?);
    }
    println!(
        "| iptables | {count} | {:.1} | {:.2} |",
        full.as_secs_f64() * 1e3,
        median(update_times)
    );
    Ok(())
}

fn main() -> Result<()> {
    let mut counts = vec![1u32, 1000, 10000];
    let mut updates = 20;
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
            other => bail!("unknown argument {other:?}"),
        }
    }
    println!("| mode | services | full sync ms | one-service update ms (median) |");
    println!("| --- | --- | --- | --- |");
    for count in counts {
        // A fresh namespace per size, so each full sync starts from nothing.
        let dir = tempfile::tempdir()?;
        let netns = dir.path().join("node");
        sandboxd::netns::create(&netns)?;
        let outcome = bench(&netns, count, updates);
        sandboxd::netns::unpin(&netns)?;
        outcome?;
    }
    Ok(())
}
