//! A CRI client for tests: a pod, a container in it from a config, exec, the container's
//! log and status, over sandboxd's socket with the generated tonic client.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

pub struct Cri {
    pub client: RuntimeServiceClient<Channel>,
}

/// A pod's config: `name` in namespace `default`, its log directory `log_dir` (if any).
pub fn pod_config(name: &str, log_dir: Option<&std::path::Path>) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.map(|d| d.display().to_string()).unwrap_or_default(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        ..Default::default()
    }
}

/// A container's config: `name` running `command` of `image`, logging to `<name>.log`.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// `config` with `security` as its Linux security context.
pub fn with_security(
    mut config: cri::ContainerConfig,
    security: cri::LinuxContainerSecurityContext,
) -> cri::ContainerConfig {
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(security),
        ..Default::default()
    });
    config
}

/// What an exec printed and its exit code.
#[derive(Debug)]
pub struct Exec {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

impl Cri {
    pub async fn run_pod(&mut self, config: cri::PodSandboxConfig) -> String {
        self.client
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id
    }

    pub async fn remove_pod(&mut self, pod: &str) {
        self.client
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .expect("RemovePodSandbox");
    }

    pub async fn create(
        &mut self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        Ok(self
            .client
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            })
            .await?
            .into_inner()
            .container_id)
    }

    /// Creates and starts a container; panics on an error.
    pub async fn run(
        &mut self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        let name = config.metadata.as_ref().map(|m| m.name.clone());
        let id = self
            .create(pod, pod_config, config)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name:?}: {e}"));
        self.client
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer {name:?}: {e}"));
        id
    }

    pub async fn exec(&mut self, id: &str, cmd: &[&str]) -> Exec {
        let out = self
            .client
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 10,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?} in {id}: {e}"))
            .into_inner();
        Exec {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            exit_code: out.exit_code,
        }
    }

    /// An exec that must succeed; its stdout, trimmed.
    pub async fn output(&mut self, id: &str, cmd: &[&str]) -> String {
        let out = self.exec(id, cmd).await;
        assert_eq!(out.exit_code, 0, "{cmd:?} in {id}: {out:?}");
        out.stdout.trim().to_string()
    }

    pub async fn status(&mut self, id: &str) -> cri::ContainerStatus {
        self.client
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("a status")
    }

    /// The container's log lines (the CRI format's message part) once it holds at least
    /// `lines` of them; panics after 10 s.
    pub async fn log_lines(&mut self, id: &str, lines: usize) -> Vec<String> {
        let path = self.status(id).await.log_path;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let messages: Vec<String> = text
                .lines()
                .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_string))
                .collect();
            if messages.len() >= lines {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "{id} logged {messages:?}, not {lines} lines"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
