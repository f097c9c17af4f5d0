//! What the kubelet does with a Pod, over CRI: run it (a pod sandbox labelled as the
//! kubelet labels, its init containers run to completion in order, then its containers
//! started; removed whole if any step fails) and remove it (containers stopped with their
//! grace period, then the sandbox). `sandboxctl apply` does this against the node it talks
//! to; in a cluster each node's sandboxd does it for the pods placed on it, against its own
//! socket, as the kubelet speaks CRI to its runtime.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::kube::{self, applied_digest, Pod, APPLIED_DIGEST};

pub type Client = RuntimeServiceClient<Channel>;

/// How long an init container may run.
const INIT_TIMEOUT: Duration = Duration::from_secs(300);

/// The sandboxes of a pod (any attempt), newest first.
pub async fn sandboxes_of(
    client: &mut Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Vec<cri::PodSandbox>> {
    let filter = cri::PodSandboxFilter {
        label_selector: [
            (kube::POD_NAME_LABEL.to_string(), name.to_string()),
            (kube::POD_NAMESPACE_LABEL.to_string(), namespace.to_string()),
        ]
        .into(),
        ..Default::default()
    };
    Ok(client
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await?
        .into_inner()
        .items)
}

/// Stops and removes a pod sandbox.
pub async fn remove_sandbox(client: &mut Client, id: &str) -> anyhow::Result<()> {
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    Ok(())
}

/// Runs `pod` unless it runs already with the same manifest ("unchanged"); a pod whose
/// sandbox stopped is replaced by a new attempt. Returns "created" or "unchanged".
pub async fn run_pod(client: &mut Client, pod: &Pod) -> anyhow::Result<&'static str> {
    let existing = sandboxes_of(client, pod.namespace(), &pod.metadata.name).await?;
    let ready = existing
        .iter()
        .find(|s| s.state == cri::PodSandboxState::SandboxReady as i32);
    if let Some(running) = ready {
        let same = running.annotations.get(APPLIED_DIGEST) == Some(&applied_digest(&pod.document));
        if same {
            return Ok("unchanged");
        }
        bail!(
            "{} exists with another spec; a pod's spec cannot change: delete it first (sandboxctl delete -f)",
            pod.describe()
        );
    }
    // A pod that stopped (its pause died) is replaced, as the kubelet makes a new attempt.
    let attempt = existing
        .iter()
        .filter_map(|s| s.metadata.as_ref().map(|m| m.attempt + 1))
        .max()
        .unwrap_or(0);
    for old in &existing {
        remove_sandbox(client, &old.id).await?;
    }
    let uid = pod.metadata.uid.clone().unwrap_or_else(kube::new_uid);
    let sandbox_config = pod.sandbox_config(&uid, attempt)?;
    let sandbox = client
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("{}: run the pod sandbox: {}", pod.describe(), e.message()))?
        .into_inner()
        .pod_sandbox_id;
    match start_containers(client, pod, &uid, &sandbox, &sandbox_config).await {
        Ok(()) => Ok("created"),
        Err(e) => {
            if let Err(undo) = remove_sandbox(client, &sandbox).await {
                eprintln!(
                    "sandboxctl: removing the half-made {} failed too: {undo:#}",
                    pod.describe()
                );
            }
            Err(e.context(pod.describe()))
        }
    }
}

async fn start_containers(
    client: &mut Client,
    pod: &Pod,
    uid: &str,
    sandbox: &str,
    sandbox_config: &cri::PodSandboxConfig,
) -> anyhow::Result<()> {
    let init = pod.spec.init_containers.iter().map(|c| (c, true));
    let app = pod.spec.containers.iter().map(|c| (c, false));
    for (container, is_init) in init.chain(app) {
        let at = || format!("container {}", container.name);
        let id = client
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox.into(),
                config: Some(pod.container_config(container, uid, is_init)),
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message()))
            .with_context(at)?
            .into_inner()
            .container_id;
        client
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message()))
            .with_context(at)?;
        if is_init {
            wait_for_success(client, &id).await.with_context(at)?;
        }
    }
    Ok(())
}

/// Waits for an init container to exit 0.
async fn wait_for_success(client: &mut Client, id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + INIT_TIMEOUT;
    loop {
        let status = client
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .unwrap_or_default();
        if status.state == cri::ContainerState::ContainerExited as i32 {
            if status.exit_code == 0 {
                return Ok(());
            }
            bail!(
                "the init container exited with {} (sandboxctl logs {})",
                status.exit_code,
                crate::sandbox::short(id)
            );
        }
        if Instant::now() > deadline {
            bail!("the init container still runs after {INIT_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops the containers of every sandbox of the pod (each with `grace_seconds`), then
/// stops and removes the sandboxes. Whether there was any.
pub async fn remove_pod(
    client: &mut Client,
    namespace: &str,
    name: &str,
    grace_seconds: i64,
) -> anyhow::Result<bool> {
    let sandboxes = sandboxes_of(client, namespace, name).await?;
    for sandbox in &sandboxes {
        // Containers get their grace period; the sandbox stop then kills what is left.
        let containers = client
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: sandbox.id.clone(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .containers;
        for c in containers {
            client
                .stop_container(cri::StopContainerRequest {
                    container_id: c.id,
                    timeout: grace_seconds,
                })
                .await?;
        }
        remove_sandbox(client, &sandbox.id).await?;
    }
    Ok(!sandboxes.is_empty())
}
