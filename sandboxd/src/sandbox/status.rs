//! PodSandboxStatus and ListPodSandbox: what the records say, in CRI terms.

use std::collections::HashMap;

use k8s_cri::v1 as cri;

use crate::error::Result;
use crate::runtime::Runtime;
use crate::sandbox::{SandboxRecord, SandboxState};

/// ListPodSandbox's filter: every given part must match.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    /// Id or id prefix.
    pub id: Option<String>,
    pub state: Option<SandboxState>,
    pub labels: HashMap<String, String>,
}

impl ListFilter {
    pub fn from_cri(filter: Option<cri::PodSandboxFilter>) -> Self {
        let Some(filter) = filter else {
            return ListFilter::default();
        };
        ListFilter {
            id: Some(filter.id).filter(|id| !id.is_empty()),
            state: filter.state.map(|s| {
                if s.state == cri::PodSandboxState::SandboxReady as i32 {
                    SandboxState::Ready
                } else {
                    SandboxState::NotReady
                }
            }),
            labels: filter.label_selector,
        }
    }

    pub(crate) fn matches(&self, record: &SandboxRecord) -> bool {
        self.id
            .as_ref()
            .is_none_or(|id| record.id.starts_with(id.as_str()))
            && self.state.is_none_or(|s| s == record.state)
            && self
                .labels
                .iter()
                .all(|(k, v)| record.labels.get(k) == Some(v))
    }
}

fn state(record: &SandboxRecord) -> i32 {
    match record.state {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady as i32,
        SandboxState::NotReady => cri::PodSandboxState::SandboxNotready as i32,
    }
}

fn metadata(record: &SandboxRecord) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: record.metadata.name.clone(),
        uid: record.metadata.uid.clone(),
        namespace: record.metadata.namespace.clone(),
        attempt: record.metadata.attempt,
    }
}

impl Runtime {
    pub async fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::PodSandboxStatusResponse> {
        let (_, entry) = self.lookup(id)?;
        let record = entry.lock().await.clone();
        let network_mode = if record.host_network {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Pod
        };
        let status = cri::PodSandboxStatus {
            id: record.id.clone(),
            metadata: Some(metadata(&record)),
            state: state(&record),
            created_at: record.created_at_ns,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: record.ip.clone(),
                additional_ips: record
                    .additional_ips
                    .iter()
                    .map(|ip| cri::PodIp { ip: ip.clone() })
                    .collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(cri::NamespaceOption {
                        network: network_mode as i32,
                        pid: if record.pid_namespace {
                            cri::NamespaceMode::Pod as i32
                        } else {
                            cri::NamespaceMode::Container as i32
                        },
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                }),
            }),
            labels: record.labels.clone().into_iter().collect(),
            annotations: record.annotations.clone().into_iter().collect(),
            runtime_handler: String::new(),
        };
        let mut info = HashMap::new();
        if verbose {
            // What crictl inspectp shows under "info": where to find the pod's pieces.
            let detail = serde_json::json!({
                "pid": record.pause.map(|p| p.pid),
                "netnsPath": record.netns_path,
                "hostname": record.hostname,
                "network": record.network,
                "portMappings": record.port_mappings,
                "cniResult": record.cni_result,
            });
            info.insert("info".to_string(), detail.to_string());
        }
        Ok(cri::PodSandboxStatusResponse {
            status: Some(status),
            info,
            ..Default::default()
        })
    }

    pub async fn list_pod_sandbox(&self, filter: &ListFilter) -> Vec<cri::PodSandbox> {
        let mut items = Vec::new();
        for entry in self.entries() {
            let record = entry.lock().await;
            if !filter.matches(&record) {
                continue;
            }
            items.push(cri::PodSandbox {
                id: record.id.clone(),
                metadata: Some(metadata(&record)),
                state: state(&record),
                created_at: record.created_at_ns,
                labels: record.labels.clone().into_iter().collect(),
                annotations: record.annotations.clone().into_iter().collect(),
                runtime_handler: String::new(),
            });
        }
        items.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        items
    }
}

impl Runtime {
    /// The network namespace of a ready pod, where its ports are: its pin, or None for a
    /// hostNetwork pod on a node that is sandboxd's own namespace (the node's pin if not).
    pub async fn pod_netns(&self, id: &str) -> Result<Option<std::path::PathBuf>> {
        let (_, entry) = self.lookup(id)?;
        let record = entry.lock().await;
        if record.state != SandboxState::Ready {
            return Err(crate::error::Error::FailedPrecondition(format!(
                "{} is not ready: its ports cannot be forwarded",
                record.describe()
            )));
        }
        Ok(if record.host_network {
            self.config.node.netns.path().map(|p| p.to_path_buf())
        } else {
            record.netns_path.clone()
        })
    }
}
