//! The CRI v1 `RuntimeService`, over [`Runtime`]. Each RPC unpacks its request, calls one
//! verb, and packs the answer; errors map to gRPC codes in `error.rs`. RPCs sandboxd does
//! not implement answer UNIMPLEMENTED, never panic.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use crate::container::ContainerFilter;
use crate::runtime::Runtime;
use crate::sandbox::ListFilter;
use crate::stream::server::StreamRequest;
use crate::stream::StreamServer;

/// The CRI API version this server speaks.
pub const CRI_API_VERSION: &str = "v1";
pub const RUNTIME_NAME: &str = "sandboxd";

pub struct CriService {
    runtime: Arc<Runtime>,
    streams: Arc<StreamServer>,
}

impl CriService {
    pub fn new(runtime: Arc<Runtime>, streams: Arc<StreamServer>) -> Self {
        CriService { runtime, streams }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn unimplemented<T>(rpc: &str) -> Reply<T> {
    Err(Status::unimplemented(format!(
        "sandboxd does not implement {rpc} yet"
    )))
}

#[tonic::async_trait]
impl RuntimeService for CriService {
    async fn version(&self, _: Request<cri::VersionRequest>) -> Reply<cri::VersionResponse> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_API_VERSION.into(),
        }))
    }

    async fn status(&self, request: Request<cri::StatusRequest>) -> Reply<cri::StatusResponse> {
        let verbose = request.into_inner().verbose;
        let network = self.runtime.network_status().await;
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: network.is_ok(),
                reason: if network.is_ok() {
                    String::new()
                } else {
                    "NetworkPluginNotReady".into()
                },
                message: network.as_ref().err().cloned().unwrap_or_default(),
            },
        ];
        let mut info = std::collections::HashMap::new();
        if verbose {
            let config = &self.runtime.config;
            let detail = serde_json::json!({
                "nodeName": config.node.name,
                "node": config.node,
                "ociRuntime": self.runtime.oci_runtime_path(),
                "cniConfDir": config.cni_conf_dir,
                "cniBinDirs": config.cni_bin_dirs,
                "netnsDir": config.netns_dir,
                "stateDir": config.state_dir,
            });
            info.insert("config".to_string(), detail.to_string());
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            ..Default::default()
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Reply<cri::RunPodSandboxResponse> {
        let request = request.into_inner();
        if !request.runtime_handler.is_empty() {
            return Err(Status::invalid_argument(format!(
                "invalid runtime_handler {:?} of pod sandbox: sandboxd has only the default handler",
                request.runtime_handler
            )));
        }
        let id = self.runtime.run_pod_sandbox(request.config).await?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Reply<cri::StopPodSandboxResponse> {
        self.runtime
            .stop_pod_sandbox(&request.into_inner().pod_sandbox_id)
            .await?;
        // Pods and containers that stop serving are no endpoints once the call returns.
        self.runtime.endpoints_changed().await;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Reply<cri::RemovePodSandboxResponse> {
        self.runtime
            .remove_pod_sandbox(&request.into_inner().pod_sandbox_id)
            .await?;
        self.runtime.endpoints_changed().await;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Reply<cri::PodSandboxStatusResponse> {
        let request = request.into_inner();
        Ok(Response::new(
            self.runtime
                .pod_sandbox_status(&request.pod_sandbox_id, request.verbose)
                .await?,
        ))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Reply<cri::ListPodSandboxResponse> {
        let filter = ListFilter::from_cri(request.into_inner().filter);
        Ok(Response::new(cri::ListPodSandboxResponse {
            items: self.runtime.list_pod_sandbox(&filter).await,
        }))
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Reply<cri::CreateContainerResponse> {
        let request = request.into_inner();
        let id = self
            .runtime
            .create_container(&request.pod_sandbox_id, request.config)
            .await?;
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Reply<cri::StartContainerResponse> {
        self.runtime
            .start_container(&request.into_inner().container_id)
            .await?;
        self.runtime.endpoints_changed().await;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Reply<cri::StopContainerResponse> {
        let request = request.into_inner();
        let timeout = Duration::from_secs(request.timeout.max(0) as u64);
        self.runtime
            .stop_container(&request.container_id, timeout)
            .await?;
        self.runtime.endpoints_changed().await;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Reply<cri::RemoveContainerResponse> {
        self.runtime
            .remove_container(&request.into_inner().container_id)
            .await?;
        self.runtime.endpoints_changed().await;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Reply<cri::ListContainersResponse> {
        let filter = ContainerFilter::from_cri(request.into_inner().filter);
        Ok(Response::new(cri::ListContainersResponse {
            containers: self.runtime.list_containers(&filter).await?,
        }))
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Reply<cri::ContainerStatusResponse> {
        let request = request.into_inner();
        Ok(Response::new(
            self.runtime
                .container_status(&request.container_id, request.verbose)
                .await?,
        ))
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Reply<cri::UpdateContainerResourcesResponse> {
        let request = request.into_inner();
        self.runtime
            .update_container_resources(&request.container_id, request.linux)
            .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Reply<cri::ReopenContainerLogResponse> {
        self.runtime
            .reopen_container_log(&request.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Reply<cri::ExecSyncResponse> {
        let request = request.into_inner();
        let timeout = (request.timeout > 0).then(|| Duration::from_secs(request.timeout as u64));
        let output = self
            .runtime
            .exec_sync(&request.container_id, &request.cmd, timeout)
            .await?;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout: output.stdout,
            stderr: output.stderr,
            exit_code: output.exit_code,
        }))
    }

    async fn exec(&self, request: Request<cri::ExecRequest>) -> Reply<cri::ExecResponse> {
        let request = request.into_inner();
        let object = self
            .runtime
            .exec_target(&request.container_id, &request.cmd)
            .await?
            .object;
        if !(request.stdin || request.stdout || request.stderr) {
            return Err(crate::error::Error::invalid(
                object,
                "stdin, stdout, stderr",
                "are all false: an exec streams at least one of them",
            )
            .into());
        }
        if request.tty && request.stderr {
            return Err(crate::error::Error::invalid(
                object,
                "stderr",
                "is true with tty: a terminal has one output",
            )
            .into());
        }
        Ok(Response::new(cri::ExecResponse {
            url: self.streams.url(StreamRequest::Exec(request)),
        }))
    }
    async fn attach(&self, request: Request<cri::AttachRequest>) -> Reply<cri::AttachResponse> {
        let request = request.into_inner();
        self.runtime.attach_target(&request).await?;
        Ok(Response::new(cri::AttachResponse {
            url: self.streams.url(StreamRequest::Attach(request)),
        }))
    }
    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Reply<cri::PortForwardResponse> {
        let request = request.into_inner();
        self.runtime.pod_netns(&request.pod_sandbox_id).await?;
        Ok(Response::new(cri::PortForwardResponse {
            url: self.streams.url(StreamRequest::PortForward(request)),
        }))
    }
    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Reply<cri::ContainerStatsResponse> {
        let request = request.into_inner();
        let stats = self.runtime.container_stats(&request.container_id).await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }
    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Reply<cri::ListContainerStatsResponse> {
        let filter = crate::container::stats_filter(request.into_inner().filter);
        let stats = self.runtime.list_container_stats(&filter).await?;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }
    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Reply<cri::PodSandboxStatsResponse> {
        let request = request.into_inner();
        let stats = self
            .runtime
            .pod_sandbox_stats(&request.pod_sandbox_id)
            .await?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }
    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Reply<cri::ListPodSandboxStatsResponse> {
        let stats = self
            .runtime
            .list_pod_sandbox_stats(request.into_inner().filter)
            .await?;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }
    async fn update_runtime_config(
        &self,
        _: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Reply<cri::UpdateRuntimeConfigResponse> {
        // The kubelet sends the pod CIDR here; sandboxd takes its network from CNI configs.
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }
    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> Reply<cri::CheckpointContainerResponse> {
        unimplemented("CheckpointContainer")
    }

    type GetContainerEventsStream = Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>>
                + Send
                + 'static,
        >,
    >;

    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        unimplemented("GetContainerEvents")
    }
    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Reply<cri::ListMetricDescriptorsResponse> {
        unimplemented("ListMetricDescriptors")
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Reply<cri::ListPodSandboxMetricsResponse> {
        unimplemented("ListPodSandboxMetrics")
    }
    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> Reply<cri::RuntimeConfigResponse> {
        unimplemented("RuntimeConfig")
    }
}
