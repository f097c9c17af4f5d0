//! Finding objects the way people name them: ids, id prefixes, or pod names.

use anyhow::bail;
use k8s_cri::v1 as cri;

use crate::Client;

/// A pod sandbox id for `text`: an id or id prefix the runtime knows, else the name of
/// exactly one pod (in `namespace` if given).
pub async fn pod_id(client: &mut Client, text: &str) -> anyhow::Result<String> {
    let pods = client
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    let by_id: Vec<&cri::PodSandbox> = pods.iter().filter(|p| p.id.starts_with(text)).collect();
    if by_id.len() == 1 {
        return Ok(by_id[0].id.clone());
    }
    let by_name: Vec<&cri::PodSandbox> = pods
        .iter()
        .filter(|p| p.metadata.as_ref().is_some_and(|m| m.name == text))
        .collect();
    // A name may be reused by attempts: the newest (the list is newest first) is the pod.
    let ready: Vec<&&cri::PodSandbox> = by_name
        .iter()
        .filter(|p| p.state == cri::PodSandboxState::SandboxReady as i32)
        .collect();
    match (by_id.len(), by_name.len(), ready.len()) {
        (0, 0, _) => bail!("no pod sandbox has the id or name {text:?}"),
        (0, 1, _) => Ok(by_name[0].id.clone()),
        (0, _, 1) => Ok(ready[0].id.clone()),
        (0, _, _) => bail!("more than one pod sandbox is named {text:?}; give its id"),
        _ => bail!("the id prefix {text:?} matches more than one pod sandbox"),
    }
}

/// Pod names by id, for tables.
pub async fn pod_names(
    client: &mut Client,
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    Ok(client
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items
        .into_iter()
        .map(|p| (p.id, p.metadata.map(|m| m.name).unwrap_or_default()))
        .collect())
}

/// A ready pod with its own network namespace, as a node's sandboxd reports it.
pub struct NetworkedPod {
    pub name: String,
    pub namespace: String,
    pub ip: std::net::Ipv4Addr,
    /// Where its network namespace is pinned.
    pub netns: std::path::PathBuf,
    /// Its CNI ADD result, as the network's version printed it.
    pub cni_result: serde_json::Value,
}

/// The ready pods of the node at `endpoint` that have a network of their own (a
/// hostNetwork pod's traffic is the node's).
pub async fn networked_pods(endpoint: &str) -> anyhow::Result<Vec<NetworkedPod>> {
    let mut client = Client::new(sandboxd::client::channel(endpoint).await?);
    let sandboxes = client
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    let mut pods = Vec::new();
    for sandbox in sandboxes {
        if sandbox.state != cri::PodSandboxState::SandboxReady as i32 {
            continue;
        }
        let status = client
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox.id.clone(),
                verbose: true,
            })
            .await?
            .into_inner();
        let mut info: serde_json::Value = status
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_default();
        let netns = info["netnsPath"].as_str().map(std::path::PathBuf::from);
        let ip = status
            .status
            .as_ref()
            .and_then(|s| s.network.as_ref())
            .and_then(|n| n.ip.parse().ok());
        let (Some(netns), Some(ip)) = (netns, ip) else {
            continue;
        };
        let metadata = sandbox.metadata.unwrap_or_default();
        pods.push(NetworkedPod {
            name: metadata.name,
            namespace: metadata.namespace,
            ip,
            netns,
            cni_result: info["cniResult"].take(),
        });
    }
    Ok(pods)
}
