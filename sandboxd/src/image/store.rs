//! The image store on disk.
//!
//! ```text
//! <root>/blobs/sha256/<hex>    manifests, configs and layer archives, by digest
//! <root>/layers/sha256/<hex>   each layer unpacked once, by diff id (an overlayfs lowerdir)
//! <root>/index.json            images (by config digest) and their tags
//! <root>/lock                  flock: shared to read, exclusive to change
//! <root>/tmp/                  imports in progress
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::Reference;

const INDEX_VERSION: u32 = 1;

/// How a container of the image runs unless told otherwise (the image config's `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// "8080/tcp"
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the uncompressed tar: names the unpacked layer.
    pub diff_id: String,
    /// Digest of the blob as stored (maybe compressed).
    pub blob: String,
    pub size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:<config digest>`, as containerd's CRI names images.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Bottom layer first.
    pub layers: Vec<LayerRecord>,
    /// Bytes of the blobs (config and layers), as CRI reports an image's size.
    pub size: u64,
    pub imported_at_ns: i64,
    pub config: ImageConfig,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Index {
    pub version: u32,
    pub images: BTreeMap<String, ImageRecord>,
}

/// A lock on the store, held while reading (shared) or changing (exclusive) it.
pub struct StoreLock(#[allow(dead_code)] std::fs::File);

#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

pub fn hex_of(digest: &str) -> anyhow::Result<&str> {
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("{digest:?} is not a sha256 digest"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{digest:?} is not a sha256 digest");
    }
    Ok(hex)
}

impl ImageStore {
    pub fn open(root: impl Into<PathBuf>) -> anyhow::Result<ImageStore> {
        let root = root.into();
        for dir in ["blobs/sha256", "layers/sha256", "tmp"] {
            std::fs::create_dir_all(root.join(dir))
                .with_context(|| format!("create {}", root.join(dir).display()))?;
        }
        Ok(ImageStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn lock(&self, exclusive: bool) -> anyhow::Result<StoreLock> {
        use crate::lockfile::{lock, LockMode};
        let path = self.root.join("lock");
        let mode = if exclusive {
            LockMode::Exclusive
        } else {
            LockMode::Shared
        };
        let file = lock(&path, mode).with_context(|| format!("lock {}", path.display()))?;
        Ok(StoreLock(file))
    }

    pub fn blob_path(&self, digest: &str) -> anyhow::Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(hex_of(digest)?))
    }

    /// Where a layer is unpacked: an overlayfs lower dir.
    pub fn layer_path(&self, diff_id: &str) -> anyhow::Result<PathBuf> {
        Ok(self.root.join("layers/sha256").join(hex_of(diff_id)?))
    }

    pub(crate) fn temp_dir(&self) -> anyhow::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(self.root.join("tmp"))
            .context("create a temp dir in the image store")
    }

    pub(crate) fn load_index(&self) -> anyhow::Result<Index> {
        let path = self.root.join("index.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let index: Index = serde_json::from_slice(&bytes)
                    .with_context(|| format!("parse {}", path.display()))?;
                if index.version != INDEX_VERSION {
                    bail!(
                        "{} has version {}, this sandboxd reads {INDEX_VERSION}",
                        path.display(),
                        index.version
                    );
                }
                Ok(index)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index {
                version: INDEX_VERSION,
                images: BTreeMap::new(),
            }),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    pub(crate) fn save_index(&self, index: &Index) -> anyhow::Result<()> {
        let path = self.root.join("index.json");
        let staging = self.root.join(".index.json.tmp");
        let mut file = std::fs::File::create(&staging)?;
        file.write_all(&serde_json::to_vec_pretty(index)?)?;
        file.sync_all()?;
        std::fs::rename(&staging, &path).with_context(|| format!("write {}", path.display()))?;
        Ok(())
    }

    pub fn list(&self) -> anyhow::Result<Vec<ImageRecord>> {
        let _lock = self.lock(false)?;
        Ok(self.load_index()?.images.into_values().collect())
    }

    /// Finds an image by reference (`busybox`, `kubetm/app:v1`, `name@sha256:…`), by id
    /// (`sha256:<hex>`), or by a unique prefix of at least 12 hex digits of its id.
    pub fn resolve(&self, name: &str) -> anyhow::Result<Option<ImageRecord>> {
        let _lock = self.lock(false)?;
        Ok(resolve_in(&self.load_index()?, name))
    }

    /// Removes an image with all its tags, then every blob and layer no image uses.
    /// Returns whether there was such an image.
    pub fn remove(&self, name: &str) -> anyhow::Result<bool> {
        let _lock = self.lock(true)?;
        let mut index = self.load_index()?;
        let Some(image) = resolve_in(&index, name) else {
            return Ok(false);
        };
        index.images.remove(&image.id);
        self.save_index(&index)?;
        self.collect_garbage(&index)?;
        Ok(true)
    }

    /// Deletes blobs and layers that no image references (left by removals or failed imports).
    pub(crate) fn collect_garbage(&self, index: &Index) -> anyhow::Result<()> {
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for image in index.images.values() {
            blobs.insert(hex_of(&image.id)?.to_string());
            for layer in &image.layers {
                blobs.insert(hex_of(&layer.blob)?.to_string());
                layers.insert(hex_of(&layer.diff_id)?.to_string());
            }
            for digest in &image.repo_digests {
                if let Some((_, d)) = digest.split_once('@') {
                    blobs.insert(hex_of(d)?.to_string());
                }
            }
        }
        for (dir, keep) in [("blobs/sha256", &blobs), ("layers/sha256", &layers)] {
            for entry in std::fs::read_dir(self.root.join(dir))?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    let path = entry.path();
                    let removed = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                    removed.with_context(|| format!("remove {}", path.display()))?;
                }
            }
        }
        Ok(())
    }

    /// Bytes and inodes the store uses, for ImageFsInfo.
    pub fn usage(&self) -> (u64, u64) {
        fn walk(dir: &Path, bytes: &mut u64, inodes: &mut u64) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                *inodes += 1;
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                if meta.is_dir() {
                    walk(&entry.path(), bytes, inodes);
                } else {
                    *bytes += meta.len();
                }
            }
        }
        let (mut bytes, mut inodes) = (0, 0);
        walk(&self.root, &mut bytes, &mut inodes);
        (bytes, inodes)
    }
}

pub(crate) fn resolve_in(index: &Index, name: &str) -> Option<ImageRecord> {
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut found = index
            .images
            .values()
            .filter(|i| i.id["sha256:".len()..].starts_with(hex));
        if let (Some(image), None) = (found.next(), found.next()) {
            return Some(image.clone());
        }
    }
    let reference = Reference::parse(name).ok()?;
    index
        .images
        .values()
        .find(|image| {
            reference
                .tagged()
                .is_some_and(|t| image.repo_tags.contains(&t))
                || reference.digest.as_ref().is_some_and(|d| {
                    image
                        .repo_digests
                        .contains(&format!("{}@{d}", reference.repository))
                })
        })
        .cloned()
}
