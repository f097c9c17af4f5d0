//! Unpacking one layer into a directory that overlayfs can stack.
//!
//! OCI layers mark deletions with files: `.wh.<name>` hides `<name>` of lower layers and
//! `.wh..wh..opq` hides everything below a directory. overlayfs marks them differently: a
//! 0:0 character device named `<name>`, and the xattr `trusted.overlay.opaque=y` on the
//! directory. Each layer is converted as it is unpacked, as containerd's overlay snapshotter
//! does, so the layer dirs can be lowerdirs as they are.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

const OPAQUE_MARKER: &str = ".wh..wh..opq";
const WHITEOUT_PREFIX: &str = ".wh.";

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads to the end, then returns `sha256:<hex>` of everything read and the byte count.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let hex: String = self
            .hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok((format!("sha256:{hex}"), self.bytes))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The archive, decompressed if it is gzip; zstd and others are refused by name.
pub fn decompressed<'a>(mut file: std::fs::File) -> anyhow::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic)?;
    use std::io::Seek;
    file.seek(io::SeekFrom::Start(0))?;
    match &magic[..n] {
        [0x1f, 0x8b, ..] => Ok(Box::new(flate2::read::GzDecoder::new(io::BufReader::new(file)))),
        [0x28, 0xb5, 0x2f, 0xfd] => bail!("zstd-compressed layers are not supported; re-export the image with gzip or uncompressed layers"),
        _ => Ok(Box::new(io::BufReader::new(file))),
    }
}

/// A path from the archive, relative and without `..`, or an error.
fn safe_relative(path: &Path) -> anyhow::Result<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => bail!("layer entry {} leaves the layer", path.display()),
        }
    }
    Ok(out)
}

fn set_opaque(dir: &Path) -> anyhow::Result<()> {
    let path = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated strings and a 1-byte value.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("mark {} opaque", dir.display()));
    }
    Ok(())
}

fn make_whiteout(path: &Path) -> anyhow::Result<()> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
        .with_context(|| format!("create the whiteout {}", path.display()))
}

/// Unpacks a layer archive into `target` (which must exist and be empty) and returns the
/// diff id: `sha256` of the uncompressed tar.
pub fn unpack_layer(blob: &Path, target: &Path) -> anyhow::Result<String> {
    let file = std::fs::File::open(blob).with_context(|| format!("open {}", blob.display()))?;
    let reader = HashingReader::new(decompressed(file)?);
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries().context("read the layer archive")? {
        let mut entry = entry.context("read a layer entry")?;
        let path = safe_relative(&entry.path()?)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = target.join(path.parent().unwrap_or(Path::new("")));
        if name == OPAQUE_MARKER {
            std::fs::create_dir_all(&parent)?;
            set_opaque(&parent)?;
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            std::fs::create_dir_all(&parent)?;
            make_whiteout(&parent.join(hidden))?;
        } else if !entry
            .unpack_in(target)
            .with_context(|| format!("unpack {}", path.display()))?
        {
            bail!("layer entry {} leaves the layer", path.display());
        }
    }
    let (diff_id, _) = archive
        .into_inner()
        .finish()
        .context("read the rest of the layer")?;
    Ok(diff_id)
}
