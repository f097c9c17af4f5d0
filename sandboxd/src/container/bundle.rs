//! The OCI runtime bundle of a container in a pod.
//!
//! The spec starts from the OCI defaults (oci-spec's: /proc, /dev, /dev/pts, /dev/shm,
//! /dev/mqueue, read-only /sys) and sets: the process (args, env, cwd, uid, gid and groups
//! from [`user`](crate::container::user), its capabilities), what the security context asks
//! ([`security`](crate::container::security): masked and read-only paths, seccomp,
//! privileged), the host-path binds with their propagation, and the namespaces: net and
//! ipc joined from the pause process by path, a uts
//! namespace of its own holding the pod's hostname (as the seeds' `lsns` shows for Docker's
//! `container:` mode, and as `hostname` answers in a Kubernetes pod),
//! a new mount namespace, and a new pid namespace, the pod's or the node's.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use oci_spec::runtime::{
    LinuxCapabilitiesBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    MountBuilder, Process, RootBuilder, Spec, UserBuilder,
};

use crate::container::propagation::Propagation;
use crate::container::resources::Resources;
pub use crate::container::security::Security;
use crate::container::user::Identity;

/// What a container runs, and the pod it joins.
#[derive(Debug, Clone)]
pub struct ContainerProcess {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub identity: Identity,
    /// The pod's hostname, set in the container's own uts namespace.
    pub hostname: String,
    /// The pod's pause process, whose namespaces the container joins.
    pub pause_pid: u32,
    pub pid: PidNamespace,
    /// Host paths bind-mounted into the container; one at a default mount's destination
    /// (such as the pod's `/dev/shm`) replaces it.
    pub binds: Vec<BindMount>,
    pub security: Security,
    pub resources: Resources,
    /// Its stdio is a terminal the runtime makes (and hands to the monitor).
    pub terminal: bool,
    /// The cgroup the runtime makes for it (`<pod's cgroup parent>/<container id>`), or
    /// the runtime's default place.
    pub cgroups_path: Option<PathBuf>,
}

/// The pid namespace a container's processes are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidNamespace {
    /// A new one, the container's first process its PID 1.
    Own,
    /// The pod's (pause is its PID 1): its containers see each other's processes.
    Pod,
    /// The node's (sandboxd's): hostPID.
    Node,
}

#[derive(Debug, Clone)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub readonly: bool,
    /// Extra options (`nosuid`, `nodev`, `noexec`).
    pub options: Vec<String>,
    pub propagation: Propagation,
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
    proc_spec.set_terminal(Some(process.terminal));
    proc_spec.set_env(Some(process.env.clone()));
    proc_spec.set_cwd(PathBuf::from(if process.cwd.is_empty() {
        "/"
    } else {
        &process.cwd
    }));
    proc_spec.set_user(
        UserBuilder::default()
            .uid(process.identity.uid)
            .gid(process.identity.gid)
            .additional_gids(process.identity.additional_gids.clone())
            .build()?,
    );
    proc_spec.set_capabilities(Some(capabilities));
    if process.resources.oom_score_adj != 0 {
        proc_spec.set_oom_score_adj(Some(process.resources.oom_score_adj));
    }
    // Unset rather than false: runtimes then load a seccomp filter before dropping
    // capabilities, which a process without no_new_privs needs CAP_SYS_ADMIN for.
    proc_spec.set_no_new_privileges(process.security.no_new_privileges.then_some(true));
    spec.set_process(Some(proc_spec));

    let pause_ns = |kind: &str| {
        Some(PathBuf::from(format!(
            "/proc/{}/ns/{kind}",
            process.pause_pid
        )))
    };
    let mut namespaces = vec![
        namespace(LinuxNamespaceType::Network, pause_ns("net"))?,
        namespace(LinuxNamespaceType::Ipc, pause_ns("ipc"))?,
        namespace(LinuxNamespaceType::Uts, None)?,
        namespace(LinuxNamespaceType::Mount, None)?,
    ];
    // No entry is the runtime's own pid namespace, which is the node's.
    match process.pid {
        PidNamespace::Own => namespaces.push(namespace(LinuxNamespaceType::Pid, None)?),
        PidNamespace::Pod => namespaces.push(namespace(LinuxNamespaceType::Pid, pause_ns("pid"))?),
        PidNamespace::Node => {}
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.retain(|m| {
        !process
            .binds
            .iter()
            .any(|b| &b.destination == m.destination())
    });
    for bind in &process.binds {
        let mut options = vec![
            "rbind".to_string(),
            bind.propagation.mount_option().to_string(),
        ];
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
    linux.set_rootfs_propagation(
        Propagation::rootfs_propagation(process.binds.iter().map(|b| b.propagation))
            .map(str::to_string),
    );
    linux.set_resources(Some(process.resources.oci()?));
    linux.set_cgroups_path(process.cgroups_path.clone());
    process.security.apply(&mut spec)?;
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

    fn process(pid: PidNamespace) -> ContainerProcess {
        ContainerProcess {
            args: vec![
                "/app/hostname-server".into(),
                "--port".into(),
                "8080".into(),
            ],
            env: vec!["PATH=/bin".into()],
            cwd: String::new(),
            identity: Identity {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![1000, 50000],
            },
            hostname: "web".into(),
            pause_pid: 4242,
            pid,
            security: Security {
                no_new_privileges: true,
                ..Default::default()
            },
            resources: Default::default(),
            terminal: false,
            cgroups_path: None,
            binds: vec![BindMount {
                source: "/var/lib/sandboxd/sandboxes/p/shm".into(),
                destination: "/dev/shm".into(),
                readonly: false,
                options: vec!["nosuid".into()],
                propagation: Propagation::Private,
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
        let spec = spec(&process(PidNamespace::Own)).unwrap();
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
            crate::container::security::DEFAULT_CAPABILITIES.len()
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
        let spec = spec(&process(PidNamespace::Own)).unwrap();
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
    fn a_pod_pid_namespace_is_joined_too_and_the_nodes_is_the_runtimes() {
        let ns = namespaces(&spec(&process(PidNamespace::Pod)).unwrap());
        assert!(
            ns.contains(&("pid".into(), Some("/proc/4242/ns/pid".into()))),
            "{ns:?}"
        );
        let ns = namespaces(&spec(&process(PidNamespace::Node)).unwrap());
        assert!(!ns.iter().any(|(kind, _)| kind == "pid"), "{ns:?}");
    }

    #[test]
    fn a_cgroups_path_is_the_runtimes_to_make() {
        assert_eq!(
            spec(&process(PidNamespace::Own))
                .unwrap()
                .linux()
                .as_ref()
                .unwrap()
                .cgroups_path(),
            &None
        );
        let placed = ContainerProcess {
            cgroups_path: Some("/kubepods/pod1/abc".into()),
            ..process(PidNamespace::Own)
        };
        assert_eq!(
            spec(&placed)
                .unwrap()
                .linux()
                .as_ref()
                .unwrap()
                .cgroups_path(),
            &Some(PathBuf::from("/kubepods/pod1/abc"))
        );
    }

    #[test]
    fn the_identity_is_the_process_user() {
        let spec = spec(&process(PidNamespace::Own)).unwrap();
        let user = spec.process().as_ref().unwrap().user();
        assert_eq!((user.uid(), user.gid()), (1000, 1000));
        assert_eq!(user.additional_gids().as_deref(), Some(&[1000, 50000][..]));
    }
}
