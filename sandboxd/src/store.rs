//! Records on disk: one directory per object id, a versioned JSON file written atomically.
//!
//! `<dir>/<id>/<file>` is written to a temporary name, fsynced, renamed over the old file,
//! and the directory fsynced, so after a crash or a power loss a record is either the old
//! one or the new one. Unlike the CNI cache, these records are what a restarted daemon
//! rebuilds its view from, so they must survive.
//!
//! A [transient](Store::transient) kind skips both fsyncs: it only has to outlive a crash
//! of sandboxd (the page cache does not go with the process), not a power loss, because
//! what it describes does not survive one either (a run intent's namespaces, veth and
//! processes; what stays on disk, leases and cache entries, the start-up CNI GC frees).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What [`Store::load_all`] found.
pub struct Loaded<T> {
    pub records: Vec<T>,
    /// Ids whose record could not be read, with why.
    pub unreadable: Vec<(String, anyhow::Error)>,
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    file: &'static str,
    durable: bool,
}

impl Store {
    /// Records of one kind under `dir`, each in `<dir>/<id>/<file>`.
    pub fn new(dir: impl Into<PathBuf>, file: &'static str) -> Self {
        Store {
            dir: dir.into(),
            file,
            durable: true,
        }
    }

    /// Records that must outlive a crash of the daemon but not of the machine: written
    /// atomically, without the two fsyncs (~0.5 ms on a pod's start path).
    pub fn transient(dir: impl Into<PathBuf>, file: &'static str) -> Self {
        Store {
            durable: false,
            ..Store::new(dir, file)
        }
    }

    pub fn dir_of(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    pub fn save<T: Serialize>(&self, id: &str, record: &T) -> anyhow::Result<()> {
        let dir = self.dir_of(id);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join(self.file);
        let staging = dir.join(format!(".{}.tmp", self.file));
        let bytes = serde_json::to_vec_pretty(record).context("serialize the record")?;
        let mut file = std::fs::File::create(&staging)
            .with_context(|| format!("create {}", staging.display()))?;
        file.write_all(&bytes)
            .and_then(|()| {
                if self.durable {
                    file.sync_all()
                } else {
                    Ok(())
                }
            })
            .with_context(|| format!("write {}", staging.display()))?;
        std::fs::rename(&staging, &path)
            .with_context(|| format!("rename to {}", path.display()))?;
        if self.durable {
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("sync {}", dir.display()))?;
        }
        Ok(())
    }

    /// Every record, and the ids whose file could not be read (left for the operator).
    pub fn load_all<T: DeserializeOwned>(&self) -> anyhow::Result<Loaded<T>> {
        let mut loaded = Loaded {
            records: Vec::new(),
            unreadable: Vec::new(),
        };
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(loaded),
            Err(e) => return Err(e).with_context(|| format!("read {}", self.dir.display())),
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path().join(self.file);
            if !path.exists() && entry.path().is_dir() {
                continue; // another kind of record only (an intent)
            }
            match read(&path) {
                Ok(record) => loaded.records.push(record),
                Err(e) => loaded.unreadable.push((id, e)),
            }
        }
        Ok(loaded)
    }

    /// The record of `id`, if its file exists.
    pub fn load<T: DeserializeOwned>(&self, id: &str) -> anyhow::Result<Option<T>> {
        let path = self.dir_of(id).join(self.file);
        if !path.exists() {
            return Ok(None);
        }
        read(&path).map(Some)
    }

    /// Whether `id` has this kind of record.
    pub fn contains(&self, id: &str) -> bool {
        self.dir_of(id).join(self.file).exists()
    }

    /// Every id with a directory here, with or without this kind of record (a directory
    /// may hold another kind: an intent before its record, files after it).
    pub fn ids(&self) -> anyhow::Result<Vec<String>> {
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => Ok(entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("read {}", self.dir.display())),
        }
    }

    /// Ids whose directory holds no record of this kind: an operation a crash cut short
    /// (its intent, kept in `intents` beside the records, says what it made) or a removal
    /// it cut short. An intent beside a record belongs to an operation that finished but
    /// for discarding it: it is discarded here.
    pub fn unfinished(&self, intents: &Store) -> anyhow::Result<Vec<String>> {
        let mut unfinished = Vec::new();
        for id in self.ids()? {
            if !self.contains(&id) {
                unfinished.push(id);
            } else if intents.contains(&id) {
                intents.discard(&id)?;
            }
        }
        Ok(unfinished)
    }

    /// Removes this kind of record of `id`, keeping the directory and its other files.
    pub fn discard(&self, id: &str) -> anyhow::Result<()> {
        let path = self.dir_of(id).join(self.file);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("remove {}", path.display())),
        }
    }

    /// Removes a record and its directory; a missing one is not an error.
    pub fn remove(&self, id: &str) -> anyhow::Result<()> {
        match std::fs::remove_dir_all(self.dir_of(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("remove {}", self.dir_of(id).display())),
        }
    }
}

fn read<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Record {
        version: u32,
        name: String,
    }

    #[test]
    fn saves_loads_and_removes_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "record.json");
        store
            .save(
                "a",
                &Record {
                    version: 1,
                    name: "x".into(),
                },
            )
            .unwrap();
        store
            .save(
                "a",
                &Record {
                    version: 1,
                    name: "y".into(),
                },
            )
            .unwrap();
        std::fs::create_dir_all(dir.path().join("broken")).unwrap();
        std::fs::write(dir.path().join("broken/record.json"), "{").unwrap();
        let loaded = store.load_all::<Record>().unwrap();
        assert_eq!(
            loaded.records,
            vec![Record {
                version: 1,
                name: "y".into()
            }]
        );
        assert_eq!(loaded.unreadable.len(), 1);
        assert_eq!(loaded.unreadable[0].0, "broken");
        store.remove("a").unwrap();
        store.remove("a").unwrap();
        assert!(!dir.path().join("a").exists());
    }

    #[test]
    fn dirs_without_a_record_are_unfinished_and_stale_intents_go() {
        let dir = tempfile::tempdir().unwrap();
        let records = Store::new(dir.path(), "record.json");
        let intents = Store::new(dir.path(), "intent.json");
        let record = Record {
            version: 1,
            name: "x".into(),
        };
        intents.save("cut-short", &record).unwrap();
        intents.save("finished", &record).unwrap();
        records.save("finished", &record).unwrap();
        records.save("plain", &record).unwrap();
        std::fs::create_dir_all(dir.path().join("left-by-a-removal")).unwrap();
        let mut unfinished = records.unfinished(&intents).unwrap();
        unfinished.sort();
        assert_eq!(unfinished, ["cut-short", "left-by-a-removal"]);
        assert!(!intents.contains("finished") && records.contains("finished"));
        assert_eq!(
            records.load_all::<Record>().unwrap().records.len(),
            2,
            "dirs with only an intent are no records"
        );
        assert!(intents.load::<Record>("cut-short").unwrap().is_some());
    }
}
