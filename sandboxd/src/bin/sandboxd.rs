//! sandboxd: the node daemon. Parses flags, recovers state, serves CRI on the socket until
//! SIGINT or SIGTERM. Pods keep running when it stops; the next start adopts them.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sandboxd::cidr::Ipv4Cidr;
use sandboxd::cluster::join::{self, JoinSpec};
use sandboxd::config::Config;
use sandboxd::node::{Node, NodeNetns};
use sandboxd::runtime::Runtime;
use sandboxd::service::proxy::ProxyMode;

#[derive(Parser)]
#[command(
    name = "sandboxd",
    version,
    about = "Pod sandboxes behind a CRI v1 API"
)]
struct Args {
    /// The CRI socket.
    #[arg(long, default_value = "/run/sandboxd/sandboxd.sock")]
    socket: PathBuf,
    /// Persistent state (records, CNI results, leases).
    #[arg(long, default_value = "/var/lib/sandboxd")]
    state_dir: PathBuf,
    /// Where pod network namespaces are pinned, as <dir>/<pod id>. /run/netns makes every
    /// pod a name for `ip netns exec` (sandboxd touches only the names it gave).
    #[arg(long, default_value = sandboxd::netns::DEFAULT_NETNS_DIR)]
    netns_dir: PathBuf,
    /// CNI network configs; the first valid one is the pod network.
    #[arg(long, default_value = sandboxd::network::DEFAULT_CONF_DIR)]
    cni_conf_dir: PathBuf,
    /// CNI plugin dirs, colon-separated.
    #[arg(long, default_value = "/opt/cni/bin:/usr/lib/cni")]
    cni_bin_dir: String,
    /// Whose bridge, ptp, host-local, portmap and loopback the pod network uses: own
    /// (sandboxd-cni's, run inside sandboxd; links to it in <state dir>/cni-bin come first)
    /// or upstream (the plugin dirs', a process per call). Other plugins come from the
    /// plugin dirs either way.
    #[arg(long, default_value = "own")]
    cni_plugins: CniPluginsArg,
    /// Run CNI plugins in this network namespace (a lab node) instead of sandboxd's own.
    #[arg(long)]
    node_netns: Option<PathBuf>,
    /// The pause binary (default: beside sandboxd).
    #[arg(long)]
    pause: Option<PathBuf>,
    /// The OCI runtime containers run with: any with runc's command line (runc, crun, a
    /// path). Default: the embedded one, sandboxd-runtime (youki's libcontainer), beside
    /// sandboxd.
    #[arg(long)]
    runtime: Option<PathBuf>,
    /// The OCI runtime's state dir (its --root).
    #[arg(long, default_value = "/run/sandboxd/runtime")]
    runtime_root: PathBuf,
    /// The per-container monitor (default: beside sandboxd).
    #[arg(long)]
    monitor: Option<PathBuf>,
    /// The node's name (default: the machine's hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Deadline of each CNI plugin call, in seconds.
    #[arg(long, default_value_t = 30.0)]
    cni_timeout: f64,
    /// If the CNI conf dir holds no valid network, write the default one for this node
    /// index (10.244.<N>.0/24 on cni0). 0 disables.
    #[arg(long, default_value_t = 1)]
    default_network: u8,
    /// How Services are programmed: nftables (the table `ip sandboxd`, kube-proxy's
    /// nftables design), iptables (kube-proxy's iptables chains, for comparison), or none
    /// (another proxy serves this node).
    #[arg(long, default_value = "nftables")]
    proxy_mode: ProxyModeArg,
    /// The cluster's pod CIDR: traffic from outside it to a service is masqueraded.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: Ipv4Cidr,
    /// Join a cluster as this node, at this address on the underlay (the address other
    /// nodes reach it at: on the seeds' VMs, eth1's, never the NAT interface's). Leases a
    /// pod subnet from --cluster-cidr, builds the overlay, writes the pod network.
    #[arg(long)]
    node_ip: Option<Ipv4Addr>,
    /// The cluster store: etcd://HOST:PORT[,HOST:PORT…]. Default: a local store in the
    /// state dir (a cluster of this node alone).
    #[arg(long, requires = "node_ip")]
    store: Option<String>,
    /// How pods reach other nodes' pods: vxlan (flannel.1) or host-gw (routes via the
    /// nodes' addresses; they must share a link).
    #[arg(long, default_value = "vxlan", requires = "node_ip")]
    backend: sandboxd::overlay::Backend,
    /// This node is the control plane: pods run here only when placed on it by name.
    #[arg(long, requires = "node_ip")]
    control_plane: bool,
    /// Where the CRI streaming server (Exec, Attach, PortForward URLs) listens, in the
    /// node's network namespace; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    streaming_address: std::net::SocketAddr,
    /// Remove everything the service proxy programmed (the table `ip sandboxd`, the SBX-*
    /// iptables chains) in the node's namespace, and exit.
    #[arg(long)]
    cleanup: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CniPluginsArg {
    Upstream,
    Own,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProxyModeArg {
    Nftables,
    Iptables,
    None,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let netns = match &args.node_netns {
        Some(path) => NodeNetns::pinned(path),
        None => NodeNetns::own(),
    };
    if args.cleanup {
        sandboxd::service::proxy::cleanup(&netns)?;
        eprintln!("sandboxd: removed the service proxy's rules");
        return Ok(());
    }
    let mut config = Config {
        socket: args.socket,
        state_dir: args.state_dir,
        netns_dir: args.netns_dir,
        cni_conf_dir: args.cni_conf_dir,
        cni_bin_dirs: std::env::split_paths(&args.cni_bin_dir).collect(),
        cni_plugins: match args.cni_plugins {
            CniPluginsArg::Upstream => sandboxd::config::CniPlugins::Upstream,
            CniPluginsArg::Own => sandboxd::config::CniPlugins::Own,
        },
        node: Node::new(
            args.node_name
                .unwrap_or_else(sandboxd::config::machine_hostname),
            netns,
        ),
        pause_binary: args.pause,
        cni_timeout: Duration::from_secs_f64(args.cni_timeout),
        oci_runtime: args.runtime,
        oci_runtime_root: args.runtime_root,
        monitor_binary: args.monitor,
        proxy_mode: match args.proxy_mode {
            ProxyModeArg::Nftables => Some(ProxyMode::Nftables),
            ProxyModeArg::Iptables => Some(ProxyMode::Iptables),
            ProxyModeArg::None => None,
        },
        cluster_cidr: (args.cluster_cidr.addr, args.cluster_cidr.prefix),
        streaming_address: args.streaming_address,
        ..Config::default()
    };
    let joining = args.node_ip.map(|ip| JoinSpec {
        name: config.node.name.clone(),
        ip,
        backend: args.backend,
        cluster_cidr: args.cluster_cidr,
        schedulable: !args.control_plane,
    });
    if joining.is_none()
        && args.default_network > 0
        && cni_host::load_default_network(&config.cni_conf_dir).is_err()
    {
        let written = sandboxd::network::install_default(&config, args.default_network)?;
        eprintln!(
            "sandboxd: no valid network config; wrote {}",
            written.display()
        );
    }
    // Bind first: a second daemon must fail before touching any state.
    let socket = sandboxd::server::bind(&config.socket)?;
    // A cluster node's pod network comes from its subnet lease: join before the runtime
    // reads it. The membership lives as long as the daemon.
    let _membership = match joining {
        Some(spec) => {
            let store =
                sandboxd::cluster::store::open(args.store.as_deref(), &config.state_dir).await?;
            let membership = join::join(&config, store, spec).await?;
            if let Some(at) = &membership.node.addresses {
                eprintln!(
                    "sandboxd: node {} joined {} at {} ({}), pod subnet {}, {} backend",
                    membership.node.name,
                    membership.store.describe(),
                    at.ip,
                    at.underlay,
                    at.subnet,
                    args.backend.name()
                );
            }
            config.node = membership.node.clone();
            Some(membership)
        }
        None => None,
    };
    let runtime = Runtime::start_with(
        config.clone(),
        _membership.as_ref().map(|m| m.store.clone()),
    )
    .await
    .context("start the runtime")?;
    eprintln!(
        "sandboxd: serving CRI v1, sandboxd.services.v1{} on {}",
        if _membership.is_some() {
            " and sandboxd.cluster.v1"
        } else {
            ""
        },
        config.socket.display()
    );
    // A cluster node runs the pods placed on it, through its own CRI socket.
    let (cluster_api, _placed) = match &_membership {
        Some(membership) => (
            Some(sandboxd::cluster_api::ClusterApi::new(
                membership.store.clone(),
                membership.node.name.clone(),
            )),
            sandboxd::cluster::placed::start(
                membership.store.clone(),
                membership.node.name.clone(),
                format!("unix://{}", config.socket.display()),
            ),
        ),
        None => (None, Vec::new()),
    };
    sandboxd::server::serve(runtime, cluster_api, socket, shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("sandboxd: shutting down; pods keep running");
}
