//! The OCI runtime bundle of a container in a pod.
//!
//! The spec starts from the OCI defaults (oci-spec's: /proc, /dev, /dev/pts, /dev/shm,
//! /dev/mqueue, read-only /sys, masked and read-only paths, no_new_privileges) and sets:
//! the process (args, env, cwd, uid/gid), the capability set containerd gives containers
//! by default, and the namespaces: net and ipc joined from the pause process by path, a uts
//! namespace of its own holding the pod's hostname (as the seeds' `lsns` shows for Docker's
//! `container:` mode, and as `hostname` answers in a Kubernetes pod),
//! a new mount namespace, and a new pid namespace or the pod's.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxNamespace, LinuxNamespaceBuilder,
    LinuxNamespaceType, MountBuilder, Process, RootBuilder, Spec, UserBuilder,
};

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

/// Every Linux capability, by number (bit N of a capability mask is the Nth).
const ALL_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A capability by its name in a CRI security context (`NET_ADMIN` or `CAP_NET_ADMIN`).
pub fn capability(name: &str) -> Option<Capability> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// `ALL`: every capability sandboxd itself holds (its effective set, as containerd reads
/// its own), since a runtime cannot give a container what it lacks: a machine (or an outer
/// container) may withhold some, such as CAP_SYS_RESOURCE.
fn held_capabilities() -> HashSet<Capability> {
    let mask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
            u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
        })
        .unwrap_or(0);
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .filter_map(|(_, name)| capability(name))
        .collect()
}

/// What the container's security context asks of its privileges.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub no_new_privileges: bool,
    pub readonly_rootfs: bool,
    /// Added to the default set; `ALL` (as `add_all`) starts from every capability.
    pub add_capabilities: Vec<Capability>,
    pub add_all: bool,
    /// Dropped from it; `ALL` (as `drop_all`) starts from none.
    pub drop_capabilities: Vec<Capability>,
    pub drop_all: bool,
    /// Replace the OCI defaults when given.
    pub masked_paths: Option<Vec<String>>,
    pub readonly_paths: Option<Vec<String>>,
}

impl Security {
    /// The capability set: the default, or all, or none, then the named adds and drops.
    fn capabilities(&self) -> HashSet<Capability> {
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
}

/// What a container runs, and the pod it joins.
#[derive(Debug, Clone)]
pub struct ContainerProcess {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// The pod's hostname, set in the container's own uts namespace.
    pub hostname: String,
    /// The pod's pause process, whose namespaces the container joins.
    pub pause_pid: u32,
    /// The pod has a pid namespace of its own (pause is its PID 1): join it too.
    pub share_pod_pid: bool,
    /// Host paths bind-mounted into the container; one at a default mount's destination
    /// (such as the pod's `/dev/shm`) replaces it.
    pub binds: Vec<BindMount>,
    pub security: Security,
}

#[derive(Debug, Clone)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub readonly: bool,
    /// Extra options (`nosuid`, `nodev`, `noexec`).
    pub options: Vec<String>,
}

fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> anyhow::Result<LinuxNamespace> {
    let mut builder = LinuxNamespaceBuilder::default().typ(typ);
    if let Some(path) = path {
        builder = builder.path(path);
    }
    builder.build().context("build a namespace entry")
}

/// The spec for `process`, with its rootfs at `<bundle>/rootfs`.
pub fn spec(process: &ContainerProcess) -> anyhow::Result<Spec> {
    let mut spec = Spec::default();
    spec.set_hostname(Some(process.hostname.clone()));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(process.security.readonly_rootfs)
            .build()?,
    ));

    let caps = process.security.capabilities();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?;
    let mut proc_spec = Process::default();
    proc_spec.set_args(Some(process.args.clone()));
    proc_spec.set_env(Some(process.env.clone()));
    proc_spec.set_cwd(PathBuf::from(if process.cwd.is_empty() {
        "/"
    } else {
        &process.cwd
    }));
    proc_spec.set_user(
        UserBuilder::default()
            .uid(process.uid)
            .gid(process.gid)
            .build()?,
    );
    proc_spec.set_capabilities(Some(capabilities));
    proc_spec.set_no_new_privileges(Some(process.security.no_new_privileges));
    spec.set_process(Some(proc_spec));

    let pause_ns = |kind: &str| {
        Some(PathBuf::from(format!(
            "/proc/{}/ns/{kind}",
            process.pause_pid
        )))
    };
    let namespaces = vec![
        namespace(LinuxNamespaceType::Network, pause_ns("net"))?,
        namespace(LinuxNamespaceType::Ipc, pause_ns("ipc"))?,
        namespace(LinuxNamespaceType::Uts, None)?,
        namespace(LinuxNamespaceType::Mount, None)?,
        namespace(
            LinuxNamespaceType::Pid,
            if process.share_pod_pid {
                pause_ns("pid")
            } else {
                None
            },
        )?,
    ];
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.retain(|m| {
        !process
            .binds
            .iter()
            .any(|b| &b.destination == m.destination())
    });
    for bind in &process.binds {
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        options.push(if bind.readonly { "ro" } else { "rw" }.to_string());
        options.extend(bind.options.iter().cloned());
        mounts.push(
            MountBuilder::default()
                .destination(&bind.destination)
                .typ("bind")
                .source(&bind.source)
                .options(options)
                .build()
                .context("build a bind mount")?,
        );
    }
    spec.set_mounts(Some(mounts));

    let linux = spec
        .linux_mut()
        .as_mut()
        .context("the default spec has a linux section")?;
    linux.set_namespaces(Some(namespaces));
    if let Some(paths) = &process.security.masked_paths {
        linux.set_masked_paths(Some(paths.clone()));
    }
    if let Some(paths) = &process.security.readonly_paths {
        linux.set_readonly_paths(Some(paths.clone()));
    }
    Ok(spec)
}

