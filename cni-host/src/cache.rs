//! The result cache: what ADD returned, kept on disk for DEL, CHECK and GC.
//!
//! One file per attachment, `<dir>/results/<network>-<container id>-<ifname>`, in libcni's
//! `cniCacheV1` format, so entries written by cnitool or containerd's go-cni under the same
//! dir are understood here and the other way round. Files are written to a temporary name
//! and renamed, so a crash of the writer leaves the old entry or the new one, never half of
//! one. They are not fsynced (nor are libcni's or host-local's files): an entry describes
//! kernel objects (veths, addresses, rules) that a power loss destroys anyway, and the fsync
//! would cost ~0.7 ms of every ADD (BENCHMARKS.md). The price: an entry written in the last
//! seconds before a power loss may be lost while an IPAM lease of the same ADD survives.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// libcni's default cache dir.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";
const KIND: &str = "cniCacheV1";

/// One cached attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAttachment {
    pub kind: String,
    #[serde(rename = "containerId")]
    pub container_id: String,
    /// The network config the attachment was made with (base64 in the file, as Go writes []byte).
    #[serde(with = "base64_bytes", default)]
    pub config: Vec<u8>,
    #[serde(rename = "ifName")]
    pub ifname: String,
    #[serde(rename = "networkName")]
    pub network: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_args: Vec<(String, String)>,
    #[serde(
        rename = "capabilityArgs",
        default,
        skip_serializing_if = "Map::is_empty"
    )]
    pub capability_args: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

