//! `lab up|down|status`: the seeds' cluster on this machine (see `sandboxd::lab`).

use std::time::Instant;

use anyhow::Context;
use sandboxd::lab::{Lab, UpSpec};
use sandboxd::overlay::Backend;

#[derive(clap::Subcommand)]
pub enum LabCommand {
    /// Build the cluster: an underlay 192.168.102.0/24, nodes k8s-master (.10, etcd),
    /// k8s-node1 (.11), k8s-node2 (.12), … as network namespaces, each running sandboxd.
    Up(UpArgs),
    /// Remove everything the lab made (also after a crash of any part).
    Down,
    /// Nodes, their addresses, pod subnets and daemons, and etcd's health.
    Status,
    /// Take a worker out of the cluster: its pods, record, subnet and namespace go, and
    /// the other nodes drop their routes to it.
    RemoveNode { name: String },
    /// Start a node's sandboxd again (after a crash): it keeps its subnet and pods.
    RestartNode { name: String },
    /// The seeds' walk-through on the lab: their manifests applied unchanged, every
    /// observation they make shown and checked (exits non-zero naming a failed step).
    Demo {
        /// The dir holding the seeds' manifests.
        #[arg(long, default_value = "examples")]
        manifests: std::path::PathBuf,
    },
}

#[derive(clap::Args)]
pub struct UpArgs {
    /// Nodes, the control plane included.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// How pods reach other nodes' pods.
    #[arg(long, default_value = "vxlan")]
    backend: Backend,
    /// An image store to give every node (e.g. one examples/build-images.sh filled).
    #[arg(long)]
    images: Option<std::path::PathBuf>,
}

pub fn run(command: LabCommand) -> anyhow::Result<()> {
    let lab = Lab::default_lab();
    let started = Instant::now();
    let mut progress = |step: &str| {
        println!("[{:5.2}s] {step}", started.elapsed().as_secs_f64());
    };
    match command {
        LabCommand::Up(args) => {
            if let Some(state) = lab.load()? {
                println!(
                    "the lab is already up: {} nodes, {} backend (sandboxctl lab status)",
                    state.nodes.len(),
                    state.backend.name()
                );
                return Ok(());
            }
            lab.up(
                &UpSpec {
                    nodes: args.nodes,
                    backend: args.backend,
                    images: args.images,
                },
                &mut progress,
            )?;
            println!("the lab is up; sandboxctl talks to k8s-master unless given --node NAME");
            Ok(())
        }
        LabCommand::Down => lab.down(&mut progress),
        LabCommand::Status => status(&lab),
        LabCommand::RemoveNode { name } => {
            lab.remove_node(&name)?;
            println!("node {name} removed");
            Ok(())
        }
        LabCommand::RestartNode { name } => {
            let daemon = lab.restart_node(&name)?;
            println!("sandboxd on {name} started again (pid {})", daemon.pid);
            Ok(())
        }
        LabCommand::Demo { manifests } => {
            sandboxd::lab::demo::run(&lab, &manifests, &mut std::io::stdout().lock())
        }
    }
}

fn status(lab: &Lab) -> anyhow::Result<()> {
    let Some(state) = lab.load()? else {
        println!("no lab is up (sandboxctl lab up)");
        return Ok(());
    };
    println!(
        "backend {}, store {}",
        state.backend.name(),
        lab.store_url()
    );
    let mut rows = Vec::new();
    for node in &state.nodes {
        let alive = node.daemon.is_some_and(|d| d.is_alive());
        rows.push(vec![
            node.name.clone(),
            node.ip.to_string(),
            pod_subnet(lab, &node.name).unwrap_or_else(|| "-".into()),
            match (node.daemon, alive) {
                (Some(d), true) => format!("running (pid {})", d.pid),
                (Some(_), false) => "exited".into(),
                (None, _) => "not started".into(),
            },
            lab.socket(&node.name).display().to_string(),
        ]);
    }
    crate::output::table(&["NAME", "IP", "POD SUBNET", "SANDBOXD", "SOCKET"], &rows);
    let etcd_alive = state.etcd.is_some_and(|e| e.is_alive());
    let etcd_ip = state.nodes[0].ip;
    let answering = etcd_alive
        && lab
            .machine(sandboxd::lab::CONTROL_PLANE)
            .netns()
            .run(move || {
                let address =
                    std::net::SocketAddr::from((etcd_ip, sandboxd::lab::etcd::CLIENT_PORT));
                Ok(std::net::TcpStream::connect_timeout(
                    &address,
                    std::time::Duration::from_millis(500),
                )
                .is_ok())
            })
            .context("reach etcd")?;
    println!(
        "etcd: {}",
        match (etcd_alive, answering) {
            (true, true) => "healthy (accepting connections)",
            (true, false) => "running, not answering",
            _ => "down",
        }
    );
    Ok(())
}

/// The subnet a node's pod network was written with (its lease).
fn pod_subnet(lab: &Lab, node: &str) -> Option<String> {
    let file = lab
        .node_dir(node)
        .join("net.d")
        .join(sandboxd::network::DEFAULT_CONFLIST_FILE);
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    doc["plugins"][0]["ipam"]["ranges"][0][0]["subnet"]
        .as_str()
        .map(str::to_string)
}
