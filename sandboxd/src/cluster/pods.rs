//! Pods as desired state: a Pod stored in the cluster store (`/sandboxd/pods/<ns>/<name>`)
//! with the node it is placed on and the status that node writes back, as the API server
//! keeps them for the kubelet.
//!
//! Placement, as the scheduler would for these pods: the node a `nodeName` or a
//! `nodeSelector` `kubernetes.io/hostname` names (an unknown one is an error naming the
//! nodes there are); otherwise the ready, schedulable node running the fewest pods (the
//! control plane only when named).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::node::{self, NodeRecord};
use super::store::{ClusterStore, Versioned};
use crate::error::{Error, Result};
use crate::kube::{applied_digest, Object, Pod};
use crate::service::endpoints::{ContainerPort, ReadyPod};
use crate::service::Protocol;

pub const PODS: &str = "/sandboxd/pods/";
/// The label nodeSelectors name a node by.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// What a node reports of a pod it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// Pending, Running, Succeeded, Failed.
    pub phase: String,
    /// Why it is not Running, as kubectl's STATUS column shows it.
    pub reason: String,
    pub ip: String,
    pub ready: u32,
    pub total: u32,
    /// The sandbox it runs in on its node.
    #[serde(default)]
    pub sandbox_id: String,
}

/// A Pod in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodObject {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The node it is placed on.
    pub node: String,
    /// The manifest as applied.
    pub document: serde_json::Value,
    /// sha256 of the document: applying the same one again is "unchanged".
    pub digest: String,
    pub created_ms: i64,
    pub status: PodStatus,
    /// Asked to go: its node stops and removes it, then deletes the object.
    #[serde(default)]
    pub deleting: bool,
}

impl PodObject {
    pub fn key(&self) -> String {
        key(&self.namespace, &self.name)
    }

    /// The Pod its document describes.
    pub fn pod(&self) -> Result<Pod> {
        let_pod(&self.document.to_string(), &format!("pod/{}", self.name))
    }
}

pub fn key(namespace: &str, name: &str) -> String {
    format!("{PODS}{namespace}/{name}")
}

/// Parses the one Pod of a JSON document.
fn let_pod(document: &str, source: &str) -> Result<Pod> {
    let mut objects = crate::kube::parse(document, source)
        .map_err(|e| Error::InvalidDocument(format!("{e:#}")))?;
    match (objects.len(), objects.pop()) {
        (1, Some(Object::Pod(pod))) => Ok(pod),
        _ => Err(Error::InvalidDocument(format!(
            "{source}: the request must hold exactly one Pod"
        ))),
    }
}

/// A stored object that does not parse: the store holds something this sandboxd did not
/// write.
fn unreadable(key: &str, e: serde_json::Error) -> Error {
    Error::step(
        "read the stored object",
        key.to_string(),
        anyhow::Error::from(e),
    )
}

/// The pods of a listing (unreadable ones reported and skipped).
pub fn objects<'a>(items: impl IntoIterator<Item = &'a Versioned>) -> Vec<(PodObject, i64)> {
    super::decode(items, PODS, "pod")
}

/// The pods of the cluster that can be endpoints, as their nodes report them: Running,
/// every app container ready, an address; with their labels and container ports (for
/// named target ports) from their documents.
pub fn ready_pods<'a>(objects: impl IntoIterator<Item = &'a PodObject>) -> Vec<ReadyPod> {
    objects
        .into_iter()
        .filter(|p| {
            !p.deleting
                && p.status.phase == "Running"
                && p.status.total > 0
                && p.status.ready == p.status.total
        })
        .filter_map(|object| {
            let ip = object.status.ip.parse().ok()?;
            let pod = object.pod().ok()?;
            let ports = pod
                .spec
                .containers
                .iter()
                .flat_map(|c| &c.ports)
                .filter_map(|p| {
                    Some(ContainerPort {
                        name: p.name.clone().unwrap_or_default(),
                        container_port: u16::try_from(p.container_port).ok()?,
                        protocol: match p.protocol.as_deref() {
                            Some("UDP") => Protocol::Udp,
                            _ => Protocol::Tcp,
                        },
                    })
                })
                .collect();
            Some(ReadyPod {
                sandbox_id: object.status.sandbox_id.clone(),
                namespace: object.namespace.clone(),
                name: object.name.clone(),
                labels: pod.metadata.labels,
                ip,
                ports,
            })
        })
        .collect()
}

