//! What a container's security context asks of its privileges, and how it reads in the OCI
//! spec, with containerd's defaults as the reference: its default capability set, masked
//! and read-only paths, the RuntimeDefault seccomp profile ([`seccomp`]), and privileged
//! containers as it runs them (every capability sandboxd holds, the node's devices, no
//! masked or read-only paths, writable /sys and cgroupfs, no seccomp filter).

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use k8s_cri::v1 as cri;
use oci_spec::runtime::{
    Capability, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, Spec,
};

use crate::container::seccomp::SeccompProfile;
use crate::error::{Error, Result};

/// containerd's default capabilities for a container (no privileged, no added caps).
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// containerd's masked paths: the OCI defaults and, since CVE-2020-8694, powercap.
const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A capability by its name in a CRI security context (`NET_ADMIN` or `CAP_NET_ADMIN`).
pub fn capability(name: &str) -> Option<Capability> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// `ALL`: every capability sandboxd itself holds (its effective set, as containerd reads
/// its own), since a runtime cannot give a container what it lacks: a machine (or an outer
/// container) may withhold some, such as CAP_SYS_RESOURCE.
pub fn held_capabilities() -> HashSet<Capability> {
    caps::read(None, caps::CapSet::Effective)
        .unwrap_or_default()
        .iter()
        .filter_map(|cap| capability(&cap.to_string()))
        .collect()
}

/// What the container's security context asks of its privileges.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub privileged: bool,
    pub no_new_privileges: bool,
    pub readonly_rootfs: bool,
    /// Added to the default set; `ALL` (as `add_all`) starts from every capability.
    pub add_capabilities: Vec<Capability>,
    pub add_all: bool,
    /// Dropped from it; `ALL` (as `drop_all`) starts from none.
    pub drop_capabilities: Vec<Capability>,
    pub drop_all: bool,
    /// Replace containerd's defaults when given.
    pub masked_paths: Option<Vec<String>>,
    pub readonly_paths: Option<Vec<String>>,
    pub seccomp: SeccompProfile,
}

impl Security {
    /// The security context of a CreateContainer request; each error names its field.
    pub fn from_cri(
        object: &str,
        security: Option<&cri::LinuxContainerSecurityContext>,
    ) -> Result<Security> {
        let Some(security) = security else {
            return Ok(Security::default());
        };
        let seccomp = SeccompProfile::from_cri(security)
            .map_err(|e| Error::invalid(object, e.field, e.reason))?;
        let mut options = Security {
            privileged: security.privileged,
            no_new_privileges: security.no_new_privs,
            readonly_rootfs: security.readonly_rootfs,
            masked_paths: Some(security.masked_paths.clone()).filter(|p| !p.is_empty()),
            readonly_paths: Some(security.readonly_paths.clone()).filter(|p| !p.is_empty()),
            seccomp,
            ..Default::default()
        };
        if let Some(caps) = &security.capabilities {
            for (list, names, all, out) in [
                (
                    "add_capabilities",
                    &caps.add_capabilities,
                    &mut options.add_all,
                    &mut options.add_capabilities,
                ),
                (
                    "drop_capabilities",
                    &caps.drop_capabilities,
                    &mut options.drop_all,
                    &mut options.drop_capabilities,
                ),
            ] {
                for (i, name) in names.iter().enumerate() {
                    if name.eq_ignore_ascii_case("ALL") {
                        *all = true;
                        continue;
                    }
                    out.push(capability(name).ok_or_else(|| {
                        Error::invalid(
                            object,
                            format!("linux.security_context.capabilities.{list}[{i}]"),
                            format!("{name:?} is not a Linux capability"),
                        )
                    })?);
                }
            }
        }
        Ok(options)
    }

    /// The capability set: all for a privileged container; else the default, or all, or
    /// none, then the named adds and drops.
    pub fn capabilities(&self) -> HashSet<Capability> {
        if self.privileged {
            return held_capabilities();
        }
        let mut caps: HashSet<Capability> = if self.drop_all {
            HashSet::new()
        } else if self.add_all {
            held_capabilities()
        } else {
            DEFAULT_CAPABILITIES.iter().copied().collect()
        };
        caps.extend(self.add_capabilities.iter().copied());
        for drop in &self.drop_capabilities {
            caps.remove(drop);
        }
        caps
    }

    /// Writes into `spec` what is not the process's own: masked and read-only paths, the
    /// seccomp filter, and for a privileged container its devices and writable /sys.
    pub fn apply(&self, spec: &mut Spec) -> anyhow::Result<()> {
        let strings = |paths: &[&str]| paths.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let (masked, readonly) = if self.privileged {
            (Vec::new(), Vec::new())
        } else {
            (
                self.masked_paths
                    .clone()
                    .unwrap_or_else(|| strings(DEFAULT_MASKED_PATHS)),
                self.readonly_paths
                    .clone()
                    .unwrap_or_else(|| strings(DEFAULT_READONLY_PATHS)),
            )
        };
        let seccomp = if self.privileged {
            None
        } else {
            self.seccomp.filter(&self.capabilities())?
        };
        if self.privileged {
            // /sys and the cgroup hierarchies writable, as containerd mounts them.
            if let Some(mounts) = spec.mounts_mut() {
                for mount in mounts.iter_mut() {
                    let kind = mount.typ().clone().unwrap_or_default();
                    if kind == "sysfs" || kind == "cgroup" || kind == "cgroup2" {
                        let options = mount.options().clone().unwrap_or_default();
                        mount.set_options(Some(
                            options
                                .into_iter()
                                .map(|o| if o == "ro" { "rw".to_string() } else { o })
                                .collect(),
                        ));
                    }
                }
            }
        }
        let linux = spec
            .linux_mut()
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("the spec has no linux section"))?;
        linux.set_masked_paths(Some(masked));
        linux.set_readonly_paths(Some(readonly));
        linux.set_seccomp(seccomp);
        if self.privileged {
            linux.set_devices(Some(host_devices(Path::new("/dev"))));
            let mut resources = linux.resources().clone().unwrap_or_default();
            resources.set_devices(Some(vec![LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .access("rwm")
                .build()?]));
            linux.set_resources(Some(resources));
        }
        Ok(())
    }
}

