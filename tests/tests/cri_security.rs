//! Every field of a container's security context, over CRI, seen from inside the container:
//! in its first process and in an exec, each with the embedded runtime and with runc. The
//! images are critest's (scripts/critest-images.sh): users and groups as critest expects
//! them, a setuid-root program, busybox.
//! Needs root, runc, Debian's CNI plugins, busybox-static, gcc (a static setuid program).

use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use sandboxd_tests::cri::{container_config, pod_config, with_security, Cri};
use sandboxd_tests::daemon::SandboxdProcess;

sandboxd_tests::with_both_runtimes!(
    users_and_groups_apply_to_the_first_process_and_to_exec,
    paths_capabilities_and_no_new_privs,
    seccomp_profiles_filter_the_first_process_and_exec,
    privileged_containers_and_mount_propagation,
    host_pid_shows_the_nodes_processes,
);

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
const CRI_TOOLS: &str = "gcr.io/k8s-staging-cri-tools";
/// Runs until stopped, as critest's containers do.
const IDLE: &[&str] = &["sh", "-c", "while :; do sleep 1; done"];

struct Node {
    daemon: SandboxdProcess,
    cri: Cri,
    logs: tempfile::TempDir,
}

/// A sandboxd with critest's images in its store, and a pod on it.
async fn node(runtime: &[&str]) -> Node {
    let daemon = SandboxdProcess::start_with(runtime);
    let images = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/critest-images.sh"))
        .arg("--store")
        .arg(daemon.path("state/images"))
        .env(
            "SANDBOXD_BIN_DIR",
            sandboxd_tests::workspace_binary("sandboxctl")
                .parent()
                .unwrap(),
        )
        .output()
        .expect("run critest-images.sh");
    assert!(
        images.status.success(),
        "critest-images.sh: {}",
        String::from_utf8_lossy(&images.stderr)
    );
    let cri = Cri {
        client: daemon.client().await,
    };
    Node {
        daemon,
        cri,
        logs: tempfile::tempdir().unwrap(),
    }
}

impl Node {
    async fn pod(&mut self, name: &str) -> (String, cri::PodSandboxConfig) {
        let config = pod_config(name, Some(self.logs.path()));
        (self.cri.run_pod(config.clone()).await, config)
    }

    /// Removes the pod; nothing of it or its containers is left.
    async fn finish(mut self, pod: &str) {
        self.cri.remove_pod(pod).await;
        assert_eq!(self.daemon.processes(), Vec::<u32>::new(), "processes left");
    }
}

fn uid(value: i64) -> Option<cri::Int64Value> {
    Some(cri::Int64Value { value })
}

/// A `/proc/self/status` field of the container's first process and of an exec in it.
async fn status_field(cri: &mut Cri, id: &str, field: &str) -> (String, String) {
    let first = cri
        .output(id, &["grep", &format!("^{field}:"), "/proc/1/status"])
        .await;
    let exec = cri
        .output(id, &["grep", &format!("^{field}:"), "/proc/self/status"])
        .await;
    let value = |line: &str| line.split_whitespace().nth(1).unwrap_or("").to_string();
    (value(&first), value(&exec))
}