mod base64_bytes {
    use super::*;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = Option::<String>::deserialize(d)?.unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot {action} CNI cache entry {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("CNI cache entry {} is corrupt: {reason}", .path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// The cache directory.
#[derive(Debug, Clone)]
pub struct ResultCache {
    dir: PathBuf,
}

impl ResultCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ResultCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn results_dir(&self) -> PathBuf {
        self.dir.join("results")
    }

    pub fn path_of(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.results_dir()
            .join(format!("{network}-{container_id}-{ifname}"))
    }

    /// Writes an entry atomically (temp file, rename).
    pub fn store(&self, entry: &CachedAttachment) -> Result<(), CacheError> {
        let path = self.path_of(&entry.network, &entry.container_id, &entry.ifname);
        let io_err = |action, source| CacheError::Io {
            action,
            path: path.clone(),
            source,
        };
        let dir = self.results_dir();
        std::fs::create_dir_all(&dir).map_err(|e| io_err("create the dir of", e))?;
        let bytes = serde_json::to_vec(entry).expect("cache entry serializes");
        let staging = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
            std::process::id()
        ));
        let write = || -> io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&staging)?;
            file.write_all(&bytes)?;
            std::fs::rename(&staging, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&staging);
            io_err("write", e)
        })
    }

    /// Reads an entry; `Ok(None)` if there is none.
    pub fn load(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CachedAttachment>, CacheError> {
        let path = self.path_of(network, container_id, ifname);
        match std::fs::read(&path) {
            Ok(bytes) => parse_entry(&path, &bytes).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CacheError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// Removes an entry, and any staging file of it that a writer killed between the write
    /// and the rename left (`.<entry>.<pid>.tmp`); a missing one is not an error.
    pub fn remove(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), CacheError> {
        let path = self.path_of(network, container_id, ifname);
        if let (Some(name), Ok(entries)) = (
            path.file_name().and_then(|n| n.to_str()),
            std::fs::read_dir(self.results_dir()),
        ) {
            let prefix = format!(".{name}.");
            for entry in entries.flatten() {
                let file = entry.file_name();
                let file = file.to_string_lossy();
                if file.starts_with(&prefix) && file.ends_with(".tmp") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CacheError::Io {
                action: "remove",
                path,
                source,
            }),
        }
    }

    /// Every readable entry, in file-name order. Unreadable or foreign files are skipped,
    /// as libcni does: the dir may be shared with other runtimes.
    pub fn list(&self) -> Result<Vec<CachedAttachment>, CacheError> {
        let dir = self.results_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(CacheError::Io {
                    action: "list",
                    path: dir,
                    source,
                })
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                !p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        paths.sort();
        Ok(paths
            .iter()
            .filter_map(|p| parse_entry(p, &std::fs::read(p).ok()?).ok())
            .filter(|e| !e.ifname.is_empty() && !e.network.is_empty())
            .collect())
    }
}

fn parse_entry(path: &Path, bytes: &[u8]) -> Result<CachedAttachment, CacheError> {
    let entry: CachedAttachment =
        serde_json::from_slice(bytes).map_err(|e| CacheError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if entry.kind != KIND {
        return Err(CacheError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("kind is {:?}, expected {KIND:?}", entry.kind),
        });
    }
    Ok(entry)
}

impl CachedAttachment {
    pub fn new(network: &str, container_id: &str, ifname: &str) -> Self {
        CachedAttachment {
            kind: KIND.to_string(),
            container_id: container_id.to_string(),
            config: Vec::new(),
            ifname: ifname.to_string(),
            network: network.to_string(),
            netns: String::new(),
            cni_args: Vec::new(),
            capability_args: Map::new(),
            result: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_loads_lists_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        let mut entry = CachedAttachment::new("pods", "abc", "eth0");
        entry.config = br#"{"name":"pods"}"#.to_vec();
        entry.cni_args = vec![("K8S_POD_NAME".into(), "web".into())];
        cache.store(&entry).unwrap();

        let text = std::fs::read_to_string(cache.path_of("pods", "abc", "eth0")).unwrap();
        assert!(
            text.contains(r#""kind":"cniCacheV1""#)
                && text.contains(r#""config":"eyJuYW1lIjoicG9kcyJ9""#),
            "{text}"
        );
        assert_eq!(
            cache.load("pods", "abc", "eth0").unwrap(),
            Some(entry.clone())
        );
        assert_eq!(cache.list().unwrap(), vec![entry]);

        // A writer killed between its write and its rename left its staging file; another
        // entry's staging file is not this entry's to remove.
        let results = dir.path().join("results");
        std::fs::write(results.join(".pods-abc-eth0.4242.tmp"), "{").unwrap();
        std::fs::write(results.join(".pods-abcd-eth0.4242.tmp"), "{").unwrap();
        cache.remove("pods", "abc", "eth0").unwrap();
        cache.remove("pods", "abc", "eth0").unwrap();
        assert_eq!(cache.load("pods", "abc", "eth0").unwrap(), None);
        std::fs::remove_file(results.join(".pods-abcd-eth0.4242.tmp"))
            .expect("another entry's staging file stays");
        assert!(
            std::fs::read_dir(dir.path().join("results"))
                .unwrap()
                .next()
                .is_none(),
            "no temp files left"
        );
    }

    #[test]
    fn reads_entries_libcni_wrote() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("results")).unwrap();
        // As written by libcni's cacheAdd.
        let libcni = r#"{"kind":"cniCacheV1","containerId":"cnitool-1234","config":"e30=","ifName":"eth0","networkName":"mynet","netns":"/run/netns/x","cniArgs":[["IgnoreUnknown","1"]],"result":{"cniVersion":"1.0.0"}}"#;
        std::fs::write(dir.path().join("results/mynet-cnitool-1234-eth0"), libcni).unwrap();
        std::fs::write(dir.path().join("results/junk"), "not json").unwrap();
        let cache = ResultCache::new(dir.path());
        let listed = cache.list().unwrap();
        assert_eq!(listed.len(), 1, "junk is skipped");
        assert_eq!(listed[0].config, b"{}");
        assert_eq!(
            listed[0].cni_args,
            vec![("IgnoreUnknown".to_string(), "1".to_string())]
        );
        assert!(matches!(cache.load("x", "y", "z"), Ok(None)));
    }
}
