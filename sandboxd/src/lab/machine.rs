//! A machine of the lab: a network namespace pinned at a path, standing in for a VM with
//! its own interfaces, routes and firewall. The lab's nodes and underlay are machines; so
//! are the tests' nodes and the example programs' node, so that every namespace the
//! project makes to stand in for a machine is made, entered and removed here.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::node::NodeNetns;

/// The loopback's index in every namespace.
const LOOPBACK: u32 = 1;

/// A pinned network namespace. Removing it ([`Machine::remove`]) unpins it; the kernel
/// drops its interfaces, routes and rules with it once nothing runs inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    path: PathBuf,
}

impl Machine {
    /// Makes a new namespace pinned at `path` with its loopback up, as a booted machine
    /// has it. A pin already there is an error: it belongs to someone else, or to an
    /// earlier run that did not clean up.
    pub fn create(path: impl Into<PathBuf>) -> anyhow::Result<Machine> {
        let path = path.into();
        if path.symlink_metadata().is_ok() {
            bail!(
                "{} exists already (a namespace left by an earlier run?)",
                path.display()
            );
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        crate::netns::create(&path)?;
        let machine = Machine { path };
        let loopback_up = || -> anyhow::Result<()> {
            machine.netns().route_socket()?.set_up(LOOPBACK)?;
            Ok(())
        };
        if let Err(e) = loopback_up() {
            let _ = machine.clone().remove();
            return Err(e).context("set the loopback up");
        }
        Ok(machine)
    }

    /// The machine pinned at `path` already.
    pub fn at(path: impl Into<PathBuf>) -> Machine {
        Machine { path: path.into() }
    }

    /// The pin (`nsenter --net=PATH` enters it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The machine as a sandboxd node's network (`--node-netns`).
    pub fn netns(&self) -> NodeNetns {
        NodeNetns::pinned(&self.path)
    }

    /// `program` as a command run on the machine.
    pub fn command(&self, program: &str) -> Command {
        self.netns().command(program)
    }

    /// Runs `args` on the machine; its stdout, or an error with its stderr.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let (program, rest) = args.split_first().context("no command given")?;
        let output = self
            .command(program)
            .args(rest)
            .output()
            .with_context(|| format!("run {program} on {}", self.path.display()))?;
        if !output.status.success() {
            bail!(
                "{} on {} failed: {}",
                args.join(" "),
                self.path.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The names of its interfaces, loopback left out.
    pub fn links(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .netns()
            .route_socket()?
            .links()?
            .into_iter()
            .filter(|l| l.index != LOOPBACK)
            .map(|l| l.name)
            .collect())
    }

    /// Unpins the namespace and removes the pin file. Pinned nothing (gone already) is
    /// not an error.
    pub fn remove(self) -> anyhow::Result<()> {
        crate::netns::unpin(&self.path)
            .with_context(|| format!("remove the namespace {}", self.path.display()))
    }
}
