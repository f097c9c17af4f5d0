//! Mount propagation of a container's host-path mounts, as the CRI names it: private (the
//! default), host-to-container (`rslave`: mounts made on the node under the path appear in
//! the container) and bidirectional (`rshared`: both ways). The kernel can only carry
//! mounts across a boundary whose source is itself shared (or, for host-to-container, a
//! slave), so the node's mount of the path is checked before the container is created, as
//! containerd does, rather than leaving a mount that silently propagates nothing.

use std::path::Path;

use anyhow::{bail, Context};
use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Propagation {
    #[default]
    Private,
    HostToContainer,
    Bidirectional,
}

impl Propagation {
    pub fn from_cri(value: i32) -> Option<Self> {
        match cri::MountPropagation::try_from(value).ok()? {
            cri::MountPropagation::PropagationPrivate => Some(Propagation::Private),
            cri::MountPropagation::PropagationHostToContainer => Some(Propagation::HostToContainer),
            cri::MountPropagation::PropagationBidirectional => Some(Propagation::Bidirectional),
        }
    }

    pub fn to_cri(self) -> cri::MountPropagation {
        match self {
            Propagation::Private => cri::MountPropagation::PropagationPrivate,
            Propagation::HostToContainer => cri::MountPropagation::PropagationHostToContainer,
            Propagation::Bidirectional => cri::MountPropagation::PropagationBidirectional,
        }
    }

    /// The bind mount's option in the OCI spec.
    pub fn mount_option(self) -> &'static str {
        match self {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => "rslave",
            Propagation::Bidirectional => "rshared",
        }
    }

    /// What the container's root mount must be for its mounts to carry this propagation
    /// (`linux.rootfsPropagation`, in the OCI spec's words, which runc and libcontainer
    /// both take); none for private.
    pub fn rootfs_propagation(mounts: impl IntoIterator<Item = Self>) -> Option<&'static str> {
        let strongest = mounts.into_iter().max_by_key(|p| *p as u8)?;
        match strongest {
            Propagation::Private => None,
            Propagation::HostToContainer => Some("slave"),
            Propagation::Bidirectional => Some("shared"),
        }
    }
}

/// The node's mount a path is on (the longest mount point that contains it), from
/// `mountinfo`: its mount point and optional fields (`shared:N`, `master:N`).
fn mount_of<'a>(mountinfo: &'a str, path: &Path) -> Option<(&'a str, Vec<&'a str>)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = *fields.get(4)?;
            let separator = fields.iter().position(|f| *f == "-")?;
            let optional = fields.get(6..separator)?.to_vec();
            Some((mount_point, optional))
        })
        .filter(|(mount_point, _)| path.starts_with(mount_point))
        .max_by_key(|(mount_point, _)| mount_point.len())
}

/// Checks that `host_path` sits on a node mount that can carry `propagation`.
pub fn check_source(host_path: &Path, propagation: Propagation) -> anyhow::Result<()> {
    if propagation == Propagation::Private {
        return Ok(());
    }
    let path = std::fs::canonicalize(host_path)
        .with_context(|| format!("resolve {}", host_path.display()))?;
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    check_in(&mountinfo, &path, propagation)
}

fn check_in(mountinfo: &str, path: &Path, propagation: Propagation) -> anyhow::Result<()> {
    let (mount_point, optional) =
        mount_of(mountinfo, path).with_context(|| format!("no mount holds {}", path.display()))?;
    let shared = optional.iter().any(|f| f.starts_with("shared:"));
    let slave = optional.iter().any(|f| f.starts_with("master:"));
    match propagation {
        Propagation::Bidirectional if !shared => bail!(
            "{} is on the mount {mount_point}, which is not shared: bidirectional propagation needs `mount --make-rshared {mount_point}`",
            path.display()
        ),
        Propagation::HostToContainer if !shared && !slave => bail!(
            "{} is on the mount {mount_point}, which is neither shared nor a slave: host-to-container propagation needs `mount --make-rshared {mount_point}`",
            path.display()
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /tmp rw,nosuid - tmpfs tmpfs rw
31 30 0:26 / /tmp/shared rw shared:7 - tmpfs tmpfs rw
32 30 0:27 / /tmp/slave rw master:7 - tmpfs tmpfs rw
";

    #[test]
    fn the_longest_mount_decides() {
        let check = |path: &str, p| check_in(MOUNTINFO, Path::new(path), p);
        assert!(check("/tmp/shared/x", Propagation::Bidirectional).is_ok());
        assert!(check("/tmp/slave/x", Propagation::HostToContainer).is_ok());
        let err = check("/tmp/slave/x", Propagation::Bidirectional).unwrap_err();
        assert!(
            err.to_string()
                .contains("mount /tmp/slave, which is not shared"),
            "{err}"
        );
        let err = check("/tmp/x", Propagation::HostToContainer).unwrap_err();
        assert!(
            err.to_string().contains("neither shared nor a slave"),
            "{err}"
        );
        assert!(check("/var/x", Propagation::Bidirectional).is_ok());
        assert!(check("/tmp/x", Propagation::Private).is_ok());
    }

    #[test]
    fn the_root_takes_the_strongest_propagation() {
        use Propagation::*;
        assert_eq!(Propagation::rootfs_propagation([Private]), None);
        assert_eq!(
            Propagation::rootfs_propagation([Private, HostToContainer]),
            Some("slave")
        );
        assert_eq!(
            Propagation::rootfs_propagation([Bidirectional, HostToContainer]),
            Some("shared")
        );
    }
}
