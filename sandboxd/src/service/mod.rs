//! Services: a stable virtual IP (ClusterIP) and, for NodePort services, a port on every
//! node, in front of the running pods that match a label selector.
//!
//! * this module: the Service as users write it (a `v1` Service manifest's fields) and its
//!   validation, every error naming the field;
//! * [`allocate`]: ClusterIPs from the service CIDR and node ports from their range;
//! * the API half (validate, allocate, persist): [`registry`] on a node alone (records in
//!   the state dir; each verb programs its service before it answers), and
//!   [`crate::cluster::services`] on a cluster node (objects and allocations in the
//!   cluster store); [`verbs`]: the runtime's side (which half, ready pods, resync);
//! * the node-proxy half every node runs: [`node_proxy`] (services and ready pods → this
//!   node's data plane and node-port sockets); [`endpoints`]: which pods serve a service;
//!   [`node_port`]: node ports held open; [`proxy`]: the data plane of either mode;
//! * [`plan`]: the data plane, kube-proxy's nftables design (KEP-3866), as operations on
//!   sandboxd's table; sent by [`crate::netlink::nftables`] as one nf_tables batch per change, or rendered
//!   by [`nftables`] as `nft -f` text; [`iptables`]: kube-proxy's iptables shape, for
//!   comparison.

pub mod allocate;
pub mod endpoints;
pub mod iptables;
pub mod nftables;
pub mod node_port;
pub mod node_proxy;
pub mod plan;
pub mod proxy;
pub mod registry;
pub mod verbs;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The service CIDR ClusterIPs come from, as kubeadm's default.
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);
/// The node port range, as the API server's default.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;
/// ClientIP affinity's default timeout (3 hours), as Kubernetes has it.
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10800;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    /// As nft names it (`meta l4proto tcp`).
    pub fn nft(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A port of the pods: a number, or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: TargetPort,
    /// Given or allocated, for NodePort services.
    pub node_port: Option<u16>,
}

/// A validated Service: what the user asked for, before allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub selector: BTreeMap<String, String>,
    pub service_type: ServiceType,
    pub ports: Vec<ServicePort>,
    /// Given, or allocated from [`SERVICE_CIDR`].
    pub cluster_ip: Option<Ipv4Addr>,
    /// ClientIP affinity: the timeout in seconds; None for no affinity.
    pub affinity_seconds: Option<u32>,
}

impl Service {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A Service as a manifest gives it: numbers wide enough that out-of-range values are
/// caught by validation rather than by the parser.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceInput {
    pub name: String,
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub selector: BTreeMap<String, String>,
    #[serde(rename = "type")]
    pub service_type: Option<String>,
    pub ports: Vec<PortInput>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    pub session_affinity: Option<String>,
    pub session_affinity_timeout_seconds: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PortInput {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub port: i64,
    pub target_port: Option<serde_json::Value>,
    pub node_port: Option<i64>,
}

/// Why a Service is refused: the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} of service {service}: {problem}")]
pub struct Invalid {
    pub service: String,
    pub field: String,
    pub problem: String,
}

/// A DNS-1035 label, as Service names must be.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// An IANA service name, as named ports must be: ≤ 15 characters, a letter in it.
fn is_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn port_number(value: i64) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p != 0)
}

