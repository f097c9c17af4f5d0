//! What bridge and ptp, the two plugins that give a pod a veth pair, do alike: DEL, GC and
//! STATUS (the IPAM plugin's, the pair's and the masquerade's share), the node's
//! forwarding, and readying a container's interface for IPv6.

use std::path::Path;
use std::time::{Duration, Instant};

use cni_host::result::CniResult;
use serde_json::Value;

use crate::cni_plugin::invocation::{Command, Invocation, PluginError};
use crate::cni_plugin::veth::kernel;
use crate::cni_plugin::{ipam, masquerade, veth};
use crate::netlink::address::Dad;
use crate::netlink::RouteSocket;

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

/// Forwarding on in the node's namespace for each family `result` has addresses of
/// (`net.ipv4.ip_forward`, `net.ipv6.conf.all.forwarding`), so it routes the pods'
/// traffic. Read first: writing IPv6's walks every interface of the node even unchanged.
pub fn enable_forwarding(host: Option<&Path>, result: &CniResult) -> Result<(), PluginError> {
    let mut sysctls = Vec::new();
    if result.ips.iter().any(|ip| ip.address.is_ipv4()) {
        sysctls.push("/proc/sys/net/ipv4/ip_forward");
    }
    if result.ips.iter().any(|ip| !ip.address.is_ipv4()) {
        sysctls.push("/proc/sys/net/ipv6/conf/all/forwarding");
    }
    crate::netns::run_in(host, || {
        for sysctl in &sysctls {
            set_sysctl(sysctl, "1")?;
        }
        Ok(())
    })
    .map_err(|e| PluginError::internal(format!("turn on forwarding: {e}")))
}

/// What the container's interface does before it gets IPv6 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Dad {
    /// No duplicate address detection (`accept_dad=0`), as upstream's bridge by default:
    /// the addresses are the IPAM's to hand out, and usable at once.
    Off,
    /// `accept_dad=1`, `enhanced_dad=1` (bridge's `enabledad`).
    On,
    /// Left as the namespace has it (ptp, as upstream's).
    Unchanged,
}

/// Readies `ifname` in the pod's namespace for IPv6 addresses when `result` has any:
/// IPv6 enabled on it and on `lo` (a namespace may start with it off), and DAD as asked.
pub fn prepare_ipv6(
    netns: &Path,
    ifname: &str,
    result: &CniResult,
    dad: Ipv6Dad,
) -> Result<(), PluginError> {
    if result.ips.iter().all(|ip| ip.address.is_ipv4()) {
        return Ok(());
    }
    // An interface name with a dot (a VLAN) keeps it in /proc/sys's slashed path.
    let conf = |iface: &str, key: &str| format!("/proc/sys/net/ipv6/conf/{iface}/{key}");
    crate::netns::run_in(Some(netns), || {
        for iface in ["lo", ifname] {
            set_sysctl(&conf(iface, "disable_ipv6"), "0")?;
        }
        match dad {
            Ipv6Dad::Off => set_sysctl(&conf(ifname, "accept_dad"), "0")?,
            Ipv6Dad::On => {
                set_sysctl(&conf(ifname, "enhanced_dad"), "1")?;
                set_sysctl(&conf(ifname, "accept_dad"), "1")?;
            }
            Ipv6Dad::Unchanged => {}
        }
        Ok(())
    })
    .map_err(|e| PluginError::internal(format!("enable IPv6 on {ifname}: {e}")))
}

/// Waits, as upstream's `SettleAddresses` does (10 s), until no IPv6 address of the
/// interface is still in duplicate address detection; one that failed it is an error.
pub fn settle_ipv6(pod: &mut RouteSocket, index: u32, ifname: &str) -> Result<(), PluginError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let states = pod
            .ipv6_addresses_dad(index)
            .map_err(kernel("read the container's IPv6 addresses"))?;
        if let Some((address, _)) = states.iter().find(|(_, dad)| *dad == Dad::Failed) {
            return Err(PluginError::internal(format!(
                "{ifname}: {} failed duplicate address detection (another node has it)",
                address.ip
            )));
        }
        if states.iter().all(|(_, dad)| *dad == Dad::Settled) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(PluginError::internal(format!(
                "{ifname} still has tentative IPv6 addresses after 10 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `net.ipv6.conf.<link>.accept_ra=0` in the node's namespace, as upstream's bridge sets
/// it: a pod on the bridge must not be able to give the node routes. Best effort, as
/// upstream's: a node without IPv6 has no such sysctl.
pub fn refuse_router_advertisements(host: Option<&Path>, link: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{link}/accept_ra");
    let _ = crate::netns::run_in(host, || set_sysctl(&path, "0"));
}

/// Writes a sysctl unless it already has the value.
fn set_sysctl(path: &str, value: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path)?.trim() != value {
        std::fs::write(path, value)?;
    }
    Ok(())
}
