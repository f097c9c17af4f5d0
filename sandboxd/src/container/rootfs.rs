//! A container's root filesystem: the image's layers as overlayfs lower dirs, and an upper
//! and work dir of the container's own, so containers of one image share its layers and
//! never see each other's writes.
//!
//! Matches `mount -t overlay overlay -o lowerdir=<top>:…:<bottom>,upperdir=<u>,workdir=<w> <target>`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The dirs of one container's rootfs.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// Image layers, top first.
    pub layers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub target: PathBuf,
}

impl Rootfs {
    /// The layout under a container's state dir: `upper/`, `work/` and the bundle's
    /// `rootfs/`.
    pub fn in_dir(layers: Vec<PathBuf>, state: &Path, bundle: &Path) -> Rootfs {
        Rootfs {
            layers,
            upper: state.join("upper"),
            work: state.join("work"),
            target: bundle.join("rootfs"),
        }
    }

    pub fn mount(&self) -> anyhow::Result<()> {
        if self.layers.is_empty() {
            bail!("an image without layers has no root filesystem");
        }
        for dir in [&self.upper, &self.work, &self.target] {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let lower: Vec<String> = self
            .layers
            .iter()
            .map(|l| l.display().to_string())
            .collect();
        for dir in self.layers.iter().chain([&self.upper, &self.work]) {
            // overlayfs splits its options on ',' and lowerdir on ':'.
            if dir.to_string_lossy().contains([',', ':']) {
                bail!(
                    "{} contains ',' or ':', which overlayfs options cannot hold",
                    dir.display()
                );
            }
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            self.upper.display(),
            self.work.display()
        );
        mount(
            Some("overlay"),
            &self.target,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .with_context(|| format!("mount the overlay rootfs at {}", self.target.display()))
    }

    /// Unmounts the rootfs; an unmounted one is not an error.
    pub fn unmount(&self) -> anyhow::Result<()> {
        match umount2(&self.target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("unmount {}", self.target.display())),
        }
    }
}
