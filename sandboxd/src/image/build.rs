//! Writing images: an OCI image layout from root filesystem directories, one layer each.
//! What `examples/build-images.sh` packs the demo images with, and what tests make their
//! archives with.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::ImageConfig;

fn digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// A tar of `dir`'s contents (paths relative to it), symlinks as links, modes kept, and
/// owners and times fixed (root, one constant mtime): the same tree gives the same bytes,
/// so rebuilding an unchanged image gives the same layer and image ids instead of a new,
/// dangling copy.
pub fn tar_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    builder
        .append_dir_all(".", dir)
        .with_context(|| format!("archive {}", dir.display()))?;
    Ok(builder.into_inner()?)
}

fn write_blob(layout: &Path, bytes: &[u8]) -> anyhow::Result<(String, u64)> {
    let digest = digest(bytes);
    let path = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
    Ok((digest, bytes.len() as u64))
}

/// Writes an OCI image layout at `out` holding one image named `name` (a full reference),
/// whose layers are the given directories (bottom first), gzip-compressed if `gzip`.
/// Returns the manifest digest.
pub fn write_layout(
    out: &Path,
    name: &str,
    layers: &[&Path],
    config: &ImageConfig,
    gzip: bool,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(out.join("blobs/sha256"))?;
    std::fs::write(out.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut diff_ids = Vec::new();
    let mut descriptors = Vec::new();
    for dir in layers {
        let tar = tar_dir(dir)?;
        diff_ids.push(digest(&tar));
        let (blob, media_type) = if gzip {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(&tar)?;
            (
                encoder.finish()?,
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        } else {
            (tar, "application/vnd.oci.image.layer.v1.tar")
        };
        let (digest, size) = write_blob(out, &blob)?;
        descriptors.push(json!({ "mediaType": media_type, "digest": digest, "size": size }));
    }
    let exposed: serde_json::Map<String, serde_json::Value> = config
        .exposed_ports
        .iter()
        .map(|p| (p.clone(), json!({})))
        .collect();
    let config_doc = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": config.env, "Entrypoint": config.entrypoint, "Cmd": config.cmd,
            "WorkingDir": config.working_dir, "User": config.user,
            "ExposedPorts": exposed, "Labels": config.labels,
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let (config_digest, config_size) = write_blob(out, &serde_json::to_vec(&config_doc)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size },
        "layers": descriptors,
    });
    let (manifest_digest, manifest_size) = write_blob(out, &serde_json::to_vec(&manifest)?)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": { "io.containerd.image.name": name, "org.opencontainers.image.ref.name": name },
        }],
    });
    std::fs::write(out.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(manifest_digest)
}