impl ServiceInput {
    pub fn validate(self) -> Result<Service, Invalid> {
        let namespace = self.namespace.clone().unwrap_or_else(|| "default".into());
        let service = format!("{namespace}/{}", self.name);
        let invalid = |field: &str, problem: String| Invalid {
            service: service.clone(),
            field: field.to_string(),
            problem,
        };
        if !is_dns_label(&self.name) {
            return Err(invalid(
                "metadata.name",
                format!(
                    "{:?} is not a DNS label (lowercase letters, digits and '-', starting with a letter, at most 63)",
                    self.name
                ),
            ));
        }
        if !is_dns_label(&namespace) {
            return Err(invalid(
                "metadata.namespace",
                format!("{namespace:?} is not a DNS label"),
            ));
        }
        if self.selector.is_empty() {
            return Err(invalid(
                "spec.selector",
                "is empty: sandboxd has no Endpoints objects to fill by hand, so a Service needs a selector".into(),
            ));
        }
        let service_type = match self.service_type.as_deref().unwrap_or("ClusterIP") {
            "ClusterIP" => ServiceType::ClusterIP,
            "NodePort" => ServiceType::NodePort,
            other => {
                return Err(invalid(
                    "spec.type",
                    format!("{other:?} is not ClusterIP or NodePort"),
                ))
            }
        };
        if self.ports.is_empty() {
            return Err(invalid("spec.ports", "is empty".into()));
        }
        let mut ports = Vec::new();
        for (i, p) in self.ports.iter().enumerate() {
            let field = |f: &str| format!("spec.ports[{i}].{f}");
            let port = port_number(p.port).ok_or_else(|| {
                invalid(
                    &field("port"),
                    format!("{} is not a port (1-65535)", p.port),
                )
            })?;
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                other => {
                    return Err(invalid(
                        &field("protocol"),
                        format!("{other:?} is not TCP or UDP"),
                    ))
                }
            };
            let name = p.name.clone().unwrap_or_default();
            if self.ports.len() > 1 && name.is_empty() {
                return Err(invalid(
                    &field("name"),
                    "is required when a service has more than one port".into(),
                ));
            }
            let target_port = match &p.target_port {
                None => TargetPort::Number(port),
                Some(serde_json::Value::Number(n)) => {
                    TargetPort::Number(n.as_i64().and_then(port_number).ok_or_else(|| {
                        invalid(&field("targetPort"), format!("{n} is not a port (1-65535)"))
                    })?)
                }
                Some(serde_json::Value::String(s)) => match s.parse::<i64>() {
                    Ok(n) => TargetPort::Number(port_number(n).ok_or_else(|| {
                        invalid(&field("targetPort"), format!("{n} is not a port (1-65535)"))
                    })?),
                    Err(_) if is_port_name(s) => TargetPort::Name(s.clone()),
                    Err(_) => {
                        return Err(invalid(
                            &field("targetPort"),
                            format!("{s:?} is neither a port number nor a port name"),
                        ))
                    }
                },
                Some(other) => {
                    return Err(invalid(
                        &field("targetPort"),
                        format!("{other} is neither a port number nor a port name"),
                    ))
                }
            };
            let node_port = match (p.node_port, service_type) {
                (None, _) => None,
                (Some(_), ServiceType::ClusterIP) => {
                    return Err(invalid(
                        &field("nodePort"),
                        "is only for services of type NodePort".into(),
                    ))
                }
                (Some(n), ServiceType::NodePort) => Some(
                    u16::try_from(n)
                        .ok()
                        .filter(|n| NODE_PORTS.contains(n))
                        .ok_or_else(|| {
                            invalid(
                                &field("nodePort"),
                                format!(
                                    "{n} is outside the node port range {}-{}",
                                    NODE_PORTS.start(),
                                    NODE_PORTS.end()
                                ),
                            )
                        })?,
                ),
            };
            if ports
                .iter()
                .any(|q: &ServicePort| q.port == port && q.protocol == protocol)
            {
                return Err(invalid(
                    &field("port"),
                    format!("{port}/{} is given twice", protocol.nft()),
                ));
            }
            if !name.is_empty() && ports.iter().any(|q: &ServicePort| q.name == name) {
                return Err(invalid(&field("name"), format!("{name:?} is given twice")));
            }
            ports.push(ServicePort {
                name,
                protocol,
                port,
                target_port,
                node_port,
            });
        }
        let cluster_ip = match self.cluster_ip.as_deref() {
            None | Some("") => None,
            Some(text) => {
                let ip: Ipv4Addr = text.parse().map_err(|_| {
                    invalid("spec.clusterIP", format!("{text:?} is not an IPv4 address"))
                })?;
                if !allocate::in_service_cidr(ip) {
                    return Err(invalid(
                        "spec.clusterIP",
                        format!(
                            "{ip} is outside the service CIDR {}/{}",
                            SERVICE_CIDR.0, SERVICE_CIDR.1
                        ),
                    ));
                }
                Some(ip)
            }
        };
        let affinity_seconds = match self.session_affinity.as_deref().unwrap_or("None") {
            "None" => None,
            "ClientIP" => {
                let seconds = self
                    .session_affinity_timeout_seconds
                    .unwrap_or(DEFAULT_AFFINITY_SECONDS as i64);
                if !(1..=86400).contains(&seconds) {
                    return Err(invalid(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("{seconds} is not within 1-86400"),
                    ));
                }
                Some(seconds as u32)
            }
            other => {
                return Err(invalid(
                    "spec.sessionAffinity",
                    format!("{other:?} is not None or ClientIP"),
                ))
            }
        };
        Ok(Service {
            name: self.name,
            namespace,
            labels: self.labels,
            selector: self.selector,
            service_type,
            ports,
            cluster_ip,
            affinity_seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(yaml: &str) -> ServiceInput {
        serde_json::from_value(serde_norway::from_str::<serde_json::Value>(yaml).unwrap()).unwrap()
    }

    fn error(yaml: &str) -> String {
        input(yaml).validate().unwrap_err().to_string()
    }

    const CLUSTER_IP: &str = "name: svc-clusterip
selector: {type: dest}
ports:
- port: 8080
  targetPort: 8080
type: ClusterIP
";

    #[test]
    fn the_seed_services_validate() {
        let svc = input(CLUSTER_IP).validate().unwrap();
        assert_eq!(svc.key(), "default/svc-clusterip");
        assert_eq!(svc.ports[0].target_port, TargetPort::Number(8080));
        assert_eq!(svc.service_type, ServiceType::ClusterIP);
        let node_port = input(
            "name: svc-nodeport\nselector: {type: dest}\nports:\n- port: 8080\n  targetPort: 8080\n  nodePort: 31080\ntype: NodePort\n",
        )
        .validate()
        .unwrap();
        assert_eq!(node_port.ports[0].node_port, Some(31080));
        let named =
            input("name: web\nselector: {app: web}\nports:\n- port: 80\n  targetPort: http\n")
                .validate()
                .unwrap();
        assert_eq!(named.ports[0].target_port, TargetPort::Name("http".into()));
    }

    #[test]
    fn bad_services_name_the_field() {
        assert!(error("name: s\nports: [{port: 80}]\n")
            .contains("invalid spec.selector of service default/s"));
        assert!(error("name: s\nselector: {a: b}\nports: [{port: 0}]\n")
            .contains("invalid spec.ports[0].port of service default/s: 0 is not a port"));
        assert!(error("name: s\nselector: {a: b}\nports: [{port: 70000}]\n")
            .contains("70000 is not a port"));
        assert!(
            error("name: s\nselector: {a: b}\nports: [{port: 80, protocol: SCTP}]\n")
                .contains("spec.ports[0].protocol")
        );
        assert!(error(
            "name: s\nselector: {a: b}\ntype: NodePort\nports: [{port: 80, nodePort: 80}]\n"
        )
        .contains("outside the node port range 30000-32767"));
        assert!(
            error("name: s\nselector: {a: b}\nports: [{port: 80, nodePort: 31000}]\n")
                .contains("only for services of type NodePort")
        );
        assert!(
            error("name: s\nselector: {a: b}\nclusterIP: 10.0.0.1\nports: [{port: 80}]\n")
                .contains("outside the service CIDR 10.96.0.0/12")
        );
        assert!(
            error("name: S_1\nselector: {a: b}\nports: [{port: 80}]\n").contains("metadata.name")
        );
        assert!(
            error("name: s\nselector: {a: b}\ntype: LoadBalancer\nports: [{port: 80}]\n")
                .contains("spec.type")
        );
        assert!(error(
            "name: s\nselector: {a: b}\nports: [{port: 80, name: a}, {port: 80, name: b}]\n"
        )
        .contains("80/tcp is given twice"));
        assert!(
            error("name: s\nselector: {a: b}\nsessionAffinity: Sticky\nports: [{port: 80}]\n")
                .contains("spec.sessionAffinity")
        );
    }
}
