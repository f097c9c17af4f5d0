//! The lab: the seeds' cluster on one machine. Nodes are network namespaces (`k8s-master`,
//! `k8s-node1`, `k8s-node2`, …) cabled by `eth1` to an underlay bridge that lives in a
//! namespace of its own ([`underlay`]); `k8s-master` runs etcd ([`etcd`]); every node runs
//! its own sandboxd inside its namespace ([`spawn`]), with its own state dir, socket and
//! CNI dir, joined to the cluster through etcd on the underlay, as on real machines.
//!
//! Everything lives under one root dir (`/run/sandboxd/lab`, or `$SANDBOXD_LAB_DIR`):
//! `lab.json` (what is up), `underlay.netns`, and per node `<name>/` (`node.netns`, the
//! socket, `state/`, `pods/` where its pods' namespaces are pinned, `net.d/`, logs). The
//! default lab also names its nodes in /run/netns (symlinks), so `ip netns exec k8s-node1
//! …` enters a node. [`Lab::down`] removes all of it — also after any part crashed: it
//! restarts a dead node daemon on its state to remove its pods, kills whatever still runs
//! in the lab's namespaces, and unmounts whatever is mounted under the root.

pub mod demo;
pub mod etcd;
pub mod graph;
pub mod machine;
pub mod spawn;
pub mod underlay;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::cidr::Ipv4Cidr;
use crate::cluster::setup;
use crate::netlink::Family;
use crate::overlay::Backend;
use crate::process::ProcessHandle;
use machine::Machine;

pub const DEFAULT_ROOT: &str = "/run/sandboxd/lab";
/// Where `ip netns` looks for names.
const RUN_NETNS: &str = "/run/netns";
/// The seeds' underlay.
pub const UNDERLAY: Ipv4Cidr = Ipv4Cidr::new(Ipv4Addr::new(192, 168, 102, 0), 24);
pub const CLUSTER_CIDR: Ipv4Cidr = Ipv4Cidr::new(Ipv4Addr::new(10, 244, 0, 0), 16);
pub const CONTROL_PLANE: &str = "k8s-master";
/// How long a node may take to join and see all the others.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The seeds' name of node `index`: `k8s-master`, then `k8s-node1`, `k8s-node2`, ….
pub fn node_name(index: u32) -> String {
    if index == 0 {
        CONTROL_PLANE.to_string()
    } else {
        format!("k8s-node{index}")
    }
}

/// What `lab up` is asked for.
#[derive(Debug, Clone)]
pub struct UpSpec {
    /// Nodes including the control plane (≥ 2).
    pub nodes: u32,
    pub backend: Backend,
    /// An image store to copy into every node (the demo images), if any.
    pub images: Option<PathBuf>,
}

/// A node of the lab, as `lab.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub daemon: Option<ProcessHandle>,
}

/// What is up, as `lab.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    pub backend: Backend,
    pub nodes: Vec<LabNode>,
    pub etcd: Option<ProcessHandle>,
    /// Whether the nodes are named in /run/netns (the default lab only).
    pub named: bool,
}

/// A lab rooted at one dir.
#[derive(Debug, Clone)]
pub struct Lab {
    root: PathBuf,
}

impl Lab {
    pub fn at(root: &Path) -> Lab {
        Lab {
            root: root.to_path_buf(),
        }
    }

    /// The lab at `$SANDBOXD_LAB_DIR`, else at [`DEFAULT_ROOT`].
    pub fn default_lab() -> Lab {
        let root = std::env::var_os("SANDBOXD_LAB_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
        Lab::at(&root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn is_default(&self) -> bool {
        self.root == Path::new(DEFAULT_ROOT)
    }

    fn state_file(&self) -> PathBuf {
        self.root.join("lab.json")
    }

    fn underlay_netns(&self) -> PathBuf {
        self.root.join("underlay.netns")
    }

    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The node's network namespace (enter with `nsenter --net=PATH`).
    pub fn node_netns(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("node.netns")
    }

    /// The node's machine: its namespace, to run commands on or open sockets in.
    pub fn machine(&self, name: &str) -> Machine {
        Machine::at(self.node_netns(name))
    }

    pub fn socket(&self, name: &str) -> PathBuf {
        setup::DaemonPaths::under(&self.node_dir(name)).socket
    }

    /// The CRI endpoint of a node's sandboxd.
    pub fn endpoint(&self, name: &str) -> String {
        format!("unix://{}", self.socket(name).display())
    }

    /// The store URL every node is given: etcd on the control plane's underlay address.
    pub fn store_url(&self) -> String {
        setup::store_url(underlay::node_address(UNDERLAY, 0))
    }

    /// What is up, if anything.
    pub fn load(&self) -> anyhow::Result<Option<LabState>> {
        match std::fs::read(self.state_file()) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is unreadable", self.state_file().display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", self.state_file().display())),
        }
    }

