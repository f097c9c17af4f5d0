//! `get pods|svc|endpoints [NAME...]`. Pods as kubectl shows them (READY, STATUS, RESTARTS, AGE, and with
//! `-o wide` IP and NODE), or as `v1` Pod objects with `-o json|yaml`, built from the pod
//! sandboxes and containers the runtime reports.

use std::collections::HashMap;

use anyhow::bail;
use k8s_cri::v1 as cri;
use serde_json::json;

use crate::output::{print_doc, table, Format};
use crate::{Client, ClusterClient, ServicesClient};
use sandboxd::kube::{INIT_LABEL, LAST_APPLIED};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GetFormat {
    Wide,
    Json,
    Yaml,
}

#[derive(clap::Args)]
pub struct Args {
    /// What to list: pods (po), services (svc), endpoints (ep).
    resource: String,
    /// Only these objects.
    names: Vec<String>,
    /// The namespace.
    #[arg(long, short, default_value = "default")]
    namespace: String,
    /// Every namespace.
    #[arg(long, short = 'A')]
    all_namespaces: bool,
    /// Only pods with these labels (key=value[,key=value]).
    #[arg(long, short = 'l')]
    selector: Option<String>,
    #[arg(long, short, value_enum)]
    output: Option<GetFormat>,
}

/// One pod: its sandbox, status and containers.
struct PodView {
    sandbox: cri::PodSandbox,
    status: cri::PodSandboxStatus,
    containers: Vec<cri::Container>,
    statuses: HashMap<String, cri::ContainerStatus>,
}

impl PodView {
    fn name(&self) -> &str {
        self.sandbox
            .metadata
            .as_ref()
            .map_or("", |m| m.name.as_str())
    }
    fn namespace(&self) -> &str {
        self.sandbox
            .metadata
            .as_ref()
            .map_or("", |m| m.namespace.as_str())
    }
    fn ready(&self) -> bool {
        self.sandbox.state == cri::PodSandboxState::SandboxReady as i32
    }
    fn of_kind(&self, init: bool) -> Vec<&cri::Container> {
        self.containers
            .iter()
            .filter(|c| c.labels.contains_key(INIT_LABEL) == init)
            .collect()
    }

    /// kubectl's STATUS column.
    fn phase_text(&self) -> String {
        if !self.ready() {
            return "Terminated".into();
        }
        let init = self.of_kind(true);
        let init_done = init
            .iter()
            .filter(|c| {
                self.statuses.get(&c.id).is_some_and(|s| {
                    s.state == cri::ContainerState::ContainerExited as i32 && s.exit_code == 0
                })
            })
            .count();
        if init_done < init.len() {
            return format!("Init:{init_done}/{}", init.len());
        }
        let app = self.of_kind(false);
        let state = |s: cri::ContainerState| app.iter().filter(move |c| c.state == s as i32);
        let failed = state(cri::ContainerState::ContainerExited)
            .any(|c| self.statuses.get(&c.id).is_some_and(|s| s.exit_code != 0));
        if app.is_empty()
            || state(cri::ContainerState::ContainerCreated)
                .next()
                .is_some()
        {
            "ContainerCreating".into()
        } else if failed {
            "Error".into()
        } else if state(cri::ContainerState::ContainerExited).count() == app.len() {
            "Completed".into()
        } else {
            "Running".into()
        }
    }

    fn ready_text(&self) -> String {
        let app = self.of_kind(false);
        let running = app
            .iter()
            .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
            .count();
        format!("{running}/{}", app.len())
    }

    fn ip(&self) -> String {
        self.status
            .network
            .as_ref()
            .map(|n| n.ip.clone())
            .filter(|ip| !ip.is_empty())
            .unwrap_or_else(|| "<none>".into())
    }
}

/// kubectl's AGE: 45s, 2m6s, 3h4m, 5d.
pub fn age(created_at_ns: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let s = ((now - created_at_ns) / 1_000_000_000).max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=599 => format!("{}m{}s", s / 60, s % 60),
        600..=10_799 => format!("{}m", s / 60),
        10_800..=172_799 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d", s / 86_400),
    }
}

