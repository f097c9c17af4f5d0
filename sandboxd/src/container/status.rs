//! ContainerStatus and ListContainers: what the records say, in CRI terms, after looking
//! at what the monitor recorded (a container may have exited since the last look).

use std::collections::HashMap;

use k8s_cri::v1 as cri;

use crate::container::{ContainerDir, ContainerRecord, ContainerState, ExitRecord};
use crate::error::Result;
use crate::runtime::{now_ns, Runtime};

/// ListContainers' filter: every given part must match.
#[derive(Debug, Default, Clone)]
pub struct ContainerFilter {
    /// Id or id prefix.
    pub id: Option<String>,
    pub state: Option<ContainerState>,
    /// Pod sandbox id or id prefix.
    pub sandbox_id: Option<String>,
    pub labels: HashMap<String, String>,
}

impl ContainerFilter {
    pub fn from_cri(filter: Option<cri::ContainerFilter>) -> Self {
        let Some(filter) = filter else {
            return ContainerFilter::default();
        };
        ContainerFilter {
            id: Some(filter.id).filter(|id| !id.is_empty()),
            state: filter
                .state
                .map(|s| match cri::ContainerState::try_from(s.state) {
                    Ok(cri::ContainerState::ContainerCreated) => ContainerState::Created,
                    Ok(cri::ContainerState::ContainerRunning) => ContainerState::Running,
                    _ => ContainerState::Exited,
                }),
            sandbox_id: Some(filter.pod_sandbox_id).filter(|id| !id.is_empty()),
            labels: filter.label_selector,
        }
    }

    pub(crate) fn matches(&self, record: &ContainerRecord) -> bool {
        self.id
            .as_ref()
            .is_none_or(|id| record.id.starts_with(id.as_str()))
            && self
                .sandbox_id
                .as_ref()
                .is_none_or(|id| record.sandbox_id.starts_with(id.as_str()))
            && self.state.is_none_or(|s| s == record.state)
            && self
                .labels
                .iter()
                .all(|(k, v)| record.labels.get(k) == Some(v))
    }
}

fn state(record: &ContainerRecord) -> i32 {
    (match record.state {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
    }) as i32
}

fn metadata(record: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: record.name.clone(),
        attempt: record.attempt,
    }
}

fn image(record: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: record.image.clone(),
        ..Default::default()
    }
}

impl Runtime {
    pub(crate) fn container_dir(&self, id: &str) -> ContainerDir {
        ContainerDir(self.container_records.dir_of(id))
    }

    /// Brings a created or running container's record up to date with what happened to it:
    /// the exit its monitor recorded, or, if the monitor died without recording one and
    /// the container is gone too, an unknown exit. Saves a changed record.
    pub(crate) fn observe(&self, record: &mut ContainerRecord) -> Result<()> {
        if record.state == ContainerState::Exited {
            return Ok(());
        }
        let exit_file = self.container_dir(&record.id).exit_file();
        let exit = match ExitRecord::read(&exit_file) {
            Some(exit) => Some(exit),
            None if record.monitor.is_some_and(|m| m.is_alive()) => None,
            // The monitor may have written the file just before it exited: look again.
            None => ExitRecord::read(&exit_file),
        };
        match exit {
            Some(exit) => {
                record.exit_code = exit.exit_code;
                record.finished_at_ns = exit.finished_at_ns;
                record.reason = if exit.exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                }
                .into();
                if let Some(signal) = exit.signal {
                    record.message = format!("killed by signal {signal}");
                }
            }
            None if record.monitor.is_some_and(|m| m.is_alive())
                || record.process.is_some_and(|p| p.is_alive()) =>
            {
                return Ok(());
            }
            None => {
                record.exit_code = 255;
                record.finished_at_ns = now_ns();
                record.reason = "Unknown".into();
                record.message = "the container's monitor ended without recording its exit".into();
            }
        }
        record.state = ContainerState::Exited;
        record.monitor = None;
        record.process = None;
        self.save_container(record)
    }

    pub async fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::ContainerStatusResponse> {
        let (_, entry) = self.lookup_container(id)?;
        let record = {
            let mut record = entry.lock().await;
            self.observe(&mut record)?;
            record.clone()
        };
        let status = cri::ContainerStatus {
            id: record.id.clone(),
            metadata: Some(metadata(&record)),
            state: state(&record),
            created_at: record.created_at_ns,
            started_at: record.started_at_ns,
            finished_at: record.finished_at_ns,
            exit_code: record.exit_code,
            image: Some(image(&record)),
            image_ref: record.image_id.clone(),
            image_id: record.image_id.clone(),
            reason: record.reason.clone(),
            message: record.message.clone(),
            labels: record.labels.clone().into_iter().collect(),
            annotations: record.annotations.clone().into_iter().collect(),
            mounts: record
                .mounts
                .iter()
                .map(|m| cri::Mount {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.clone(),
                    readonly: m.readonly,
                    propagation: m.propagation.to_cri() as i32,
                    ..Default::default()
                })
                .collect(),
            log_path: record.log_path.display().to_string(),
            resources: Some(cri::ContainerResources {
                linux: Some(record.resources.to_cri()),
                windows: None,
            }),
            ..Default::default()
        };
        let mut info = HashMap::new();
        if verbose {
            // What crictl inspect shows under "info": the pieces behind the container.
            let pause_id = record.sandbox_id.clone();
            let detail = serde_json::json!({
                "sandboxID": record.sandbox_id,
                "pid": record.process.map(|p| p.pid),
                "monitorPid": record.monitor.map(|p| p.pid),
                "runtime": record.runtime,
                "runtimeRoot": self.config.oci_runtime_root,
                "bundle": self.container_dir(&record.id).bundle(),
                "networkMode": format!("container:{pause_id}"),
                "args": record.args,
                "env": record.env,
                "cwd": record.cwd,
                "user": {"uid": record.uid, "gid": record.gid},
            });
            info.insert("info".to_string(), detail.to_string());
        }
        Ok(cri::ContainerStatusResponse {
            status: Some(status),
            info,
        })
    }

    pub async fn list_containers(&self, filter: &ContainerFilter) -> Result<Vec<cri::Container>> {
        let mut items = Vec::new();
        for entry in self.container_entries() {
            let mut record = entry.lock().await;
            self.observe(&mut record)?;
            if !filter.matches(&record) {
                continue;
            }
            items.push(cri::Container {
                id: record.id.clone(),
                pod_sandbox_id: record.sandbox_id.clone(),
                metadata: Some(metadata(&record)),
                image: Some(image(&record)),
                image_ref: record.image_id.clone(),
                image_id: record.image_id.clone(),
                state: state(&record),
                created_at: record.created_at_ns,
                labels: record.labels.clone().into_iter().collect(),
                annotations: record.annotations.clone().into_iter().collect(),
            });
        }
        items.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        Ok(items)
    }
}
