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

/// A tar of `dir`'s contents (paths relative to it), symlinks as links, every mode bit
/// kept (setuid, setgid and sticky too: tar's own deterministic mode drops them), and
/// owners, times and order fixed (root, one constant mtime, names sorted): the same tree
/// gives the same bytes, so rebuilding an unchanged image gives the same layer and image
/// ids instead of a new, dangling copy.
pub fn tar_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    append_tree(&mut builder, dir, Path::new(""))?;
    Ok(builder.into_inner()?)
}

/// The mtime of every entry: tar's own deterministic one (some tools mishandle 0).
const MTIME: u64 = 1_153_704_088;

fn append_tree(
    builder: &mut tar::Builder<Vec<u8>>,
    root: &Path,
    relative: &Path,
) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = root.join(relative);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("read {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = relative.join(entry.file_name());
        let path = entry.path();
        let meta =
            std::fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
        let mut header = tar::Header::new_gnu();
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        let added = if meta.file_type().is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            let target = std::fs::read_link(&path)?;
            builder.append_link(&mut header, &name, target)
        } else if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, &name, std::io::empty())
                .and_then(|()| append_tree(builder, root, &name).map_err(std::io::Error::other))
        } else if meta.is_file() {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            let file = std::fs::File::open(&path)?;
            builder.append_data(&mut header, &name, file)
        } else {
            anyhow::bail!(
                "{}: only files, dirs and symlinks go into a layer",
                path.display()
            );
        };
        added.with_context(|| format!("archive {}", path.display()))?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_keep_every_mode_bit_and_are_reproducible() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::set_permissions(
            dir.path().join("tmp"),
            std::fs::Permissions::from_mode(0o1777),
        )
        .unwrap();
        std::fs::write(dir.path().join("setuid"), b"x").unwrap();
        std::fs::set_permissions(
            dir.path().join("setuid"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::os::unix::fs::symlink("setuid", dir.path().join("link")).unwrap();
        let tar = tar_dir(dir.path()).unwrap();
        assert_eq!(tar, tar_dir(dir.path()).unwrap());
        let mut archive = tar::Archive::new(&tar[..]);
        let modes: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            modes,
            [
                ("link".to_string(), 0o777),
                ("setuid".into(), 0o4755),
                ("tmp".into(), 0o1777)
            ]
        );
    }
}