/// Writes `<bundle>/config.json`.
pub fn write(bundle: &Path, process: &ContainerProcess) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(bundle).with_context(|| format!("create {}", bundle.display()))?;
    let path = bundle.join("config.json");
    spec(process)?
        .save(&path)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(share_pod_pid: bool) -> ContainerProcess {
        ContainerProcess {
            args: vec![
                "/app/hostname-server".into(),
                "--port".into(),
                "8080".into(),
            ],
            env: vec!["PATH=/bin".into()],
            cwd: String::new(),
            uid: 0,
            gid: 0,
            hostname: "web".into(),
            pause_pid: 4242,
            share_pod_pid,
            security: Security {
                no_new_privileges: true,
                ..Default::default()
            },
            binds: vec![BindMount {
                source: "/var/lib/sandboxd/sandboxes/p/shm".into(),
                destination: "/dev/shm".into(),
                readonly: false,
                options: vec!["nosuid".into()],
            }],
        }
    }

    fn namespaces(spec: &Spec) -> Vec<(String, Option<String>)> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n.typ().to_string(),
                    n.path().as_ref().map(|p| p.display().to_string()),
                )
            })
            .collect()
    }

    #[test]
    fn joins_the_pause_net_and_ipc_by_path_and_owns_mnt_uts_and_pid() {
        let spec = spec(&process(false)).unwrap();
        let ns = namespaces(&spec);
        assert!(
            ns.contains(&("net".into(), Some("/proc/4242/ns/net".into()))),
            "{ns:?}"
        );
        assert!(ns.contains(&("ipc".into(), Some("/proc/4242/ns/ipc".into()))));
        assert!(ns.contains(&("uts".into(), None)));
        assert!(ns.contains(&("mnt".into(), None)));
        assert!(ns.contains(&("pid".into(), None)));
        assert!(!ns.iter().any(|(t, _)| t == "cgroup" || t == "user"));
        assert_eq!(spec.hostname().as_deref(), Some("web"));
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(
            process
                .capabilities()
                .as_ref()
                .unwrap()
                .bounding()
                .as_ref()
                .unwrap()
                .len(),
            DEFAULT_CAPABILITIES.len()
        );
        assert!(!spec
            .linux()
            .as_ref()
            .unwrap()
            .masked_paths()
            .as_ref()
            .unwrap()
            .is_empty());
    }

    #[test]
    fn binds_replace_the_default_mount_at_their_destination() {
        let spec = spec(&process(false)).unwrap();
        let shm: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination() == Path::new("/dev/shm"))
            .collect();
        assert_eq!(shm.len(), 1);
        assert_eq!(shm[0].typ().as_deref(), Some("bind"));
        assert_eq!(
            shm[0].source().as_deref(),
            Some(Path::new("/var/lib/sandboxd/sandboxes/p/shm"))
        );
    }

    #[test]
    fn a_pod_pid_namespace_is_joined_too() {
        let ns = namespaces(&spec(&process(true)).unwrap());
        assert!(
            ns.contains(&("pid".into(), Some("/proc/4242/ns/pid".into()))),
            "{ns:?}"
        );
    }
}

#[cfg(test)]
mod security_tests {
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
        assert!(capability("NOT_A_CAP").is_none());
        assert!(ALL_CAPABILITIES.iter().all(|c| capability(c).is_some()));
    }
}
