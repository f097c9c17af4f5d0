//! Nodes: each node's record in the store (its underlay address, pod subnet, VTEP MAC,
//! backend, heartbeat), the pod subnet lease it holds, and joining.
//!
//! A node keeps the subnet it leased across restarts (the lease names it); a new node
//! takes the lowest free /24 by creating its lease key, which fails if another node
//! created it first, so two nodes joining at once never share a subnet.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::store::{ClusterStore, Versioned};
use crate::cidr::Ipv4Cidr;
use crate::overlay::{Backend, Peer};

pub const NODES: &str = "/sandboxd/nodes/";
pub const SUBNETS: &str = "/sandboxd/subnets/";
/// How often a node writes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node silent for this long is NotReady (and its name may be taken over).
pub const NODE_GRACE: Duration = Duration::from_secs(10);

/// A node as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub name: String,
    /// Its address on the underlay: where other nodes send its pods' packets.
    pub ip: Ipv4Addr,
    pub subnet: Ipv4Cidr,
    /// `flannel.1`'s MAC (VXLAN).
    pub vtep_mac: Option<String>,
    pub backend: Backend,
    /// Whether it runs pods not asked for by name (the control plane does not).
    pub schedulable: bool,
    /// Unix time of its last heartbeat, in milliseconds.
    pub heartbeat_ms: i64,
}

impl NodeRecord {
    pub fn key(&self) -> String {
        format!("{NODES}{}", self.name)
    }

    /// Whether it wrote a heartbeat within [`NODE_GRACE`] of `now_ms`.
    pub fn is_ready(&self, now_ms: i64) -> bool {
        now_ms - self.heartbeat_ms < NODE_GRACE.as_millis() as i64
    }

    pub fn peer(&self) -> Peer {
        Peer {
            name: self.name.clone(),
            ip: self.ip,
            subnet: self.subnet,
            vtep_mac: self
                .vtep_mac
                .as_deref()
                .and_then(crate::netlink::link::parse_mac),
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The subnet lease key: `/sandboxd/subnets/10.244.1.0-24`.
fn lease_key(subnet: &Ipv4Cidr) -> String {
    format!("{SUBNETS}{}-{}", subnet.addr, subnet.prefix)
}

/// The node records in a listing (unreadable ones reported and skipped).
pub fn records<'a>(items: impl IntoIterator<Item = &'a Versioned>) -> Vec<NodeRecord> {
    super::decode(items, NODES, "node")
        .into_iter()
        .map(|(record, _)| record)
        .collect()
}

/// The subnet `node` holds a lease on, if any.
pub async fn held_subnet(store: &dyn ClusterStore, node: &str) -> anyhow::Result<Option<Ipv4Cidr>> {
    let held = store.list(SUBNETS).await?;
    let Some(lease) = held.items.iter().find(|v| v.value == node) else {
        return Ok(None);
    };
    let text = lease.key.trim_start_matches(SUBNETS).replacen('-', "/", 1);
    text.parse()
        .map(Some)
        .map_err(|e| anyhow::anyhow!("the lease {} is unreadable: {e}", lease.key))
}

/// Refuses `name` if a live node at another address holds it (checked before a joining
/// node takes anything, and again when it registers).
pub async fn check_name(store: &dyn ClusterStore, name: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
    if let Some(existing) = store.get(&format!("{NODES}{name}")).await? {
        if let Ok(other) = serde_json::from_str::<NodeRecord>(&existing.value) {
            if other.ip != ip && other.is_ready(now_ms()) {
                bail!(
                    "invalid --node-name {name:?}: node {} at {} is alive (heartbeat {} ms ago); pick another name, or stop that node",
                    other.name,
                    other.ip,
                    now_ms() - other.heartbeat_ms
                );
            }
        }
    }
    Ok(())
}

/// The /24 `node` holds, or the lowest free one it now leases.
pub async fn lease_subnet(
    store: &dyn ClusterStore,
    cluster_cidr: Ipv4Cidr,
    node: &str,
) -> anyhow::Result<Ipv4Cidr> {
    const SUBNET_PREFIX: u8 = 24;
    let held = store.list(SUBNETS).await?;
    if let Some(lease) = held.items.iter().find(|v| v.value == node) {
        let text = lease.key.trim_start_matches(SUBNETS).replacen('-', "/", 1);
        let subnet: Ipv4Cidr = text
            .parse()
            .map_err(|e| anyhow::anyhow!("the lease {} is unreadable: {e}", lease.key))?;
        if cluster_cidr.covers(&subnet) {
            return Ok(subnet);
        }
        // Leased from another cluster CIDR: give it back and take one of this one.
        store.delete(&lease.key, Some(lease.revision)).await?;
    }
    let count = cluster_cidr.subnet_count(SUBNET_PREFIX);
    if count == 0 {
        bail!("invalid --cluster-cidr {cluster_cidr}: it must be at least a /{SUBNET_PREFIX} to hold a node's pod subnet");
    }
    for index in 0..count {
        let subnet = cluster_cidr
            .subnet(SUBNET_PREFIX, index)
            .expect("index below count");
        if store.create(&lease_key(&subnet), node).await?.is_some() {
            return Ok(subnet);
        }
    }
    bail!(
        "the cluster CIDR {cluster_cidr} has no free /{SUBNET_PREFIX} for node {node}: its {count} subnets are all leased (use a larger --cluster-cidr)"
    )
}

/// Gives back `node`'s subnet lease (when it leaves the cluster).
pub async fn release_subnet(store: &dyn ClusterStore, node: &str) -> anyhow::Result<()> {
    for lease in store.list(SUBNETS).await?.items {
        if lease.value == node {
            store.delete(&lease.key, Some(lease.revision)).await?;
        }
    }
    Ok(())
}

/// Writes `record` as the node's. A record of the same name written by a live node at
/// another address is another machine using this name: refused.
pub async fn register(store: &dyn ClusterStore, record: &NodeRecord) -> anyhow::Result<()> {
    let key = record.key();
    let value = serde_json::to_string(record).expect("serializable");
    loop {
        let written = match store.get(&key).await? {
            None => store.create(&key, &value).await?,
            Some(existing) => {
                check_name(store, &record.name, record.ip).await?;
                store.update(&key, &value, existing.revision).await?
            }
        };
        if written.is_some() {
            return Ok(());
        }
    }
}

/// Deletes `node`'s record and gives back its subnet: the other nodes then remove their
/// routes to it.
pub async fn remove(store: &dyn ClusterStore, node: &str) -> anyhow::Result<bool> {
    let deleted = store.delete(&format!("{NODES}{node}"), None).await?;
    release_subnet(store, node).await?;
    Ok(deleted)
}

/// Rewrites the heartbeat every [`HEARTBEAT`]; a store that does not answer is retried at
/// the next beat (the node keeps running meanwhile).
pub fn heartbeat(store: Arc<dyn ClusterStore>, record: NodeRecord) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut record = record;
        let mut failing = false;
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            record.heartbeat_ms = now_ms();
            let beat = async {
                let key = record.key();
                let value = serde_json::to_string(&record).expect("serializable");
                match store.get(&key).await? {
                    Some(existing) => store
                        .update(&key, &value, existing.revision)
                        .await
                        .map(drop),
                    None => store.create(&key, &value).await.map(drop),
                }
            };
            match beat.await {
                Ok(()) if failing => {
                    eprintln!(
                        "sandboxd: node {}: heartbeats reach the store again",
                        record.name
                    );
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    eprintln!("sandboxd: node {}: heartbeat: {e}", record.name);
                    failing = true;
                }
                Err(_) => {}
            }
        }
    })
}
