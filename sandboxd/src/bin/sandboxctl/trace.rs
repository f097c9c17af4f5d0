//! `sandboxctl trace SOURCE-POD DEST:PORT`: the seeds' tcpdump walk, automated (see
//! `sandboxd::trace`). This half finds the path: the nodes (the lab's, or this node
//! alone), their pods with each pod's namespace and host-side veth, and the destination
//! (a pod, a Service name, a ClusterIP, or a node's address and a NodePort).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use k8s_cri::v1 as cri;
use sandboxd::trace::{Hop, Outcome, Plan, TracedNode};

#[derive(clap::Args)]
pub struct Args {
    /// SOURCE-POD DEST:PORT, or DEST:PORT alone with --from-node. The source is a pod's
    /// name; DEST is a pod's name, a Service's, a ClusterIP, or a node's address (with a
    /// NodePort).
    #[arg(value_name = "[SOURCE-POD] DEST:PORT", num_args = 1..=2, required = true)]
    ends: Vec<String>,
    /// Send from this node's own network (k8s-master, say) instead of from a pod.
    #[arg(long)]
    from_node: Option<String>,
    /// Also write every captured frame of the request to this pcap file (`tcpdump -r`).
    #[arg(short = 'w', long = "write")]
    write: Option<PathBuf>,
    /// Seconds the request may take, connect included.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
    /// The namespace of the pods and Services named.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
}

/// A node as the trace sees it: where to reach its sandboxd and its namespaces.
struct NodeView {
    name: String,
    endpoint: String,
    netns: Option<PathBuf>,
    ip: Option<Ipv4Addr>,
    /// The device other nodes are reached by; a node alone has none.
    underlay: Option<String>,
    pods: Vec<PodView>,
}

struct PodView {
    name: String,
    namespace: String,
    ip: Ipv4Addr,
    netns: PathBuf,
    /// Its host-side veth in the node.
    veth: Option<String>,
}

