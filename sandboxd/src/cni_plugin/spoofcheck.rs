//! bridge's `macspoofchk`: frames a pod sends into the bridge must carry its interface's
//! own MAC, or they are dropped before the bridge forwards them; a pod cannot pose as
//! another on the segment. Upstream keeps one rule per pod in the `PREROUTING` chain of
//! `table bridge nat` (each frame walks them all); here a verdict map keyed by the
//! incoming port sends each frame straight to its pod's chain, in a table of its own in
//! the node's namespace:
//!
//! ```text
//! table bridge sandboxd-macspoof
//!   map ports { type ifname : verdict }        host veth → its pod's chain
//!   chain prerouting (filter prerouting, priority -300):
//!       iifname vmap @ports
//!   chain spoof/<network>/<container>/<ifname>/<host veth>:
//!       ether saddr <pod's MAC> return
//!       drop
//! ```
//!
//! The table's fixed objects are made by the first ADD, in the same transaction as its
//! pod's chain; concurrent first ADDs take turns on a lock file. DEL and GC find an
//! attachment's chain by name ([`AttachmentChains`]), which also names its map key.

use std::path::Path;

use crate::cni_plugin::attachment_chains::{self, AttachmentChains};
use crate::cni_plugin::invocation::{Invocation, PluginError};
use crate::cni_plugin::nft;
use crate::netlink::link::format_mac;
use crate::netlink::nftables::TableFamily;
use crate::service::plan::{BaseChain, ChainType, Hook, Key, MapKey, Op, Plan, Rule, Verdict};

pub const TABLE: &str = "sandboxd-macspoof";
const PORTS: &str = "ports";
const PREROUTING: &str = "prerouting";
/// Before anything else sees the frame (`priority -300`, as upstream's `nat` chain).
const PRIORITY: i32 = -300;
const LOCK: &str = "/run/sandboxd-cni-macspoof.lock";
const CHAINS: AttachmentChains = AttachmentChains {
    kind: "spoof",
    purpose: "source MAC check",
    table: TABLE,
    families: &[TableFamily::Bridge],
};

/// The host veth a chain of an attachment is for (its name's last part).
fn port_of(chain: &str) -> Option<&str> {
    chain
        .strip_prefix("spoof/")
        .and_then(|rest| rest.rsplit('/').next())
}

/// Lets frames from `host_veth` into the bridge only with `mac` as their source. A
/// repeated ADD replaces the attachment's chain.
pub fn add(
    invocation: &Invocation,
    host: Option<&Path>,
    host_veth: &str,
    mac: [u8; 6],
) -> Result<(), PluginError> {
    let prefix = CHAINS.of(invocation)?;
    let _lock = crate::lockfile::lock(Path::new(LOCK), crate::lockfile::LockMode::Exclusive)
        .map_err(|e| PluginError::internal(format!("lock {LOCK}: {e}")))?;
    let mut nft = nft::socket(host)?;
    let existing = CHAINS.list(&mut nft, TableFamily::Bridge)?;
    let mut plan = Plan::default();
    if !existing.iter().any(|c| c == PREROUTING) {
        plan.ops.push(Op::AddTable);
        plan.ops.push(Op::AddMap {
            name: PORTS,
            key: MapKey::Interface,
        });
        plan.ops.push(Op::AddChain {
            name: PREROUTING.into(),
            base: Some(BaseChain {
                chain_type: ChainType::Filter,
                hook: Hook::Prerouting,
                priority: PRIORITY,
            }),
        });
        plan.ops.push(Op::AddRule {
            chain: PREROUTING.into(),
            rule: Rule::InterfaceVmap(PORTS),
        });
    }
    for stale in existing.into_iter().filter(|c| c.starts_with(&prefix)) {
        drop_chain(&mut plan, stale);
    }
    let chain = format!("{prefix}{host_veth}");
    plan.ops.push(Op::AddChain {
        name: chain.clone(),
        base: None,
    });
    for rule in [
        Rule::FromMac(mac, Verdict::Return),
        Rule::Always(Verdict::Drop),
    ] {
        plan.ops.push(Op::AddRule {
            chain: chain.clone(),
            rule,
        });
    }
    plan.ops.push(Op::AddElement {
        map: PORTS,
        key: Key::interface(host_veth),
        verdict: Verdict::Jump(chain),
    });
    nft.apply_to(TableFamily::Bridge, TABLE, &plan)
        .map_err(|e| {
            PluginError::internal(format!(
                "check the source MAC {} of the pod {}: {e:#}",
                format_mac(&mac),
                invocation.container_id
            ))
        })
}

/// Its map entry, then the chain.
fn drop_chain(plan: &mut Plan, chain: String) {
    if let Some(port) = port_of(&chain) {
        plan.ops.push(Op::DeleteElement {
            map: PORTS,
            key: Key::interface(port),
        });
    }
    attachment_chains::drop_chain(plan, chain);
}

/// Removes the attachment's chain and map entry; none is not an error.
pub fn remove(invocation: &Invocation, host: Option<&Path>) -> Result<(), PluginError> {
    CHAINS.remove(invocation, host, drop_chain)
}

/// GC: removes the chains of this network's attachments that are not valid.
pub fn collect_garbage(invocation: &Invocation, host: Option<&Path>) -> Result<(), PluginError> {
    CHAINS.collect_garbage(invocation, host, drop_chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_names_its_attachment_and_its_port() {
        let chain = format!("{}veth0a1b2c3d", CHAINS.prefix("pods", "c1", "eth0"));
        assert_eq!(chain, "spoof/pods/c1/eth0/veth0a1b2c3d");
        assert_eq!(port_of(&chain), Some("veth0a1b2c3d"));
        assert_eq!(
            Key::interface("veth0a1b2c3d"),
            Key::Interface(*b"veth0a1b2c3d\0\0\0\0")
        );
    }
}
