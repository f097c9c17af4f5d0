//! The local store: the cluster store of a node alone, a JSON file in its state dir
//! (rewritten atomically and fsynced on each write, which a single node's few objects
//! make cheap), watched in-process.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::store::{
    ClusterStore, Listing, StoreError, Versioned, WatchEvent, WatchReceiver, WatchSender,
};

/// How many past changes a watch can start from.
const HISTORY: usize = 1000;

#[derive(Default, Serialize, Deserialize)]
struct Contents {
    revision: i64,
    /// key → (value, revision of its last write).
    keys: BTreeMap<String, (String, i64)>,
}

struct State {
    contents: Contents,
    history: VecDeque<WatchEvent>,
    watchers: Vec<(String, WatchSender)>,
}

pub struct LocalStore {
    path: PathBuf,
    state: Mutex<State>,
}

impl LocalStore {
    pub fn open(path: &Path) -> anyhow::Result<LocalStore> {
        let contents = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "the local cluster store {} is unreadable: {e}",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Contents::default(),
            Err(e) => return Err(anyhow::anyhow!("read {}: {e}", path.display())),
        };
        Ok(LocalStore {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                contents,
                history: VecDeque::new(),
                watchers: Vec::new(),
            }),
        })
    }

    fn save(&self, contents: &Contents) -> Result<(), StoreError> {
        let failed =
            |e: std::io::Error| StoreError::Failed(format!("write {}: {e}", self.path.display()));
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let staging = self.path.with_extension("tmp");
        let json = serde_json::to_vec(contents).expect("serializable");
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&staging).map_err(failed)?;
            file.write_all(&json).map_err(failed)?;
            file.sync_all().map_err(failed)?;
        }
        std::fs::rename(&staging, &self.path).map_err(failed)
    }

    /// Applies one change: persists it, then tells the watchers of its prefix.
    fn commit(&self, state: &mut State, key: &str, value: Option<&str>) -> Result<i64, StoreError> {
        let revision = state.contents.revision + 1;
        let previous = match value {
            Some(value) => state
                .contents
                .keys
                .insert(key.to_string(), (value.to_string(), revision)),
            None => state.contents.keys.remove(key),
        };
        state.contents.revision = revision;
        if let Err(e) = self.save(&state.contents) {
            // Undo in memory what could not be made durable.
            state.contents.revision -= 1;
            match previous {
                Some(old) => state.contents.keys.insert(key.to_string(), old),
                None => state.contents.keys.remove(key),
            };
            return Err(e);
        }
        let event = match value {
            Some(value) => WatchEvent::Put(Versioned {
                key: key.to_string(),
                value: value.to_string(),
                revision,
            }),
            None => WatchEvent::Delete {
                key: key.to_string(),
                revision,
            },
        };
        state.history.push_back(event.clone());
        if state.history.len() > HISTORY {
            state.history.pop_front();
        }
        state.watchers.retain(|(prefix, sender)| {
            !key.starts_with(prefix.as_str()) || sender.try_send(Ok(vec![event.clone()])).is_ok()
        });
        Ok(revision)
    }
}

#[tonic::async_trait]
impl ClusterStore for LocalStore {
    fn describe(&self) -> String {
        format!("local store {}", self.path.display())
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let state = self.state.lock().expect("store lock");
        Ok(state
            .contents
            .keys
            .get(key)
            .map(|(value, revision)| Versioned {
                key: key.to_string(),
                value: value.clone(),
                revision: *revision,
            }))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let state = self.state.lock().expect("store lock");
        Ok(Listing {
            items: state
                .contents
                .keys
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(key, (value, revision))| Versioned {
                    key: key.clone(),
                    value: value.clone(),
                    revision: *revision,
                })
                .collect(),
            revision: state.contents.revision,
        })
    }

    async fn create(&self, key: &str, value: &str) -> Result<Option<i64>, StoreError> {
        let mut state = self.state.lock().expect("store lock");
        if state.contents.keys.contains_key(key) {
            return Ok(None);
        }
        self.commit(&mut state, key, Some(value)).map(Some)
    }

    async fn update(
        &self,
        key: &str,
        value: &str,
        revision: i64,
    ) -> Result<Option<i64>, StoreError> {
        let mut state = self.state.lock().expect("store lock");
        if state.contents.keys.get(key).map(|(_, r)| *r) != Some(revision) {
            return Ok(None);
        }
        self.commit(&mut state, key, Some(value)).map(Some)
    }

    async fn delete(&self, key: &str, revision: Option<i64>) -> Result<bool, StoreError> {
        let mut state = self.state.lock().expect("store lock");
        let current = state.contents.keys.get(key).map(|(_, r)| *r);
        if current.is_none() || (revision.is_some() && current != revision) {
            return Ok(false);
        }
        self.commit(&mut state, key, None).map(|_| true)
    }

    async fn watch(&self, prefix: &str, revision: i64) -> Result<WatchReceiver, StoreError> {
        let mut state = self.state.lock().expect("store lock");
        let oldest = state
            .history
            .front()
            .map_or(state.contents.revision + 1, WatchEvent::revision);
        if revision < oldest && revision <= state.contents.revision {
            return Err(StoreError::Compacted {
                requested: revision,
                oldest,
            });
        }
        let (sender, receiver) = mpsc::channel(HISTORY + 64);
        let past: Vec<WatchEvent> = state
            .history
            .iter()
            .filter(|e| e.revision() >= revision)
            .filter(|e| match e {
                WatchEvent::Put(v) => v.key.starts_with(prefix),
                WatchEvent::Delete { key, .. } => key.starts_with(prefix),
            })
            .cloned()
            .collect();
        if !past.is_empty() {
            let _ = sender.try_send(Ok(past));
        }
        state.watchers.push((prefix.to_string(), sender));
        Ok(receiver)
    }
}
