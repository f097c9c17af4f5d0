//! Services through sandboxd's Services API: `apply -f` / `delete -f` of Service
//! documents, `get svc` and `get endpoints`, printed as kubectl prints them.

use anyhow::bail;
use sandboxd::services_api::v1::{
    self, service_port::TargetPort, DeleteServiceRequest, GetServiceRequest, ListEndpointsRequest,
    ListServicesRequest, ServiceSpec,
};
use serde_json::json;

use crate::get::{age, rfc3339, GetFormat};
use crate::output::{print_doc, table, Format};
use crate::ServicesClient;
use sandboxd::kube::ServiceObject;

fn namespace_of(spec: &ServiceSpec) -> &str {
    if spec.namespace.is_empty() {
        "default"
    } else {
        &spec.namespace
    }
}

/// The manifest's spec with what it leaves out taken from `existing` (allocated addresses
/// and ports) or the defaults, so that it compares equal to the stored spec when it asks
/// for nothing different.
fn completed(applied: &ServiceSpec, existing: &ServiceSpec) -> ServiceSpec {
    let mut spec = applied.clone();
    let or = |value: &mut String, default: &str| {
        if value.is_empty() {
            *value = default.to_string();
        }
    };
    or(&mut spec.namespace, "default");
    or(&mut spec.r#type, "ClusterIP");
    or(&mut spec.session_affinity, "None");
    or(&mut spec.cluster_ip, &existing.cluster_ip);
    if spec.session_affinity == "ClientIP" && spec.session_affinity_timeout_seconds == 0 {
        spec.session_affinity_timeout_seconds = sandboxd::service::DEFAULT_AFFINITY_SECONDS.into();
    }
    for port in &mut spec.ports {
        or(&mut port.protocol, "TCP");
        if port.target_port.is_none() {
            port.target_port = Some(TargetPort::TargetPortNumber(port.port));
        }
        if port.node_port == 0 {
            port.node_port = existing
                .ports
                .iter()
                .find(|p| p.port == port.port && p.protocol == port.protocol)
                .map_or(0, |p| p.node_port);
        }
    }
    spec
}

/// Creates the service, or updates it if the manifest differs from what runs: "created",
/// "configured" or "unchanged", as kubectl says.
pub async fn apply(
    services: &mut ServicesClient,
    object: &ServiceObject,
) -> anyhow::Result<&'static str> {
    let spec = object.spec.clone();
    let existing = services
        .get_service(GetServiceRequest {
            namespace: namespace_of(&spec).into(),
            name: spec.name.clone(),
        })
        .await;
    let fail = |e: tonic::Status| anyhow::anyhow!("{}: {}", object.describe(), e.message());
    match existing {
        Ok(response) => {
            let current = response
                .into_inner()
                .service
                .and_then(|s| s.spec)
                .unwrap_or_default();
            if completed(&spec, &current) == current {
                return Ok("unchanged");
            }
            services
                .update_service(v1::UpdateServiceRequest { spec: Some(spec) })
                .await
                .map_err(fail)?;
            Ok("configured")
        }
        Err(status) if status.code() == tonic::Code::NotFound => {
            services
                .create_service(v1::CreateServiceRequest { spec: Some(spec) })
                .await
                .map_err(fail)?;
            Ok("created")
        }
        Err(status) => Err(fail(status)),
    }
}

/// Deletes the service; false when there was none.
pub async fn delete(services: &mut ServicesClient, object: &ServiceObject) -> anyhow::Result<bool> {
    match services
        .delete_service(DeleteServiceRequest {
            namespace: namespace_of(&object.spec).into(),
            name: object.spec.name.clone(),
        })
        .await
    {
        Ok(_) => Ok(true),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
        Err(status) => bail!("{}: {}", object.describe(), status.message()),
    }
}

