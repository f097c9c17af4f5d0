//! `sandboxctl join`: makes this machine a node of a cluster, as `kubeadm join` does for a
//! kubelet. It writes the systemd units of the node's daemons (etcd on the control plane,
//! sandboxd on every node) with the command lines the lab starts its nodes with
//! (`sandboxd::cluster::setup`), starts them, and waits until the node holds its pod
//! subnet. Run again, it rewrites the units and restarts the daemons; pods keep running.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sandboxd::cidr::Ipv4Cidr;
use sandboxd::cluster::setup::{self, DaemonPaths, EtcdSetup, NodeSetup};
use sandboxd::overlay::Backend;

pub const SANDBOXD_UNIT: &str = "sandboxd.service";
pub const ETCD_UNIT: &str = "sandboxd-etcd.service";
/// Where the control plane's etcd keeps its data.
const ETCD_DATA_DIR: &str = "/var/lib/sandboxd-etcd";
/// How long etcd and the node get to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub struct Args {
    /// The node's name (default: the machine's hostname).
    #[arg(long)]
    name: Option<String>,
    /// The node's address on the network the nodes share: the private network's (eth1 on
    /// the seeds' VMs), never a NAT interface's (10.0.2.15 on every VirtualBox VM).
    #[arg(long)]
    ip: Ipv4Addr,
    /// The control plane's address: the cluster store is etcd there. Default with
    /// --control-plane: --ip.
    #[arg(long, conflicts_with = "store")]
    master_ip: Option<Ipv4Addr>,
    /// The cluster store, etcd://HOST:PORT[,HOST:PORT…], instead of --master-ip.
    #[arg(long)]
    store: Option<String>,
    /// How pods reach other nodes' pods: vxlan (flannel.1) or host-gw.
    #[arg(long, default_value = "vxlan")]
    backend: Backend,
    /// The cluster's pod CIDR; each node leases a /24 of it.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: Ipv4Cidr,
    /// This node is the control plane: it runs etcd, and pods only when placed on it by
    /// name.
    #[arg(long)]
    control_plane: bool,
    /// Where the units are written.
    #[arg(long, default_value = "/etc/systemd/system")]
    unit_dir: PathBuf,
    /// Print the units instead of installing and starting them.
    #[arg(long)]
    print: bool,
}

/// A unit to install: its file name and text.
struct Unit {
    name: &'static str,
    text: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let name = args
        .name
        .clone()
        .unwrap_or_else(sandboxd::config::machine_hostname);
    if name.is_empty() {
        bail!("invalid --name: empty (and the machine has no hostname)");
    }
    let store = match (&args.store, args.master_ip, args.control_plane) {
        (Some(store), _, _) => store.clone(),
        (None, Some(master), _) => setup::store_url(master),
        (None, None, true) => setup::store_url(args.ip),
        (None, None, false) => {
            bail!("node {name}: give --master-ip (the control plane's address) or --store")
        }
    };
    let node = NodeSetup {
        name: name.clone(),
        ip: args.ip,
        store,
        backend: args.backend,
        cluster_cidr: args.cluster_cidr,
        control_plane: args.control_plane,
    };
    let etcd = args.control_plane.then(|| EtcdSetup {
        name: name.clone(),
        ip: args.ip,
        data_dir: PathBuf::from(ETCD_DATA_DIR),
    });
    let units = units(&node, etcd.as_ref(), args.print)?;
    if args.print {
        for unit in &units {
            println!("# {}\n{}", unit.name, unit.text);
        }
        return Ok(());
    }
    check_address(args.ip)?;
    install(&units, &args.unit_dir, etcd.as_ref(), &node)
}

