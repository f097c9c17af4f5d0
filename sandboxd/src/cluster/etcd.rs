//! The cluster store in etcd (v3 API, through the etcd-client crate, which shares the
//! workspace's tonic). Creates and updates are transactions comparing the key's
//! create_revision (0: absent) or mod_revision, so allocations race safely between nodes.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, Txn, TxnOp,
    WatchOptions,
};
use tokio::sync::mpsc;

use super::store::{
    ClusterStore, Listing, StoreError, Versioned, WatchEvent, WatchReceiver, CONNECT_TIMEOUT,
};

/// Each call's deadline: a store that stops answering is reported, not waited for.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl EtcdStore {
    /// Connects to `endpoints` (`HOST:PORT`) and checks that one answers.
    pub async fn connect(endpoints: &[String]) -> anyhow::Result<EtcdStore> {
        let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let describe = format!("etcd://{}", endpoints.join(","));
        let client = tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(&urls, Some(options)))
            .await
            .map_err(|_| anyhow::anyhow!("the cluster store {describe} did not answer within {CONNECT_TIMEOUT:?} (is etcd running there?)"))?
            .map_err(|e| anyhow::anyhow!("cannot connect to the cluster store {describe}: {e}"))?;
        let store = EtcdStore {
            client,
            endpoints: endpoints.to_vec(),
        };
        // A lazy channel connects on first use: make that use now, so a wrong --store is
        // reported at start-up.
        tokio::time::timeout(CONNECT_TIMEOUT, store.get("/sandboxd/"))
            .await
            .map_err(|_| anyhow::anyhow!("the cluster store {describe} did not answer within {CONNECT_TIMEOUT:?} (is etcd running there?)"))?
            .map_err(anyhow::Error::from)?;
        Ok(store)
    }

    fn unavailable(&self, e: etcd_client::Error) -> StoreError {
        StoreError::Unavailable {
            endpoint: self.describe(),
            reason: e.to_string(),
        }
    }
}

fn versioned(kv: &etcd_client::KeyValue) -> Versioned {
    Versioned {
        key: text(kv.key()),
        value: text(kv.value()),
        revision: kv.mod_revision(),
    }
}

#[tonic::async_trait]
impl ClusterStore for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd://{}", self.endpoints.join(","))
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let response = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(response.kvs().first().map(versioned))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let response = self
            .client
            .kv_client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(Listing {
            items: response.kvs().iter().map(versioned).collect(),
            revision: response.header().map_or(0, |h| h.revision()),
        })
    }

    async fn create(&self, key: &str, value: &str) -> Result<Option<i64>, StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let response = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| self.unavailable(e))?;
        let revision = response.header().map_or(0, |h| h.revision());
        Ok(response.succeeded().then_some(revision))
    }

    async fn update(
        &self,
        key: &str,
        value: &str,
        revision: i64,
    ) -> Result<Option<i64>, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
            .and_then([TxnOp::put(key, value, None)]);
        let response = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| self.unavailable(e))?;
        let new_revision = response.header().map_or(0, |h| h.revision());
        Ok(response.succeeded().then_some(new_revision))
    }

    async fn delete(&self, key: &str, revision: Option<i64>) -> Result<bool, StoreError> {
        let mut txn = Txn::new();
        if let Some(revision) = revision {
            txn = txn.when([Compare::mod_revision(key, CompareOp::Equal, revision)]);
        }
        let txn = txn.and_then([TxnOp::delete(key, None::<DeleteOptions>)]);
        let response = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| self.unavailable(e))?;
        if !response.succeeded() {
            return Ok(false);
        }
        let deleted = response.op_responses().into_iter().any(|op| match op {
            etcd_client::TxnOpResponse::Delete(d) => d.deleted() > 0,
            _ => false,
        });
        Ok(deleted)
    }

    async fn watch(&self, prefix: &str, revision: i64) -> Result<WatchReceiver, StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision)
            .with_progress_notify();
        let stream = self
            .client
            .watch_client()
            .watch(prefix, Some(options))
            .await
            .map_err(|e| self.unavailable(e))?;
        let (_requests, mut responses) = stream.split();
        let (sender, receiver) = mpsc::channel(64);
        let endpoint = self.describe();
        tokio::spawn(async move {
            // The request half must live as long as the watch: dropping it cancels it.
            let _requests = _requests;
            loop {
                let message = match responses.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => {
                        let _ = sender
                            .send(Err(StoreError::Unavailable {
                                endpoint: endpoint.clone(),
                                reason: "the watch stream ended".into(),
                            }))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = sender
                            .send(Err(StoreError::Unavailable {
                                endpoint: endpoint.clone(),
                                reason: e.to_string(),
                            }))
                            .await;
                        return;
                    }
                };
                if message.compact_revision() > 0 {
                    let _ = sender
                        .send(Err(StoreError::Compacted {
                            requested: revision,
                            oldest: message.compact_revision(),
                        }))
                        .await;
                    return;
                }
                if message.canceled() {
                    let _ = sender
                        .send(Err(StoreError::Failed(format!(
                            "the watch was cancelled: {}",
                            message.cancel_reason()
                        ))))
                        .await;
                    return;
                }
                let events: Vec<WatchEvent> = message
                    .events()
                    .iter()
                    .filter_map(|event| {
                        let kv = event.kv()?;
                        Some(match event.event_type() {
                            EventType::Put => WatchEvent::Put(versioned(kv)),
                            EventType::Delete => WatchEvent::Delete {
                                key: text(kv.key()),
                                revision: kv.mod_revision(),
                            },
                        })
                    })
                    .collect();
                if !events.is_empty() && sender.send(Ok(events)).await.is_err() {
                    return;
                }
            }
        });
        Ok(receiver)
    }
}
