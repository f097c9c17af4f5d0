//! `ipMasq` of bridge and ptp: traffic a pod sends off its own subnet leaves the node
//! with the node's address, in nftables over netlink instead of upstream's iptables
//! chains (`CNI-<hash>` jumped to from POSTROUTING), in a table of its own in the node's
//! namespace:
//!
//! ```text
//! table ip sandboxd-masq
//!   chain masq/<network>/<container>/<ifname>/<pod ip>   (nat postrouting, srcnat)
//!       ip saddr != <pod ip> return
//!       ip daddr <pod subnet> return
//!       ip daddr 224.0.0.0/4 return
//!       masquerade fully-random
//! ```
//!
//! One base chain per pod address, as upstream has one chain per pod: nat chains only see
//! a connection's first packet, and each chain is made and removed in one batch with no
//! rule handles to track. DEL finds an attachment's chains by name, so it needs no cache,
//! and GC removes those of attachments outside `cni.dev/valid-attachments`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use cni_host::result::CniResult;

use crate::cni_plugin::invocation::{Invocation, PluginError};
use crate::cni_plugin::nft;
use crate::service::plan::{BaseChain, ChainType, Hook, Op, Plan, Rule, Verdict};

pub const TABLE: &str = "sandboxd-masq";
/// Where srcnat runs (`priority srcnat`).
const SRCNAT: i32 = 100;
const MULTICAST: (Ipv4Addr, u8) = (Ipv4Addr::new(224, 0, 0, 0), 4);

fn prefix_of(network: &str, container_id: &str, ifname: &str) -> String {
    format!("masq/{network}/{container_id}/{ifname}/")
}

fn chains(nft: &mut nft::Held) -> Result<Vec<String>, PluginError> {
    nft.chains(TABLE)
        .map_err(|e| PluginError::internal(format!("{e:#}")))
}

/// Masquerades what each IPv4 address of `result` sends off its subnet. A repeated ADD
/// replaces the attachment's chains.
pub fn add(
    invocation: &Invocation,
    host: Option<&Path>,
    result: &CniResult,
) -> Result<(), PluginError> {
    let network = invocation.network_name()?;
    let prefix = prefix_of(network, &invocation.container_id, &invocation.ifname);
    let mut nft = nft::socket(host)?;
    let mut plan = Plan::default();
    plan.ops.push(Op::AddTable);
    for stale in chains(&mut nft)?
        .into_iter()
        .filter(|c| c.starts_with(&prefix))
    {
        plan.ops.push(Op::FlushChain(stale.clone()));
        plan.ops.push(Op::DeleteChain(stale));
    }
    for ip in &result.ips {
        let IpAddr::V4(address) = ip.address.addr else {
            continue;
        };
        let chain = format!("{prefix}{address}");
        let subnet = ip.address.network();
        let IpAddr::V4(subnet_address) = subnet.addr else {
            continue;
        };
        plan.ops.push(Op::AddChain {
            name: chain.clone(),
            base: Some(BaseChain {
                chain_type: ChainType::Nat,
                hook: Hook::Postrouting,
                priority: SRCNAT,
            }),
        });
        for rule in [
            Rule::FromOutside((address, 32), Verdict::Return),
            Rule::ToNetwork((subnet_address, subnet.prefix), Verdict::Return),
            Rule::ToNetwork(MULTICAST, Verdict::Return),
            Rule::MasqueradeFullyRandom,
        ] {
            plan.ops.push(Op::AddRule {
                chain: chain.clone(),
                rule,
            });
        }
    }
    nft.apply_to(TABLE, &plan).map_err(|e| {
        PluginError::internal(format!(
            "masquerade the pod {} of network {network}: {e:#}",
            invocation.container_id
        ))
    })
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
    let mut plan = Plan::default();
    for chain in chains(&mut nft)?.into_iter().filter(|c| doomed(c)) {
        plan.ops.push(Op::FlushChain(chain.clone()));
        plan.ops.push(Op::DeleteChain(chain));
    }
    nft.apply_to(TABLE, &plan)
        .map_err(|e| PluginError::internal(format!("{e:#}")))
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
