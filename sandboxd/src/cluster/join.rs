//! Joining the cluster, as flanneld does on each node: lease a pod subnet, build the
//! overlay device, write the node's pod network, publish the node (with its VTEP MAC),
//! then follow the other nodes, adding and removing each one's overlay entries as they
//! come and go, and beat the heart.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use super::node::{self, NodeRecord};
use super::store::ClusterStore;
use crate::cidr::Ipv4Cidr;
use crate::config::Config;
use crate::node::{Node, NodeAddresses, NodeNetns};
use crate::overlay::{Backend, Overlay};

/// What a node is told when it starts.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    pub name: String,
    pub ip: Ipv4Addr,
    pub backend: Backend,
    pub cluster_cidr: Ipv4Cidr,
    /// Whether pods not placed by name may run here (the control plane: no).
    pub schedulable: bool,
}

/// A joined node (its [`Node::addresses`] set): the store, and the tasks that keep the node in step with it (stopped
/// when this is dropped; the kernel objects stay, as a daemon restart must not cut pods
/// off).
pub struct Membership {
    pub node: Node,
    pub store: Arc<dyn ClusterStore>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Joins `store` as `spec` says, for the daemon configured by `config`. A join that fails
/// part-way gives back what it took.
pub async fn join(
    config: &Config,
    store: Arc<dyn ClusterStore>,
    spec: JoinSpec,
) -> anyhow::Result<Membership> {
    let name = spec.name.clone();
    node::check_name(store.as_ref(), &name, spec.ip).await?;
    let held = node::held_subnet(store.as_ref(), &name).await?;
    let subnet = node::lease_subnet(store.as_ref(), spec.cluster_cidr, &name)
        .await
        .with_context(|| format!("lease a pod subnet for node {name}"))?;
    let netns = config.node.netns.clone();
    let network_file = config
        .cni_conf_dir
        .join(crate::network::DEFAULT_CONFLIST_FILE);
    let undo = Undo {
        store: store.clone(),
        name: name.clone(),
        lease_taken: held != Some(subnet),
        netns: netns.clone(),
        vtep_made: !vtep_exists(netns.clone()).await?,
        cluster_cidr: spec.cluster_cidr,
        network_file: (!network_file.exists()).then(|| network_file.clone()),
    };
    match build(config, &store, &spec, subnet, netns).await {
        Ok(membership) => Ok(membership),
        Err(e) => {
            undo.run().await;
            Err(e)
        }
    }
}

/// What a failed join gives back: the lease it took, the `flannel.1` it made, the network
/// file it wrote. A node that held them before keeps them.
struct Undo {
    store: Arc<dyn ClusterStore>,
    name: String,
    lease_taken: bool,
    netns: NodeNetns,
    vtep_made: bool,
    cluster_cidr: Ipv4Cidr,
    network_file: Option<PathBuf>,
}

impl Undo {
    async fn run(self) {
        if let Some(file) = &self.network_file {
            let _ = std::fs::remove_file(file);
        }
        if self.vtep_made {
            let (netns, cidr) = (self.netns.clone(), self.cluster_cidr);
            let removed =
                tokio::task::spawn_blocking(move || crate::overlay::teardown(&netns, cidr)).await;
            if let Ok(Err(e)) = removed {
                eprintln!("sandboxd: node {}: undo the overlay: {e:#}", self.name);
            }
        }
        if self.lease_taken {
            if let Err(e) = node::release_subnet(self.store.as_ref(), &self.name).await {
                eprintln!("sandboxd: node {}: give the subnet back: {e:#}", self.name);
            }
        }
    }
}

async fn vtep_exists(netns: NodeNetns) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let mut socket = netns.route_socket()?;
        Ok(socket.link(crate::overlay::vxlan::DEVICE)?.is_some())
    })
    .await?
}

/// The steps after the lease: the overlay, the pod network, the record, the followers.
async fn build(
    config: &Config,
    store: &Arc<dyn ClusterStore>,
    spec: &JoinSpec,
    subnet: Ipv4Cidr,
    netns: NodeNetns,
) -> anyhow::Result<Membership> {
    let name = spec.name.clone();
    let overlay = {
        let netns = netns.clone();
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || {
            Overlay::open(&netns, spec.backend, spec.ip, subnet, spec.cluster_cidr)
        })
        .await??
    };
    crate::network::install_for_subnet(config, subnet, overlay.pod_mtu()).with_context(|| {
        format!(
            "write node {name}'s pod network in {}",
            config.cni_conf_dir.display()
        )
    })?;
    let record = NodeRecord {
        name: name.clone(),
        ip: spec.ip,
        subnet,
        vtep_mac: overlay
            .vtep_mac()
            .map(|m| crate::netlink::link::format_mac(&m)),
        backend: spec.backend,
        schedulable: spec.schedulable,
        heartbeat_ms: node::now_ms(),
    };
    node::register(store.as_ref(), &record).await?;
    let node = Node {
        name: name.clone(),
        netns,
        addresses: Some(NodeAddresses {
            ip: spec.ip,
            subnet,
            underlay: overlay.underlay_name().to_string(),
        }),
    };
    let follower = follow_peers(store.clone(), name, overlay);
    let heartbeat = node::heartbeat(store.clone(), record);
    Ok(Membership {
        node,
        store: store.clone(),
        tasks: vec![follower, heartbeat],
    })
}

/// Keeps the overlay equal to the other nodes' records.
fn follow_peers(
    store: Arc<dyn ClusterStore>,
    own_name: String,
    mut overlay: Overlay,
) -> tokio::task::JoinHandle<()> {
    let mut last_error: Option<String> = None;
    super::follow(store, node::NODES, move |copy| {
        let peers: Vec<_> = node::records(copy.values())
            .into_iter()
            .filter(|r| r.name != own_name)
            .map(|r| r.peer())
            .collect();
        match overlay.sync(&peers) {
            Ok(()) => {
                if last_error.take().is_some() {
                    eprintln!("sandboxd: node {own_name}: the overlay is in step again");
                }
            }
            Err(e) => {
                let text = format!("{e:#}");
                if last_error.as_deref() != Some(text.as_str()) {
                    eprintln!("sandboxd: node {own_name}: program the overlay: {text}");
                    last_error = Some(text);
                }
            }
        }
    })
}
