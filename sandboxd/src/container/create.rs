//! CreateContainer: validate, resolve the image, mount the rootfs, write the bundle, have
//! the monitor create the container with the OCI runtime, persist. Every step registers its
//! undo first; a failure runs them in reverse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_cri::v1 as cri;

use crate::container::attach::ContainerStdio;
use crate::container::bundle::{BindMount, ContainerProcess, PidNamespace, Security};
use crate::container::monitor::MonitorArgs;
use crate::container::oci::OciRuntime;
use crate::container::propagation::{self, Propagation};
use crate::container::resources::Resources;
use crate::container::user::{self, UserRequest};
use crate::container::{
    describe, ContainerDir, ContainerRecord, ContainerState, CreateIntent, MountRecord,
    RECORD_VERSION,
};
use crate::error::{Error, Result};
use crate::fault;
use crate::image::ImageRecord;
use crate::rollback::Rollback;
use crate::runtime::{new_id, now_ns, ContainerName, ContainerSlot, Runtime};
use crate::sandbox::{files, SandboxRecord, SandboxState};

/// What a valid request asks for.
struct ContainerSpec {
    name: String,
    attempt: u32,
    image: String,
    command: Vec<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    working_dir: String,
    mounts: Vec<MountRecord>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    log_path: String,
    user: UserRequest,
    /// The pid namespace its namespace options ask for; none: the pod's if it has one.
    pid: Option<PidNamespace>,
    security: Security,
    resources: Resources,
    stdio: ContainerStdio,
}

fn validate(config: Option<cri::ContainerConfig>, pod: &str) -> Result<ContainerSpec> {
    let config = config.ok_or_else(|| Error::invalid("container", "config", "is missing"))?;
    let meta = config
        .metadata
        .ok_or_else(|| Error::invalid("container", "config.metadata", "is missing"))?;
    let object = format!("container {:?} in {pod}", meta.name);
    crate::sandbox::check_name(&object, "metadata.name", &meta.name, 253)?;
    let image = config.image.map(|i| i.image).unwrap_or_default();
    if image.is_empty() {
        return Err(Error::invalid(&object, "image.image", "is empty"));
    }
    let mut env = Vec::new();
    for (i, kv) in config.envs.iter().enumerate() {
        if kv.key.is_empty() || kv.key.contains('=') {
            return Err(Error::invalid(
                &object,
                format!("envs[{i}].key"),
                format!("{:?} is not a variable name", kv.key),
            ));
        }
        env.push((kv.key.clone(), kv.value.clone()));
    }
    let mut mounts = Vec::new();
    for (i, m) in config.mounts.iter().enumerate() {
        for (field, path) in [
            ("container_path", &m.container_path),
            ("host_path", &m.host_path),
        ] {
            if !path.starts_with('/') {
                return Err(Error::invalid(
                    &object,
                    format!("mounts[{i}].{field}"),
                    format!("{path:?} is not an absolute path"),
                ));
            }
        }
        if !Path::new(&m.host_path).exists() {
            return Err(Error::invalid(
                &object,
                format!("mounts[{i}].host_path"),
                format!("{} does not exist", m.host_path),
            ));
        }
        let field = || format!("mounts[{i}].propagation");
        let propagation = Propagation::from_cri(m.propagation).ok_or_else(|| {
            Error::invalid(
                &object,
                field(),
                format!("{} is not a mount propagation", m.propagation),
            )
        })?;
        propagation::check_source(Path::new(&m.host_path), propagation)
            .map_err(|e| Error::invalid(&object, field(), format!("{e:#}")))?;
        mounts.push(MountRecord {
            container_path: m.container_path.clone(),
            host_path: m.host_path.clone(),
            readonly: m.readonly,
            propagation,
        });
    }
    let log_path = config.log_path.clone();
    if log_path.starts_with('/')
        || log_path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
    {
        return Err(Error::invalid(
            &object,
            "log_path",
            format!("{log_path:?} must be relative to the pod's log directory, without '..'"),
        ));
    }
    let resources = Resources::from_cri(
        &object,
        "linux.resources",
        config.linux.as_ref().and_then(|l| l.resources.as_ref()),
    )?;
    let security = config.linux.and_then(|l| l.security_context);
    let id_of = |value: Option<&cri::Int64Value>, field: &str| -> Result<Option<u32>> {
        value
            .map(|v| {
                u32::try_from(v.value).map_err(|_| {
                    Error::invalid(
                        &object,
                        format!("linux.security_context.{field}"),
                        format!("{} is not a valid id", v.value),
                    )
                })
            })
            .transpose()
    };
    let run_as_user = id_of(
        security.as_ref().and_then(|s| s.run_as_user.as_ref()),
        "run_as_user",
    )?;
    let run_as_group = id_of(
        security.as_ref().and_then(|s| s.run_as_group.as_ref()),
        "run_as_group",
    )?;
    let run_as_username = security
        .as_ref()
        .map(|s| s.run_as_username.clone())
        .filter(|name| !name.is_empty());
    if run_as_group.is_some() && run_as_user.is_none() && run_as_username.is_none() {
        return Err(Error::invalid(
            &object,
            "linux.security_context.run_as_group",
            "is set without run_as_user or run_as_username (the group goes with a user)",
        ));
    }
    if run_as_user.is_some() && run_as_username.is_some() {
        return Err(Error::invalid(
            &object,
            "linux.security_context.run_as_username",
            "is set with run_as_user: name the user one way",
        ));
    }
    let mut supplemental_groups = Vec::new();
    for (i, gid) in security
        .iter()
        .flat_map(|s| s.supplemental_groups.iter())
        .enumerate()
    {
        supplemental_groups.push(u32::try_from(*gid).map_err(|_| {
            Error::invalid(
                &object,
                format!("linux.security_context.supplemental_groups[{i}]"),
                format!("{gid} is not a valid group id"),
            )
        })?);
    }
    let pid = match security
        .as_ref()
        .and_then(|s| s.namespace_options.as_ref())
        .map(|o| cri::NamespaceMode::try_from(o.pid))
    {
        None => None,
        Some(Ok(cri::NamespaceMode::Container)) => Some(PidNamespace::Own),
        Some(Ok(cri::NamespaceMode::Pod)) => Some(PidNamespace::Pod),
        Some(Ok(cri::NamespaceMode::Node)) => Some(PidNamespace::Node),
        Some(Ok(cri::NamespaceMode::Target)) | Some(Err(_)) => {
            return Err(Error::invalid(
                &object,
                "linux.security_context.namespace_options.pid",
                "must be CONTAINER, POD or NODE (TARGET is for ephemeral containers)",
            ))
        }
    };
    let security_options = Security::from_cri(&object, security.as_ref())?;
    Ok(ContainerSpec {
        name: meta.name,
        attempt: meta.attempt,
        image,
        command: config.command,
        args: config.args,
        env,
        working_dir: config.working_dir,
        mounts,
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        log_path,
        user: UserRequest {
            run_as_user,
            run_as_username,
            run_as_group,
            supplemental_groups,
        },
        pid,
        security: security_options,
        resources,
        stdio: ContainerStdio {
            stdin: config.stdin,
            stdin_once: config.stdin && config.stdin_once,
            tty: config.tty,
        },
    })
}