/// Device nodes every runtime makes in a container's /dev itself; listing them again
/// would have it make them twice.
const RUNTIME_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/console",
];

/// The node's device nodes under `dir` (as a privileged container sees them), skipping
/// the mounts a container has its own of (pts, shm, mqueue) and the runtime's own nodes.
pub fn host_devices(dir: &Path) -> Vec<LinuxDevice> {
    let mut devices = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return devices;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let kind = meta.file_type();
        if kind.is_dir() {
            let name = entry.file_name();
            if !matches!(
                name.to_str(),
                Some("pts" | "shm" | "mqueue" | "fd" | ".lxc" | ".udev")
            ) {
                devices.extend(host_devices(&path));
            }
            continue;
        }
        let typ = if kind.is_char_device() {
            LinuxDeviceType::C
        } else if kind.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        if RUNTIME_DEVICES.iter().any(|d| path == Path::new(d)) {
            continue;
        }
        let rdev = meta.rdev();
        let device = LinuxDeviceBuilder::default()
            .path(&path)
            .typ(typ)
            .major(libc::major(rdev) as i64)
            .minor(libc::minor(rdev) as i64)
            .file_mode(meta.mode() & 0o7777)
            .uid(meta.uid())
            .gid(meta.gid())
            .build();
        if let Ok(device) = device {
            devices.push(device);
        }
    }
    devices.sort_by(|a, b| a.path().cmp(b.path()));
    devices
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(security: Security) -> HashSet<Capability> {
        security.capabilities()
    }

    #[test]
    fn capabilities_are_added_and_dropped_as_containerd_does() {
        let net_admin = capability("NET_ADMIN").unwrap();
        let chown = capability("CAP_CHOWN").unwrap();
        let added = caps(Security {
            add_capabilities: vec![net_admin],
            drop_capabilities: vec![chown],
            ..Default::default()
        });
        assert!(added.contains(&net_admin) && !added.contains(&chown));
        assert_eq!(added.len(), DEFAULT_CAPABILITIES.len());
        let all_but_chown = caps(Security {
            add_all: true,
            drop_capabilities: vec![chown],
            ..Default::default()
        });
        assert_eq!(all_but_chown.len(), held_capabilities().len() - 1);
        assert!(held_capabilities().contains(&capability("SYS_ADMIN").unwrap()));
        let only_net_admin = caps(Security {
            drop_all: true,
            add_capabilities: vec![net_admin],
            ..Default::default()
        });
        assert_eq!(only_net_admin, HashSet::from([net_admin]));
        let privileged = caps(Security {
            privileged: true,
            drop_all: true,
            ..Default::default()
        });
        assert_eq!(privileged, held_capabilities());
        assert!(capability("NOT_A_CAP").is_none());
        assert!(caps::all()
            .iter()
            .all(|c| capability(&c.to_string()).is_some()));
    }

    #[test]
    fn privileged_specs_have_the_nodes_devices_and_no_masks() {
        let mut spec = Spec::default();
        Security {
            privileged: true,
            seccomp: SeccompProfile::RuntimeDefault,
            ..Default::default()
        }
        .apply(&mut spec)
        .unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.masked_paths().as_deref(), Some(&[][..]));
        assert!(linux.seccomp().is_none());
        let devices = linux.devices().as_ref().unwrap();
        assert!(devices
            .iter()
            .all(|d| !RUNTIME_DEVICES.iter().any(|r| d.path() == Path::new(r))));
        let sys = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert!(sys.options().as_ref().unwrap().contains(&"rw".to_string()));

        let mut spec = Spec::default();
        Security {
            seccomp: SeccompProfile::RuntimeDefault,
            ..Default::default()
        }
        .apply(&mut spec)
        .unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/sys/devices/virtual/powercap".to_string()));
        assert!(linux.seccomp().is_some());
        assert!(linux.devices().as_ref().is_none_or(|d| d.is_empty()));
    }

    #[test]
    fn host_devices_are_read_from_the_dev_tree() {
        let devices = host_devices(Path::new("/dev"));
        if let Some(loop0) = devices.iter().find(|d| d.path() == Path::new("/dev/loop0")) {
            assert_eq!((loop0.major(), loop0.minor()), (7, 0));
        }
        assert!(!devices.iter().any(|d| d.path().starts_with("/dev/pts")));
    }
}
