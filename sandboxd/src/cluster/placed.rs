//! A node running the pods placed on it, as the kubelet does: it follows the Pods in the
//! store, runs those placed here through its own CRI socket (as the kubelet speaks CRI to
//! its runtime; [`crate::kubelet`] is the same code `sandboxctl apply` runs), writes their
//! status back, removes those marked for deletion (then their objects) and, at start and
//! every few seconds, reconciles what runs against what the store says.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;

use super::pods::{self, PodObject, PodStatus};
use super::store::ClusterStore;
use crate::kube;
use crate::kubelet::{self, Client};

/// How often what runs is compared with the store without a change to wake it.
const RESYNC: Duration = Duration::from_secs(2);
/// How long a pod that failed to start waits before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// Grace period of the containers of a deleted pod.
const DELETE_GRACE_SECONDS: i64 = 30;

/// Starts following the store for node `node`, serving its CRI at `endpoint`.
pub fn start(
    store: Arc<dyn ClusterStore>,
    node: String,
    endpoint: String,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (changed, mut on_change) = tokio::sync::watch::channel(Vec::<PodObject>::new());
    let own = node.clone();
    let follower = super::follow(store.clone(), pods::PODS, move |copy| {
        let mine = pods::objects(copy.values())
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.node == own)
            .collect();
        let _ = changed.send(mine);
    });
    let runner = tokio::spawn(async move {
        let mut client: Option<Client> = None;
        let mut failures: BTreeMap<String, Instant> = BTreeMap::new();
        // Reported when it starts or changes, not every period (an etcd outage would
        // otherwise fill the log).
        let mut last_error: Option<String> = None;
        loop {
            let _ = tokio::time::timeout(RESYNC, on_change.changed()).await;
            let desired = on_change.borrow_and_update().clone();
            if client.is_none() {
                client = crate::client::connect(&endpoint).await.ok();
            }
            let Some(c) = client.as_mut() else { continue };
            match reconcile(c, store.as_ref(), &desired, &mut failures).await {
                Ok(()) => {
                    if last_error.take().is_some() {
                        eprintln!("sandboxd: node {node}: the pods placed here are in step again");
                    }
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    if last_error.as_deref() != Some(text.as_str()) {
                        eprintln!("sandboxd: node {node}: run the pods placed here: {text}");
                        last_error = Some(text);
                    }
                }
            }
        }
    });
    vec![follower, runner]
}

async fn reconcile(
    client: &mut Client,
    store: &dyn ClusterStore,
    desired: &[PodObject],
    failures: &mut BTreeMap<String, Instant>,
) -> anyhow::Result<()> {
    let wanted: BTreeSet<(String, String)> = desired
        .iter()
        .filter(|p| !p.deleting)
        .map(|p| (p.namespace.clone(), p.name.clone()))
        .collect();
    for object in desired {
        if object.deleting {
            kubelet::remove_pod(
                client,
                &object.namespace,
                &object.name,
                DELETE_GRACE_SECONDS,
            )
            .await?;
            store.delete(&object.key(), None).await?;
            continue;
        }
        let status = run_or_observe(client, object, failures).await?;
        pods::write_status(store, &object.namespace, &object.name, &object.uid, &status).await?;
    }
    // Pods of the kubelet's labelling that the store no longer places here.
    let all = client
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    for sandbox in all {
        let (Some(name), Some(namespace)) = (
            sandbox.labels.get(kube::POD_NAME_LABEL),
            sandbox.labels.get(kube::POD_NAMESPACE_LABEL),
        ) else {
            continue;
        };
        if !wanted.contains(&(namespace.clone(), name.clone())) {
            kubelet::remove_pod(client, namespace, name, DELETE_GRACE_SECONDS).await?;
        }
    }
    Ok(())
}

/// Runs the pod if no sandbox of it is ready (unless its last attempt failed recently),
/// and reports its status.
async fn run_or_observe(
    client: &mut Client,
    object: &PodObject,
    failures: &mut BTreeMap<String, Instant>,
) -> anyhow::Result<PodStatus> {
    let sandboxes = kubelet::sandboxes_of(client, &object.namespace, &object.name).await?;
    let ready = sandboxes.iter().find(|s| {
        s.state == cri::PodSandboxState::SandboxReady as i32
            && s.labels.get(kube::POD_UID_LABEL) == Some(&object.uid)
    });
    let sandbox = match ready {
        Some(sandbox) => sandbox.clone(),
        None => {
            if failures
                .get(&object.uid)
                .is_some_and(|at| at.elapsed() < RETRY_AFTER)
            {
                return Ok(object.status.clone());
            }
            let mut pod = object.pod()?;
            pod.metadata.uid = Some(object.uid.clone());
            if let Err(e) = kubelet::run_pod(client, &pod).await {
                failures.insert(object.uid.clone(), Instant::now());
                return Ok(PodStatus {
                    phase: "Failed".into(),
                    reason: format!("{e:#}"),
                    ip: String::new(),
                    ready: 0,
                    total: object.status.total,
                    sandbox_id: String::new(),
                });
            }
            failures.remove(&object.uid);
            let sandboxes = kubelet::sandboxes_of(client, &object.namespace, &object.name).await?;
            match sandboxes.into_iter().find(|s| {
                s.state == cri::PodSandboxState::SandboxReady as i32
                    && s.labels.get(kube::POD_UID_LABEL) == Some(&object.uid)
            }) {
                Some(sandbox) => sandbox,
                None => return Ok(object.status.clone()),
            }
        }
    };
    observe(client, &sandbox, object.status.total).await
}

/// The status of a running sandbox: its IP, and how many app containers run.
async fn observe(
    client: &mut Client,
    sandbox: &cri::PodSandbox,
    total: u32,
) -> anyhow::Result<PodStatus> {
    let ip = client
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.id.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
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
    let app: Vec<&cri::Container> = containers
        .iter()
        .filter(|c| !c.labels.contains_key(kube::INIT_LABEL))
        .collect();
    let running = app
        .iter()
        .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
        .count() as u32;
    let exited = app
        .iter()
        .any(|c| c.state == cri::ContainerState::ContainerExited as i32);
    let (phase, reason) = if running == total && total > 0 {
        ("Running", "")
    } else if exited {
        ("Failed", "Error")
    } else {
        ("Pending", "ContainerCreating")
    };
    Ok(PodStatus {
        phase: phase.into(),
        reason: reason.into(),
        ip,
        ready: running,
        total,
        sandbox_id: sandbox.id.clone(),
    })
}
