//! Containers over CRI, against sandboxd running as its own process on a node of its own:
//! the seed pod-pause pod (two containers that reach each other over localhost, sharing the
//! pause's net and ipc namespaces), the full lifecycle with filters and exec, a third
//! container that cannot bind a taken port, kill -9 of sandboxd while containers run, bad
//! input, and cycles that must leak nothing; each with the embedded runtime and with runc.
//! Needs root, runc, Debian's CNI plugins and busybox-static.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use sandboxd_tests::daemon::SandboxdProcess;
use serde_json::Value;
use tonic::transport::Channel;

type Client = RuntimeServiceClient<Channel>;

sandboxd_tests::with_both_runtimes!(
    the_pod_pause_containers_share_the_pod_network,
    containers_run_stop_list_exec_and_are_removed,
    containers_survive_a_kill_9_of_sandboxd,
    bad_container_requests_are_refused_and_leave_nothing,
    container_cycles_leak_nothing,
    a_rotated_log_is_reopened_and_a_timed_out_exec_leaves_no_process,
    container_stats_come_from_its_cgroups_and_its_upper_dir,
    pod_stats_and_resources_come_from_and_go_to_the_cgroups,
    containers_are_placed_under_the_pods_cgroup_parent,
);

fn pod_config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        ..Default::default()
    }
}

fn container_config(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        labels: HashMap::from([("container".to_string(), name.to_string())]),
        ..Default::default()
    }
}

async fn run_pod(client: &mut Client, name: &str) -> String {
    run_pod_with(client, pod_config(name)).await
}

async fn run_pod_with(client: &mut Client, config: cri::PodSandboxConfig) -> String {
    client
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id
}

async fn remove_pod(client: &mut Client, pod: &str) {
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await
        .expect("RemovePodSandbox");
}

async fn create(
    client: &mut Client,
    pod: &str,
    config: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    let sandbox_config = pod_config("unused");
    Ok(client
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        })
        .await?
        .into_inner()
        .container_id)
}