pub async fn run(endpoint: Option<String>, args: Args) -> anyhow::Result<()> {
    if !(args.timeout > 0.0 && args.timeout <= 300.0) {
        bail!(
            "invalid --timeout {}: give seconds between 0 and 300",
            args.timeout
        );
    }
    let (source, destination) = match (args.ends.as_slice(), &args.from_node) {
        ([destination], Some(_)) => (None, destination.clone()),
        ([source, destination], None) => (Some(source.clone()), destination.clone()),
        ([_], None) => bail!("give the source pod and the destination (SOURCE-POD DEST:PORT), or --from-node NODE DEST:PORT"),
        (_, _) => bail!("with --from-node, give only the destination (DEST:PORT)"),
    };
    let mut nodes = nodes(endpoint).await?;
    for node in &mut nodes {
        node.pods = pods(node)
            .await
            .with_context(|| format!("list the pods of {}", node.name))?;
    }
    let (client, client_netns, client_node) = match (&source, &args.from_node) {
        (_, Some(name)) => {
            let node = nodes.iter().find(|n| &n.name == name).with_context(|| {
                format!(
                    "invalid --from-node {name:?}: no such node (there are {})",
                    names(&nodes)
                )
            })?;
            (name.clone(), node.netns.clone(), name.clone())
        }
        (Some(pod), None) => {
            let (node, view) = find_pod(&nodes, pod, &args.namespace).with_context(|| {
                format!(
                    "invalid source pod {pod:?}: no ready pod of that name in namespace {} on {}",
                    args.namespace,
                    names(&nodes)
                )
            })?;
            (
                format!("{pod} ({})", view.ip),
                Some(view.netns.clone()),
                node.name.clone(),
            )
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let target = resolve(&nodes, &destination, &args.namespace).await?;

    let mut hops = Vec::new();
    if let Some(pod) = source.as_deref() {
        let (node, view) = find_pod(&nodes, pod, &args.namespace).expect("found above");
        hops.push(Hop {
            node: node.name.clone(),
            label: format!("{} eth0", view.name),
            netns: Some(view.netns.clone()),
            interface: "eth0".into(),
        });
    }
    for node in &nodes {
        for pod in &node.pods {
            if let Some(veth) = &pod.veth {
                hops.push(Hop {
                    node: node.name.clone(),
                    label: format!("{veth} ({})", pod.name),
                    netns: node.netns.clone(),
                    interface: veth.clone(),
                });
            }
        }
        if let Some(underlay) = &node.underlay {
            hops.push(Hop {
                node: node.name.clone(),
                label: underlay.clone(),
                netns: node.netns.clone(),
                interface: underlay.clone(),
            });
        }
    }
    let plan = Plan {
        client: format!("{client} on {client_node}"),
        client_netns,
        target,
        hops,
        nodes: nodes
            .iter()
            .map(|n| TracedNode {
                name: n.name.clone(),
                netns: n.netns.clone(),
                ip: n.ip,
            })
            .collect(),
        timeout: Duration::from_secs_f64(args.timeout),
    };
    let report = tokio::task::spawn_blocking(move || sandboxd::trace::trace(&plan)).await??;
    print!("{}", report.render());
    if let Some(path) = &args.write {
        report.write_pcap(path)?;
        println!(
            "wrote {} frames to {} (tcpdump -n -r {} -T vxlan)",
            report.seen.len(),
            path.display(),
            path.display()
        );
    }
    match &report.outcome {
        Outcome::Answered(_) => Ok(()),
        Outcome::Failed(e) => bail!("{target} refused or unreachable: {e}"),
        Outcome::TimedOut => bail!(
            "{target} did not answer within {}s{}",
            args.timeout,
            match report.last_seen() {
                Some(seen) => {
                    let hop = &report.plan.hops[seen.hop];
                    format!("; the request was last seen on {} {}", hop.node, hop.label)
                }
                None => "; the request was seen nowhere".into(),
            }
        ),
    }
}

fn names(nodes: &[NodeView]) -> String {
    nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn find_pod<'a>(
    nodes: &'a [NodeView],
    name: &str,
    namespace: &str,
) -> Option<(&'a NodeView, &'a PodView)> {
    nodes.iter().find_map(|node| {
        node.pods
            .iter()
            .find(|p| p.name == name && p.namespace == namespace)
            .map(|p| (node, p))
    })
}

/// The lab's nodes when a lab is up and no endpoint was given, else the node at the
/// endpoint alone (a real machine: only its own interfaces can be captured).
async fn nodes(endpoint: Option<String>) -> anyhow::Result<Vec<NodeView>> {
    let lab = sandboxd::lab::Lab::default_lab();
    if let (None, Some(state)) = (&endpoint, lab.load()?) {
        return Ok(state
            .nodes
            .iter()
            .map(|n| NodeView {
                name: n.name.clone(),
                endpoint: lab.endpoint(&n.name),
                netns: Some(lab.node_netns(&n.name)),
                ip: Some(n.ip),
                underlay: Some(sandboxd::lab::underlay::NODE_DEVICE.into()),
                pods: Vec::new(),
            })
            .collect());
    }
    let endpoint = endpoint.unwrap_or_else(|| "unix:///run/sandboxd/sandboxd.sock".into());
    let mut client = cri::runtime_service_client::RuntimeServiceClient::new(
        sandboxd::client::channel(&endpoint).await?,
    );
    let status = client
        .status(cri::StatusRequest { verbose: true })
        .await?
        .into_inner();
    let config: serde_json::Value = status
        .info
        .get("config")
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or_default();
    let node = &config["node"];
    let netns = node["netns"].as_str().map(PathBuf::from);
    let addresses = &node["addresses"];
    Ok(vec![NodeView {
        name: node["name"].as_str().unwrap_or("this node").to_string(),
        endpoint,
        netns,
        ip: addresses["ip"].as_str().and_then(|ip| ip.parse().ok()),
        underlay: addresses["underlay"].as_str().map(str::to_string),
        pods: Vec::new(),
    }])
}

/// A node's networked pods, with each one's host-side veth.
async fn pods(node: &NodeView) -> anyhow::Result<Vec<PodView>> {
    Ok(crate::lookup::networked_pods(&node.endpoint)
        .await?
        .into_iter()
        .map(|pod| PodView {
            veth: host_veth(&pod.cni_result),
            name: pod.name,
            namespace: pod.namespace,
            ip: pod.ip,
            netns: pod.netns,
        })
        .collect())
}

/// The node's end of a pod's eth0, from the pod's CNI result: the last interface it
/// lists outside the pod (the bridge plugin lists the bridge, the host veth, then eth0;
/// ptp the host veth, then eth0).
fn host_veth(cni_result: &serde_json::Value) -> Option<String> {
    cni_result["interfaces"]
        .as_array()?
        .iter()
        .filter(|i| i["sandbox"].as_str().is_none_or(str::is_empty))
        .filter_map(|i| i["name"].as_str())
        .next_back()
        .map(str::to_string)
}

/// The destination address: HOST:PORT with HOST an address, a pod's name or a Service's.
async fn resolve(nodes: &[NodeView], text: &str, namespace: &str) -> anyhow::Result<SocketAddrV4> {
    let Some((host, port)) = text.rsplit_once(':') else {
        bail!("invalid destination {text:?}: give HOST:PORT (a pod, a Service, an address)");
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("invalid destination {text:?}: {port:?} is not a port"))?;
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(SocketAddrV4::new(ip, port));
    }
    if let Some((_, pod)) = find_pod(nodes, host, namespace) {
        return Ok(SocketAddrV4::new(pod.ip, port));
    }
    let node = nodes.first().context("no node to ask")?;
    let mut services = crate::ServicesClient::new(sandboxd::client::channel(&node.endpoint).await?);
    let service = services
        .get_service(sandboxd::services_api::v1::GetServiceRequest {
            namespace: namespace.to_string(),
            name: host.to_string(),
        })
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "invalid destination {text:?}: no pod or Service {host:?} in namespace {namespace} ({})",
                status.message()
            )
        })?
        .into_inner();
    let cluster_ip = service
        .service
        .and_then(|s| s.spec)
        .map(|s| s.cluster_ip)
        .unwrap_or_default();
    let ip = cluster_ip
        .parse()
        .with_context(|| format!("Service {host} has no ClusterIP ({cluster_ip:?})"))?;
    Ok(SocketAddrV4::new(ip, port))
}
