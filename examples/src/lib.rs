//! Helpers shared by the example programs: their node (a lab machine), and ids.
//!
//! The programs need root, iproute2 and Debian's `containernetworking-plugins`
//! (`scripts/install-deps.sh` installs them).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use sandboxd::lab::machine::Machine;

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

/// Where the example programs pin their nodes' network namespaces.
pub const NODES_DIR: &str = "/run/sandboxd/nodes";

/// An example's node: a lab [`Machine`] pinned at `/run/sandboxd/nodes/<name>`, whose
/// bridge, host-side veths and firewall rules stay inside it, never on the real host.
pub fn node(name: &str) -> Machine {
    Machine::at(Path::new(NODES_DIR).join(name))
}

/// Makes the node `name` (see [`node`]).
pub fn create_node(name: &str) -> Result<Machine> {
    sandboxd::netns::prepare_dir(Path::new(NODES_DIR))?;
    Machine::create(Path::new(NODES_DIR).join(name))
}

/// Removes the node `name`, and the nodes dir's own mount once it is empty.
pub fn remove_node(name: &str) -> Result<()> {
    node(name).remove()?;
    sandboxd::netns::release_dir(Path::new(NODES_DIR))?;
    Ok(())
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
