//! What bridge and ptp, the two plugins that give a pod a veth pair, do alike: DEL, GC and
//! STATUS (the IPAM plugin's, the pair's and the masquerade's share), and turning on the
//! node's IPv4 forwarding.

use std::path::Path;

use serde_json::Value;

use crate::cni_plugin::invocation::{Command, Invocation, PluginError};
use crate::cni_plugin::{ipam, masquerade, veth};

/// DEL: the lease back, the pair deleted, the masquerade removed.
pub fn release(
    invocation: &Invocation,
    ipam_config: &Value,
    host: Option<&Path>,
    ip_masq: bool,
) -> Result<(), PluginError> {
    ipam::call(invocation, ipam_config, Command::Del)?;
    veth::delete(invocation, host)?;
    if ip_masq {
        masquerade::remove(invocation, host)?;
    }
    Ok(())
}

/// GC or STATUS: the IPAM plugin's, and for GC the masquerade chains of invalid attachments.
pub fn network_wide(
    invocation: &Invocation,
    ipam_config: &Value,
    host: Option<&Path>,
    ip_masq: bool,
) -> Result<(), PluginError> {
    ipam::call(invocation, ipam_config, invocation.command)?;
    if ip_masq && invocation.command == Command::Gc {
        masquerade::collect_garbage(invocation, host)?;
    }
    Ok(())
}

/// `net.ipv4.ip_forward=1` in the node's namespace, so it routes the pods' traffic.
pub fn enable_forwarding(host: Option<&Path>) -> Result<(), PluginError> {
    crate::netns::run_in(host, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
        Ok(())
    })
    .map_err(|e| PluginError::internal(format!("turn on IPv4 forwarding: {e}")))
}