pub fn rfc3339(ns: i64) -> serde_json::Value {
    if ns == 0 {
        serde_json::Value::Null
    } else {
        json!(
            sandboxd::container::log::rfc3339_nano(ns / 1_000_000_000 * 1_000_000_000)
                .replace(".000000000Z", "Z")
        )
    }
}

/// The pod as a `v1` Pod object.
fn object(view: &PodView, node: &str) -> serde_json::Value {
    let applied: serde_json::Value = view
        .sandbox
        .annotations
        .get(LAST_APPLIED)
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_else(|| json!({}));
    let mut spec = applied["spec"].clone();
    if spec.is_null() {
        spec = json!({
            "containers": view.of_kind(false).iter().map(|c| json!({
                "name": c.metadata.as_ref().map(|m| m.name.clone()),
                "image": c.image.as_ref().map(|i| i.image.clone()),
            })).collect::<Vec<_>>()
        });
    }
    spec["nodeName"] = json!(node);
    let labels: serde_json::Map<String, serde_json::Value> = view
        .sandbox
        .labels
        .iter()
        .filter(|(k, _)| !k.starts_with("io.kubernetes."))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let container_status = |c: &&cri::Container| {
        let status = view.statuses.get(&c.id).cloned().unwrap_or_default();
        let state = match cri::ContainerState::try_from(c.state) {
            Ok(cri::ContainerState::ContainerRunning) => {
                json!({ "running": { "startedAt": rfc3339(status.started_at) } })
            }
            Ok(cri::ContainerState::ContainerExited) => json!({ "terminated": {
                "exitCode": status.exit_code,
                "reason": status.reason,
                "message": status.message,
                "startedAt": rfc3339(status.started_at),
                "finishedAt": rfc3339(status.finished_at),
                "containerID": format!("sandboxd://{}", c.id),
            }}),
            _ => json!({ "waiting": { "reason": "ContainerCreating" } }),
        };
        json!({
            "name": c.metadata.as_ref().map(|m| m.name.clone()),
            "image": c.image.as_ref().map(|i| i.image.clone()),
            "imageID": c.image_ref,
            "containerID": format!("sandboxd://{}", c.id),
            "ready": c.state == cri::ContainerState::ContainerRunning as i32,
            "restartCount": 0,
            "started": c.state == cri::ContainerState::ContainerRunning as i32,
            "state": state,
        })
    };
    let phase = match view.phase_text().as_str() {
        "Running" => "Running",
        "Completed" => "Succeeded",
        "Error" | "Terminated" => "Failed",
        _ => "Pending",
    };
    let ip = view.ip();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": view.name(),
            "namespace": view.namespace(),
            "uid": view.sandbox.metadata.as_ref().map(|m| m.uid.clone()),
            "labels": labels,
            "creationTimestamp": rfc3339(view.sandbox.created_at),
            "annotations": { "sandboxd.io/sandbox-id": view.sandbox.id },
        },
        "spec": spec,
        "status": {
            "phase": phase,
            "podIP": if ip == "<none>" { serde_json::Value::Null } else { json!(ip) },
            "podIPs": if ip == "<none>" { json!([]) } else { json!([{ "ip": ip }]) },
            "startTime": rfc3339(view.sandbox.created_at),
            "initContainerStatuses": view.of_kind(true).iter().map(container_status).collect::<Vec<_>>(),
            "containerStatuses": view.of_kind(false).iter().map(container_status).collect::<Vec<_>>(),
        },
    })
}

