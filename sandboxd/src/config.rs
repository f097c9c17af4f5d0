//! The daemon's configuration: where things live and how the node is wired.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Paths and settings of one sandboxd. Defaults are the design's (`/run/sandboxd`,
/// `/var/lib/sandboxd`); tests and the lab point each daemon at dirs of its own.
#[derive(Debug, Clone)]
pub struct Config {
    /// The CRI socket.
    pub socket: PathBuf,
    /// Persistent state: records, CNI results and leases.
    pub state_dir: PathBuf,
    /// Where pod netns are pinned.
    pub netns_dir: PathBuf,
    /// CNI network configs; the first valid one is the pod network.
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Whose bridge, host-local and loopback the pod network uses.
    pub cni_plugins: CniPlugins,
    /// The node: its name (as `get pods -o wide` shows it; by default the machine's
    /// hostname) and the network namespace its pods, bridge, overlay and service rules live
    /// in (by default sandboxd's own).
    pub node: crate::node::Node,
    /// The pause binary; by default the one beside the sandboxd executable.
    pub pause_binary: Option<PathBuf>,
    /// Deadline of each CNI plugin call.
    pub cni_timeout: Duration,
    /// How long a stopped pause gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// The OCI runtime that runs containers' bundles (runc's command line: `runc`, `crun`,
    /// a path); by default the embedded one, `sandboxd-runtime`, beside the executable.
    pub oci_runtime: Option<PathBuf>,
    /// The OCI runtime's state dir (`runc --root`); a tmpfs, gone at reboot like the
    /// containers it describes.
    pub oci_runtime_root: PathBuf,
    /// The per-container monitor; by default the one beside the sandboxd executable.
    pub monitor_binary: Option<PathBuf>,
    /// The service proxy's data plane; None: no service proxy (another one programs
    /// Services on this node).
    pub proxy_mode: Option<crate::service::proxy::ProxyMode>,
    /// Where pod addresses come from (traffic from elsewhere to a service is masqueraded).
    pub cluster_cidr: (std::net::Ipv4Addr, u8),
    /// The streaming server's address in the node's network namespace (port 0: any).
    pub streaming_address: std::net::SocketAddr,
}

/// Whose plugins the pod network's bridge, ptp, host-local, portmap and loopback are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniPlugins {
    /// The plugin dirs' (Debian's containernetworking-plugins), each call a process.
    Upstream,
    /// sandboxd-cni's: links to it, in `<state dir>/cni-bin`, come first in the plugin
    /// dirs, and sandboxd runs them in-process; other plugins come from the plugin dirs.
    Own,
}

/// The embedded OCI runtime (youki's libcontainer), which containers run with unless
/// configured otherwise.
pub const EMBEDDED_RUNTIME_NAME: &str = "sandboxd-runtime";

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: PathBuf::from("/run/sandboxd/sandboxd.sock"),
            state_dir: PathBuf::from("/var/lib/sandboxd"),
            netns_dir: PathBuf::from(crate::netns::DEFAULT_NETNS_DIR),
            cni_conf_dir: PathBuf::from(crate::network::DEFAULT_CONF_DIR),
            cni_bin_dirs: cni_host::DEFAULT_BIN_DIRS
                .iter()
                .map(PathBuf::from)
                .collect(),
            cni_plugins: CniPlugins::Own,
            node: crate::node::Node::new(machine_hostname(), crate::node::NodeNetns::own()),
            pause_binary: None,
            cni_timeout: cni_host::DEFAULT_PLUGIN_TIMEOUT,
            stop_grace: Duration::from_secs(2),
            oci_runtime: None,
            oci_runtime_root: PathBuf::from("/run/sandboxd/runtime"),
            monitor_binary: None,
            proxy_mode: Some(crate::service::proxy::ProxyMode::Nftables),
            cluster_cidr: (std::net::Ipv4Addr::new(10, 244, 0, 0), 16),
            streaming_address: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

impl Config {
    pub fn services_dir(&self) -> PathBuf {
        self.state_dir.join("services")
    }

    /// Where the links to sandboxd-cni go, with `CniPlugins::Own`.
    pub fn own_cni_bin_dir(&self) -> PathBuf {
        self.state_dir.join("cni-bin")
    }

    pub fn sandboxes_dir(&self) -> PathBuf {
        self.state_dir.join("sandboxes")
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.state_dir.join("containers")
    }

    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }

    pub fn cni_cache_dir(&self) -> PathBuf {
        self.state_dir.join("cni")
    }
}

/// Finds a workspace binary: the configured path if given, else beside the running
/// executable (`target/release/pause` next to `target/release/sandboxd`), or one level up
/// for test and example binaries (in `deps/` or `examples/`). Returns the paths searched
/// when none is there.
pub fn locate_beside_exe(name: &str, configured: Option<&Path>) -> Result<PathBuf, Vec<String>> {
    let mut candidates = Vec::new();
    match configured {
        Some(path) => candidates.push(path.to_path_buf()),
        None => {
            if let Some(dir) = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_path_buf))
            {
                candidates.push(dir.join(name));
                if let Some(parent) = dir.parent() {
                    candidates.push(parent.join(name));
                }
            }
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| candidates.iter().map(|p| p.display().to_string()).collect())
}

/// The hostname of the machine (of the daemon's uts namespace).
pub fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Resolves a command name through `$PATH`, as exec would; a path is taken as it is.
pub fn find_in_path(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