/// Where `pod` goes among `nodes`, given how many pods each runs.
pub fn place(
    pod: &Pod,
    nodes: &[NodeRecord],
    pods_per_node: &BTreeMap<String, usize>,
    now_ms: i64,
) -> Result<String> {
    let named = pod
        .spec
        .node_name
        .as_deref()
        .map(|n| ("spec.nodeName", n))
        .or_else(|| {
            pod.spec
                .node_selector
                .get(HOSTNAME_LABEL)
                .map(|n| ("spec.nodeSelector", n.as_str()))
        });
    let names = || {
        nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some((field, wanted)) = named {
        if nodes.iter().any(|n| n.name == wanted) {
            return Ok(wanted.to_string());
        }
        let label = if field == "spec.nodeSelector" {
            format!("{HOSTNAME_LABEL}={wanted}")
        } else {
            wanted.to_string()
        };
        return Err(Error::invalid(
            pod.describe(),
            field,
            format!(
                "{label} names no node of the cluster (its nodes: {})",
                names()
            ),
        ));
    }
    nodes
        .iter()
        .filter(|n| n.schedulable && n.is_ready(now_ms))
        .min_by_key(|n| (pods_per_node.get(&n.name).copied().unwrap_or(0), n.name.clone()))
        .map(|n| n.name.clone())
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "{}: no ready worker to place it on (nodes: {}); name one with spec.nodeSelector {HOSTNAME_LABEL}",
                pod.describe(),
                names()
            ))
        })
}

/// Stores the Pod of `document`, placed on a node: "created", or "unchanged" when the
/// same document is stored already; another document under the same name is refused
/// (Pods are immutable). Returns the outcome and the node.
pub async fn apply(store: &dyn ClusterStore, document: &str) -> Result<(&'static str, String)> {
    let pod = let_pod(document, "the request")?;
    let digest = applied_digest(&pod.document);
    let key = key(pod.namespace(), &pod.metadata.name);
    if let Some(existing) = store.get(&key).await? {
        let existing: PodObject =
            serde_json::from_str(&existing.value).map_err(|e| unreadable(&key, e))?;
        if existing.digest == digest {
            return Ok(("unchanged", existing.node));
        }
        return Err(Error::AlreadyExists(format!(
            "{} exists with another spec; a pod's spec cannot change: delete it first (sandboxctl delete -f)",
            pod.describe()
        )));
    }
    let nodes = node::records(store.list(node::NODES).await?.items.iter());
    let mut per_node = BTreeMap::new();
    for (object, _) in objects(store.list(PODS).await?.items.iter()) {
        *per_node.entry(object.node).or_insert(0) += 1;
    }
    let placed = place(&pod, &nodes, &per_node, node::now_ms())?;
    let object = PodObject {
        namespace: pod.namespace().to_string(),
        name: pod.metadata.name.clone(),
        uid: pod
            .metadata
            .uid
            .clone()
            .unwrap_or_else(crate::kube::new_uid),
        node: placed.clone(),
        document: pod.document.clone(),
        digest,
        created_ms: node::now_ms(),
        status: PodStatus {
            phase: "Pending".into(),
            total: (pod.spec.containers.len()) as u32,
            ..PodStatus::default()
        },
        deleting: false,
    };
    let value = serde_json::to_string(&object).expect("a pod object serializes");
    if store.create(&key, &value).await?.is_none() {
        return Err(Error::AlreadyExists(format!(
            "{} was created by another node meanwhile; apply again",
            pod.describe()
        )));
    }
    Ok(("created", placed))
}