pub async fn run(
    client: &mut Client,
    services: &mut ServicesClient,
    cluster: &mut ClusterClient,
    args: Args,
) -> anyhow::Result<()> {
    let service_args = || crate::services::GetArgs {
        names: &args.names,
        namespace: &args.namespace,
        all_namespaces: args.all_namespaces,
        output: args.output,
    };
    match args.resource.as_str() {
        "pods" | "pod" | "po" => {}
        "services" | "service" | "svc" => {
            return crate::services::get_services(services, service_args()).await
        }
        "endpoints" | "ep" => {
            return crate::services::get_endpoints(services, service_args()).await
        }
        other => bail!(
            "the resource type {other:?} is not known; sandboxctl gets pods, services and endpoints"
        ),
    }
    let pairs: Vec<String> = args
        .selector
        .iter()
        .flat_map(|s| s.split(','))
        .map(String::from)
        .collect();
    let label_selector = crate::output::labels("-l", &pairs)?;
    if crate::cluster::is_member(cluster).await? {
        let namespace = (!args.all_namespaces).then_some(args.namespace.as_str());
        return crate::cluster::get_pods(
            cluster,
            &args.names,
            namespace,
            &label_selector,
            args.output,
        )
        .await;
    }
    let sandboxes = client
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector,
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .items;
    let mut containers_by_pod: HashMap<String, Vec<cri::Container>> = HashMap::new();
    let all = client
        .list_containers(cri::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    for c in all {
        containers_by_pod
            .entry(c.pod_sandbox_id.clone())
            .or_default()
            .push(c);
    }
    let node = client
        .status(cri::StatusRequest { verbose: true })
        .await?
        .into_inner()
        .info
        .get("config")
        .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
        .and_then(|c| c["nodeName"].as_str().map(String::from))
        .unwrap_or_else(|| "<none>".into());

    let mut views = Vec::new();
    for sandbox in sandboxes {
        let meta = sandbox.metadata.clone().unwrap_or_default();
        if !args.all_namespaces && meta.namespace != args.namespace {
            continue;
        }
        if !args.names.is_empty() && !args.names.contains(&meta.name) {
            continue;
        }
        let status = client
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox.id.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .unwrap_or_default();
        let mut containers = containers_by_pod.remove(&sandbox.id).unwrap_or_default();
        containers.sort_by_key(|c| c.created_at);
        let mut statuses = HashMap::new();
        for c in &containers {
            let s = client
                .container_status(cri::ContainerStatusRequest {
                    container_id: c.id.clone(),
                    verbose: false,
                })
                .await?
                .into_inner()
                .status
                .unwrap_or_default();
            statuses.insert(c.id.clone(), s);
        }
        views.push(PodView {
            sandbox,
            status,
            containers,
            statuses,
        });
    }
    views.sort_by(|a, b| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
    for name in &args.names {
        if !views.iter().any(|v| v.name() == name) {
            bail!("pods \"{name}\" not found");
        }
    }

    match args.output {
        Some(format @ (GetFormat::Json | GetFormat::Yaml)) => {
            let format = if format == GetFormat::Json {
                Format::Json
            } else {
                Format::Yaml
            };
            let objects: Vec<serde_json::Value> = views.iter().map(|v| object(v, &node)).collect();
            let doc = if args.names.len() == 1 && objects.len() == 1 {
                objects.into_iter().next().unwrap_or_default()
            } else {
                json!({ "apiVersion": "v1", "kind": "List", "items": objects })
            };
            print_doc(&doc, format)
        }
        wide => {
            if views.is_empty() {
                crate::output::no_resources(&args.namespace, args.all_namespaces);
                return Ok(());
            }
            let wide = wide == Some(GetFormat::Wide);
            let mut headers = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
            if args.all_namespaces {
                headers.insert(0, "NAMESPACE");
            }
            if wide {
                headers.extend(["IP", "NODE"]);
            }
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    let mut row = vec![
                        v.name().to_string(),
                        v.ready_text(),
                        v.phase_text(),
                        "0".into(),
                        age(v.sandbox.created_at),
                    ];
                    if args.all_namespaces {
                        row.insert(0, v.namespace().to_string());
                    }
                    if wide {
                        row.extend([v.ip(), node.clone()]);
                    }
                    row
                })
                .collect();
            table(&headers, &rows);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectls() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        let ago = |s: i64| age(now - s * 1_000_000_000);
        assert_eq!(ago(5), "5s");
        assert_eq!(ago(126), "2m6s");
        assert_eq!(ago(3600 * 3 + 240), "3h4m");
        assert_eq!(ago(86_400 * 5), "5d");
    }
}
