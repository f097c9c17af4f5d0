//! The daemon's configuration: where things live and how the node is wired.

use std::path::PathBuf;
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
    /// Run CNI plugins in this netns (a lab node) instead of the daemon's own.
    pub node_netns: Option<PathBuf>,
    /// The pause binary; by default the one beside the sandboxd executable.
    pub pause_binary: Option<PathBuf>,
    /// Deadline of each CNI plugin call.
    pub cni_timeout: Duration,
    /// How long a stopped pause gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
}

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
            node_netns: None,
            pause_binary: None,
            cni_timeout: cni_host::DEFAULT_PLUGIN_TIMEOUT,
            stop_grace: Duration::from_secs(2),
        }
    }
}

impl Config {
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.state_dir.join("sandboxes")
    }

    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }

    pub fn cni_cache_dir(&self) -> PathBuf {
        self.state_dir.join("cni")
    }
}