/// kubectl's PORT(S): `8080/TCP`, `8080:31080/TCP`.
fn ports_text(spec: &ServiceSpec) -> String {
    spec.ports
        .iter()
        .map(|p| match p.node_port {
            0 => format!("{}/{}", p.port, p.protocol),
            node_port => format!("{}:{node_port}/{}", p.port, p.protocol),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn selector_text(spec: &ServiceSpec) -> String {
    let mut pairs: Vec<String> = spec
        .selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pairs.sort();
    pairs.join(",")
}

/// The service as a `v1` Service object.
fn service_object(service: &v1::Service) -> serde_json::Value {
    let spec = service.spec.clone().unwrap_or_default();
    let ports: Vec<serde_json::Value> = spec
        .ports
        .iter()
        .map(|p| {
            let mut port = json!({
                "protocol": p.protocol,
                "port": p.port,
                "targetPort": match &p.target_port {
                    Some(TargetPort::TargetPortName(name)) => json!(name),
                    Some(TargetPort::TargetPortNumber(n)) => json!(n),
                    None => json!(p.port),
                },
            });
            if !p.name.is_empty() {
                port["name"] = json!(p.name);
            }
            if p.node_port != 0 {
                port["nodePort"] = json!(p.node_port);
            }
            port
        })
        .collect();
    let mut object_spec = json!({
        "type": spec.r#type,
        "clusterIP": spec.cluster_ip,
        "clusterIPs": [spec.cluster_ip],
        "ports": ports,
        "selector": spec.selector,
        "sessionAffinity": spec.session_affinity,
    });
    if spec.session_affinity == "ClientIP" {
        object_spec["sessionAffinityConfig"] =
            json!({ "clientIP": { "timeoutSeconds": spec.session_affinity_timeout_seconds } });
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": spec.labels,
            "creationTimestamp": rfc3339(service.created_at_ns),
        },
        "spec": object_spec,
        "status": { "loadBalancer": {} },
    })
}

/// The service's endpoints as a `v1` Endpoints object: one subset per port.
fn endpoints_object(service: &v1::ServiceEndpoints) -> serde_json::Value {
    let mut ports: Vec<(&str, &str, u32)> = Vec::new();
    for e in &service.endpoints {
        if !ports
            .iter()
            .any(|(n, p, _)| *n == e.port_name && *p == e.protocol)
        {
            ports.push((&e.port_name, &e.protocol, e.port));
        }
    }
    let subsets: Vec<serde_json::Value> = ports
        .iter()
        .map(|(name, protocol, _)| {
            let of_port: Vec<&v1::Endpoint> = service
                .endpoints
                .iter()
                .filter(|e| e.port_name == *name && e.protocol == *protocol)
                .collect();
            let addresses: Vec<serde_json::Value> = of_port
                .iter()
                .map(|e| {
                    json!({
                        "ip": e.ip,
                        "targetRef": { "kind": "Pod", "name": e.pod_name, "namespace": e.pod_namespace },
                    })
                })
                .collect();
            let mut port = json!({ "port": of_port[0].port, "protocol": protocol });
            if !name.is_empty() {
                port["name"] = json!(name);
            }
            json!({ "addresses": addresses, "ports": [port] })
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": { "name": service.name, "namespace": service.namespace },
        "subsets": subsets,
    })
}

/// kubectl's ENDPOINTS: up to three addresses, then how many more.
fn endpoints_text(service: &v1::ServiceEndpoints) -> String {
    if service.endpoints.is_empty() {
        return "<none>".into();
    }
    let all: Vec<String> = service
        .endpoints
        .iter()
        .map(|e| format!("{}:{}", e.ip, e.port))
        .collect();
    let shown = all[..all.len().min(3)].join(",");
    match all.len() {
        0..=3 => shown,
        n => format!("{shown} + {} more...", n - 3),
    }
}

pub struct GetArgs<'a> {
    pub names: &'a [String],
    pub namespace: &'a str,
    pub all_namespaces: bool,
    pub output: Option<GetFormat>,
}

/// Rows under headers, each row after its namespace, which is a column only with -A.
fn print_rows(args: &GetArgs, mut headers: Vec<&str>, rows: Vec<(String, Vec<String>)>) {
    if rows.is_empty() {
        crate::output::no_resources(args.namespace, args.all_namespaces);
        return;
    }
    if args.all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(namespace, mut row)| {
            if args.all_namespaces {
                row.insert(0, namespace);
            }
            row
        })
        .collect();
    table(&headers, &rows);
}

/// The document format `-o` asks for; None for a table.
fn document_format(output: Option<GetFormat>) -> Option<Format> {
    match output {
        Some(GetFormat::Json) => Some(Format::Json),
        Some(GetFormat::Yaml) => Some(Format::Yaml),
        _ => None,
    }
}

