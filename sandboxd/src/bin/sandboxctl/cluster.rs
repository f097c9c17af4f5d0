//! The verbs of a cluster member: Pods go to the cluster store through the node's
//! sandboxd (`sandboxd.cluster.v1`), are placed on a node and run by it; `get pods` lists
//! the whole cluster with each pod's node. Against a sandboxd alone (no cluster API) the
//! verbs run pods on that node directly, as before.

use std::time::{Duration, Instant};

use anyhow::bail;
use sandboxd::cluster_api::v1 as api;
use sandboxd::kube::Pod;
use serde_json::json;

use crate::output::{print_doc, table, Format};
use crate::ClusterClient;

/// How long `apply` waits for its pods to run.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `delete` waits for its pods' nodes to remove them.
const GONE_TIMEOUT: Duration = Duration::from_secs(90);

/// Whether the daemon is a cluster member (serves the cluster API).
pub async fn is_member(cluster: &mut ClusterClient) -> anyhow::Result<bool> {
    match cluster.list_nodes(api::ListNodesRequest {}).await {
        Ok(_) => Ok(true),
        Err(status) if status.code() == tonic::Code::Unimplemented => Ok(false),
        Err(status) => bail!("{}", status.message()),
    }
}

/// Stores the pod; "created" or "unchanged", and the node it is placed on.
pub async fn apply_pod(cluster: &mut ClusterClient, pod: &Pod) -> anyhow::Result<(String, String)> {
    let response = cluster
        .apply_pod(api::ApplyPodRequest {
            document_json: pod.document.to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    Ok((response.outcome, response.node))
}

async fn pods(cluster: &mut ClusterClient, namespace: &str) -> anyhow::Result<Vec<api::PodEntry>> {
    Ok(cluster
        .list_pods(api::ListPodsRequest {
            namespace: namespace.into(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .pods)
}

/// Waits until each of `wanted` (namespace, name) runs on its node; a pod that failed
/// there is an error with the node's reason.
pub async fn wait_running(
    cluster: &mut ClusterClient,
    wanted: &[(String, String)],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + RUNNING_TIMEOUT;
    loop {
        let all = pods(cluster, "").await?;
        let mut waiting = Vec::new();
        for (namespace, name) in wanted {
            match all
                .iter()
                .find(|p| &p.namespace == namespace && &p.name == name)
            {
                Some(p) if p.phase == "Running" => {}
                Some(p) if p.phase == "Failed" => {
                    bail!("pod/{name} on {}: {}", p.node, p.reason)
                }
                Some(p) => waiting.push(format!("pod/{name} on {} ({})", p.node, p.phase)),
                None => bail!("pod/{name} was deleted meanwhile"),
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "still not running after {RUNNING_TIMEOUT:?}: {}",
                waiting.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks for the pod's deletion and waits until its node removed it; whether it existed.
pub async fn delete_pod(
    cluster: &mut ClusterClient,
    namespace: &str,
    name: &str,
) -> anyhow::Result<bool> {
    let deleted = cluster
        .delete_pod(api::DeletePodRequest {
            namespace: namespace.into(),
            name: name.into(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .deleted;
    if !deleted {
        return Ok(false);
    }
    let deadline = Instant::now() + GONE_TIMEOUT;
    loop {
        let all = pods(cluster, namespace).await?;
        let Some(pod) = all.iter().find(|p| p.name == name) else {
            return Ok(true);
        };
        if Instant::now() > deadline {
            bail!(
                "pod/{name} is still being removed by {} after {GONE_TIMEOUT:?} (is that node up?)",
                pod.node
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `get pods` of the whole cluster.
pub async fn get_pods(
    cluster: &mut ClusterClient,
    names: &[String],
    namespace: Option<&str>,
    selector: &std::collections::HashMap<String, String>,
    format: Option<crate::get::GetFormat>,
) -> anyhow::Result<()> {
    let mut all: Vec<api::PodEntry> = pods(cluster, namespace.unwrap_or(""))
        .await?
        .into_iter()
        .filter(|p| names.is_empty() || names.contains(&p.name))
        .filter(|p| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
        .collect();
    all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for name in names {
        if !all.iter().any(|p| &p.name == name) {
            bail!("pods \"{name}\" not found");
        }
    }
    use crate::get::GetFormat;
    match format {
        Some(f @ (GetFormat::Json | GetFormat::Yaml)) => {
            let objects: Vec<serde_json::Value> = all
                .iter()
                .map(|p| {
                    let mut doc: serde_json::Value =
                        serde_json::from_str(&p.document_json).unwrap_or_default();
                    doc["spec"]["nodeName"] = json!(p.node);
                    doc["status"] = json!({ "phase": p.phase, "reason": p.reason, "podIP": p.ip });
                    doc
                })
                .collect();
            let doc = if names.len() == 1 && objects.len() == 1 {
                objects.into_iter().next().unwrap_or_default()
            } else {
                json!({ "apiVersion": "v1", "kind": "List", "items": objects })
            };
            print_doc(
                &doc,
                if f == GetFormat::Json {
                    Format::Json
                } else {
                    Format::Yaml
                },
            )
        }
        wide => {
            if all.is_empty() {
                crate::output::no_resources(namespace.unwrap_or("default"), namespace.is_none());
                return Ok(());
            }
            let wide = wide == Some(GetFormat::Wide);
            let mut headers = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
            if wide {
                headers.extend(["IP", "NODE"]);
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|p| {
                    let status = if p.phase == "Running" || p.reason.is_empty() {
                        p.phase.clone()
                    } else if p.phase == "Failed" && p.reason.len() > 40 {
                        "Error".to_string()
                    } else {
                        p.reason.clone()
                    };
                    let mut row = vec![
                        p.name.clone(),
                        format!("{}/{}", p.ready, p.total),
                        status,
                        "0".into(),
                        crate::get::age(p.created_ms * 1_000_000),
                    ];
                    if wide {
                        row.push(if p.ip.is_empty() {
                            "<none>".into()
                        } else {
                            p.ip.clone()
                        });
                        row.push(p.node.clone());
                    }
                    row
                })
                .collect();
            table(&headers, &rows);
            Ok(())
        }
    }
}
