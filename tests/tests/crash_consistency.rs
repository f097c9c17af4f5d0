//! A crash at any moment leaves nothing a restart cannot finish or undo.
//!
//! The daemon is made to kill itself (SIGKILL, as `kill -9`) at every fault point of
//! RunPodSandbox, CreateContainer, StartContainer, StopPodSandbox, RemovePodSandbox and a
//! Service sync (`sandboxd::fault::POINTS`); after each, a restarted daemon must list the
//! object whole or not at all, the verb must work when retried, and once what is listed is
//! removed through the API nothing of the daemon's may be left: no pause, monitor or
//! container process, veth, IP lease, CNI cache entry, netns pin, mount, record or runtime
//! state. And the same with 20 RunPodSandbox calls in flight when it is killed.

use std::collections::HashMap;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use sandboxd_tests::daemon::SandboxdProcess;
use tonic::transport::Channel;

type Client = RuntimeServiceClient<Channel>;

fn pod_config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        labels: HashMap::from([("test".to_string(), "crash".to_string())]),
        ..Default::default()
    }
}

async fn run_pod(client: &mut Client, name: &str) -> Result<String, tonic::Status> {
    Ok(client
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config(name)),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id)
}

async fn create(client: &mut Client, pod: &str) -> Result<String, tonic::Status> {
    Ok(client
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "sleeper".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "1000".into()],
                ..Default::default()
            }),
            sandbox_config: Some(pod_config("unused")),
        })
        .await?
        .into_inner()
        .container_id)
}

async fn start(client: &mut Client, id: &str) -> Result<(), tonic::Status> {
    client
        .start_container(cri::StartContainerRequest {
            container_id: id.into(),
        })
        .await?;
    Ok(())
}

async fn stop_pod(client: &mut Client, id: &str) -> Result<(), tonic::Status> {
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    Ok(())
}

async fn remove_pod(client: &mut Client, id: &str) -> Result<(), tonic::Status> {
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    Ok(())
}

async fn pods(client: &mut Client) -> Vec<cri::PodSandbox> {
    client
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
}

async fn containers(client: &mut Client) -> Vec<cri::Container> {
    client
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
}

/// A listed pod is whole: ready with an address, or not ready (stopped) with nothing.
async fn assert_whole(client: &mut Client, daemon: &SandboxdProcess) {
    for pod in pods(client).await {
        let status = client
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose: true,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
        if pod.state == cri::PodSandboxState::SandboxReady as i32 {
            let ip = status.status.unwrap().network.unwrap().ip;
            assert!(ip.starts_with("10.244.1."), "a ready pod without an IP");
            let netns = info["netnsPath"].as_str().unwrap();
            assert!(sandboxd::netns::is_pinned(std::path::Path::new(netns)));
            let pid = info["pid"].as_u64().unwrap();
            assert!(
                std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "a ready pod without its pause: {}",
                daemon.log()
            );
        }
    }
}

/// Removes everything listed through the API, then nothing of the daemon's may be left.
async fn remove_all_and_assert_nothing_left(client: &mut Client, daemon: &SandboxdProcess) {
    for pod in pods(client).await {
        stop_pod(client, &pod.id).await.expect("StopPodSandbox");
        remove_pod(client, &pod.id).await.expect("RemovePodSandbox");
    }
    assert_eq!(containers(client).await.len(), 0);
    let left = daemon.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}\n{}", daemon.log());
}

