//! sandboxd's cluster API beside CRI, on the same socket, served by a node that joined a
//! cluster: `sandboxd.cluster.v1.Cluster` (proto/cluster.proto), each RPC a thin call into
//! [`crate::cluster::pods`] and the node records.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::cluster::node;
use crate::cluster::pods::{self, PodObject};
use crate::cluster::store::ClusterStore;

/// The generated messages, client and server.
pub mod v1 {
    tonic::include_proto!("sandboxd.cluster.v1");
}

pub struct ClusterApi {
    store: Arc<dyn ClusterStore>,
    node: String,
}

impl ClusterApi {
    pub fn new(store: Arc<dyn ClusterStore>, node: String) -> Self {
        ClusterApi { store, node }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn entry(pod: &PodObject) -> v1::PodEntry {
    v1::PodEntry {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        node: pod.node.clone(),
        phase: pod.status.phase.clone(),
        reason: pod.status.reason.clone(),
        ip: pod.status.ip.clone(),
        ready: pod.status.ready,
        total: pod.status.total,
        created_ms: pod.created_ms,
        document_json: pod.document.to_string(),
        labels: pod
            .document
            .pointer("/metadata/labels")
            .and_then(|l| l.as_object())
            .map(|l| {
                l.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl v1::cluster_server::Cluster for ClusterApi {
    async fn apply_pod(
        &self,
        request: Request<v1::ApplyPodRequest>,
    ) -> Reply<v1::ApplyPodResponse> {
        let document = request.into_inner().document_json;
        let (outcome, node) = pods::apply(self.store.as_ref(), &document)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(v1::ApplyPodResponse {
            outcome: outcome.into(),
            node,
        }))
    }

    async fn delete_pod(
        &self,
        request: Request<v1::DeletePodRequest>,
    ) -> Reply<v1::DeletePodResponse> {
        let request = request.into_inner();
        let namespace = if request.namespace.is_empty() {
            "default".to_string()
        } else {
            request.namespace
        };
        let deleted = pods::mark_deleted(self.store.as_ref(), &namespace, &request.name)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(v1::DeletePodResponse { deleted }))
    }

    async fn list_pods(
        &self,
        request: Request<v1::ListPodsRequest>,
    ) -> Reply<v1::ListPodsResponse> {
        let namespace = request.into_inner().namespace;
        let listing = self
            .store
            .list(pods::PODS)
            .await
            .map_err(|e| Status::from(crate::error::Error::from(e)))?;
        Ok(Response::new(v1::ListPodsResponse {
            pods: pods::objects(listing.items.iter())
                .iter()
                .filter(|(p, _)| namespace.is_empty() || p.namespace == namespace)
                .map(|(p, _)| entry(p))
                .collect(),
        }))
    }

    async fn list_nodes(&self, _: Request<v1::ListNodesRequest>) -> Reply<v1::ListNodesResponse> {
        let listing = self
            .store
            .list(node::NODES)
            .await
            .map_err(|e| Status::from(crate::error::Error::from(e)))?;
        let now = node::now_ms();
        Ok(Response::new(v1::ListNodesResponse {
            nodes: node::records(listing.items.iter())
                .iter()
                .map(|n| v1::NodeEntry {
                    name: n.name.clone(),
                    ip: n.ip.to_string(),
                    subnet: n.subnet.to_string(),
                    backend: n.backend.name().into(),
                    ready: n.is_ready(now),
                    schedulable: n.schedulable,
                })
                .collect(),
            this_node: self.node.clone(),
        }))
    }
}
