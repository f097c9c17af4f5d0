//! The data plane as the daemon drives it: what is programmed for each service, and the
//! one way of changing it for the proxy mode.
//!
//! * nftables (default): one nf_tables transaction per change over netlink, touching the
//!   changed service's objects only; a full sync replaces the table in one transaction.
//! * iptables: every change rewrites sandboxd's chains with one `iptables-restore
//!   --noflush`, as kube-proxy's iptables mode does.
//!
//! Both run in the node's network namespace (`--node-netns`), else in sandboxd's own.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::netlink::nftables::NftSocket;
use crate::node::NodeNetns;
use crate::service::iptables;
use crate::service::plan::{self, Cluster, ProgrammedService};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// kube-proxy's nftables design in the table `ip sandboxd`, over netlink.
    #[default]
    Nftables,
    /// kube-proxy's iptables chains (SBX-*), with iptables-restore.
    Iptables,
}

enum Backend {
    Nftables(NftSocket),
    Iptables,
}

pub struct Proxy {
    backend: Backend,
    netns: NodeNetns,
    cluster: Cluster,
    /// What the kernel holds, by service key.
    programmed: BTreeMap<String, ProgrammedService>,
}

impl Proxy {
    /// Opens the data plane of `mode` after removing what the other mode left (a node
    /// switched between modes would otherwise translate with both, as kube-proxy also
    /// cleans up the mode it does not run).
    pub fn open(mode: ProxyMode, netns: &NodeNetns, cluster: Cluster) -> anyhow::Result<Proxy> {
        // The other mode's leftovers are removed if they can be; a machine without that
        // mode's tools or kernel parts has none, and must still start.
        let backend = match mode {
            ProxyMode::Nftables => {
                let socket = netns
                    .nft_socket()
                    .context("open a netlink socket to nf_tables")?;
                if let Err(e) = remove_iptables_rules(netns) {
                    eprintln!("sandboxd: could not remove the iptables mode's rules: {e:#}");
                }
                Backend::Nftables(socket)
            }
            ProxyMode::Iptables => {
                let removed = netns
                    .nft_socket()
                    .map_err(anyhow::Error::from)
                    .and_then(|mut socket| socket.apply(&plan::cleanup()));
                if let Err(e) = removed {
                    eprintln!("sandboxd: could not remove the nftables mode's table: {e:#}");
                }
                Backend::Iptables
            }
        };
        Ok(Proxy {
            backend,
            netns: netns.clone(),
            cluster,
            programmed: BTreeMap::new(),
        })
    }

    /// Replaces whatever the data plane holds with `services`, in one transaction
    /// (idempotent: a restart programs the same rules again, without duplicates).
    pub fn sync_all(
        &mut self,
        services: BTreeMap<String, ProgrammedService>,
    ) -> anyhow::Result<()> {
        let all: Vec<ProgrammedService> = services.values().cloned().collect();
        match &mut self.backend {
            Backend::Nftables(socket) => socket.apply(&plan::full_sync(&self.cluster, &all))?,
            Backend::Iptables => iptables_sync(&self.netns, &self.cluster, &all)?,
        }
        self.programmed = services;
        Ok(())
    }

    /// Programs one service as `new` (None: removes it). Nothing happens when it is
    /// already so.
    pub fn apply(&mut self, key: &str, new: Option<ProgrammedService>) -> anyhow::Result<()> {
        let old = self.programmed.get(key);
        if old == new.as_ref() {
            return Ok(());
        }
        match &mut self.backend {
            Backend::Nftables(socket) => {
                socket.apply(&plan::update(&self.cluster, old, new.as_ref()))?
            }
            Backend::Iptables => {
                let mut all: BTreeMap<&str, &ProgrammedService> = self
                    .programmed
                    .iter()
                    .map(|(k, v)| (k.as_str(), v))
                    .collect();
                match &new {
                    Some(service) => all.insert(key, service),
                    None => all.remove(key),
                };
                let all: Vec<ProgrammedService> = all.into_values().cloned().collect();
                iptables_sync(&self.netns, &self.cluster, &all)?;
            }
        }
        match new {
            Some(service) => self.programmed.insert(key.to_string(), service),
            None => self.programmed.remove(key),
        };
        Ok(())
    }

    pub fn programmed(&self, key: &str) -> Option<&ProgrammedService> {
        self.programmed.get(key)
    }
}

/// Removes everything either mode programmed in `netns` (`sandboxd --cleanup`): the table
/// `ip sandboxd` and the SBX-* chains with the jumps to them.
pub fn cleanup(netns: &NodeNetns) -> anyhow::Result<()> {
    netns
        .nft_socket()
        .context("open a netlink socket to nf_tables")?
        .apply(&plan::cleanup())
        .context("delete the table ip sandboxd")?;
    remove_iptables_rules(netns)
}

/// Removes the SBX-* chains and the jumps to them, if iptables is installed and any are
/// there.
fn remove_iptables_rules(netns: &NodeNetns) -> anyhow::Result<()> {
    if let Some(saved) = iptables_save(netns)? {
        let text = iptables::cleanup(&saved);
        if !text.is_empty() {
            run_with_input(netns, &["iptables-restore", "--noflush"], &text)?;
        }
    }
    Ok(())
}

fn command(netns: &NodeNetns, args: &[&str]) -> Command {
    let mut command = netns.command(args[0]);
    command.args(&args[1..]);
    command
}

fn run_with_input(netns: &NodeNetns, args: &[&str], input: &str) -> anyhow::Result<()> {
    let mut child = command(netns, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {} (install iptables)", args[0]))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The nat and filter tables as iptables-save prints them; None when iptables is not
/// installed (nothing of ours can be there then).
fn iptables_save(netns: &NodeNetns) -> anyhow::Result<Option<String>> {
    let mut saved = String::new();
    for table in ["nat", "filter"] {
        let output = match command(netns, &["iptables-save", "-t", table]).output() {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("run iptables-save"),
        };
        if !output.status.success() {
            bail!(
                "iptables-save -t {table} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        saved.push_str(&String::from_utf8_lossy(&output.stdout));
    }
    Ok(Some(saved))
}

fn iptables_sync(
    netns: &NodeNetns,
    cluster: &Cluster,
    services: &[ProgrammedService],
) -> anyhow::Result<()> {
    let saved = iptables_save(netns)?.context("iptables-save not found (install iptables)")?;
    let jumps = saved.contains("-j SBX-SERVICES");
    let stale = iptables::stale_chains(&saved, &iptables::chains(services));
    let text = iptables::restore(cluster, services, jumps, &stale);
    run_with_input(netns, &["iptables-restore", "--noflush"], &text)
}