    fn save(&self, state: &LabState) -> anyhow::Result<()> {
        let staging = self.state_file().with_extension("tmp");
        std::fs::write(&staging, serde_json::to_vec_pretty(state)?)?;
        std::fs::rename(&staging, self.state_file())?;
        Ok(())
    }

    /// Brings the lab up, reporting each step to `progress`. Anything made before a
    /// failure is removed again. A lab already up is an error saying so.
    pub fn up(&self, spec: &UpSpec, progress: &mut dyn FnMut(&str)) -> anyhow::Result<LabState> {
        if let Some(state) = self.load()? {
            bail!(
                "the lab at {} is already up ({} nodes, {}); `sandboxctl lab down` first",
                self.root.display(),
                state.nodes.len(),
                state.backend.name()
            );
        }
        if spec.nodes < 2 || spec.nodes > 200 {
            bail!(
                "invalid --nodes {}: a lab has 2 to 200 nodes (a control plane and workers)",
                spec.nodes
            );
        }
        if self.root.exists() {
            // Leftovers of a lab whose state was lost: clear them first.
            self.down(&mut |_| {})?;
        }
        let outcome = self.build(spec, progress);
        if outcome.is_err() {
            if let Err(e) = self.down(&mut |_| {}) {
                eprintln!("sandboxctl: removing the half-built lab failed too: {e:#}");
            }
        }
        outcome
    }

