//! Helpers shared by the example programs: a node as a network namespace, and ids.
//!
//! The programs need root, iproute2 and Debian's `containernetworking-plugins`
//! (`scripts/install-deps.sh` installs them).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs a command, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where the lab pins its nodes' network namespaces.
pub const NODES_DIR: &str = "/run/sandboxd/nodes";

/// A node of the lab: a network namespace standing in for a machine, pinned at
/// `/run/sandboxd/nodes/<name>`. Its bridge, host-side veths and firewall rules stay
/// inside it, never on the real host. Enter it with `nsenter --net=<path>`.
pub struct NodeNetns {
    pub name: String,
}

impl NodeNetns {
    pub fn path_of(name: &str) -> PathBuf {
        PathBuf::from(NODES_DIR).join(name)
    }

    pub fn create(name: &str) -> Result<NodeNetns> {
        let path = Self::path_of(name);
        if path.exists() {
            bail!(
                "node netns {} already exists (left by an earlier run?)",
                path.display()
            );
        }
        let dir = PathBuf::from(NODES_DIR);
        sandboxd::netns::prepare_dir(&dir)?;
        sandboxd::netns::create(&path)?;
        let node = NodeNetns {
            name: name.to_string(),
        };
        node.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(node)
    }

    pub fn path(&self) -> PathBuf {
        Self::path_of(&self.name)
    }

    /// Runs a command inside the node.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let net = format!("--net={}", self.path().display());
        let mut all = vec![net.as_str(), "--"];
        all.extend_from_slice(args);
        run("nsenter", &all)
    }

    /// Removes a node by name, and the nodes dir's own mount once it is empty.
    pub fn remove(name: &str) -> Result<()> {
        sandboxd::netns::unpin(&Self::path_of(name))?;
        sandboxd::netns::release_dir(std::path::Path::new(NODES_DIR))?;
        Ok(())
    }
}

/// A fresh 32-hex-digit id, like the ids runtimes give sandboxes.
pub fn new_id() -> Result<String> {
    let uuid =
        std::fs::read_to_string("/proc/sys/kernel/random/uuid").context("read a random uuid")?;
    Ok(uuid.trim().replace('-', ""))
}

/// Resident memory of a process in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}
