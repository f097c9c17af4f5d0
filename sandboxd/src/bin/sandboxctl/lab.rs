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
    /// Draw the live cluster (nodes, eth1, flannel.1, cni0, each pod's veth pair, the
    /// tunnels, Services and their endpoints), laid out by Graphviz.
    Graph {
        /// Where to write it (default: standard output).
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
        /// svg (laid out by Graphviz's dot), png, or dot (the graph itself).
        #[arg(long, default_value = "svg", value_parser = ["svg", "png", "dot"])]
        format: String,
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
        LabCommand::Graph { output, format } => {
            let topology = tokio::runtime::Handle::current().block_on(topology(&lab))?;
            let dot = topology.dot();
            let bytes = match format.as_str() {
                "dot" => dot.into_bytes(),
                format => sandboxd::lab::graph::render(&dot, format)?,
            };
            match output {
                Some(path) => std::fs::write(&path, bytes)
                    .with_context(|| format!("write {}", path.display())),
                None => {
                    use std::io::Write;
                    std::io::stdout()
                        .write_all(&bytes)
                        .context("write the graph")
                }
            }
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

/// What the picture shows, read from the lab's kernels and its store.
async fn topology(lab: &Lab) -> anyhow::Result<sandboxd::lab::graph::Topology> {
    use sandboxd::lab::graph::{read_node, PodPin, ServiceView, Topology};
    let state = lab
        .load()?
        .context("no lab is up: run `sandboxctl lab up` first")?;
    let mut nodes = Vec::new();
    for node in &state.nodes {
        let pods: Vec<PodPin> = crate::lookup::networked_pods(&lab.endpoint(&node.name))
            .await?
            .into_iter()
            .map(|pod| PodPin {
                name: pod.name,
                netns: pod.netns,
            })
            .collect();
        let machine = lab.machine(&node.name);
        let name = node.name.clone();
        nodes.push(tokio::task::spawn_blocking(move || read_node(&name, &machine, &pods)).await??);
    }
    let channel = sandboxd::client::channel(&lab.endpoint(sandboxd::lab::CONTROL_PLANE)).await?;
    let services = crate::ServicesClient::new(channel)
        .list_services(sandboxd::services_api::v1::ListServicesRequest {
            namespace: String::new(),
        })
        .await?
        .into_inner()
        .services
        .into_iter()
        .filter_map(|service| {
            let spec = service.spec?;
            Some(ServiceView {
                name: spec.name,
                cluster_ip: spec.cluster_ip,
                ports: spec
                    .ports
                    .iter()
                    .map(|p| {
                        let protocol = if p.protocol.is_empty() {
                            "TCP"
                        } else {
                            &p.protocol
                        };
                        match p.node_port {
                            0 => format!("{}/{protocol}", p.port),
                            node_port => format!("{}:{node_port}/{protocol}", p.port),
                        }
                    })
                    .collect(),
                endpoints: service.endpoints.into_iter().map(|e| e.pod_name).collect(),
            })
        })
        .collect();
    Ok(Topology {
        backend: state.backend,
        underlay: sandboxd::lab::UNDERLAY,
        nodes,
        services,
    })
}