    fn build(&self, spec: &UpSpec, progress: &mut dyn FnMut(&str)) -> anyhow::Result<LabState> {
        let started = Instant::now();
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("create {}", self.root.display()))?;
        let mut state = LabState {
            backend: spec.backend,
            nodes: Vec::new(),
            etcd: None,
            named: self.is_default(),
        };
        self.save(&state)?;
        let underlay = underlay::create(&self.underlay_netns()).context("create the underlay")?;
        progress(&format!(
            "underlay {UNDERLAY} (bridge {} in its own namespace)",
            underlay::BRIDGE
        ));
        for index in 0..spec.nodes {
            let name = node_name(index);
            let ip = underlay::node_address(UNDERLAY, index);
            std::fs::create_dir_all(self.node_dir(&name))?;
            underlay::attach_node(
                &underlay,
                &self.node_netns(&name),
                &name,
                Ipv4Cidr::new(ip, UNDERLAY.prefix),
            )
            .with_context(|| format!("make node {name}"))?;
            if state.named {
                self.name_in_run_netns(&name)?;
            }
            if let Some(images) = &spec.images {
                copy_tree(images, &self.node_dir(&name).join("state/images"))
                    .with_context(|| format!("copy the images into node {name}"))?;
            }
            state.nodes.push(LabNode {
                name,
                ip,
                daemon: None,
            });
            self.save(&state)?;
        }
        progress(&format!(
            "nodes {} ({}–{} on eth1)",
            state
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            state.nodes[0].ip,
            state.nodes[state.nodes.len() - 1].ip
        ));
        let master = &state.nodes[0];
        state.etcd = Some(
            etcd::start(
                &self.node_netns(&master.name),
                &master.name,
                master.ip,
                &self.node_dir(&master.name).join("etcd"),
                &self.node_dir(&master.name).join("etcd.log"),
            )
            .context("start etcd on k8s-master")?,
        );
        self.save(&state)?;
        progress(&format!("etcd on {} at {}", master.name, self.store_url()));
        // One after the other, each once it holds its subnet, so subnets follow the
        // nodes' order as a cluster's follow the order its nodes registered in
        // (k8s-master 10.244.0.0/24, k8s-node1 10.244.1.0/24, …), as the seeds show.
        for index in 0..state.nodes.len() {
            let node = state.nodes[index].clone();
            let daemon = self.start_daemon(&node, spec.backend, true)?;
            state.nodes[index].daemon = Some(daemon);
            self.save(&state)?;
            self.wait_for_lease(&node, &daemon)?;
        }
        self.wait_joined(&state)?;
        progress(&format!(
            "sandboxd on every node, joined with the {} backend ({:.1}s)",
            spec.backend.name(),
            started.elapsed().as_secs_f64()
        ));
        Ok(state)
    }

    /// `ip netns exec NAME` opens /run/netns/NAME: a symlink to the node's pin.
    fn name_in_run_netns(&self, name: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(RUN_NETNS)?;
        let link = Path::new(RUN_NETNS).join(name);
        if link.symlink_metadata().is_ok() {
            bail!(
                "{} exists already: another namespace is named {name} (remove it, or use SANDBOXD_LAB_DIR for an unnamed lab)",
                link.display()
            );
        }
        std::os::unix::fs::symlink(self.node_netns(name), &link)
            .with_context(|| format!("name node {name} in {RUN_NETNS}"))
    }

    /// Starts a node's sandboxd in its namespace and waits for its socket. `join`: as a
    /// cluster member; otherwise only on its state (how `down` removes a crashed node's
    /// pods without needing etcd).
    fn start_daemon(
        &self,
        node: &LabNode,
        backend: Backend,
        join: bool,
    ) -> anyhow::Result<ProcessHandle> {
        let sandboxd = crate::config::locate_beside_exe("sandboxd", None).map_err(|searched| {
            anyhow::anyhow!("sandboxd not found (looked at {})", searched.join(", "))
        })?;
        let dir = self.node_dir(&node.name);
        let paths = setup::DaemonPaths::under(&dir);
        let _ = std::fs::remove_file(&paths.socket);
        let mut command = Command::new(sandboxd);
        if join {
            let node_setup = setup::NodeSetup {
                name: node.name.clone(),
                ip: node.ip,
                store: self.store_url(),
                backend,
                cluster_cidr: CLUSTER_CIDR,
                control_plane: node.name == CONTROL_PLANE,
            };
            command.args(node_setup.sandboxd_args(&paths));
        } else {
            command.args(setup::standalone_args(&node.name, &paths));
        }
        let log = dir.join("sandboxd.log");
        let daemon = spawn::detached(command, &self.node_netns(&node.name), &log)
            .with_context(|| format!("start sandboxd on {}", node.name))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.socket(&node.name).exists() {
            if !daemon.is_alive() {
                bail!("sandboxd on {} exited: {}", node.name, last_lines(&log, 5));
            }
            if Instant::now() > deadline {
                bail!(
                    "sandboxd on {} did not start (see {})",
                    node.name,
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(daemon)
    }

    /// Waits until the node wrote its pod network: it holds its subnet lease.
    fn wait_for_lease(&self, node: &LabNode, daemon: &ProcessHandle) -> anyhow::Result<()> {
        let network = setup::DaemonPaths::under(&self.node_dir(&node.name)).pod_network();
        let deadline = Instant::now() + READY_TIMEOUT;
        while !network.exists() {
            let log = self.node_dir(&node.name).join("sandboxd.log");
            if !daemon.is_alive() {
                bail!("sandboxd on {} exited: {}", node.name, last_lines(&log, 5));
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} did not join within {READY_TIMEOUT:?} (see {})",
                    node.name,
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Waits until every node has a pod network written (it leased its subnet and built
    /// its overlay) and routes to every other node's subnet.
    fn wait_joined(&self, state: &LabState) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut waiting = Vec::new();
            for node in &state.nodes {
                let daemon_alive = node.daemon.as_ref().is_some_and(ProcessHandle::is_alive);
                if !daemon_alive {
                    let log = self.node_dir(&node.name).join("sandboxd.log");
                    bail!("sandboxd on {} exited: {}", node.name, last_lines(&log, 5));
                }
                let routes = self
                    .machine(&node.name)
                    .netns()
                    .route_socket()?
                    .routes(Family::V4)?;
                let overlay_routes = routes
                    .iter()
                    .filter(|r| {
                        crate::overlay::ipv4_destination(r)
                            .is_some_and(|dst| CLUSTER_CIDR.covers(&dst))
                            && r.gateway.is_some()
                    })
                    .count();
                if overlay_routes + 1 < state.nodes.len() {
                    waiting.push(format!(
                        "{} ({overlay_routes} of {} routes)",
                        node.name,
                        state.nodes.len() - 1
                    ));
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the nodes did not all join within {READY_TIMEOUT:?}: waiting for {}",
                    waiting.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a node's sandboxd again (after it crashed or was killed): it rejoins with
    /// the subnet it holds and adopts the pods still running.
    pub fn restart_node(&self, name: &str) -> anyhow::Result<ProcessHandle> {
        let mut state = self.load()?.context("no lab is up")?;
        let index = state
            .nodes
            .iter()
            .position(|n| n.name == name)
            .with_context(|| format!("the lab has no node {name}"))?;
        if let Some(old) = state.nodes[index].daemon {
            stop(old);
        }
        let node = state.nodes[index].clone();
        let daemon = self.start_daemon(&node, state.backend, true)?;
        state.nodes[index].daemon = Some(daemon);
        self.save(&state)?;
        Ok(daemon)
    }

    /// Takes a worker out of the cluster: removes its pods, stops its sandboxd, deletes
    /// its record and subnet lease from the store (the other nodes then remove their
    /// routes, neighbours and FDB entries to it), and removes its namespace and cable.
    pub fn remove_node(&self, name: &str) -> anyhow::Result<()> {
        let mut state = self.load()?.context("no lab is up")?;
        if name == CONTROL_PLANE {
            bail!("{CONTROL_PLANE} runs etcd: it leaves with `lab down`");
        }
        let index = state
            .nodes
            .iter()
            .position(|n| n.name == name)
            .with_context(|| format!("the lab has no node {name}"))?;
        let node = state.nodes[index].clone();
        self.remove_pods(&node)?;
        let store_url = self.store_url();
        let node_name = name.to_string();
        self.in_control_plane(async move {
            let store = crate::cluster::store::open(Some(&store_url), Path::new("/")).await?;
            crate::cluster::node::remove(store.as_ref(), &node_name).await?;
            anyhow::Ok(())
        })
        .context("delete the node from the cluster store")?;
        kill_in_namespaces(&[self.node_netns(name)]);
        let mut underlay = Machine::at(self.underlay_netns()).netns().route_socket()?;
        if let Some(cable) = underlay.link(name)? {
            underlay.delete_link(cable.index)?;
        }
        let link = Path::new(RUN_NETNS).join(name);
        if std::fs::read_link(&link).is_ok_and(|target| target.starts_with(&self.root)) {
            let _ = std::fs::remove_file(&link);
        }
        unmount_under(&self.node_dir(name))?;
        std::fs::remove_dir_all(self.node_dir(name))?;
        state.nodes.remove(index);
        self.save(&state)
    }

    /// Stops etcd (the lab's whole cluster store), as an outage would.
    pub fn stop_etcd(&self) -> anyhow::Result<()> {
        let mut state = self.load()?.context("no lab is up")?;
        if let Some(etcd) = state.etcd.take() {
            stop(etcd);
        }
        self.save(&state)
    }

    /// Starts etcd again on its data.
    pub fn start_etcd(&self) -> anyhow::Result<()> {
        let mut state = self.load()?.context("no lab is up")?;
        if state.etcd.is_some_and(|e| e.is_alive()) {
            return Ok(());
        }
        let master = state.nodes[0].clone();
        state.etcd = Some(etcd::start(
            &self.node_netns(&master.name),
            &master.name,
            master.ip,
            &self.node_dir(&master.name).join("etcd"),
            &self.node_dir(&master.name).join("etcd.log"),
        )?);
        self.save(&state)
    }

    /// Runs `f` on a runtime of its own in the control plane's namespace, where the
    /// store is reachable.
    pub fn in_control_plane<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    ) -> anyhow::Result<T> {
        crate::netns::block_on_in(&self.node_netns(CONTROL_PLANE), f)?
    }

    /// Removes everything the lab made, reporting each step; a lab that is not up is not
    /// an error.
    pub fn down(&self, progress: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
        if !self.root.exists() {
            progress("no lab is up");
            return Ok(());
        }
        let state = self.load().unwrap_or(None);
        let nodes: Vec<LabNode> = match &state {
            Some(state) => state.nodes.clone(),
            None => self.nodes_on_disk(),
        };
        let mut problems = Vec::new();
        for node in &nodes {
            if let Err(e) = self.remove_pods(node) {
                problems.push(format!("node {}: {e:#}", node.name));
            }
        }
        progress(&format!(
            "stopped the pods and sandboxd of {} nodes",
            nodes.len()
        ));
        if let Some(etcd) = state.as_ref().and_then(|s| s.etcd) {
            let _ = etcd.signal(Signal::SIGKILL);
        }
        // Whatever still runs in the lab's namespaces (a daemon that would not stop, etcd,
        // a pod process left by a crash) goes now.
        let namespaces = self.namespace_pins();
        kill_in_namespaces(&namespaces);
        for node in &nodes {
            let link = Path::new(RUN_NETNS).join(&node.name);
            if std::fs::read_link(&link).is_ok_and(|target| target.starts_with(&self.root)) {
                let _ = std::fs::remove_file(&link);
            }
        }
        // /run/netns made for the lab's names goes too, if nothing else is named there.
        if state.as_ref().is_some_and(|s| s.named) {
            let _ = std::fs::remove_dir(RUN_NETNS);
        }
        unmount_under(&self.root)?;
        std::fs::remove_dir_all(&self.root)
            .with_context(|| format!("remove {}", self.root.display()))?;
        progress("removed the nodes, the underlay and etcd");
        if !problems.is_empty() {
            bail!("the lab is down, but: {}", problems.join("; "));
        }
        Ok(())
    }

    /// Node dirs found on disk (when lab.json was lost).
    fn nodes_on_disk(&self) -> Vec<LabNode> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut nodes: Vec<LabNode> = entries
            .flatten()
            .filter(|e| e.path().join("node.netns").exists())
            .map(|e| LabNode {
                name: e.file_name().to_string_lossy().into_owned(),
                ip: Ipv4Addr::UNSPECIFIED,
                daemon: None,
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }

    /// Stops the node's sandboxd; if it leaves pods (or had crashed), runs it again on its
    /// state alone to stop and remove them through CRI, then stops it.
    fn remove_pods(&self, node: &LabNode) -> anyhow::Result<()> {
        if let Some(daemon) = node.daemon {
            stop(daemon);
        }
        let sandboxes = self.node_dir(&node.name).join("state/sandboxes");
        let has_pods = std::fs::read_dir(&sandboxes).is_ok_and(|mut d| d.next().is_some());
        if !has_pods || !crate::netns::is_pinned(&self.node_netns(&node.name)) {
            return Ok(());
        }
        let daemon = self.start_daemon(node, Backend::default(), false)?;
        let endpoint = self.endpoint(&node.name);
        let removed = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(remove_all_pods(&endpoint));
        stop(daemon);
        removed
    }

    /// Every namespace pin under the root: the underlay, the nodes, their pods.
    fn namespace_pins(&self) -> Vec<PathBuf> {
        let mut pins = vec![self.underlay_netns()];
        for node in self.nodes_on_disk() {
            pins.push(self.node_netns(&node.name));
            if let Ok(pods) = std::fs::read_dir(self.node_dir(&node.name).join("pods")) {
                pins.extend(pods.flatten().map(|e| e.path()));
            }
        }
        pins.retain(|p| crate::netns::is_pinned(p));
        pins
    }
}

async fn remove_all_pods(endpoint: &str) -> anyhow::Result<()> {
    use k8s_cri::v1 as cri;
    let mut client = crate::client::connect(endpoint).await?;
    let pods = client
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    for pod in pods {
        client
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await?;
        client
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.id,
            })
            .await?;
    }
    Ok(())
}

/// SIGTERM, then SIGKILL after 5 s; returns when it is gone.
fn stop(process: ProcessHandle) {
    let _ = process.signal(Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while process.is_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = process.signal(Signal::SIGKILL);
    while process.is_alive() {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills every process whose network namespace is one of `pins`.
fn kill_in_namespaces(pins: &[PathBuf]) {
    let inodes: BTreeSet<u64> = pins
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.ino())
        .collect();
    if inodes.is_empty() {
        return;
    }
    for _round in 0..50 {
        let mut found = false;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let in_lab = std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| inodes.contains(&m.ino()));
            if in_lab && pid != std::process::id() {
                if let Some(process) = ProcessHandle::of(pid) {
                    if process.is_alive() {
                        found = true;
                        let _ = process.signal(Signal::SIGKILL);
                    }
                }
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Unmounts every mount point under `root`, deepest first.
fn unmount_under(root: &Path) -> anyhow::Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for point in points {
        match nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => bail!("unmount {}: {e}", point.display()),
        }
    }
    Ok(())
}

/// Copies a dir tree (an image store). Copies, not hard links: the store's lock file must
/// be each node's own, or one node's daemon would lock out the others.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn last_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