fn list_document(items: Vec<serde_json::Value>, single: bool) -> serde_json::Value {
    if single && items.len() == 1 {
        items.into_iter().next().expect("one item")
    } else {
        json!({ "apiVersion": "v1", "kind": "List", "items": items })
    }
}

fn check_names_found(args: &GetArgs, kind: &str, found: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&String> = args
        .names
        .iter()
        .filter(|n| !found.contains(&n.as_str()))
        .collect();
    if let Some(name) = missing.first() {
        bail!(
            "{kind} \"{name}\" not found in namespace {}",
            args.namespace
        );
    }
    Ok(())
}

/// `get svc [NAME...]`.
pub async fn get_services(services: &mut ServicesClient, args: GetArgs<'_>) -> anyhow::Result<()> {
    let namespace = if args.all_namespaces {
        ""
    } else {
        args.namespace
    };
    let mut list = services
        .list_services(ListServicesRequest {
            namespace: namespace.into(),
        })
        .await?
        .into_inner()
        .services;
    list.retain(|s| {
        let name = s.spec.as_ref().map_or("", |s| s.name.as_str());
        args.names.is_empty() || args.names.iter().any(|n| n == name)
    });
    let found: Vec<&str> = list
        .iter()
        .filter_map(|s| s.spec.as_ref().map(|s| s.name.as_str()))
        .collect();
    check_names_found(&args, "service", &found)?;
    if let Some(format) = document_format(args.output) {
        let items = list.iter().map(service_object).collect();
        return print_doc(&list_document(items, args.names.len() == 1), format);
    }
    let wide = args.output == Some(GetFormat::Wide);
    let mut headers = vec![
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
    ];
    if wide {
        headers.push("SELECTOR");
    }
    let rows = list
        .iter()
        .map(|s| {
            let spec = s.spec.clone().unwrap_or_default();
            let mut row = vec![
                spec.name.clone(),
                spec.r#type.clone(),
                spec.cluster_ip.clone(),
                "<none>".into(),
                ports_text(&spec),
                age(s.created_at_ns),
            ];
            if wide {
                row.push(selector_text(&spec));
            }
            (spec.namespace, row)
        })
        .collect();
    print_rows(&args, headers, rows);
    Ok(())
}

/// `get endpoints [NAME...]`.
pub async fn get_endpoints(services: &mut ServicesClient, args: GetArgs<'_>) -> anyhow::Result<()> {
    let namespace = if args.all_namespaces {
        ""
    } else {
        args.namespace
    };
    let mut list = services
        .list_endpoints(ListEndpointsRequest {
            namespace: namespace.into(),
        })
        .await?
        .into_inner()
        .services;
    list.retain(|s| args.names.is_empty() || args.names.contains(&s.name));
    let found: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
    check_names_found(&args, "endpoints", &found)?;
    if let Some(format) = document_format(args.output) {
        let items = list.iter().map(endpoints_object).collect();
        return print_doc(&list_document(items, args.names.len() == 1), format);
    }
    let rows = list
        .iter()
        .map(|s| (s.namespace.clone(), vec![s.name.clone(), endpoints_text(s)]))
        .collect();
    print_rows(&args, vec!["NAME", "ENDPOINTS"], rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandboxd::services_api::v1::ServicePort;

    fn port(port: i64, node_port: i64) -> ServicePort {
        ServicePort {
            name: String::new(),
            protocol: "TCP".into(),
            port,
            target_port: Some(TargetPort::TargetPortNumber(8080)),
            node_port,
        }
    }

    #[test]
    fn a_manifest_that_leaves_allocations_out_is_unchanged() {
        let stored = ServiceSpec {
            name: "svc-nodeport".into(),
            namespace: "default".into(),
            r#type: "NodePort".into(),
            cluster_ip: "10.96.0.2".into(),
            session_affinity: "None".into(),
            ports: vec![port(8080, 31080)],
            ..Default::default()
        };
        let mut applied = ServiceSpec {
            name: "svc-nodeport".into(),
            r#type: "NodePort".into(),
            ports: vec![port(8080, 0)],
            ..Default::default()
        };
        applied.ports[0].protocol = String::new();
        assert_eq!(completed(&applied, &stored), stored);
        applied.ports[0].port = 9090;
        assert_ne!(completed(&applied, &stored), stored);
        assert_eq!(ports_text(&stored), "8080:31080/TCP");
    }
}
