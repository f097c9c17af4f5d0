//! Importing images: an OCI image layout (a directory, as `skopeo copy … oci:DIR` writes),
//! an OCI archive (the same as a tar), or a `docker save` archive (tar or directory).
//!
//! Every blob is copied into the store under its digest and checked against it; every layer
//! is unpacked once and its diff id checked against the image config. Work happens in a
//! temp dir of the store and only a complete image reaches the index, so a bad archive
//! leaves nothing behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;

use super::store::{hex_of, ImageConfig, ImageRecord, ImageStore, LayerRecord};
use super::unpack::{unpack_layer, HashingReader};
use super::Reference;

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// One image found in an archive, before it is stored.
struct Found {
    /// The name the archive gives it, if any.
    name: Option<String>,
    /// The manifest's digest and file (OCI layouts; docker archives have none).
    manifest: Option<(String, PathBuf)>,
    config: PathBuf,
    /// Layer archives, bottom first.
    layers: Vec<PathBuf>,
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))
}

/// The sha256 digest of a file's bytes.
fn digest_of(path: &Path) -> anyhow::Result<(String, u64)> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    Ok(HashingReader::new(std::io::BufReader::new(file)).finish()?)
}

fn oci_blob(layout: &Path, digest: &str) -> anyhow::Result<PathBuf> {
    Ok(layout.join("blobs/sha256").join(hex_of(digest)?))
}

/// Checks a blob of an OCI layout against its digest, then returns its path.
fn verified_blob(layout: &Path, digest: &str) -> anyhow::Result<PathBuf> {
    let path = oci_blob(layout, digest)?;
    let (actual, _) = digest_of(&path).with_context(|| format!("blob {digest}"))?;
    if actual != digest {
        bail!(
            "blob {} has digest {actual}, not {digest}: the archive is corrupt",
            path.display()
        );
    }
    Ok(path)
}

