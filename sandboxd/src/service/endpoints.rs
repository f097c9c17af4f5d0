//! Endpoints: the ready pods a service's selector matches, each with the port it serves
//! the service's port on.
//!
//! A pod is ready when its sandbox is Ready with an address and every app container
//! (init containers aside) is running, as a kubelet without probes reports it. A
//! `targetPort` given by name is looked up among the pod's container ports (kubelet's
//! `io.kubernetes.container.ports` annotation); a pod without that name is no endpoint of
//! that port, as in Kubernetes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::Deserialize;

use crate::service::plan::{ProgrammedPort, ProgrammedService};
use crate::service::{Protocol, Service, TargetPort};

/// The annotation kubelet puts on a container: its `ports` as JSON.
pub const CONTAINER_PORTS_ANNOTATION: &str = "io.kubernetes.container.ports";

/// A container port as the annotation lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default)]
    pub name: String,
    pub container_port: u16,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

/// Parses the annotation; a malformed one gives no ports (and is reported by the caller).
pub fn parse_container_ports(json: &str) -> Result<Vec<ContainerPort>, serde_json::Error> {
    serde_json::from_str(json)
}

/// What endpoint selection needs to know of a ready pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyPod {
    pub sandbox_id: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    pub ports: Vec<ContainerPort>,
}

/// One pod behind one port of a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// The service port's name.
    pub port_name: String,
    pub protocol: Protocol,
    pub address: SocketAddrV4,
    pub pod_namespace: String,
    pub pod_name: String,
    pub sandbox_id: String,
}

fn selects(service: &Service, pod: &ReadyPod) -> bool {
    pod.namespace == service.namespace
        && service
            .selector
            .iter()
            .all(|(key, value)| pod.labels.get(key) == Some(value))
}

/// The endpoints of every port of `service`, in a stable order (port, then address).
pub fn resolve(service: &Service, pods: &[ReadyPod]) -> Vec<Endpoint> {
    let mut endpoints = Vec::new();
    for pod in pods.iter().filter(|pod| selects(service, pod)) {
        for port in &service.ports {
            let target = match &port.target_port {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Name(name) => pod
                    .ports
                    .iter()
                    .find(|p| &p.name == name && p.protocol == port.protocol)
                    .map(|p| p.container_port),
            };
            if let Some(target) = target {
                endpoints.push(Endpoint {
                    port_name: port.name.clone(),
                    protocol: port.protocol,
                    address: SocketAddrV4::new(pod.ip, target),
                    pod_namespace: pod.namespace.clone(),
                    pod_name: pod.name.clone(),
                    sandbox_id: pod.sandbox_id.clone(),
                });
            }
        }
    }
    endpoints.sort_by(|a, b| {
        (a.port_name.as_str(), a.protocol, a.address).cmp(&(
            b.port_name.as_str(),
            b.protocol,
            b.address,
        ))
    });
    endpoints
}

/// The service as the data plane takes it. `service` has its ClusterIP and node ports
/// allocated.
pub fn programmed(service: &Service, endpoints: &[Endpoint]) -> ProgrammedService {
    ProgrammedService {
        key: service.key(),
        cluster_ip: service.cluster_ip.expect("an allocated ClusterIP"),
        ports: service
            .ports
            .iter()
            .map(|port| ProgrammedPort {
                protocol: port.protocol,
                port: port.port,
                node_port: port.node_port,
                endpoints: endpoints
                    .iter()
                    .filter(|e| e.port_name == port.name && e.protocol == port.protocol)
                    .map(|e| e.address)
                    .collect(),
            })
            .collect(),
        affinity_seconds: service.affinity_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ServiceInput;

    fn service(yaml: &str) -> Service {
        let input: ServiceInput =
            serde_json::from_value(serde_norway::from_str::<serde_json::Value>(yaml).unwrap())
                .unwrap();
        let mut service = input.validate().unwrap();
        service.cluster_ip = Some(Ipv4Addr::new(10, 96, 0, 10));
        service
    }

    fn pod(name: &str, ip: [u8; 4], labels: &[(&str, &str)], ports: &str) -> ReadyPod {
        ReadyPod {
            sandbox_id: format!("id-{name}"),
            namespace: "default".into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ip: Ipv4Addr::from(ip),
            ports: parse_container_ports(ports).unwrap(),
        }
    }

    #[test]
    fn the_selector_picks_pods_of_the_namespace_with_every_label() {
        let svc = service("name: svc-clusterip\nselector: {type: dest}\nports: [{port: 8080, targetPort: 8080}]\n");
        let mut other_namespace = pod("c", [10, 244, 1, 4], &[("type", "dest")], "[]");
        other_namespace.namespace = "team".into();
        let pods = [
            pod("b", [10, 244, 1, 3], &[("type", "dest"), ("x", "y")], "[]"),
            pod("a", [10, 244, 1, 2], &[("type", "dest")], "[]"),
            pod("src", [10, 244, 1, 9], &[("type", "src")], "[]"),
            other_namespace,
        ];
        let endpoints = resolve(&svc, &pods);
        let addresses: Vec<String> = endpoints.iter().map(|e| e.address.to_string()).collect();
        assert_eq!(addresses, ["10.244.1.2:8080", "10.244.1.3:8080"]);
        let programmed = programmed(&svc, &endpoints);
        assert_eq!(programmed.key, "default/svc-clusterip");
        assert_eq!(programmed.ports[0].endpoints.len(), 2);
    }

    #[test]
    fn a_named_target_port_is_the_container_port_of_that_name() {
        let svc = service("name: web\nselector: {app: web}\nports:\n- {name: http, port: 80, targetPort: http}\n- {name: dns, port: 53, protocol: UDP, targetPort: dns}\n");
        let pods = [
            pod(
                "a",
                [10, 244, 1, 2],
                &[("app", "web")],
                r#"[{"name":"http","containerPort":8080,"protocol":"TCP"},{"name":"dns","containerPort":5353,"protocol":"UDP"}]"#,
            ),
            // No port of that name: not an endpoint of it.
            pod(
                "b",
                [10, 244, 1, 3],
                &[("app", "web")],
                r#"[{"name":"metrics","containerPort":9090}]"#,
            ),
        ];
        let endpoints = resolve(&svc, &pods);
        let shown: Vec<String> = endpoints
            .iter()
            .map(|e| format!("{}/{}={}", e.port_name, e.protocol.nft(), e.address))
            .collect();
        assert_eq!(
            shown,
            ["dns/udp=10.244.1.2:5353", "http/tcp=10.244.1.2:8080"]
        );
        let programmed = programmed(&svc, &endpoints);
        assert_eq!(
            programmed.ports[0].endpoints,
            ["10.244.1.2:8080".parse().unwrap()]
        );
        assert_eq!(
            programmed.ports[1].endpoints,
            ["10.244.1.2:5353".parse().unwrap()]
        );
    }
}
