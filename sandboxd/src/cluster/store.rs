//! The cluster store: a versioned key-value space every node shares, with the operations
//! a cluster needs and nothing more — read, list a prefix at a revision, create only if
//! absent and update only if unchanged (compare-and-swap: how two nodes never take the same
//! subnet, ClusterIP or node port), delete, and watch a prefix from a revision.
//!
//! Two implementations: [`crate::cluster::etcd::EtcdStore`] (etcd v3, several machines)
//! and [`crate::cluster::local::LocalStore`] (a file in the state dir, one node, no etcd).

use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;

/// A key's value and the revision it was last written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub key: String,
    pub value: String,
    /// The store revision of the key's last write (etcd's mod_revision).
    pub revision: i64,
}

/// A prefix's keys as of one store revision.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub items: Vec<Versioned>,
    /// The store's revision when listed: watch from `revision + 1` to miss nothing.
    pub revision: i64,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(Versioned),
    Delete { key: String, revision: i64 },
}

impl WatchEvent {
    pub fn revision(&self) -> i64 {
        match self {
            WatchEvent::Put(v) => v.revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached (or stopped answering): retry later.
    #[error("the cluster store at {endpoint} is unreachable: {reason}")]
    Unavailable { endpoint: String, reason: String },
    /// A watch asked for history the store no longer keeps: list again.
    #[error("revision {requested} is compacted (the oldest kept is {oldest})")]
    Compacted { requested: i64, oldest: i64 },
    #[error("the cluster store failed: {0}")]
    Failed(String),
}

/// The changes of a watch, in revision order, until an error ends it.
pub type WatchReceiver = mpsc::Receiver<Result<Vec<WatchEvent>, StoreError>>;
/// Where an implementation sends a watch's changes.
pub type WatchSender = mpsc::Sender<Result<Vec<WatchEvent>, StoreError>>;

#[tonic::async_trait]
pub trait ClusterStore: Send + Sync {
    /// Where the store is, for messages (`etcd://192.168.102.10:2379`, a file path).
    fn describe(&self) -> String;

    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;

    /// Every key under `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError>;

    /// Writes `key` only if it does not exist; Some(revision) if written, None if taken.
    async fn create(&self, key: &str, value: &str) -> Result<Option<i64>, StoreError>;

    /// Writes `key` only if its last write is still `revision`; Some(new revision) if
    /// written, None if it changed or is gone meanwhile.
    async fn update(
        &self,
        key: &str,
        value: &str,
        revision: i64,
    ) -> Result<Option<i64>, StoreError>;

    /// Deletes `key` (only if still at `revision`, when given); whether it was deleted.
    async fn delete(&self, key: &str, revision: Option<i64>) -> Result<bool, StoreError>;

    /// The changes under `prefix` from `revision` on (inclusive).
    async fn watch(&self, prefix: &str, revision: i64) -> Result<WatchReceiver, StoreError>;
}

/// How long a node waits for the store before saying it is unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens the store `url` names: `etcd://HOST:PORT[,HOST:PORT…]`; None gives the local
/// store in `state_dir`.
pub async fn open(
    url: Option<&str>,
    state_dir: &Path,
) -> anyhow::Result<std::sync::Arc<dyn ClusterStore>> {
    match url {
        None => Ok(std::sync::Arc::new(
            crate::cluster::local::LocalStore::open(&state_dir.join("cluster.json"))?,
        )),
        Some(url) => {
            let Some(endpoints) = url.strip_prefix("etcd://") else {
                anyhow::bail!(
                    "invalid --store {url:?}: only etcd://HOST:PORT[,HOST:PORT…] is known"
                );
            };
            let endpoints: Vec<String> = endpoints
                .split(',')
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect();
            if endpoints.is_empty() {
                anyhow::bail!("invalid --store {url:?}: no HOST:PORT after etcd://");
            }
            let store = crate::cluster::etcd::EtcdStore::connect(&endpoints).await?;
            Ok(std::sync::Arc::new(store))
        }
    }
}