/// The command line, as Kubernetes combines the pod's command and args with the image's
/// entrypoint and cmd.
fn command_line(spec: &ContainerSpec, image: &ImageRecord) -> Vec<String> {
    let config = &image.config;
    match (spec.command.is_empty(), spec.args.is_empty()) {
        (false, _) => spec.command.iter().chain(&spec.args).cloned().collect(),
        (true, false) => config
            .entrypoint
            .iter()
            .chain(&spec.args)
            .cloned()
            .collect(),
        (true, true) => config
            .entrypoint
            .iter()
            .chain(&config.cmd)
            .cloned()
            .collect(),
    }
}

/// The image's env, then the request's, a later value of a name replacing an earlier one.
fn environment(spec: &ContainerSpec, image: &ImageRecord) -> Vec<String> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let image_vars = image.config.env.iter().map(|e| match e.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (e.clone(), String::new()),
    });
    for (key, value) in image_vars.chain(spec.env.iter().cloned()) {
        match vars.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => vars.push((key, value)),
        }
    }
    if !vars.iter().any(|(k, _)| k == "PATH") {
        vars.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

impl Runtime {
    /// Creates a container in a running pod and returns its id. On failure nothing of it
    /// is left behind.
    pub async fn create_container(
        self: &Arc<Self>,
        sandbox_id: &str,
        config: Option<cri::ContainerConfig>,
    ) -> Result<String> {
        let (sandbox_id, sandbox) = self.lookup(sandbox_id)?;
        let pod = sandbox.lock().await;
        if pod.state != SandboxState::Ready || pod.pause.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "{} is not ready: containers can only be created in a running pod",
                pod.describe()
            )));
        }
        let spec = validate(config, &pod.describe())?;
        let image = self
            .images
            .resolve(&spec.image)
            .map_err(|e| Error::step("look up the image", format!("image {}", spec.image), e))?
            .ok_or_else(|| Error::ImageNotFound(spec.image.clone()))?;

        let id = new_id();
        let object = describe(&id, &spec.name, &sandbox_id);
        let mut rollback = Rollback::new();
        let key = ContainerName {
            sandbox_id: sandbox_id.clone(),
            name: spec.name.clone(),
            attempt: spec.attempt,
        };
        {
            let mut names = self.container_names.lock().expect("names lock");
            if let Some(existing) = names.get(&key) {
                return Err(Error::AlreadyExists(format!(
                    "container {} (attempt {}) already exists in {} as {existing}",
                    spec.name,
                    spec.attempt,
                    pod.describe()
                )));
            }
            names.insert(key.clone(), id.clone());
        }
        let runtime = self.clone();
        rollback.push("take the container name", async move {
            runtime
                .container_names
                .lock()
                .expect("names lock")
                .remove(&key);
            Ok(())
        });

        match self
            .create_steps(&id, &pod, spec, &image, &mut rollback)
            .await
        {
            Ok(record) => {
                self.containers.write().expect("containers lock").insert(
                    id.clone(),
                    ContainerSlot {
                        sandbox_id,
                        entry: Arc::new(tokio::sync::Mutex::new(record)),
                    },
                );
                rollback.commit();
                Ok(id)
            }
            Err(failure) => {
                let undo = rollback.run().await;
                let e = if undo.is_empty() {
                    failure
                } else {
                    Error::RollbackFailed {
                        failure: Box::new(failure),
                        undo,
                    }
                };
                if matches!(e, Error::Step { .. } | Error::RollbackFailed { .. }) {
                    eprintln!("sandboxd: create {object}: {e}");
                }
                Err(e)
            }
        }
    }

    async fn create_steps(
        self: &Arc<Self>,
        id: &str,
        pod: &SandboxRecord,
        spec: ContainerSpec,
        image: &ImageRecord,
        rollback: &mut Rollback,
    ) -> Result<ContainerRecord> {
        let object = describe(id, &spec.name, &pod.id);
        let dir = ContainerDir(self.container_records.dir_of(id));
        let args = command_line(&spec, image);
        if args.is_empty() {
            return Err(Error::invalid(
                &object,
                "command",
                format!(
                    "is empty, and image {} has no entrypoint or cmd",
                    spec.image
                ),
            ));
        }
        let pid = match spec.pid {
            None if pod.pid_namespace => PidNamespace::Pod,
            None => PidNamespace::Own,
            Some(PidNamespace::Pod) if !pod.pid_namespace => {
                return Err(Error::invalid(
                    &object,
                    "linux.security_context.namespace_options.pid",
                    "is POD, but the pod has no pid namespace of its own (its namespace_options.pid is not POD)",
                ))
            }
            Some(mode) => mode,
        };
        let layers = image
            .layers
            .iter()
            .rev()
            .map(|l| self.images.layer_path(&l.diff_id))
            .collect::<anyhow::Result<Vec<PathBuf>>>()
            .map_err(|e| Error::step("find the image layers", &object, e))?;

        // 1. The intent: what the next steps will make, before they make it.
        let intent = CreateIntent {
            version: RECORD_VERSION,
            id: id.to_string(),
            sandbox_id: pod.id.clone(),
            name: spec.name.clone(),
            runtime: self.oci_runtime.clone(),
        };
        let (runtime, intent_id) = (self.clone(), id.to_string());
        rollback.push("write the intent", async move {
            runtime
                .container_records
                .remove(&intent_id)
                .map_err(|e| e.to_string())
        });
        self.create_intents
            .save(id, &intent)
            .map_err(|e| Error::step("write the intent", &object, e))?;
        fault::point("create-container/intent-written");

        // 2. The rootfs. Its dir goes with the undo, whatever was made in it.
        let rootfs = dir.rootfs(layers);
        let (runtime, undo_rootfs, undo_id) = (self.clone(), rootfs.clone(), id.to_string());
        rollback.push("mount the rootfs", async move {
            undo_rootfs.unmount().map_err(|e| e.to_string())?;
            runtime
                .container_records
                .remove(&undo_id)
                .map_err(|e| e.to_string())
        });
        rootfs
            .mount()
            .map_err(|e| Error::step("mount the rootfs", &object, e))?;
        fault::point("create-container/rootfs-mounted");

        // 3. The bundle.
        let identity = user::resolve(&image.config.user, &spec.user, &rootfs.target)
            .map_err(|e| Error::step("resolve the container's user", &object, e))?;
        let sandbox_dir = self.sandboxes.dir_of(&pod.id);
        let mut binds: Vec<BindMount> = [
            (files::HOSTNAME_FILE, "/etc/hostname"),
            (files::HOSTS_FILE, "/etc/hosts"),
            (files::RESOLV_FILE, "/etc/resolv.conf"),
        ]
        .into_iter()
        .map(|(file, destination)| BindMount {
            source: sandbox_dir.join(file),
            destination: destination.into(),
            readonly: false,
            options: Vec::new(),
            propagation: Propagation::Private,
        })
        .collect();
        if let Some(shm) = &pod.shm {
            binds.push(BindMount {
                source: shm.clone(),
                destination: "/dev/shm".into(),
                readonly: false,
                options: vec!["nosuid".into(), "nodev".into(), "noexec".into()],
                propagation: Propagation::Private,
            });
        }
        binds.extend(spec.mounts.iter().map(|m| BindMount {
            source: m.host_path.clone().into(),
            destination: m.container_path.clone().into(),
            readonly: m.readonly,
            options: Vec::new(),
            propagation: m.propagation,
        }));
        let process = ContainerProcess {
            args: args.clone(),
            env: environment(&spec, image),
            cwd: [&spec.working_dir, &image.config.working_dir]
                .into_iter()
                .find(|dir| !dir.is_empty())
                .cloned()
                .unwrap_or_else(|| "/".into()),
            identity: identity.clone(),
            hostname: pod.hostname.clone(),
            pause_pid: pod.pause.map(|p| p.pid).unwrap_or_default(),
            pid,
            binds,
            security: spec.security.clone(),
            resources: spec.resources.clone(),
            terminal: spec.stdio.tty,
            cgroups_path: (!pod.cgroup_parent.is_empty())
                .then(|| Path::new(&pod.cgroup_parent).join(id)),
        };
        crate::container::bundle::write(&dir.bundle(), &process)
            .map_err(|e| Error::step("write the bundle", &object, e))?;
        fault::point("create-container/bundle-written");

        // 4. The log, where the kubelet looks for it.
        let log_path = if !pod.log_directory.is_empty() && !spec.log_path.is_empty() {
            Path::new(&pod.log_directory).join(&spec.log_path)
        } else {
            dir.default_log()
        };
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::step("create the log directory", &object, e))?;
        }

        // 5. The monitor creates the container with the runtime.
        let oci = OciRuntime::new(&self.oci_runtime, &self.config.oci_runtime_root);
        let (undo_oci, undo_id) = (oci.clone(), id.to_string());
        rollback.push("create the container", async move {
            undo_oci.delete(&undo_id).await.map_err(|e| e.to_string())
        });
        // Near the CRI socket, as an exec's: a unix socket's path is limited to 108 bytes.
        let console_socket = spec.stdio.tty.then(|| {
            let dir = self.config.socket.parent().unwrap_or(Path::new("/run"));
            dir.join(format!(
                "{}{id}.sock",
                crate::container::console::SOCKET_PREFIX
            ))
        });
        let (monitor, process_handle) = crate::container::monitor::spawn(
            &self.monitor_binary,
            &MonitorArgs {
                id,
                bundle: &dir.bundle(),
                runtime: &oci,
                log: &log_path,
                exit_file: &dir.exit_file(),
                attach_socket: &dir.attach_socket(),
                stdio: spec.stdio,
                console_socket: console_socket.as_deref(),
            },
        )
        .await
        .map_err(|e| Error::step("create the container", &object, e))?;
        fault::point("create-container/container-created");

        // 6. Persist; the record takes over from the intent.
        let record = ContainerRecord {
            version: RECORD_VERSION,
            id: id.to_string(),
            sandbox_id: pod.id.clone(),
            name: spec.name,
            attempt: spec.attempt,
            image: spec.image,
            image_id: image.id.clone(),
            labels: spec.labels,
            annotations: spec.annotations,
            args,
            env: process.env,
            cwd: process.cwd,
            uid: identity.uid,
            gid: identity.gid,
            mounts: spec.mounts,
            stdio: spec.stdio,
            resources: spec.resources,
            log_path,
            runtime: oci.binary.clone(),
            created_at_ns: now_ns(),
            started_at_ns: 0,
            finished_at_ns: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            state: ContainerState::Created,
            monitor: Some(monitor),
            process: Some(process_handle),
        };
        self.save_container(&record)?;
        fault::point("create-container/record-saved");
        if let Err(e) = self.create_intents.discard(id) {
            // Harmless: a start-up finds the record beside it and discards it then.
            eprintln!("sandboxd: {object}: remove the intent: {e:#}");
        }
        Ok(record)
    }

    pub(crate) fn save_container(&self, record: &ContainerRecord) -> Result<()> {
        self.container_records
            .save(&record.id, record)
            .map_err(|e| Error::step("persist the record", record.describe(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, image: &str) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn message(config: cri::ContainerConfig) -> String {
        validate(Some(config), "pod sandbox 1234 (default/web)")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn security_contexts_are_checked() {
        let with = |security: cri::LinuxContainerSecurityContext| {
            let mut c = config("c", "busybox");
            c.linux = Some(cri::LinuxContainerConfig {
                security_context: Some(security),
                ..Default::default()
            });
            message(c)
        };
        assert!(with(cri::LinuxContainerSecurityContext {
            run_as_group: Some(cri::Int64Value { value: 5 }),
            ..Default::default()
        })
        .contains("invalid linux.security_context.run_as_group"));
        #[allow(deprecated)]
        let custom = cri::LinuxContainerSecurityContext {
            seccomp_profile_path: "/etc/profile.json".into(),
            ..Default::default()
        };
        assert!(with(custom).contains("invalid linux.security_context.seccomp_profile_path"));
        assert!(with(cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["NET_ADMIN".into(), "FLY".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .contains("invalid linux.security_context.capabilities.add_capabilities[1]"));
        assert!(with(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 5 }),
            run_as_username: "nobody".into(),
            ..Default::default()
        })
        .contains("invalid linux.security_context.run_as_username"));
        assert!(with(cri::LinuxContainerSecurityContext {
            supplemental_groups: vec![5, -1],
            ..Default::default()
        })
        .contains("invalid linux.security_context.supplemental_groups[1]"));
        assert!(with(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Target as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .contains("invalid linux.security_context.namespace_options.pid"));
        let fine = with(cri::LinuxContainerSecurityContext {
            run_as_username: "nobody".into(),
            run_as_group: Some(cri::Int64Value { value: 5 }),
            supplemental_groups: vec![1234, 5678],
            readonly_rootfs: true,
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["ALL".into()],
                drop_capabilities: vec!["CAP_CHOWN".into()],
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(fine, "");
    }

    #[test]
    fn names_images_mounts_and_log_paths_are_checked() {
        assert!(message(config("", "busybox")).contains("invalid metadata.name"));
        assert!(message(config("a/b", "busybox")).contains("contains '/'"));
        assert!(message(config("web", "")).contains("invalid image.image"));
        let mut escape = config("web", "busybox");
        for bad in ["../../etc/passwd", "/etc/passwd", "a/./b", "a/../../b"] {
            escape.log_path = bad.into();
            assert!(
                message(escape.clone()).contains("invalid log_path"),
                "{bad}"
            );
        }
        let mut relative = config("web", "busybox");
        relative.mounts.push(cri::Mount {
            container_path: "data".into(),
            host_path: "/tmp".into(),
            ..Default::default()
        });
        assert!(message(relative).contains("mounts[0].container_path"));
        let mut once = config("web", "busybox");
        once.stdin_once = true;
        let stdio = validate(Some(once), "pod").ok().map(|s| s.stdio);
        assert_eq!(
            stdio,
            Some(ContainerStdio::default()),
            "stdin_once without stdin"
        );
        assert!(validate(Some(config("web", "busybox")), "pod").is_ok());
    }

    #[test]
    fn command_and_env_combine_as_kubernetes_does() {
        let mut image = ImageRecord::default();
        image.config.entrypoint = vec!["/entry".into()];
        image.config.cmd = vec!["default".into()];
        image.config.env = vec!["PATH=/bin".into(), "A=1".into()];
        let mut spec = validate(Some(config("web", "busybox")), "pod").unwrap();
        assert_eq!(command_line(&spec, &image), ["/entry", "default"]);
        spec.args = vec!["x".into()];
        assert_eq!(command_line(&spec, &image), ["/entry", "x"]);
        spec.command = vec!["sh".into()];
        assert_eq!(command_line(&spec, &image), ["sh", "x"]);
        spec.env = vec![("A".into(), "2".into()), ("B".into(), "3".into())];
        assert_eq!(environment(&spec, &image), ["PATH=/bin", "A=2", "B=3"]);
    }
}
