//! sandboxd's own gRPC API beside CRI, on the same socket: `sandboxd.services.v1.Services`
//! (proto/services.proto), each RPC a thin call into the runtime's service verbs.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::runtime::Runtime;
use crate::service::endpoints::Endpoint;
use crate::service::registry::ServiceView;
use crate::service::{PortInput, ServiceInput, ServiceType, TargetPort};

/// The generated messages, client and server.
pub mod v1 {
    tonic::include_proto!("sandboxd.services.v1");
}

use v1::service_port::TargetPort as ProtoTargetPort;

pub struct ServicesApi {
    runtime: Arc<Runtime>,
}

impl ServicesApi {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        ServicesApi { runtime }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A spec as the validation takes it: empty strings and zeros are "not given".
fn input_of(spec: v1::ServiceSpec) -> ServiceInput {
    ServiceInput {
        name: spec.name,
        namespace: non_empty(spec.namespace),
        labels: spec.labels.into_iter().collect(),
        selector: spec.selector.into_iter().collect(),
        service_type: non_empty(spec.r#type),
        ports: spec
            .ports
            .into_iter()
            .map(|p| PortInput {
                name: non_empty(p.name),
                protocol: non_empty(p.protocol),
                port: p.port,
                target_port: p.target_port.map(|t| match t {
                    ProtoTargetPort::TargetPortNumber(n) => serde_json::Value::from(n),
                    ProtoTargetPort::TargetPortName(name) => serde_json::Value::from(name),
                }),
                node_port: (p.node_port != 0).then_some(p.node_port),
            })
            .collect(),
        cluster_ip: non_empty(spec.cluster_ip),
        session_affinity: non_empty(spec.session_affinity),
        session_affinity_timeout_seconds: (spec.session_affinity_timeout_seconds != 0)
            .then_some(spec.session_affinity_timeout_seconds),
    }
}

fn endpoint(e: &Endpoint) -> v1::Endpoint {
    v1::Endpoint {
        port_name: e.port_name.clone(),
        protocol: protocol_name(e.protocol).into(),
        ip: e.address.ip().to_string(),
        port: e.address.port().into(),
        pod_namespace: e.pod_namespace.clone(),
        pod_name: e.pod_name.clone(),
        pod_sandbox_id: e.sandbox_id.clone(),
    }
}

fn protocol_name(p: crate::service::Protocol) -> &'static str {
    match p {
        crate::service::Protocol::Tcp => "TCP",
        crate::service::Protocol::Udp => "UDP",
    }
}

/// A stored service as the API shows it: its spec with everything allocated filled in.
fn service_of(view: &ServiceView) -> v1::Service {
    let s = &view.record.service;
    v1::Service {
        spec: Some(v1::ServiceSpec {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            labels: s.labels.clone().into_iter().collect(),
            selector: s.selector.clone().into_iter().collect(),
            r#type: match s.service_type {
                ServiceType::ClusterIP => "ClusterIP",
                ServiceType::NodePort => "NodePort",
            }
            .into(),
            ports: s
                .ports
                .iter()
                .map(|p| v1::ServicePort {
                    name: p.name.clone(),
                    protocol: protocol_name(p.protocol).into(),
                    port: p.port.into(),
                    target_port: Some(match &p.target_port {
                        TargetPort::Number(n) => ProtoTargetPort::TargetPortNumber((*n).into()),
                        TargetPort::Name(name) => ProtoTargetPort::TargetPortName(name.clone()),
                    }),
                    node_port: p.node_port.map_or(0, i64::from),
                })
                .collect(),
            cluster_ip: s.cluster_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            session_affinity: if s.affinity_seconds.is_some() {
                "ClientIP"
            } else {
                "None"
            }
            .into(),
            session_affinity_timeout_seconds: s.affinity_seconds.map_or(0, i64::from),
        }),
        created_at_ns: view.record.created_at_ns,
        endpoints: view.endpoints.iter().map(endpoint).collect(),
    }
}

fn spec_of(spec: Option<v1::ServiceSpec>) -> Result<v1::ServiceSpec, Status> {
    spec.ok_or_else(|| Status::invalid_argument("invalid spec of the request: it is missing"))
}

#[tonic::async_trait]
impl v1::services_server::Services for ServicesApi {
    async fn create_service(
        &self,
        request: Request<v1::CreateServiceRequest>,
    ) -> Reply<v1::ServiceResponse> {
        let spec = spec_of(request.into_inner().spec)?;
        let view = self.runtime.create_service(input_of(spec)).await?;
        Ok(Response::new(v1::ServiceResponse {
            service: Some(service_of(&view)),
        }))
    }

    async fn update_service(
        &self,
        request: Request<v1::UpdateServiceRequest>,
    ) -> Reply<v1::ServiceResponse> {
        let spec = spec_of(request.into_inner().spec)?;
        let view = self.runtime.update_service(input_of(spec)).await?;
        Ok(Response::new(v1::ServiceResponse {
            service: Some(service_of(&view)),
        }))
    }

    async fn delete_service(
        &self,
        request: Request<v1::DeleteServiceRequest>,
    ) -> Reply<v1::DeleteServiceResponse> {
        let request = request.into_inner();
        let namespace = non_empty(request.namespace).unwrap_or_else(|| "default".into());
        self.runtime
            .delete_service(&namespace, &request.name)
            .await?;
        Ok(Response::new(v1::DeleteServiceResponse {}))
    }

    async fn get_service(
        &self,
        request: Request<v1::GetServiceRequest>,
    ) -> Reply<v1::ServiceResponse> {
        let request = request.into_inner();
        let namespace = non_empty(request.namespace).unwrap_or_else(|| "default".into());
        let view = self.runtime.get_service(&namespace, &request.name).await?;
        Ok(Response::new(v1::ServiceResponse {
            service: Some(service_of(&view)),
        }))
    }

    async fn list_services(
        &self,
        request: Request<v1::ListServicesRequest>,
    ) -> Reply<v1::ListServicesResponse> {
        let namespace = non_empty(request.into_inner().namespace);
        let views = self.runtime.list_services(namespace).await?;
        Ok(Response::new(v1::ListServicesResponse {
            services: views.iter().map(service_of).collect(),
        }))
    }

    async fn list_endpoints(
        &self,
        request: Request<v1::ListEndpointsRequest>,
    ) -> Reply<v1::ListEndpointsResponse> {
        let namespace = non_empty(request.into_inner().namespace);
        let views = self.runtime.list_services(namespace).await?;
        Ok(Response::new(v1::ListEndpointsResponse {
            services: views
                .iter()
                .map(|view| v1::ServiceEndpoints {
                    namespace: view.record.service.namespace.clone(),
                    name: view.record.service.name.clone(),
                    endpoints: view.endpoints.iter().map(endpoint).collect(),
                })
                .collect(),
        }))
    }
}
