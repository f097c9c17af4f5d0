//! Chains an attachment owns in a plugin's nf_tables table, as `ipMasq` and `macspoofchk`
//! keep them: named `<kind>/<network>/<container>/<ifname>/<suffix>`, so DEL finds them by
//! that prefix without a cache, and GC finds those of attachments outside
//! `cni.dev/valid-attachments` by the network's.

use std::collections::HashSet;
use std::path::Path;

use crate::cni_plugin::invocation::{Invocation, PluginError};
use crate::cni_plugin::nft;
use crate::netlink::nftables::TableFamily;
use crate::service::plan::{Op, Plan};

/// One plugin's kind of attachment chains.
pub struct AttachmentChains {
    /// The chain names' first part (`masq`, `spoof`).
    pub kind: &'static str,
    /// What the chains do, for errors ("masquerade", "source MAC check").
    pub purpose: &'static str,
    pub table: &'static str,
    /// Every family the plugin keeps the table in.
    pub families: &'static [TableFamily],
}

impl AttachmentChains {
    /// What every chain of one attachment's name starts with.
    pub fn prefix(&self, network: &str, container_id: &str, ifname: &str) -> String {
        format!("{}/{network}/{container_id}/{ifname}/", self.kind)
    }

    /// The prefix of the invocation's attachment.
    pub fn of(&self, invocation: &Invocation) -> Result<String, PluginError> {
        Ok(self.prefix(
            invocation.network_name()?,
            &invocation.container_id,
            &invocation.ifname,
        ))
    }

    /// The names of the table's chains in `family` (none if there is no table).
    pub fn list(
        &self,
        nft: &mut nft::Held,
        family: TableFamily,
    ) -> Result<Vec<String>, PluginError> {
        nft.chains(family, self.table).map_err(|e| {
            PluginError::internal(format!(
                "list the chains of {family:?} {}: {e:#}",
                self.table
            ))
        })
    }

    /// Removes the invocation's attachment's chains, `drop` adding each one's removal
    /// (and whatever goes with it) to the plan; none is not an error.
    pub fn remove(
        &self,
        invocation: &Invocation,
        host: Option<&Path>,
        drop: impl Fn(&mut Plan, String),
    ) -> Result<(), PluginError> {
        let prefix = self.of(invocation)?;
        self.remove_where(host, |chain| chain.starts_with(&prefix), drop)
            .map_err(|e| {
                PluginError::internal(format!(
                    "remove the {} of the pod {}: {}",
                    self.purpose, invocation.container_id, e.msg
                ))
            })
    }

    /// GC: removes the chains of the network's attachments that are not valid.
    pub fn collect_garbage(
        &self,
        invocation: &Invocation,
        host: Option<&Path>,
        drop: impl Fn(&mut Plan, String),
    ) -> Result<(), PluginError> {
        let network = invocation.network_name()?;
        let valid = crate::cni_plugin::host_local::valid_attachments(&invocation.config)?;
        let keep: HashSet<String> = valid
            .iter()
            .map(|(id, ifname)| self.prefix(network, id, ifname))
            .collect();
        let ours = format!("{}/{network}/", self.kind);
        self.remove_where(
            host,
            |chain| chain.starts_with(&ours) && !keep.iter().any(|k| chain.starts_with(k.as_str())),
            drop,
        )
        .map_err(|e| {
            PluginError::internal(format!(
                "collect the {} of network {network}: {}",
                self.purpose, e.msg
            ))
        })
    }

    fn remove_where(
        &self,
        host: Option<&Path>,
        doomed: impl Fn(&str) -> bool,
        drop: impl Fn(&mut Plan, String),
    ) -> Result<(), PluginError> {
        let mut nft = nft::socket(host)?;
        for &family in self.families {
            let mut plan = Plan::default();
            for chain in self
                .list(&mut nft, family)?
                .into_iter()
                .filter(|c| doomed(c))
            {
                drop(&mut plan, chain);
            }
            nft.apply_to(family, self.table, &plan)
                .map_err(|e| PluginError::internal(format!("{e:#}")))?;
        }
        Ok(())
    }
}

/// A chain's removal: its rules, then the chain.
pub fn drop_chain(plan: &mut Plan, chain: String) {
    plan.ops.push(Op::FlushChain(chain.clone()));
    plan.ops.push(Op::DeleteChain(chain));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attachments_chains_share_a_prefix_no_other_attachment_has() {
        let chains = AttachmentChains {
            kind: "masq",
            purpose: "masquerade",
            table: "t",
            families: &[TableFamily::Ip],
        };
        let a = chains.prefix("pods", "c1", "eth0");
        assert_eq!(a, "masq/pods/c1/eth0/");
        assert!(!format!("{}10.0.0.1", chains.prefix("pods", "c10", "eth0")).starts_with(&a));
        assert!(!format!("{}10.0.0.1", chains.prefix("pods", "c1", "eth01")).starts_with(&a));
    }
}