/// Marks the pod for deletion (its node removes it, then the object); whether it existed.
pub async fn mark_deleted(store: &dyn ClusterStore, namespace: &str, name: &str) -> Result<bool> {
    let key = key(namespace, name);
    loop {
        let Some(current) = store.get(&key).await? else {
            return Ok(false);
        };
        let mut object: PodObject =
            serde_json::from_str(&current.value).map_err(|e| unreadable(&key, e))?;
        if object.deleting {
            return Ok(true);
        }
        object.deleting = true;
        let value = serde_json::to_string(&object).expect("a pod object serializes");
        if store
            .update(&key, &value, current.revision)
            .await?
            .is_some()
        {
            return Ok(true);
        }
    }
}

/// Writes `status` into the pod's object unless it holds it already; a pod deleted
/// meanwhile is left deleted.
pub async fn write_status(
    store: &dyn ClusterStore,
    namespace: &str,
    name: &str,
    uid: &str,
    status: &PodStatus,
) -> Result<()> {
    let key = key(namespace, name);
    loop {
        let Some(current) = store.get(&key).await? else {
            return Ok(());
        };
        let mut object: PodObject =
            serde_json::from_str(&current.value).map_err(|e| unreadable(&key, e))?;
        if object.uid != uid || &object.status == status {
            return Ok(());
        }
        object.status = status.clone();
        let value = serde_json::to_string(&object).expect("a pod object serializes");
        if store
            .update(&key, &value, current.revision)
            .await?
            .is_some()
        {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::Backend;

    fn node(name: &str, schedulable: bool, heartbeat_ms: i64) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            ip: "192.168.102.10".parse().unwrap(),
            subnet: "10.244.0.0/24".parse().unwrap(),
            vtep_mac: None,
            backend: Backend::Vxlan,
            schedulable,
            heartbeat_ms,
        }
    }

    fn pod(spec: &str) -> Pod {
        let_pod(
            &format!(
                r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p"}},"spec":{{"containers":[{{"name":"c","image":"busybox"}}]{spec}}}}}"#
            ),
            "test",
        )
        .unwrap()
    }

    #[test]
    fn a_named_node_wins_and_an_unknown_one_is_an_error_listing_the_nodes() {
        let nodes = [
            node("k8s-master", false, 1000),
            node("k8s-node1", true, 1000),
        ];
        let selected = pod(r#","nodeSelector":{"kubernetes.io/hostname":"k8s-master"}"#);
        assert_eq!(
            place(&selected, &nodes, &BTreeMap::new(), 1000).unwrap(),
            "k8s-master"
        );
        let unknown = pod(r#","nodeSelector":{"kubernetes.io/hostname":"k8s-node9"}"#);
        let error = place(&unknown, &nodes, &BTreeMap::new(), 1000)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "invalid spec.nodeSelector of pod/p: kubernetes.io/hostname=k8s-node9 names no node of the cluster (its nodes: k8s-master, k8s-node1)"
        );
        let by_name = pod(r#","nodeName":"k8s-node1""#);
        assert_eq!(
            place(&by_name, &nodes, &BTreeMap::new(), 1000).unwrap(),
            "k8s-node1"
        );
    }

    #[test]
    fn otherwise_the_ready_worker_with_fewest_pods_and_never_the_control_plane() {
        let nodes = [
            node("k8s-master", false, 1000),
            node("k8s-node1", true, 1000),
            node("k8s-node2", true, 1000),
            node("k8s-node3", true, -100_000),
        ];
        let free = pod("");
        let mut per_node =
            BTreeMap::from([("k8s-node1".to_string(), 2), ("k8s-node2".to_string(), 1)]);
        assert_eq!(place(&free, &nodes, &per_node, 1000).unwrap(), "k8s-node2");
        per_node.insert("k8s-node2".into(), 2);
        assert_eq!(place(&free, &nodes, &per_node, 1000).unwrap(), "k8s-node1");
        let only_master = [node("k8s-master", false, 1000)];
        assert!(place(&free, &only_master, &per_node, 1000)
            .unwrap_err()
            .to_string()
            .contains("no ready worker"));
    }
}
