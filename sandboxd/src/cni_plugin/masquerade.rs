//! `ipMasq` of bridge and ptp: traffic a pod sends off its own subnet leaves the node
//! with the node's address, in nftables over netlink instead of upstream's iptables
//! chains (`CNI-<hash>` jumped to from POSTROUTING), in a table of its own in the node's
//! namespace:
//!
//! ```text
//! table ip sandboxd-masq                                  (ip6 for IPv6 addresses)
//!   chain masq/<network>/<container>/<ifname>/<pod ip>   (nat postrouting, srcnat)
//!       ip saddr != <pod ip> return
//!       ip daddr <pod subnet> return
//!       ip daddr 224.0.0.0/4 return                       (ip6 daddr ff00::/8)
//!       masquerade fully-random
//! ```
//!
//! One base chain per pod address, as upstream has one chain per pod: nat chains only see
//! a connection's first packet, and each chain is made and removed in one batch with no
//! rule handles to track. DEL and GC find an attachment's chains by name
//! ([`AttachmentChains`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use cni_host::result::CniResult;

use crate::cni_plugin::attachment_chains::{drop_chain, AttachmentChains};
use crate::cni_plugin::invocation::{Invocation, PluginError};
use crate::cni_plugin::nft;
use crate::netlink::nftables::TableFamily;
use crate::netlink::Family;
use crate::service::plan::{BaseChain, ChainType, Hook, Op, Plan, Rule, Verdict};

pub const TABLE: &str = "sandboxd-masq";
/// Where srcnat runs (`priority srcnat`).
const SRCNAT: i32 = 100;
const CHAINS: AttachmentChains = AttachmentChains {
    kind: "masq",
    purpose: "masquerade",
    table: TABLE,
    families: &[TableFamily::Ip, TableFamily::Ip6],
};

fn multicast(family: Family) -> (IpAddr, u8) {
    match family {
        Family::V4 => (IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)), 4),
        Family::V6 => (IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)), 8),
    }
}

/// Masquerades what each address of `result` sends off its subnet, each family in its
/// own table. A repeated ADD replaces the attachment's chains.
pub fn add(
    invocation: &Invocation,
    host: Option<&Path>,
    result: &CniResult,
) -> Result<(), PluginError> {
    let network = invocation.network_name()?;
    let prefix = CHAINS.of(invocation)?;
    let mut nft = nft::socket(host)?;
    for family in [Family::V4, Family::V6] {
        let addresses: Vec<_> = result
            .ips
            .iter()
            .filter(|ip| Family::of(&ip.address.addr) == family)
            .collect();
        let stale: Vec<String> = CHAINS
            .list(&mut nft, family.into())?
            .into_iter()
            .filter(|c| c.starts_with(&prefix))
            .collect();
        if addresses.is_empty() && stale.is_empty() {
            continue;
        }
        let mut plan = Plan::default();
        plan.ops.push(Op::AddTable);
        for chain in stale {
            drop_chain(&mut plan, chain);
        }
        for ip in addresses {
            let address = ip.address.addr;
            let chain = format!("{prefix}{address}");
            let subnet = ip.address.network();
            plan.ops.push(Op::AddChain {
                name: chain.clone(),
                base: Some(BaseChain {
                    chain_type: ChainType::Nat,
                    hook: Hook::Postrouting,
                    priority: SRCNAT,
                }),
            });
            for rule in [
                Rule::FromOutside((address, family.host_prefix()), Verdict::Return),
                Rule::ToNetwork((subnet.addr, subnet.prefix), Verdict::Return),
                Rule::ToNetwork(multicast(family), Verdict::Return),
                Rule::MasqueradeFullyRandom,
            ] {
                plan.ops.push(Op::AddRule {
                    chain: chain.clone(),
                    rule,
                });
            }
        }
        nft.apply_to(family, TABLE, &plan).map_err(|e| {
            PluginError::internal(format!(
                "masquerade the pod {} of network {network}: {e:#}",
                invocation.container_id
            ))
        })?;
    }
    Ok(())
}

/// Removes the attachment's chains; none is not an error.
pub fn remove(invocation: &Invocation, host: Option<&Path>) -> Result<(), PluginError> {
    CHAINS.remove(invocation, host, drop_chain)
}

/// GC: removes the chains of this network's attachments that are not valid.
pub fn collect_garbage(invocation: &Invocation, host: Option<&Path>) -> Result<(), PluginError> {
    CHAINS.collect_garbage(invocation, host, drop_chain)
}