async fn start(client: &mut Client, id: &str) {
    client
        .start_container(cri::StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .expect("StartContainer");
}

async fn run_container(client: &mut Client, pod: &str, config: cri::ContainerConfig) -> String {
    let id = create(client, pod, config).await.expect("CreateContainer");
    start(client, &id).await;
    id
}

async fn status(client: &mut Client, id: &str) -> (cri::ContainerStatus, Value) {
    let response = client
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .expect("ContainerStatus")
        .into_inner();
    let info = serde_json::from_str(&response.info["info"]).unwrap();
    (response.status.unwrap(), info)
}

async fn exec(client: &mut Client, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
    client
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner()
}

/// Retries `wget` until the server in the other container listens.
async fn fetch(client: &mut Client, id: &str, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = exec(client, id, &["wget", "-qO-", url]).await;
        if out.exit_code == 0 {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "wget {url} from {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_exited(client: &mut Client, id: &str) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = status(client, id).await;
        if status.state == cri::ContainerState::ContainerExited as i32 {
            return status;
        }
        assert!(Instant::now() < deadline, "container {id} did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn list(client: &mut Client, filter: cri::ContainerFilter) -> Vec<String> {
    let mut ids: Vec<String> = client
        .list_containers(cri::ListContainersRequest {
            filter: Some(filter),
        })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort();
    ids
}

fn ns(pid: u64, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

async fn pause_pid(client: &mut Client, pod: &str) -> u64 {
    let response = client
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: Value = serde_json::from_str(&response.info["info"]).unwrap();
    info["pid"].as_u64().unwrap()
}

/// The seed pod-pause over CRI: p8000 and p8080 in one pod answer each other on localhost,
/// share the pause's net and ipc namespaces, own their mnt, uts and pid; a third container
/// binding 8080 exits with "address in use" in its log and a non-zero exit code.
async fn the_pod_pause_containers_share_the_pod_network(runtime: &[&str]) {
    let daemon = SandboxdProcess::start_with(runtime);
    let mut client = daemon.client().await;
    let pod = run_pod(&mut client, "pod-pause").await;
    let c1 = run_container(
        &mut client,
        &pod,
        container_config("container1", "kubetm/p8000", &[]),
    )
    .await;
    let c2 = run_container(
        &mut client,
        &pod,
        container_config("container2", "kubetm/p8080", &[]),
    )
    .await;

    assert_eq!(
        fetch(&mut client, &c1, "http://localhost:8080/hostname").await,
        "pod-pause"
    );
    assert_eq!(
        fetch(&mut client, &c2, "http://localhost:8000/hostname").await,
        "pod-pause"
    );

    let pause = pause_pid(&mut client, &pod).await;
    for id in [&c1, &c2] {
        let (status, info) = status(&mut client, id).await;
        assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
        assert_eq!(info["networkMode"], format!("container:{pod}"));
        let pid = info["pid"].as_u64().unwrap();
        assert_eq!(ns(pid, "net"), ns(pause, "net"), "net is not the pause's");
        assert_eq!(ns(pid, "ipc"), ns(pause, "ipc"), "ipc is not the pause's");
        for kind in ["mnt", "uts", "pid"] {
            assert_ne!(ns(pid, kind), ns(pause, kind), "{kind} is the pause's");
        }
        let hostname = exec(&mut client, id, &["hostname"]).await;
        assert_eq!(
            String::from_utf8_lossy(&hostname.stdout).trim(),
            "pod-pause"
        );
    }

    // A third server on 8080 in the same network namespace cannot bind it.
    let c3 = run_container(
        &mut client,
        &pod,
        container_config("container3", "kubetm/p8080", &[]),
    )
    .await;
    let exited = wait_exited(&mut client, &c3).await;
    assert_ne!(exited.exit_code, 0);
    assert_eq!(exited.reason, "Error");
    let log = std::fs::read_to_string(&exited.log_path).unwrap();
    assert!(
        log.contains("Address in use") || log.contains("address in use"),
        "{log}"
    );
    assert!(
        log.contains(" stderr F "),
        "not in the CRI log format: {log}"
    );

    remove_pod(&mut client, &pod).await;
    assert!(list(&mut client, cri::ContainerFilter::default())
        .await
        .is_empty());
    assert_eq!(daemon.processes(), Vec::<u32>::new(), "processes left");
    assert_eq!(
        daemon.mounts(),
        vec![daemon.path("run/netns")],
        "mounts left besides the netns dir"
    );
}

async fn containers_run_stop_list_exec_and_are_removed(runtime: &[&str]) {
    let daemon = SandboxdProcess::start_with(runtime);
    let mut client = daemon.client().await;
    let pod = run_pod(&mut client, "lifecycle").await;
    let other = run_pod(&mut client, "other").await;

    let sleeper = create(
        &mut client,
        &pod,
        container_config("sleeper", "busybox", &["sleep", "1000"]),
    )
    .await
    .unwrap();
    let (created, _) = status(&mut client, &sleeper).await;
    assert_eq!(created.state, cri::ContainerState::ContainerCreated as i32);
    assert_eq!(created.started_at, 0);
    start(&mut client, &sleeper).await;
    let mut echo_config = container_config(
        "echo",
        "busybox",
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    );
    echo_config.envs.push(cri::KeyValue {
        key: "GREETING".into(),
        value: "hi".into(),
    });
    let echo = run_container(&mut client, &other, echo_config).await;

    // Exit code, reason and the CRI log.
    let exited = wait_exited(&mut client, &echo).await;
    assert_eq!(exited.exit_code, 3);
    assert_eq!(exited.reason, "Error");
    assert!(exited.finished_at >= exited.started_at && exited.started_at > 0);
    let log = std::fs::read_to_string(&exited.log_path).unwrap();
    assert!(
        log.contains(" stdout F out\n") && log.contains(" stderr F err\n"),
        "{log}"
    );

    // Filters: by pod, state, label, id prefix.
    let by_pod = |id: &str| cri::ContainerFilter {
        pod_sandbox_id: id.into(),
        ..Default::default()
    };
    assert_eq!(list(&mut client, by_pod(&pod)).await, vec![sleeper.clone()]);
    assert_eq!(
        list(&mut client, by_pod(&other[..12])).await,
        vec![echo.clone()]
    );
    let running = cri::ContainerFilter {
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        }),
        ..Default::default()
    };
    assert_eq!(list(&mut client, running).await, vec![sleeper.clone()]);
    let labelled = cri::ContainerFilter {
        label_selector: HashMap::from([("container".to_string(), "echo".to_string())]),
        ..Default::default()
    };
    assert_eq!(list(&mut client, labelled).await, vec![echo.clone()]);
    let prefix = cri::ContainerFilter {
        id: sleeper[..10].into(),
        ..Default::default()
    };
    assert_eq!(list(&mut client, prefix).await, vec![sleeper.clone()]);

    // Exec: output, exit code, env of the container, timeout.
    let out = exec(&mut client, &sleeper, &["sh", "-c", "echo $PATH; exit 7"]).await;
    assert_eq!(out.exit_code, 7);
    assert!(String::from_utf8_lossy(&out.stdout).contains("/bin"));
    let started = Instant::now();
    let timeout = client
        .exec_sync(cri::ExecSyncRequest {
            container_id: sleeper.clone(),
            cmd: vec!["sleep".into(), "30".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(timeout.code(), tonic::Code::DeadlineExceeded, "{timeout:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let not_running = client
        .exec_sync(cri::ExecSyncRequest {
            container_id: echo.clone(),
            cmd: vec!["true".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(not_running.code(), tonic::Code::FailedPrecondition);

    // Stop: sleep ignores nothing, but as PID 1 it has no SIGTERM handler, so the timeout
    // passes and SIGKILL ends it: 137.
    let stopping = Instant::now();
    client
        .stop_container(cri::StopContainerRequest {
            container_id: sleeper.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(5));
    let (stopped, _) = status(&mut client, &sleeper).await;
    assert_eq!(stopped.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(stopped.exit_code, 137);
    // Idempotent.
    client
        .stop_container(cri::StopContainerRequest {
            container_id: sleeper.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
    let again = client
        .start_container(cri::StartContainerRequest {
            container_id: sleeper.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);

    for id in [&sleeper, &echo] {
        client
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .unwrap();
    }
    // Removing again is fine; status of a removed one is NotFound.
    client
        .remove_container(cri::RemoveContainerRequest {
            container_id: sleeper.clone(),
        })
        .await
        .unwrap();
    let gone = client
        .container_status(cri::ContainerStatusRequest {
            container_id: sleeper.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    assert!(std::fs::read_dir(daemon.path("state/containers"))
        .unwrap()
        .next()
        .is_none());
    for id in [pod, other] {
        remove_pod(&mut client, &id).await;
    }
    assert_eq!(daemon.processes(), Vec::<u32>::new(), "processes left");
}

async fn containers_survive_a_kill_9_of_sandboxd(runtime: &[&str]) {
    let mut daemon = SandboxdProcess::start_with(runtime);
    let mut client = daemon.client().await;
    let pod = run_pod(&mut client, "survivor").await;
    let server = run_container(
        &mut client,
        &pod,
        container_config("server", "kubetm/p8080", &[]),
    )
    .await;
    let short = run_container(
        &mut client,
        &pod,
        container_config("short", "busybox", &["sh", "-c", "sleep 1; exit 42"]),
    )
    .await;
    let (before, info) = status(&mut client, &server).await;
    let pid = info["pid"].as_u64().unwrap();

    daemon.kill9();
    // The short one exits while sandboxd is down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.spawn();
    let mut client = daemon.client().await;

    let (after, info) = status(&mut client, &server).await;
    assert_eq!(after.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(after.started_at, before.started_at);
    assert_eq!(info["pid"].as_u64(), Some(pid));
    let (gone, _) = status(&mut client, &short).await;
    assert_eq!(gone.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(gone.exit_code, 42);
    assert_eq!(gone.reason, "Error");
    let hostname = fetch(&mut client, &server, "http://localhost:8080/hostname").await;
    assert_eq!(hostname, "survivor");
    assert_eq!(
        list(&mut client, cri::ContainerFilter::default())
            .await
            .len(),
        2
    );
    remove_pod(&mut client, &pod).await;
    assert_eq!(daemon.processes(), Vec::<u32>::new(), "processes left");
}

async fn bad_container_requests_are_refused_and_leave_nothing(runtime: &[&str]) {
    let daemon = SandboxdProcess::start_with(runtime);
    let mut client = daemon.client().await;
    let pod = run_pod(&mut client, "strict").await;

    let missing_image = create(&mut client, &pod, container_config("c", "kubetm/nope", &[]))
        .await
        .unwrap_err();
    assert_eq!(missing_image.code(), tonic::Code::NotFound);
    assert!(missing_image.message().contains("kubetm/nope"));
    assert!(missing_image.message().contains("sandboxctl image import"));

    let bad_name = create(&mut client, &pod, container_config("a/b", "busybox", &[]))
        .await
        .unwrap_err();
    assert_eq!(bad_name.code(), tonic::Code::InvalidArgument);
    assert!(bad_name.message().contains("metadata.name"), "{bad_name:?}");

    for log_path in ["../../etc/x.log", "/etc/x.log", "a/../../x.log"] {
        let mut config = container_config("c", "busybox", &[]);
        config.log_path = log_path.into();
        let escape = create(&mut client, &pod, config).await.unwrap_err();
        assert_eq!(escape.code(), tonic::Code::InvalidArgument);
        assert!(escape.message().contains("invalid log_path"), "{escape:?}");
    }

    let unknown_pod = create(
        &mut client,
        "feedface",
        container_config("c", "busybox", &[]),
    )
    .await
    .unwrap_err();
    assert_eq!(unknown_pod.code(), tonic::Code::NotFound);
    assert!(unknown_pod.message().contains("feedface"));

    let no_program = create(
        &mut client,
        &pod,
        container_config("c", "busybox", &["/no/such/program"]),
    )
    .await
    .unwrap_err();
    assert_eq!(no_program.code(), tonic::Code::Internal);
    assert!(
        no_program.message().contains("create the container"),
        "{no_program:?}"
    );

    let first = create(
        &mut client,
        &pod,
        container_config("dup", "busybox", &["sleep", "100"]),
    )
    .await
    .unwrap();
    let duplicate = create(
        &mut client,
        &pod,
        container_config("dup", "busybox", &["sleep", "100"]),
    )
    .await
    .unwrap_err();
    assert_eq!(duplicate.code(), tonic::Code::AlreadyExists);
    assert!(duplicate.message().contains(&first), "{duplicate:?}");

    // A pod that was stopped takes no containers; a removed one is not found.
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    let stopped = create(
        &mut client,
        &pod,
        container_config("late", "busybox", &["true"]),
    )
    .await
    .unwrap_err();
    assert_eq!(stopped.code(), tonic::Code::FailedPrecondition);
    remove_pod(&mut client, &pod).await;
    let removed = create(
        &mut client,
        &pod,
        container_config("late", "busybox", &["true"]),
    )
    .await
    .unwrap_err();
    assert_eq!(removed.code(), tonic::Code::NotFound);

    assert!(std::fs::read_dir(daemon.path("state/containers"))
        .map(|mut d| d.next().is_none())
        .unwrap_or(true));
    assert!(std::fs::read_dir(daemon.path("runtime"))
        .map(|mut d| d.next().is_none())
        .unwrap_or(true));
    assert_eq!(daemon.processes(), Vec::<u32>::new(), "processes left");
    assert_eq!(daemon.mounts(), vec![daemon.path("run/netns")]);
}

/// 100 create/start/remove cycles leak no process, mount, runtime state or record.
async fn container_cycles_leak_nothing(runtime: &[&str]) {
    let daemon = SandboxdProcess::start_with(runtime);
    let mut client = daemon.client().await;
    let pod = run_pod(&mut client, "cycles").await;
    for i in 0..100 {
        let id = run_container(
            &mut client,
            &pod,
            container_config(&format!("c{i}"), "busybox", &["sleep", "100"]),
        )
        .await;
        client
            .remove_container(cri::RemoveContainerRequest { container_id: id })
            .await
            .unwrap();
    }
    let pause = pause_pid(&mut client, &pod).await as u32;
    assert_eq!(daemon.processes(), vec![pause], "processes left");
    assert!(std::fs::read_dir(daemon.path("state/containers"))
        .unwrap()
        .next()
        .is_none());
    assert!(std::fs::read_dir(daemon.path("runtime"))
        .unwrap()
        .next()
        .is_none());
    let mounts = daemon.mounts();
    assert_eq!(mounts.len(), 3, "{mounts:?}"); // netns dir, the pod's pin and its shm
    remove_pod(&mut client, &pod).await;
    assert_eq!(daemon.mounts(), vec![daemon.path("run/netns")]);
}

/// The CLI over it all: the seed's manifest applied unchanged, kubectl-style get, the
/// crictl verbs by pod name, `ip netns exec` on the pinned netns, logs, exit codes, and
/// errors that name what is wrong.
#[tokio::test]
async fn sandboxctl_applies_the_seed_manifest_and_drives_its_containers() {
    // Pods pinned in /run/netns, so iproute2 knows them by id.
    let daemon =
        SandboxdProcess::start_with(&["--netns-dir", "/run/netns", "--node-name", "sbt-node1"]);
    let manifest =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pod-pause.yaml");
    let manifest = manifest.to_str().unwrap();
    let ctl = |args: &[&str]| {
        let (code, out, err) = daemon.sandboxctl(args);
        assert_eq!(code, Some(0), "sandboxctl {args:?}: {out}{err}");
        out
    };
    assert_eq!(ctl(&["apply", "-f", manifest]), "pod/pod-pause created\n");
    assert_eq!(ctl(&["apply", "-f", manifest]), "pod/pod-pause unchanged\n");
    let wide = ctl(&["get", "pods", "-o", "wide"]);
    assert!(wide.contains("pod-pause   2/2     Running   0"), "{wide}");
    assert!(wide.contains("sbt-node1"), "{wide}");
    let pod: Value =
        serde_json::from_str(&ctl(&["get", "pods", "pod-pause", "-o", "json"])).unwrap();
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(
        pod["spec"]["nodeSelector"]["kubernetes.io/hostname"],
        "k8s-node1"
    );
    let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    let yaml = ctl(&["get", "pods", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: List") && yaml.contains("name: container2"),
        "{yaml}"
    );

    let c1 = ctl(&["ps", "--pod", "pod-pause", "--name", "container1", "-q"]);
    let c1 = c1.trim();
    assert_eq!(c1.len(), 64);
    assert_eq!(
        ctl(&["exec", c1, "wget", "-qO-", "localhost:8080/hostname"]),
        "pod-pause\n"
    );
    let (code, _, _) = daemon.sandboxctl(&["exec", c1, "sh", "-c", "exit 9"]);
    assert_eq!(code, Some(9), "exec's exit code is sandboxctl's");
    let inspect: Value = serde_json::from_str(&ctl(&["inspect", c1])).unwrap();
    let pod_id = ctl(&["pods", "--name", "pod-pause", "-q"]);
    assert_eq!(
        inspect["info"]["networkMode"],
        format!("container:{}", pod_id.trim())
    );

    // The pinned netns, by the name iproute2 knows it by: eth0 has the pod IP.
    let inspectp: Value = serde_json::from_str(&ctl(&["inspectp", "pod-pause"])).unwrap();
    let netns = inspectp["info"]["netnsPath"].as_str().unwrap();
    assert!(netns.starts_with("/run/netns/"), "{netns}");
    let name = netns.trim_start_matches("/run/netns/");
    let eth0 = sandboxd_tests::run(
        "ip",
        &["netns", "exec", name, "ip", "-br", "addr", "show", "eth0"],
    );
    assert!(eth0.contains(&format!("{ip}/24")), "{eth0}");

    let logs = ctl(&["logs", c1]);
    assert!(
        logs.contains("listening on 0.0.0.0:8000 as pod-pause"),
        "{logs}"
    );

    // Errors: a running container is not removed without -f; bad manifests are refused
    // with the document and field named, and nothing is created.
    let (code, _, err) = daemon.sandboxctl(&["rm", c1]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is running"), "{err}");
    let bad = daemon.path("bad.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: other\nspec:\n  containers:\n  - name: c\n    image: kubetm/nope\n").unwrap();
    let (code, _, err) = daemon.sandboxctl(&["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("pod/other: container c: image kubetm/nope is not in the local store"),
        "{err}"
    );
    std::fs::write(&bad, "apiVersion: v1\nkind: Pod\nmetadata: {name: x\n").unwrap();
    let (code, _, err) = daemon.sandboxctl(&["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("document 1: not valid YAML"), "{err}");
    // A value of the wrong type is named by its path.
    std::fs::write(&bad, "apiVersion: v1\nkind: Pod\nmetadata: {name: typed}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    ports: [{containerPort: abc}]\n").unwrap();
    let (code, _, err) = daemon.sandboxctl(&["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("document 1 (pod/typed): spec.containers[0].ports[0].containerPort: invalid type: string \"abc\""),
        "{err}"
    );
    // A manifest over 3 MiB is refused before it is parsed, from a file and from stdin.
    let mut big = "apiVersion: v1\nkind: Pod\nmetadata: {name: big}\nspec: {containers: [{name: c, image: busybox}]}\n#".to_string();
    big.push_str(&"x".repeat(50 << 20));
    std::fs::write(&bad, &big).unwrap();
    let (code, _, err) = daemon.sandboxctl(&["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("bad.yaml is larger than 3 MiB"), "{err}");
    let piped = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} --runtime-endpoint {} apply -f - < {}",
            sandboxd_tests::workspace_binary("sandboxctl").display(),
            daemon.endpoint(),
            bad.display()
        ))
        .output()
        .unwrap();
    assert_eq!(piped.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&piped.stderr).contains("<stdin> is larger than 3 MiB"),
        "{piped:?}"
    );
    assert_eq!(
        ctl(&["pods", "-q"]).lines().count(),
        1,
        "a failed apply left a pod"
    );

    assert_eq!(
        ctl(&["delete", "-f", manifest, "--grace-period", "5"]),
        "pod \"pod-pause\" deleted\n"
    );
    let (code, _, err) = daemon.sandboxctl(&["delete", "-f", manifest]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not found"), "{err}");
    assert!(!std::path::Path::new(netns).exists(), "the pin is left");
    assert_eq!(daemon.processes(), Vec::<u32>::new(), "processes left");
}

/// critest's log rotation and ExecSync-timeout checks: ReopenContainerLog returns with the
/// new file in place, and the command of an ExecSync that ran past its timeout is gone.
async fn a_rotated_log_is_reopened_and_a_timed_out_exec_leaves_no_process(runtime: &[&str]) {
    let daemon = SandboxdProcess::start_with(runtime);
    let mut client = daemon.client().await;
    let pod = run_pod(&mut client, "rotating").await;
    let ticker = run_container(
        &mut client,
        &pod,
        container_config(
            "ticker",
            "busybox",
            &["sh", "-c", "while true; do echo tick; sleep 0.05; done"],
        ),
    )
    .await;
    let (running, _) = status(&mut client, &ticker).await;
    let log = std::path::PathBuf::from(&running.log_path);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(&log).unwrap_or_default().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no log at {}",
            log.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    client
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: ticker.clone(),
        })
        .await
        .unwrap();
    assert!(log.exists(), "the new log is there when the call returns");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = std::fs::read_to_string(&rotated).unwrap().len();
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains(" stdout F tick\n"));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap().len(),
        before,
        "the rotated log no longer grows"
    );

    let timed_out = client
        .exec_sync(cri::ExecSyncRequest {
            container_id: ticker.clone(),
            cmd: vec!["sleep".into(), "4321".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(
        timed_out.code(),
        tonic::Code::DeadlineExceeded,
        "{timed_out:?}"
    );
    // Not running, and not a zombie either (its comm would still say sleep): the ticker's
    // own short sleeps are the only ones.
    let left = exec(
        &mut client,
        &ticker,
        &[
            "sh",
            "-c",
            "for p in $(pgrep sleep); do cat /proc/$p/stat; tr '\\0' ' ' < /proc/$p/cmdline; echo; done",
        ],
    )
    .await;
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.contains("4321") && !left.contains(") Z "),
        "the timed-out command is still there: {left}"
    );
}

/// ContainerStats and ListContainerStats: CPU and memory from the container's cgroups,
/// the writable layer from its upper dir, filters as ListContainers has them.
async fn container_stats_come_from_its_cgroups_and_its_upper_dir(runtime: &[&str]) {
    let daemon = SandboxdProcess::start_with(runtime);
    let mut client = daemon.client().await;
    let pod = run_pod(&mut client, "measured").await;
    let other = run_pod(&mut client, "unmeasured").await;
    let busy = run_container(
        &mut client,
        &pod,
        container_config(
            "busy",
            "busybox",
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/blob bs=1024 count=4096 2>/dev/null; i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; touch /done; sleep 1000",
            ],
        ),
    )
    .await;
    let idle = run_container(
        &mut client,
        &other,
        container_config("idle", "busybox", &["sleep", "1000"]),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while exec(&mut client, &busy, &["test", "-e", "/done"])
        .await
        .exit_code
        != 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the busy loop did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let stats = client
        .container_stats(cri::ContainerStatsRequest {
            container_id: busy.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let attributes = stats.attributes.unwrap();
    assert_eq!(attributes.id, busy);
    assert_eq!(attributes.metadata.unwrap().name, "busy");
    let cpu = stats.cpu.unwrap();
    assert!(cpu.timestamp > 0);
    let cpu_ns = cpu.usage_core_nano_seconds.unwrap().value;
    assert!(cpu_ns > 10_000_000, "the loop took CPU: {cpu_ns} ns");
    let memory = stats.memory.unwrap();
    assert!(memory.timestamp > 0);
    let working_set = memory.working_set_bytes.unwrap().value;
    assert!(working_set > 0 && working_set < 1 << 30, "{working_set}");
    let layer = stats.writable_layer.unwrap();
    let used = layer.used_bytes.unwrap().value;
    assert!(
        used >= 4 << 20,
        "the 4 MiB blob is in the writable layer: {used}"
    );
    assert!(layer.inodes_used.unwrap().value >= 2);

    let list = |filter: Option<cri::ContainerStatsFilter>| {
        let mut client = client.clone();
        async move {
            let mut ids: Vec<String> = client
                .list_container_stats(cri::ListContainerStatsRequest { filter })
                .await
                .unwrap()
                .into_inner()
                .stats
                .into_iter()
                .map(|s| s.attributes.unwrap().id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![busy.clone(), idle.clone()];
    both.sort();
    assert_eq!(list(None).await, both);
    assert_eq!(
        list(Some(cri::ContainerStatsFilter {
            pod_sandbox_id: other.clone(),
            ..Default::default()
        }))
        .await,
        vec![idle.clone()]
    );
    assert_eq!(
        list(Some(cri::ContainerStatsFilter {
            id: busy[..12].to_string(),
            ..Default::default()
        }))
        .await,
        vec![busy.clone()]
    );
    let missing = client
        .container_stats(cri::ContainerStatsRequest {
            container_id: "0123456789ab".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

/// A file of the container's cgroup for `controller` (v1 here; the v2 file where the
/// machine has only v2).
fn cgroup_value(pid: u64, controller: &str, v1_file: &str, v2_file: &str) -> String {
    let mounts = sandboxd::container::cgroup::CgroupMounts::read();
    let cgroups = sandboxd::container::cgroup::Cgroups::of(pid as u32, &mounts).unwrap();
    let path = match cgroups.dir(Some(controller)) {
        Some(dir) => dir.join(v1_file),
        None => cgroups.dir(None).unwrap().join(v2_file),
    };
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// Resources given at create are in the container's cgroups, UpdateContainerResources
/// changes them (and ContainerStatus reports them), bad values are refused by field and an
/// exited container cannot be updated; PodSandboxStats sums the pod's running containers
/// (CPU, memory, processes with pause) and reads its eth0 counters; ListPodSandboxStats
/// gives each pod its own containers and filters by id and labels.
async fn pod_stats_and_resources_come_from_and_go_to_the_cgroups(runtime: &[&str]) {
    let daemon = SandboxdProcess::start_with(runtime);
    let mut client = daemon.client().await;
    let pod = run_pod(&mut client, "limited").await;
    let mut config = container_config(
        "limited",
        "busybox",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; sleep 1000",
        ],
    );
    config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_shares: 512,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let limited = run_container(&mut client, &pod, config).await;
    let second = run_container(
        &mut client,
        &pod,
        container_config("second", "busybox", &["sleep", "1000"]),
    )
    .await;
    let pid = status(&mut client, &limited).await.1["pid"]
        .as_u64()
        .unwrap();
    let shares = || cgroup_value(pid, "cpu", "cpu.shares", "cpu.weight");
    let memory = || cgroup_value(pid, "memory", "memory.limit_in_bytes", "memory.max");
    let mounts = sandboxd::container::cgroup::CgroupMounts::read();
    let v1 = sandboxd::container::cgroup::Cgroups::of(pid as u32, &mounts)
        .unwrap()
        .dir(Some("cpu"))
        .is_some();
    assert_eq!(shares(), if v1 { "512" } else { "20" });
    assert_eq!(memory(), (64u64 << 20).to_string());
    assert_eq!(
        cgroup_value(pid, "cpu", "cpu.cfs_quota_us", "cpu.max"),
        if v1 { "50000" } else { "50000 100000" }
    );

    let updater = client.clone();
    let update = |linux: cri::LinuxContainerResources, id: String| {
        let mut client = updater.clone();
        async move {
            client
                .update_container_resources(cri::UpdateContainerResourcesRequest {
                    container_id: id,
                    linux: Some(linux),
                    ..Default::default()
                })
                .await
        }
    };
    update(
        cri::LinuxContainerResources {
            cpu_shares: 256,
            memory_limit_in_bytes: 128 << 20,
            ..Default::default()
        },
        limited.clone(),
    )
    .await
    .expect("UpdateContainerResources");
    assert_eq!(shares(), if v1 { "256" } else { "10" });
    assert_eq!(memory(), (128u64 << 20).to_string());
    let reported = status(&mut client, &limited)
        .await
        .0
        .resources
        .unwrap()
        .linux
        .unwrap();
    assert_eq!(
        (reported.cpu_shares, reported.memory_limit_in_bytes),
        (256, 128 << 20)
    );
    let err = update(
        cri::LinuxContainerResources {
            memory_limit_in_bytes: 1024,
            ..Default::default()
        },
        limited.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("linux.memory_limit_in_bytes"),
        "{err}"
    );
    assert_eq!(
        memory(),
        (128u64 << 20).to_string(),
        "a refused update changed it"
    );
    // One the kernel refuses (no CPU 4095) puts back what it had written before (shares).
    let err = update(
        cri::LinuxContainerResources {
            cpu_shares: 128,
            cpuset_cpus: "4095".into(),
            ..Default::default()
        },
        limited.clone(),
    )
    .await
    .unwrap_err();
    assert!(err.message().contains("cpuset.cpus"), "{err}");
    assert_eq!(
        shares(),
        if v1 { "256" } else { "10" },
        "half an update stayed"
    );

    // Traffic on the pod's eth0: to the node's bridge, its gateway.
    let ping = exec(
        &mut client,
        &second,
        &["ping", "-c", "1", "-W", "2", "10.244.1.1"],
    )
    .await;
    assert_eq!(
        ping.exit_code,
        0,
        "{}",
        String::from_utf8_lossy(&ping.stderr)
    );
    let stats = client
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(stats.attributes.unwrap().id, pod);
    let linux = stats.linux.unwrap();
    let mut ids: Vec<String> = linux
        .containers
        .iter()
        .map(|c| c.attributes.as_ref().unwrap().id.clone())
        .collect();
    ids.sort();
    let mut both = vec![limited.clone(), second.clone()];
    both.sort();
    assert_eq!(ids, both);
    let container_cpu: u64 = linux
        .containers
        .iter()
        .map(|c| {
            c.cpu
                .as_ref()
                .unwrap()
                .usage_core_nano_seconds
                .unwrap()
                .value
        })
        .sum();
    let pod_cpu = linux.cpu.unwrap().usage_core_nano_seconds.unwrap().value;
    assert!(
        pod_cpu >= container_cpu && pod_cpu > 0,
        "{pod_cpu} < {container_cpu}"
    );
    assert!(linux.memory.unwrap().working_set_bytes.unwrap().value > 0);
    // pause, and at least sh and sleep in one container and sleep in the other.
    let processes = linux.process.unwrap().process_count.unwrap().value;
    assert!(processes >= 3, "{processes}");
    let eth0 = linux.network.unwrap().default_interface.unwrap();
    assert_eq!(eth0.name, "eth0");
    assert!(eth0.tx_bytes.unwrap().value > 0 && eth0.rx_bytes.unwrap().value > 0);

    // Listed beside another pod, each pod has its own running containers, and only those.
    let neighbour_pod = run_pod(&mut client, "neighbour").await;
    let neighbour = run_container(
        &mut client,
        &neighbour_pod,
        container_config("neighbour", "busybox", &["sleep", "1000"]),
    )
    .await;
    let mut containers_of: Vec<(String, Vec<String>)> = client
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
        .await
        .expect("ListPodSandboxStats")
        .into_inner()
        .stats
        .into_iter()
        .map(|stats| {
            let mut ids: Vec<String> = stats
                .linux
                .unwrap()
                .containers
                .into_iter()
                .map(|c| c.attributes.unwrap().id)
                .collect();
            ids.sort();
            (stats.attributes.unwrap().id, ids)
        })
        .collect();
    containers_of.sort();
    let mut expected = vec![
        (pod.clone(), both),
        (neighbour_pod.clone(), vec![neighbour]),
    ];
    expected.sort();
    assert_eq!(containers_of, expected);

    let lister = client.clone();
    let list = |filter: Option<cri::PodSandboxStatsFilter>| {
        let mut client = lister.clone();
        async move {
            client
                .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter })
                .await
                .unwrap()
                .into_inner()
                .stats
                .len()
        }
    };
    assert_eq!(list(None).await, 2);
    assert_eq!(
        list(Some(cri::PodSandboxStatsFilter {
            id: pod[..12].to_string(),
            ..Default::default()
        }))
        .await,
        1
    );
    assert_eq!(
        list(Some(cri::PodSandboxStatsFilter {
            label_selector: HashMap::from([("app".to_string(), "other".to_string())]),
            ..Default::default()
        }))
        .await,
        0
    );

    client
        .stop_container(cri::StopContainerRequest {
            container_id: second.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    let err = update(cri::LinuxContainerResources::default(), second.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    for pod in [pod, neighbour_pod] {
        remove_pod(&mut client, &pod).await;
    }
    assert_eq!(daemon.processes(), Vec::<u32>::new(), "processes left");
}

/// A pod's `linux.cgroup_parent` (the kubelet's pod cgroup) holds its containers' cgroups,
/// one per container named by its id, in every hierarchy; stats and updates find them
/// there; removing the container removes its cgroup and leaves the kubelet's. A parent that
/// is not a cgroupfs path is refused by field, and nothing of that pod is left.
async fn containers_are_placed_under_the_pods_cgroup_parent(runtime: &[&str]) {
    let parent = ParentCgroup(format!("/{}", sandboxd_tests::unique_name("sbt-cgp")));
    let pod_cgroup = format!("{}/pod-a", parent.0);
    let daemon = SandboxdProcess::start_with(runtime);
    let mut client = daemon.client().await;

    let mut config = pod_config("placed");
    config.linux = Some(cri::LinuxPodSandboxConfig {
        cgroup_parent: pod_cgroup.clone(),
        ..Default::default()
    });
    let pod = run_pod_with(&mut client, config).await;
    let id = run_container(
        &mut client,
        &pod,
        container_config("placed", "busybox", &["sleep", "1000"]),
    )
    .await;
    let pid = status(&mut client, &id).await.1["pid"].as_u64().unwrap();
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let own = format!("{pod_cgroup}/{id}");
    for controller in ["memory", "cpu", "pids"] {
        let line = membership.lines().find(|l| {
            l.split(':')
                .nth(1)
                .unwrap()
                .split(',')
                .any(|c| c == controller)
        });
        if let Some(line) = line {
            assert!(
                line.ends_with(&format!(":{own}")),
                "{controller}: {membership}"
            );
        }
    }
    let mounts = sandboxd::container::cgroup::CgroupMounts::read();
    let dirs: Vec<PathBuf> = ["memory", "cpu", "pids"]
        .into_iter()
        .filter_map(|c| {
            sandboxd::container::cgroup::Cgroups::of(pid as u32, &mounts)
                .unwrap()
                .dir(Some(c))
        })
        .collect();
    assert!(!dirs.is_empty(), "no v1 cgroup of {id}: {membership}");
    // Stats and an update reach the cgroup under the parent.
    let stats = client
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .unwrap();
    assert!(stats.memory.unwrap().working_set_bytes.is_some());
    client
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 96 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources");
    assert_eq!(
        cgroup_value(pid, "memory", "memory.limit_in_bytes", "memory.max"),
        (96u64 << 20).to_string()
    );

    remove_pod(&mut client, &pod).await;
    for dir in &dirs {
        assert!(!dir.exists(), "{} is left", dir.display());
        assert!(
            dir.parent().unwrap().is_dir(),
            "the kubelet's {} is gone",
            dir.parent().unwrap().display()
        );
    }

    for bad in ["kubepods-besteffort-poda.slice", "/kubepods/../x"] {
        let mut config = pod_config("misplaced");
        config.linux = Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: bad.into(),
            ..Default::default()
        });
        let err = client
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(
            err.message().contains("linux.cgroup_parent")
                && err.message().contains("default/misplaced"),
            "{err}"
        );
    }
    let left = client
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(daemon.processes(), Vec::<u32>::new(), "processes left");
}

/// A cgroup the test made as the kubelet would (absolute, in every hierarchy); removed,
/// with what is under it, when dropped.
struct ParentCgroup(String);

impl Drop for ParentCgroup {
    fn drop(&mut self) {
        let mounts = sandboxd::container::cgroup::CgroupMounts::read();
        let failed = mounts.remove_tree(std::path::Path::new(&self.0));
        // (Not a second panic while a failed test unwinds.)
        if !failed.is_empty() && !std::thread::panicking() {
            panic!("cgroups left: {failed:?}");
        }
    }
}
