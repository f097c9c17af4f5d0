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
//! rule handles to track. DEL finds an attachment's chains by name, so it needs no cache,
//! and GC removes those of attachments outside `cni.dev/valid-attachments`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use cni_host::result::CniResult;

use crate::cni_plugin::invocation::{Invocation, PluginError};
use crate::cni_plugin::nft;
use crate::netlink::Family;
use crate::service::plan::{BaseChain, ChainType, Hook, Op, Plan, Rule, Verdict};

pub const TABLE: &str = "sandboxd-masq";
/// Where srcnat runs (`priority srcnat`).
const SRCNAT: i32 = 100;
const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

fn multicast(family: Family) -> (IpAddr, u8) {
    match family {
        Family::V4 => (IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)), 4),
        Family::V6 => (IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)), 8),
    }
}

fn prefix_of(network: &str, container_id: &str, ifname: &str) -> String {
    format!("masq/{network}/{container_id}/{ifname}/")
}

fn chains(nft: &mut nft::Held, family: Family) -> Result<Vec<String>, PluginError> {
    nft.chains(family, TABLE)
        .map_err(|e| PluginError::internal(format!("{e:#}")))
}

/// Masquerades what each address of `result` sends off its subnet, each family in its
/// own table. A repeated ADD replaces the attachment's chains.
pub fn add(
    invocation: &Invocation,
    host: Option<&Path>,
    result: &CniResult,
) -> Result<(), PluginError> {
    let network = invocation.network_name()?;
    let prefix = prefix_of(network, &invocation.container_id, &invocation.ifname);
    let mut nft = nft::socket(host)?;
    for family in FAMILIES {
        let addresses: Vec<_> = result
            .ips
            .iter()
            .filter(|ip| Family::of(&ip.address.addr) == family)
            .collect();
        let stale: Vec<String> = chains(&mut nft, family)?
            .into_iter()
            .filter(|c| c.starts_with(&prefix))
            .collect();
        if addresses.is_empty() && stale.is_empty() {
            continue;
        }
        let mut plan = Plan::default();
        plan.ops.push(Op::AddTable);
        for chain in stale {
            plan.ops.push(Op::FlushChain(chain.clone()));
            plan.ops.push(Op::DeleteChain(chain));
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
    let network = invocation.network_name()?;
    let prefix = prefix_of(network, &invocation.container_id, &invocation.ifname);
    remove_where(host, |chain| chain.starts_with(&prefix)).map_err(|e| {
        PluginError::internal(format!(
            "stop masquerading the pod {}: {}",
            invocation.container_id, e.msg
        ))
    })
}

/// GC: removes the chains of this network's attachments that are not valid.
pub fn collect_garbage(invocation: &Invocation, host: Option<&Path>) -> Result<(), PluginError> {
    let network = invocation.network_name()?;
    let valid = crate::cni_plugin::host_local::valid_attachments(&invocation.config)?;
    let keep: HashSet<String> = valid
        .iter()
        .map(|(id, ifname)| prefix_of(network, id, ifname))
        .collect();
    let ours = format!("masq/{network}/");
    remove_where(host, |chain| {
        chain.starts_with(&ours) && !keep.iter().any(|k| chain.starts_with(k.as_str()))
    })
}

fn remove_where(host: Option<&Path>, doomed: impl Fn(&str) -> bool) -> Result<(), PluginError> {
    let mut nft = nft::socket(host)?;
    for family in FAMILIES {
        let mut plan = Plan::default();
        for chain in chains(&mut nft, family)?.into_iter().filter(|c| doomed(c)) {
            plan.ops.push(Op::FlushChain(chain.clone()));
            plan.ops.push(Op::DeleteChain(chain));
        }
        nft.apply_to(family, TABLE, &plan)
            .map_err(|e| PluginError::internal(format!("{e:#}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attachments_chains_share_a_prefix_no_other_attachment_has() {
        let a = prefix_of("pods", "c1", "eth0");
        assert_eq!(a, "masq/pods/c1/eth0/");
        assert!(!format!("{}10.0.0.1", prefix_of("pods", "c10", "eth0")).starts_with(&a));
        assert!(!format!("{}10.0.0.1", prefix_of("pods", "c1", "eth01")).starts_with(&a));
    }
}