fn find_oci(layout: &Path) -> anyhow::Result<Vec<Found>> {
    let index = read_json(&layout.join("index.json"))?;
    let mut found = Vec::new();
    let mut pending: Vec<Value> = index["manifests"].as_array().cloned().unwrap_or_default();
    while let Some(descriptor) = pending.pop() {
        let digest = descriptor["digest"]
            .as_str()
            .context("a manifest descriptor has no digest")?
            .to_string();
        let media_type = descriptor["mediaType"].as_str().unwrap_or_default();
        let doc = read_json(&verified_blob(layout, &digest)?)?;
        let media_type = if media_type.is_empty() {
            doc["mediaType"].as_str().unwrap_or_default()
        } else {
            media_type
        };
        if INDEX_TYPES.contains(&media_type) || doc["manifests"].is_array() {
            // A multi-platform index: this node runs linux/amd64.
            for m in doc["manifests"].as_array().into_iter().flatten() {
                let platform = &m["platform"];
                if platform.is_null()
                    || (platform["os"] == "linux" && platform["architecture"] == "amd64")
                {
                    pending.push(m.clone());
                }
            }
            continue;
        }
        if !MANIFEST_TYPES.contains(&media_type) && !doc["layers"].is_array() {
            bail!("manifest {digest} has media type {media_type:?}, not an image manifest");
        }
        let config = verified_blob(
            layout,
            doc["config"]["digest"]
                .as_str()
                .context("the manifest has no config digest")?,
        )?;
        let layers = doc["layers"]
            .as_array()
            .context("the manifest has no layers list")?
            .iter()
            .map(|l| {
                verified_blob(
                    layout,
                    l["digest"].as_str().context("a layer has no digest")?,
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // containerd names images in full; the OCI annotation is often only a tag
        // ("latest"), which says nothing of the repository and is then ignored.
        let annotations = &descriptor["annotations"];
        let name = annotations["io.containerd.image.name"]
            .as_str()
            .or_else(|| {
                annotations["org.opencontainers.image.ref.name"]
                    .as_str()
                    .filter(|n| n.contains([':', '/']))
            })
            .map(str::to_string);
        let manifest_path = oci_blob(layout, &digest)?;
        found.push(Found {
            name,
            manifest: Some((digest, manifest_path)),
            config,
            layers,
        });
    }
    Ok(found)
}

fn find_docker(dir: &Path) -> anyhow::Result<Vec<Found>> {
    let manifest = read_json(&dir.join("manifest.json"))?;
    let mut found = Vec::new();
    for entry in manifest.as_array().context("manifest.json is not a list")? {
        let config = dir.join(
            entry["Config"]
                .as_str()
                .context("manifest.json: an entry has no Config")?,
        );
        let layers = entry["Layers"]
            .as_array()
            .context("manifest.json: an entry has no Layers")?
            .iter()
            .map(|l| Ok(dir.join(l.as_str().context("a layer is not a path")?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let tags: Vec<String> = entry["RepoTags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        if tags.is_empty() {
            found.push(Found {
                name: None,
                manifest: None,
                config: config.clone(),
                layers: layers.clone(),
            });
        }
        for tag in tags {
            found.push(Found {
                name: Some(tag),
                manifest: None,
                config: config.clone(),
                layers: layers.clone(),
            });
        }
    }
    Ok(found)
}

fn extract_archive(archive: &Path, into: &Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(archive).with_context(|| format!("open {}", archive.display()))?;
    let mut tar = tar::Archive::new(super::unpack::decompressed(file)?);
    tar.unpack(into)
        .with_context(|| format!("unpack {}", archive.display()))
}

fn image_config(config: &Value) -> ImageConfig {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let c = &config["config"];
    ImageConfig {
        env: strings(&c["Env"]),
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
        user: c["User"].as_str().unwrap_or_default().to_string(),
        exposed_ports: c["ExposedPorts"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
        labels: c["Labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect::<BTreeMap<_, _>>()
            })
            .unwrap_or_default(),
    }
}

/// Copies a file into the store's blobs under its digest, if not there already.
fn store_blob(store: &ImageStore, source: &Path, digest: &str) -> anyhow::Result<()> {
    let target = store.blob_path(digest)?;
    if target.exists() {
        return Ok(());
    }
    let staging = target.with_extension("partial");
    std::fs::copy(source, &staging)
        .with_context(|| format!("copy {} into the store", source.display()))?;
    std::fs::rename(&staging, &target)?;
    Ok(())
}

/// Imports every image of `source`; `name` tags the image (an archive of one image) or
/// names images that the archive leaves unnamed. Returns what was imported.
pub fn import(
    store: &ImageStore,
    source: &Path,
    name: Option<&str>,
) -> anyhow::Result<Vec<ImageRecord>> {
    let requested = name
        .map(Reference::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let work = store.temp_dir()?;
    let root = if source.is_dir() {
        source.to_path_buf()
    } else {
        let unpacked = work.path().join("archive");
        std::fs::create_dir_all(&unpacked)?;
        extract_archive(source, &unpacked)?;
        unpacked
    };
    let found = if root.join("oci-layout").is_file() {
        find_oci(&root)?
    } else if root.join("manifest.json").is_file() {
        find_docker(&root)?
    } else {
        bail!("{} is neither an OCI image layout (oci-layout, index.json) nor a docker save archive (manifest.json)", source.display());
    };
    if found.is_empty() {
        bail!("{} holds no image", source.display());
    }
    if requested.is_some() && found.len() > 1 {
        bail!(
            "{} holds {} images; a name can only be given to one",
            source.display(),
            found.len()
        );
    }

    let _lock = store.lock(true)?;
    let mut index = store.load_index()?;
    let mut imported = Vec::new();
    let outcome = (|| -> anyhow::Result<()> {
        for image in found {
            let record = store_image(store, work.path(), &image, requested.as_ref())?;
            // A tag names one image: move it.
            for other in index.images.values_mut() {
                other.repo_tags.retain(|t| !record.repo_tags.contains(t));
            }
            let entry = index
                .images
                .entry(record.id.clone())
                .or_insert_with(|| record.clone());
            for tag in &record.repo_tags {
                if !entry.repo_tags.contains(tag) {
                    entry.repo_tags.push(tag.clone());
                }
            }
            for digest in &record.repo_digests {
                if !entry.repo_digests.contains(digest) {
                    entry.repo_digests.push(digest.clone());
                }
            }
            imported.push(entry.clone());
        }
        store.save_index(&index)
    })();
    if let Err(e) = outcome {
        // Blobs and layers of a failed import are referenced by no image.
        let _ = store.collect_garbage(&store.load_index()?);
        return Err(e);
    }
    Ok(imported)
}

fn store_image(
    store: &ImageStore,
    work: &Path,
    image: &Found,
    requested: Option<&Reference>,
) -> anyhow::Result<ImageRecord> {
    let (config_digest, config_size) = digest_of(&image.config)?;
    let config = read_json(&image.config)?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .context("the image config has no rootfs.diff_ids")?
        .iter()
        .filter_map(|d| d.as_str().map(str::to_string))
        .collect();
    if diff_ids.len() != image.layers.len() {
        bail!(
            "the image config lists {} layers but the manifest {}",
            diff_ids.len(),
            image.layers.len()
        );
    }
    store_blob(store, &image.config, &config_digest)?;

    let mut layers = Vec::new();
    let mut size = config_size;
    for (blob_path, diff_id) in image.layers.iter().zip(&diff_ids) {
        let (blob, blob_size) = digest_of(blob_path)?;
        store_blob(store, blob_path, &blob)?;
        let target = store.layer_path(diff_id)?;
        if !target.exists() {
            let staging = tempfile::Builder::new().prefix("layer-").tempdir_in(work)?;
            let actual = unpack_layer(blob_path, staging.path())
                .with_context(|| format!("unpack layer {blob}"))?;
            if actual != *diff_id {
                bail!("layer {blob} unpacks to {actual}, but the image config says {diff_id}: the archive is corrupt");
            }
            std::fs::rename(staging.keep(), &target)
                .with_context(|| format!("store layer {diff_id}"))?;
        }
        layers.push(LayerRecord {
            diff_id: diff_id.clone(),
            blob,
            size: blob_size,
        });
        size += blob_size;
    }

    let name = match (requested, &image.name) {
        (Some(reference), _) => Some(reference.clone()),
        (None, Some(name)) => Some(Reference::parse(name).map_err(anyhow::Error::msg)?),
        (None, None) => None,
    };
    let mut repo_tags = Vec::new();
    let mut repo_digests = Vec::new();
    if let Some(reference) = &name {
        repo_tags.extend(reference.tagged());
        if let Some((digest, path)) = &image.manifest {
            store_blob(store, path, digest)?;
            repo_digests.push(format!("{}@{digest}", reference.repository));
        }
    }
    Ok(ImageRecord {
        id: config_digest,
        repo_tags,
        repo_digests,
        layers,
        size,
        imported_at_ns: crate::runtime::now_ns(),
        config: image_config(&config),
    })
}
