//! The cluster: what every node shares, kept in a [`store::ClusterStore`] (etcd across
//! machines, a local file on a node alone), and how a node keeps up with it.
//!
//! * [`store`]: the store trait; [`etcd`] and [`local`] its two implementations;
//! * [`node`]: node records, pod subnet leases and the heartbeat; [`join`]: a node
//!   joining (subnet, overlay, pod network, record) and following the others;
//! * [`pods`]: Pods as desired state and their placement; [`placed`]: a node running
//!   the pods placed on it;
//! * [`services`]: Services and their ClusterIP and node port allocations (the API half);
//!   [`proxier`]: a node programming every service with endpoints from every node's pods
//!   (the node-proxy half);
//! * [`follow`]: list-then-watch a prefix, resuming after disconnects and compactions.
//!
//! Keys (values are JSON):
//! `/sandboxd/nodes/<name>` a node; `/sandboxd/subnets/<a.b.c.d-len>` the node holding that
//! pod subnet; `/sandboxd/pods/<ns>/<name>` a Pod; `/sandboxd/services/<ns>/<name>` a
//! Service; `/sandboxd/allocations/{clusterips,nodeports}/<value>` the service holding it.

pub mod etcd;
pub mod join;
pub mod local;
pub mod node;
pub mod placed;
pub mod pods;
pub mod proxier;
pub mod services;
pub mod setup;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use store::{ClusterStore, StoreError, Versioned, WatchEvent};

/// The objects of kind `what` (`"node"`, `"pod"`, …) under `prefix` in a listing, each
/// with its revision; one that does not parse is reported and skipped (the store holds
/// something this sandboxd did not write).
pub fn decode<'a, T: serde::de::DeserializeOwned>(
    items: impl IntoIterator<Item = &'a Versioned>,
    prefix: &str,
    what: &str,
) -> Vec<(T, i64)> {
    items
        .into_iter()
        .filter(|v| v.key.starts_with(prefix))
        .filter_map(|v| match serde_json::from_str(&v.value) {
            Ok(object) => Some((object, v.revision)),
            Err(e) => {
                eprintln!("sandboxd: {what} record {} is unreadable: {e}", v.key);
                None
            }
        })
        .collect()
}

/// The first and the longest wait between attempts to reach the store again.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Keeps a copy of everything under `prefix` and calls `on_change` with it after the first
/// list and after every batch of changes. Lists, then watches from the next revision; when
/// the store goes away it keeps the copy (so callers keep their data plane as it is) and
/// retries with backoff, resuming from the last revision seen; when that history is gone
/// (compacted) it lists again. Runs until the returned task is aborted.
pub fn follow(
    store: Arc<dyn ClusterStore>,
    prefix: &str,
    mut on_change: impl FnMut(&BTreeMap<String, Versioned>) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let prefix = prefix.to_string();
    tokio::spawn(async move {
        let mut copy: BTreeMap<String, Versioned> = BTreeMap::new();
        // The revision to watch from; None: list first.
        let mut next: Option<i64> = None;
        let mut delay = RETRY_FIRST;
        let mut failing = false;
        loop {
            let outcome: Result<(), StoreError> = async {
                let from = match next {
                    Some(from) => from,
                    None => {
                        let listing = store.list(&prefix).await?;
                        copy = listing
                            .items
                            .into_iter()
                            .map(|v| (v.key.clone(), v))
                            .collect();
                        on_change(&copy);
                        next = Some(listing.revision + 1);
                        listing.revision + 1
                    }
                };
                let mut changes = store.watch(&prefix, from).await?;
                if failing {
                    eprintln!("sandboxd: the cluster store answers again; following {prefix}");
                    failing = false;
                }
                delay = RETRY_FIRST;
                while let Some(batch) = changes.recv().await {
                    let batch = batch?;
                    for event in &batch {
                        next = Some(event.revision() + 1);
                        match event {
                            WatchEvent::Put(v) => {
                                copy.insert(v.key.clone(), v.clone());
                            }
                            WatchEvent::Delete { key, .. } => {
                                copy.remove(key);
                            }
                        }
                    }
                    on_change(&copy);
                }
                Err(StoreError::Failed("the watch ended".into()))
            }
            .await;
            match outcome {
                Err(StoreError::Compacted { .. }) => next = None,
                Err(e) => {
                    if !failing {
                        eprintln!("sandboxd: following {prefix}: {e}; keeping what is programmed, retrying");
                        failing = true;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
                Ok(()) => {}
            }
        }
    })
}