/// Crashes the daemon at `point` during the verb that passes it, restarts it, and checks
/// that what it lists is whole and the verb can be retried.
async fn crash_at(daemon: &mut SandboxdProcess, point: &str) {
    daemon.respawn_with_env(&[(sandboxd::fault::ENV, point)]);
    let mut client = daemon.client().await;
    let verb = point.split('/').next().unwrap();
    // What must exist before the verb runs (it passes no point of the verb's own).
    let mut pod = None;
    let mut container = None;
    if verb != "run-pod-sandbox" && verb != "service-sync" {
        pod = Some(run_pod(&mut client, "victim").await.expect("run the pod"));
    }
    if matches!(
        verb,
        "start-container" | "stop-pod-sandbox" | "remove-pod-sandbox"
    ) {
        let id = create(&mut client, pod.as_ref().unwrap())
            .await
            .expect("create");
        if verb != "start-container" {
            start(&mut client, &id).await.expect("start");
        }
        container = Some(id);
    }
    let crashed = match verb {
        "run-pod-sandbox" => run_pod(&mut client, "victim").await.map(drop),
        "create-container" => create(&mut client, pod.as_ref().unwrap()).await.map(drop),
        "start-container" => start(&mut client, container.as_ref().unwrap()).await,
        "stop-pod-sandbox" => stop_pod(&mut client, pod.as_ref().unwrap()).await,
        "remove-pod-sandbox" => remove_pod(&mut client, pod.as_ref().unwrap()).await,
        "service-sync" => {
            let manifest = daemon.path("svc.yaml");
            std::fs::write(&manifest, SERVICE).unwrap();
            let (code, out, err) = daemon.sandboxctl(&["apply", "-f", manifest.to_str().unwrap()]);
            if code == Some(0) {
                Ok(())
            } else {
                Err(tonic::Status::unavailable(format!("{out}{err}")))
            }
        }
        other => panic!("no verb {other}"),
    };
    assert!(crashed.is_err(), "{point}: the verb finished: {crashed:?}");
    daemon.wait_killed();

    daemon.respawn_with_env(&[]);
    let mut client = daemon.client().await;
    assert_whole(&mut client, daemon).await;
    let listed = pods(&mut client).await;
    match verb {
        "run-pod-sandbox" => {
            if listed.is_empty() {
                run_pod(&mut client, "victim")
                    .await
                    .unwrap_or_else(|e| panic!("{point}: retry: {e}\n{}", daemon.log()));
            }
            assert_eq!(pods(&mut client).await.len(), 1, "{point}");
        }
        "create-container" => {
            if containers(&mut client).await.is_empty() {
                create(&mut client, pod.as_ref().unwrap())
                    .await
                    .unwrap_or_else(|e| panic!("{point}: retry: {e}\n{}", daemon.log()));
            }
            assert_eq!(containers(&mut client).await.len(), 1, "{point}");
        }
        "start-container" => {
            let listed = containers(&mut client).await;
            assert_eq!(
                listed[0].state,
                cri::ContainerState::ContainerRunning as i32,
                "{point}: a started container is running after the restart\n{}",
                daemon.log()
            );
        }
        "stop-pod-sandbox" => {
            stop_pod(&mut client, pod.as_ref().unwrap())
                .await
                .unwrap_or_else(|e| panic!("{point}: retry: {e}\n{}", daemon.log()));
            assert_eq!(
                pods(&mut client).await[0].state,
                cri::PodSandboxState::SandboxNotready as i32
            );
        }
        "remove-pod-sandbox" => {
            remove_pod(&mut client, pod.as_ref().unwrap())
                .await
                .unwrap_or_else(|e| panic!("{point}: retry: {e}\n{}", daemon.log()));
            assert!(pods(&mut client).await.is_empty(), "{point}");
        }
        "service-sync" => {
            // The record was saved before the crash: the restart programs it whole.
            let ip = daemon.sandboxctl(&["get", "svc", "crash", "-o", "json"]).1;
            let ip: serde_json::Value = serde_json::from_str(&ip).expect("the service");
            let ip = ip["spec"]["clusterIP"].as_str().unwrap().to_string();
            let rules = daemon
                .node
                .exec(&["nft", "list", "table", "ip", "sandboxd"]);
            assert!(rules.contains(&ip), "{point}: {ip} not programmed: {rules}");
            let manifest = daemon.path("svc.yaml");
            let (code, _, err) = daemon.sandboxctl(&["apply", "-f", manifest.to_str().unwrap()]);
            assert_eq!(code, Some(0), "{point}: retry: {err}");
            let (code, _, err) = daemon.sandboxctl(&["delete", "-f", manifest.to_str().unwrap()]);
            assert_eq!(code, Some(0), "{err}");
            let rules = daemon
                .node
                .exec(&["nft", "list", "table", "ip", "sandboxd"]);
            assert!(!rules.contains(&ip), "{point}: {ip} still programmed");
        }
        _ => unreachable!(),
    }
    remove_all_and_assert_nothing_left(&mut client, daemon).await;
}

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: crash}
spec:
  selector: {app: crash}
  ports: [{port: 80, targetPort: 8080}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_fault_point_leaves_nothing_a_restart_cannot_finish() {
    let mut daemon = SandboxdProcess::start();
    for point in sandboxd::fault::POINTS {
        eprintln!("fault point {point}");
        crash_at(&mut daemon, point).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_with_twenty_pods_being_made_leaves_nothing_behind() {
    let mut daemon = SandboxdProcess::start_with(&["--proxy-mode", "none"]);
    for round in 0..3 {
        let client = daemon.client().await;
        let mut calls = Vec::new();
        for i in 0..20 {
            let mut client = client.clone();
            calls.push(tokio::spawn(async move {
                run_pod(&mut client, &format!("p{i}")).await
            }));
        }
        // Killed once the first pod (or, later rounds, a few) is made: the others are
        // half-made or not begun.
        let mut watcher = client.clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while pods(&mut watcher).await.len() < 1 + 4 * round {
            assert!(std::time::Instant::now() < deadline, "no pod was made");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        daemon.kill9();
        for call in calls {
            let _ = call.await;
        }
        daemon.respawn_with_env(&[]);
        let mut client = daemon.client().await;
        assert_whole(&mut client, &daemon).await;
        let undone = daemon
            .log()
            .matches("undid the interrupted RunPodSandbox")
            .count();
        eprintln!(
            "round {round}: {} of 20 pods made before the kill; interrupted runs undone so far: {undone}",
            pods(&mut client).await.len()
        );
        remove_all_and_assert_nothing_left(&mut client, &daemon).await;
    }
}