/// run_as_user, run_as_username, run_as_group, supplemental_groups and the image's USER and
/// groups: the first process (its log) and an exec see the same uid, gid and groups.
async fn users_and_groups_apply_to_the_first_process_and_to_exec(runtime: &[&str]) {
    let mut node = node(runtime).await;
    let (pod, config) = node.pod("users").await;
    let report = ["sh", "-c", "id -u; id -g; id -G; while :; do sleep 1; done"];
    let cases: Vec<(&str, String, cri::LinuxContainerSecurityContext, [&str; 3])> = vec![
        (
            "image-groups",
            format!("{CRI_TOOLS}/test-image-predefined-group"),
            cri::LinuxContainerSecurityContext {
                run_as_user: uid(1000),
                supplemental_groups: vec![1234],
                ..Default::default()
            },
            ["1000", "1000", "1000 1234 50000"],
        ),
        (
            "run-as-user",
            BUSYBOX.to_string(),
            cri::LinuxContainerSecurityContext {
                run_as_user: uid(1001),
                supplemental_groups: vec![1234, 5678],
                ..Default::default()
            },
            ["1001", "0", "0 1234 5678"],
        ),
        (
            "run-as-username",
            format!("{CRI_TOOLS}/test-image-user-uid"),
            cri::LinuxContainerSecurityContext {
                run_as_username: "www-data".into(),
                run_as_group: uid(4242),
                ..Default::default()
            },
            ["33", "4242", "4242"],
        ),
        (
            "image-user-and-group",
            format!("{CRI_TOOLS}/test-image-user-uid-group"),
            cri::LinuxContainerSecurityContext::default(),
            ["1003", "1004", "1004"],
        ),
    ];
    for (name, image, security, [uid, gid, groups]) in cases {
        let id = node
            .cri
            .run(
                &pod,
                &config,
                with_security(container_config(name, &image, &report), security),
            )
            .await;
        let logged = node.cri.log_lines(&id, 3).await;
        assert_eq!(logged, [uid, gid, groups], "{name}: first process");
        for (cmd, want) in [("-u", uid), ("-g", gid), ("-G", groups)] {
            assert_eq!(
                node.cri.output(&id, &["id", cmd]).await,
                want,
                "{name}: exec id {cmd}"
            );
        }
    }
    // A name the image lacks is refused when the container is created, naming it.
    let err = node
        .cri
        .create(
            &pod,
            &config,
            with_security(
                container_config("ghost", BUSYBOX, IDLE),
                cri::LinuxContainerSecurityContext {
                    run_as_username: "ghost".into(),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap_err();
    assert!(err.message().contains("\"ghost\""), "{err}");
    node.finish(&pod).await;
}

/// A /proc file containerd masks that this kernel has, with content to read.
fn masked_proc_file() -> &'static str {
    [
        "/proc/timer_list",
        "/proc/keys",
        "/proc/sched_debug",
        "/proc/kcore",
    ]
    .into_iter()
    .find(|f| std::fs::read(f).is_ok_and(|c| !c.is_empty()))
    .expect("a /proc file containerd masks")
}

/// containerd's default capability set as a CapEff mask (CHOWN, DAC_OVERRIDE, FOWNER,
/// FSETID, KILL, SETGID, SETUID, SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD,
/// AUDIT_WRITE, SETFCAP).
const DEFAULT_CAPS: &str = "00000000a80425fb";

/// readonly_rootfs, readonly_paths, masked_paths (and containerd's defaults for both),
/// capabilities added, dropped and ALL, and no_new_privs against a setuid-root program.
async fn paths_capabilities_and_no_new_privs(runtime: &[&str]) {
    let mut node = node(runtime).await;
    let (pod, config) = node.pod("paths").await;

    let plain = node
        .cri
        .run(&pod, &config, container_config("plain", BUSYBOX, IDLE))
        .await;
    assert_eq!(
        status_field(&mut node.cri, &plain, "CapEff").await,
        (DEFAULT_CAPS.into(), DEFAULT_CAPS.into())
    );
    // A masked /proc file reads empty, /proc/sys is read-only, by default.
    let read_masked = format!("wc -c < {}", masked_proc_file());
    assert_eq!(
        node.cri.output(&plain, &["sh", "-c", &read_masked]).await,
        "0"
    );
    let write = node
        .cri
        .exec(
            &plain,
            &["sh", "-c", "echo 1 > /proc/sys/kernel/ns_last_pid"],
        )
        .await;
    assert!(write.stderr.contains("Read-only file system"), "{write:?}");

    node.cri
        .output(&plain, &["touch", "/file", "/tmp/file"])
        .await;
    let readonly = node
        .cri
        .run(
            &pod,
            &config,
            with_security(
                container_config("readonly", BUSYBOX, IDLE),
                cri::LinuxContainerSecurityContext {
                    readonly_rootfs: true,
                    ..Default::default()
                },
            ),
        )
        .await;
    let touch = node.cri.exec(&readonly, &["touch", "/file"]).await;
    assert!(touch.stderr.contains("Read-only file system"), "{touch:?}");

    let locked = node
        .cri
        .run(
            &pod,
            &config,
            with_security(
                container_config("locked", BUSYBOX, IDLE),
                cri::LinuxContainerSecurityContext {
                    readonly_paths: vec!["/tmp".into()],
                    masked_paths: vec!["/etc/passwd".into(), "/root".into()],
                    capabilities: Some(cri::Capability {
                        add_capabilities: vec!["NET_ADMIN".into()],
                        drop_capabilities: vec!["CHOWN".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
        )
        .await;
    node.cri.output(&locked, &["touch", "/file"]).await;
    let touch = node.cri.exec(&locked, &["touch", "/tmp/file"]).await;
    assert!(touch.stderr.contains("Read-only file system"), "{touch:?}");
    // A masked file reads empty; a masked directory is an empty read-only tmpfs. (A
    // masked symlink masks its target, with runc: busybox's /bin/ls would mask busybox.)
    assert_eq!(
        node.cri
            .output(&locked, &["sh", "-c", "wc -c < /etc/passwd"])
            .await,
        "0"
    );
    let root = node
        .cri
        .output(
            &locked,
            &["sh", "-c", "grep ' /root ' /proc/self/mountinfo"],
        )
        .await;
    assert!(root.contains(" ro,") && root.contains("tmpfs"), "{root}");
    // NET_ADMIN in, CHOWN out: the pod's network can be managed, files not given away.
    let (first, exec) = status_field(&mut node.cri, &locked, "CapEff").await;
    let want = format!("{:016x}", 0xa80425fbu64 & !1 | 1 << 12);
    assert_eq!(
        (first.as_str(), exec.as_str()),
        (want.as_str(), want.as_str())
    );
    let bridge = node.cri.exec(&locked, &["brctl", "addbr", "sbt-br"]).await;
    assert_eq!(bridge.exit_code, 0, "{bridge:?}");
    let chown = node.cri.exec(&locked, &["chown", "1:1", "/dev/shm"]).await;
    assert_ne!(chown.exit_code, 0, "{chown:?}");

    for (name, add, drop, bounding_empty) in [
        ("all", vec!["ALL".to_string()], vec![], false),
        ("none", vec![], vec!["ALL".to_string()], true),
    ] {
        let id = node
            .cri
            .run(
                &pod,
                &config,
                with_security(
                    container_config(name, BUSYBOX, IDLE),
                    cri::LinuxContainerSecurityContext {
                        capabilities: Some(cri::Capability {
                            add_capabilities: add,
                            drop_capabilities: drop,
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ),
            )
            .await;
        let (first, exec) = status_field(&mut node.cri, &id, "CapBnd").await;
        assert_eq!(first, exec, "{name}");
        assert_eq!(
            first == "0000000000000000",
            bounding_empty,
            "{name}: {first}"
        );
    }

    // A setuid-root program runs as root unless no_new_privs is set.
    for (nnp, euid) in [(false, "0"), (true, "1000")] {
        let name = format!("nnp-{nnp}");
        let id = node
            .cri
            .run(
                &pod,
                &config,
                with_security(
                    container_config(&name, "registry.k8s.io/e2e-test-images/nonewprivs:1.3", &[]),
                    cri::LinuxContainerSecurityContext {
                        no_new_privs: nnp,
                        run_as_user: uid(1000),
                        ..Default::default()
                    },
                ),
            )
            .await;
        assert_eq!(
            node.cri.log_lines(&id, 1).await,
            [format!("Effective uid: {euid}")]
        );
    }
    node.finish(&pod).await;
}

fn write_profile(dir: &Path, name: &str, blocked: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let profile = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": blocked, "action": "SCMP_ACT_ERRNO" }]
    });
    std::fs::write(&path, profile.to_string()).unwrap();
    path
}

#[allow(deprecated)]
fn seccomp(path: &str, add: &[&str]) -> cri::LinuxContainerSecurityContext {
    cri::LinuxContainerSecurityContext {
        seccomp_profile_path: path.into(),
        capabilities: Some(cri::Capability {
            add_capabilities: add.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Unconfined (and no profile), RuntimeDefault under its three names, a localhost profile
/// by path and by the `seccomp` field; in the first process and in exec (libcontainer's
/// exec does not carry the filter by itself: sandboxd-runtime loads it).
async fn seccomp_profiles_filter_the_first_process_and_exec(runtime: &[&str]) {
    let mut node = node(runtime).await;
    let (pod, config) = node.pod("seccomp").await;
    let profiles = tempfile::tempdir().unwrap();
    let block_hostname = write_profile(profiles.path(), "block-hostname.json", &["sethostname"]);
    let block_chmod = write_profile(profiles.path(), "block-chmod.json", &["chmod", "fchmodat"]);
    let localhost = |p: &Path| format!("localhost/{}", p.display());

    // (name, context, Seccomp mode, sethostname allowed)
    let cases = [
        ("none", seccomp("", &["SYS_ADMIN"]), "0", true),
        (
            "unconfined",
            seccomp("unconfined", &["SYS_ADMIN"]),
            "0",
            true,
        ),
        (
            "default-admin",
            seccomp("runtime/default", &["SYS_ADMIN"]),
            "2",
            true,
        ),
        ("docker-default", seccomp("docker/default", &[]), "2", false),
        (
            "localhost-hostname",
            seccomp(&localhost(&block_hostname), &["SYS_ADMIN"]),
            "2",
            false,
        ),
        (
            "field-default",
            cri::LinuxContainerSecurityContext {
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            },
            "2",
            false,
        ),
    ];
    for (name, security, mode, sethostname) in cases {
        let id = node
            .cri
            .run(
                &pod,
                &config,
                with_security(container_config(name, BUSYBOX, IDLE), security),
            )
            .await;
        let (first, exec) = status_field(&mut node.cri, &id, "Seccomp").await;
        assert_eq!((first.as_str(), exec.as_str()), (mode, mode), "{name}");
        let set = node.cri.exec(&id, &["hostname", "sbt-renamed"]).await;
        assert_eq!(set.exit_code == 0, sethostname, "{name}: {set:?}");
    }
    // The runtime default: without SYS_ADMIN no namespaces, even where the kernel lets an
    // unprivileged process make a user namespace.
    let confined = node
        .cri
        .run(
            &pod,
            &config,
            with_security(
                container_config("userns", BUSYBOX, IDLE),
                seccomp("runtime/default", &[]),
            ),
        )
        .await;
    let unshare = node.cri.exec(&confined, &["unshare", "-U", "true"]).await;
    assert_ne!(unshare.exit_code, 0, "{unshare:?}");
    let field = cri::LinuxContainerSecurityContext {
        seccomp: Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Localhost as i32,
            localhost_ref: block_chmod.display().to_string(),
        }),
        ..Default::default()
    };
    let id = node
        .cri
        .run(
            &pod,
            &config,
            with_security(
                container_config(
                    "chmod",
                    BUSYBOX,
                    &[
                        "sh",
                        "-c",
                        "chmod 400 /tmp; echo $?; while :; do sleep 1; done",
                    ],
                ),
                field,
            ),
        )
        .await;
    assert_ne!(
        node.cri.log_lines(&id, 1).await,
        ["0"],
        "chmod in the first process"
    );
    let chmod = node.cri.exec(&id, &["chmod", "400", "/tmp"]).await;
    assert!(
        chmod.stderr.contains("Operation not permitted"),
        "{chmod:?}"
    );

    // Bad profiles are refused by name, and nothing is left of the container.
    for (security, field) in [
        (
            seccomp(&block_hostname.display().to_string(), &[]),
            "seccomp_profile_path",
        ),
        (
            seccomp("localhost/relative.json", &[]),
            "seccomp_profile_path",
        ),
        (
            seccomp(&localhost(&profiles.path().join("missing.json")), &[]),
            "seccomp_profile_path",
        ),
    ] {
        let err = node
            .cri
            .create(
                &pod,
                &config,
                with_security(container_config("bad", BUSYBOX, IDLE), security),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message()
                .contains(&format!("linux.security_context.{field}")),
            "{err}"
        );
    }
    node.finish(&pod).await;
}

/// A mount of the node's made for one test and removed even when it fails.
struct HostMount(PathBuf);

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-R", "-l"])
            .arg(&self.0)
            .status();
    }
}

fn mount(args: &[&str]) {
    let status = std::process::Command::new("mount")
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "mount {args:?}");
}

/// Mounts a tmpfs at `dir` inside the container, with a file `mark` in it.
async fn mount_marked_tmpfs(cri: &mut Cri, id: &str, dir: &str) {
    let script = format!("mkdir -p {dir} && mount -t tmpfs sbt {dir} && touch {dir}/mark");
    cri.output(id, &["sh", "-c", &script]).await;
}

/// Privileged: every capability sandboxd holds, writable /sys, the node's devices, no
/// masked paths, no seccomp filter whatever profile is named, network management; and
/// host-path mounts with bidirectional and host-to-container propagation.
async fn privileged_containers_and_mount_propagation(runtime: &[&str]) {
    let mut node = node(runtime).await;
    let (pod, config) = node.pod("privileged").await;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(shared.join("from-host")).unwrap();
    std::fs::create_dir_all(dir.path().join("source")).unwrap();
    std::fs::write(dir.path().join("source/flag"), "").unwrap();
    let shared_text = shared.display().to_string();
    mount(&["--bind", &shared_text, &shared_text]);
    let _bind = HostMount(shared.clone());
    mount(&["--make-rshared", &shared_text]);

    let mut security = seccomp("runtime/default", &[]);
    security.privileged = true;
    let mut privileged = with_security(container_config("privileged", BUSYBOX, IDLE), security);
    privileged.mounts = vec![cri::Mount {
        container_path: "/shared".into(),
        host_path: shared_text.clone(),
        propagation: cri::MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    let id = node.cri.run(&pod, &config, privileged).await;
    let held = std::fs::read_to_string("/proc/self/status").unwrap();
    let held = held
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(
        status_field(&mut node.cri, &id, "CapEff").await,
        (held.clone(), held)
    );
    assert_eq!(
        status_field(&mut node.cri, &id, "Seccomp").await,
        ("0".into(), "0".into())
    );
    let sys = node
        .cri
        .output(&id, &["sh", "-c", "grep ' /sys ' /proc/mounts"])
        .await;
    assert!(sys.contains(" rw,"), "{sys}");
    let read_masked = format!("wc -c < {}", masked_proc_file());
    assert_ne!(node.cri.output(&id, &["sh", "-c", &read_masked]).await, "0");
    if Path::new("/dev/loop-control").exists() {
        node.cri
            .output(&id, &["test", "-c", "/dev/loop-control"])
            .await;
    }
    let bridge = node.cri.exec(&id, &["brctl", "addbr", "sbt-br"]).await;
    assert_eq!(bridge.exit_code, 0, "{bridge:?}");
    let status = node.cri.status(&id).await;
    assert_eq!(
        status.mounts[0].propagation,
        cri::MountPropagation::PropagationBidirectional as i32
    );

    // Node → container, and container → node.
    let source = dir.path().join("source").display().to_string();
    mount(&["--bind", &source, &format!("{shared_text}/from-host")]);
    assert_eq!(
        node.cri.output(&id, &["ls", "/shared/from-host"]).await,
        "flag"
    );
    mount_marked_tmpfs(&mut node.cri, &id, "/shared/from-container").await;
    assert!(
        shared.join("from-container/mark").exists(),
        "not propagated to the node"
    );

    // Host-to-container: the node's mounts come in, the container's stay in.
    let mut slave = with_security(
        container_config("slave", BUSYBOX, IDLE),
        cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        },
    );
    slave.mounts = vec![cri::Mount {
        container_path: "/shared".into(),
        host_path: shared_text.clone(),
        propagation: cri::MountPropagation::PropagationHostToContainer as i32,
        ..Default::default()
    }];
    let slave = node.cri.run(&pod, &config, slave).await;
    std::fs::create_dir_all(shared.join("later")).unwrap();
    mount(&["--bind", &source, &format!("{shared_text}/later")]);
    assert_eq!(
        node.cri.output(&slave, &["ls", "/shared/later"]).await,
        "flag"
    );
    mount_marked_tmpfs(&mut node.cri, &slave, "/shared/from-slave").await;
    assert!(
        !shared.join("from-slave/mark").exists(),
        "leaked to the node"
    );

    // A source that is not a shared mount cannot propagate: refused by field.
    let private = dir.path().join("private");
    std::fs::create_dir_all(&private).unwrap();
    let mut refused = container_config("refused", BUSYBOX, IDLE);
    refused.mounts = vec![cri::Mount {
        container_path: "/private".into(),
        host_path: private.display().to_string(),
        propagation: cri::MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    let err = node.cri.create(&pod, &config, refused).await.unwrap_err();
    assert!(err.message().contains("mounts[0].propagation"), "{err}");
    assert!(err.message().contains("not shared"), "{err}");
    node.finish(&pod).await;
}

/// A container in the node's pid namespace sees sandboxd; one of its own sees only itself.
async fn host_pid_shows_the_nodes_processes(runtime: &[&str]) {
    let mut node = node(runtime).await;
    let (pod, config) = node.pod("hostpid").await;
    let pid_mode = |mode: cri::NamespaceMode| cri::LinuxContainerSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            pid: mode as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let host = node
        .cri
        .run(
            &pod,
            &config,
            with_security(
                container_config("host", BUSYBOX, IDLE),
                pid_mode(cri::NamespaceMode::Node),
            ),
        )
        .await;
    let own = node
        .cri
        .run(
            &pod,
            &config,
            with_security(
                container_config("own", BUSYBOX, IDLE),
                pid_mode(cri::NamespaceMode::Container),
            ),
        )
        .await;
    let daemon_pid = node.daemon.pid().to_string();
    let comm = node
        .cri
        .output(&host, &["cat", &format!("/proc/{daemon_pid}/comm")])
        .await;
    assert_eq!(comm, "sandboxd");
    let own_sees = node
        .cri
        .exec(&own, &["test", "-e", &format!("/proc/{daemon_pid}")])
        .await;
    assert_ne!(
        own_sees.exit_code, 0,
        "a container of its own pid namespace sees sandboxd"
    );
    assert_eq!(
        node.cri
            .output(&own, &["cat", "/proc/1/cmdline"])
            .await
            .replace('\0', " ")
            .trim(),
        IDLE.join(" ")
    );
    // POD without a pod pid namespace is refused by field.
    let err = node
        .cri
        .create(
            &pod,
            &config,
            with_security(
                container_config("pod", BUSYBOX, IDLE),
                pid_mode(cri::NamespaceMode::Pod),
            ),
        )
        .await
        .unwrap_err();
    assert!(err.message().contains("namespace_options.pid"), "{err}");
    node.finish(&pod).await;
}
