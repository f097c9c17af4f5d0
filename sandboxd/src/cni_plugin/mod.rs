//! sandboxd's own CNI plugins: the plugin side of the CNI protocol (the runtime's side is
//! the `cni-host` crate). One binary, `sandboxd-cni`, is every plugin, chosen by the name
//! it is run under (`host-local`, `loopback`, …, links to it in a directory of their
//! own), and sandboxd runs the same code in-process. Each plugin reads the same network
//! config fields as the upstream plugin it replaces and keeps its on-disk state in the
//! same format, so either can take over from the other on a running node.
//!
//! * [`invocation`]: what a plugin is asked (CNI_* variables, the config on stdin) and
//!   how it answers (a result in the config's version, or an error object);
//! * [`in_process`]: the plugins run inside sandboxd, behind cni-host's exec seam;
//! * the plugins: [`bridge`] (a veth pair per container on a node bridge), [`ptp`] (a
//!   routed veth pair per container, no bridge), [`host_local`] (IPAM: leases in files,
//!   as upstream keeps them), [`loopback`] and [`portmap`] (hostPorts in nftables);
//! * what bridge and ptp share: [`interface`] (DEL, GC, STATUS, forwarding), [`veth`]
//!   (the pair), [`ipam`] (host-local in-process or
//!   a delegated IPAM plugin) and [`masquerade`] (`ipMasq` in nftables); bridge's
//!   [`spoofcheck`] (`macspoofchk` in nftables), both keeping their chains per attachment
//!   ([`attachment_chains`]); [`nft`] keeps the nf_tables socket of portmap, masquerade
//!   and spoofcheck open.

pub mod attachment_chains;
pub mod bridge;
pub mod host_local;
pub mod in_process;
pub mod interface;
pub mod invocation;
pub mod ipam;
pub mod loopback;
pub mod masquerade;
pub mod nft;
pub mod portmap;
pub mod ptp;
pub mod spoofcheck;
pub mod veth;

pub use invocation::{Command, Invocation, PluginError};

use serde_json::Value;

/// The spec versions these plugins speak.
pub const VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The plugins the binary is, by the name it is installed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    Bridge,
    HostLocal,
    Loopback,
    Portmap,
    Ptp,
}

impl Plugin {
    pub const ALL: &'static [Plugin] = &[
        Plugin::Bridge,
        Plugin::HostLocal,
        Plugin::Loopback,
        Plugin::Portmap,
        Plugin::Ptp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Plugin::Bridge => "bridge",
            Plugin::HostLocal => "host-local",
            Plugin::Loopback => "loopback",
            Plugin::Portmap => "portmap",
            Plugin::Ptp => "ptp",
        }
    }

    pub fn from_name(name: &str) -> Option<Plugin> {
        Plugin::ALL.iter().copied().find(|p| p.name() == name)
    }

    /// Runs one invocation: what goes on stdout on success (a result, the version
    /// answer, or nothing).
    pub fn run(self, invocation: &Invocation) -> Result<Option<Value>, PluginError> {
        self.run_in(invocation, None)
    }

    /// Runs one invocation with the node's side (the bridge, host veths, forwarding) in
    /// the namespace at `host` (None: the caller's), as a plugin process started there
    /// would.
    pub fn run_in(
        self,
        invocation: &Invocation,
        host: Option<&std::path::Path>,
    ) -> Result<Option<Value>, PluginError> {
        if invocation.command == Command::Version {
            return Ok(Some(invocation::version_answer(invocation)));
        }
        match self {
            Plugin::Bridge => bridge::run_in(invocation, host),
            Plugin::HostLocal => host_local::run(invocation),
            Plugin::Loopback => loopback::run(invocation),
            Plugin::Portmap => portmap::run_in(invocation, host),
            Plugin::Ptp => ptp::run_in(invocation, host),
        }
    }
}