/// The units of the node's daemons: etcd's first on the control plane.
fn units(node: &NodeSetup, etcd: Option<&EtcdSetup>, printing: bool) -> anyhow::Result<Vec<Unit>> {
    let sandboxd = sandboxd::config::locate_beside_exe("sandboxd", None).map_err(|searched| {
        anyhow::anyhow!(
            "sandboxd is not installed beside sandboxctl (looked at {})",
            searched.join(", ")
        )
    })?;
    let mut units = Vec::new();
    let mut after = Vec::new();
    if let Some(etcd) = etcd {
        let binary = match sandboxd::config::find_in_path(Path::new("etcd")) {
            Some(binary) => binary,
            None if printing => PathBuf::from("/usr/bin/etcd"),
            None => bail!(
                "node {}: etcd is not installed (Debian: apt-get install etcd-server; scripts/install-deps.sh does)",
                node.name
            ),
        };
        units.push(Unit {
            name: ETCD_UNIT,
            text: setup::systemd_unit(
                &format!("etcd, the cluster store of sandboxd nodes ({})", node.name),
                &binary,
                &etcd.args(),
                &[],
            ),
        });
        after.push(ETCD_UNIT);
    }
    let args: Vec<OsString> = node.sandboxd_args(&DaemonPaths::machine());
    units.push(Unit {
        name: SANDBOXD_UNIT,
        text: setup::systemd_unit(
            &format!(
                "sandboxd, node {} of the cluster at {}",
                node.name, node.store
            ),
            &sandboxd,
            &args,
            &after,
        ),
    });
    Ok(units)
}

/// The node's address must be one of its own: a typo, or the NAT address of another VM,
/// would make a node nobody can reach.
fn check_address(ip: Ipv4Addr) -> anyhow::Result<()> {
    let mut socket = sandboxd::node::NodeNetns::own()
        .route_socket()
        .context("open a netlink socket")?;
    let ours = socket
        .addresses(None)
        .context("list this machine's addresses")?
        .iter()
        .any(|a| a.ip == std::net::IpAddr::V4(ip));
    if !ours {
        bail!("invalid --ip {ip}: no interface of this machine has it (give the private network's address, e.g. eth1's)");
    }
    Ok(())
}

fn install(
    units: &[Unit],
    unit_dir: &Path,
    etcd: Option<&EtcdSetup>,
    node: &NodeSetup,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(unit_dir).with_context(|| format!("create {}", unit_dir.display()))?;
    for unit in units {
        let path = unit_dir.join(unit.name);
        std::fs::write(&path, &unit.text).with_context(|| format!("write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    systemctl(&["daemon-reload"])?;
    if let Some(etcd) = etcd {
        std::fs::create_dir_all(&etcd.data_dir)
            .with_context(|| format!("create {}", etcd.data_dir.display()))?;
        systemctl(&["enable", ETCD_UNIT])?;
        systemctl(&["restart", ETCD_UNIT])?;
        wait_for(ETCD_UNIT, || {
            TcpStream::connect_timeout(
                &SocketAddr::from((etcd.ip, setup::ETCD_CLIENT_PORT)),
                Duration::from_millis(200),
            )
            .is_ok()
        })?;
        println!("etcd serves {}", etcd.store_url());
    }
    systemctl(&["enable", SANDBOXD_UNIT])?;
    systemctl(&["restart", SANDBOXD_UNIT])?;
    let paths = DaemonPaths::machine();
    let network = paths.pod_network();
    wait_for(SANDBOXD_UNIT, || paths.socket.exists() && network.exists())?;
    println!(
        "node {} joined {} at {} ({} backend); its pod network: {}",
        node.name,
        node.store,
        node.ip,
        node.backend.name(),
        network.display()
    );
    Ok(())
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("systemctl")
        .args(args)
        .output()
        .context("run systemctl (join needs systemd)")?;
    if !output.status.success() {
        bail!(
            "systemctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Waits until `ready` holds, or fails pointing at the unit's journal.
fn wait_for(unit: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !ready() {
        if Instant::now() > deadline {
            bail!("{unit} is not ready after {READY_TIMEOUT:?} (see journalctl -u {unit})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
