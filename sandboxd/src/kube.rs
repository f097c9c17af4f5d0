//! Kubernetes `v1` manifests, as `apply -f` and `delete -f` read them: multi-document YAML
//! (or JSON), each document a `Pod` or a `Service`. A Pod becomes what the kubelet would
//! make of it: a pod sandbox config and one container config per container, labelled the
//! kubelet's way (`io.kubernetes.pod.name`, …, and the container ports as the
//! `io.kubernetes.container.ports` annotation) so CRI tools see the same as on a real
//! node. A Service becomes a spec of sandboxd's Services API, validated by the daemon.
//!
//! Fields Kubernetes has that a single node without an API server has no use for
//! (`restartPolicy`, `resources`, probes, …) are accepted and kept in the manifest; a
//! field with the wrong type, a missing name or image, or an unknown kind is an error
//! naming the document and the field.

use std::collections::BTreeMap;

use crate::service::endpoints::CONTAINER_PORTS_ANNOTATION;
use crate::services_api::v1::service_port::TargetPort;
use crate::services_api::v1::{ServicePort, ServiceSpec};
use anyhow::{bail, Context};
use k8s_cri::v1 as cri;
use serde::Deserialize;

/// Labels the kubelet puts on sandboxes and containers.
pub const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";
/// Marks init containers (the kubelet tells them apart by its own records).
pub use crate::service::verbs::INIT_CONTAINER_LABEL as INIT_LABEL;
/// The manifest a pod was applied from, as kubectl keeps it.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The sha256 of the applied document, which `apply` compares to say "unchanged".
pub const APPLIED_DIGEST: &str = "sandboxd.io/applied-sha256";
/// The API server's limit on the size of an object's annotations together.
const MAX_LAST_APPLIED: usize = 256 * 1024;

/// The digest `apply` keeps of a pod's document.
pub fn applied_digest(document: &serde_json::Value) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(document.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    pub containers: Vec<Container>,
    pub init_containers: Vec<Container>,
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
    pub node_selector: BTreeMap<String, String>,
    pub node_name: Option<String>,
    pub host_network: bool,
    pub share_process_namespace: bool,
    pub restart_policy: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
    pub ports: Vec<ContainerPort>,
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: i32,
    pub host_port: Option<i32>,
    pub host_ip: Option<String>,
    pub protocol: Option<String>,
}

/// One Pod of a manifest: its metadata, spec, and the document as given.
#[derive(Debug, Clone)]
pub struct Pod {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    pub document: serde_json::Value,
}

impl Pod {
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// `pod/name`, as kubectl names objects.
    pub fn describe(&self) -> String {
        format!("pod/{}", self.metadata.name)
    }
}

/// One object of a manifest.
#[derive(Debug, Clone)]
pub enum Object {
    Pod(Pod),
    Service(ServiceObject),
}

impl Object {
    pub fn describe(&self) -> String {
        match self {
            Object::Pod(pod) => pod.describe(),
            Object::Service(service) => service.describe(),
        }
    }
}

/// One Service of a manifest, as the Services API takes it.
#[derive(Debug, Clone)]
pub struct ServiceObject {
    pub spec: ServiceSpec,
}

impl ServiceObject {
    /// `service/name`, as kubectl names objects.
    pub fn describe(&self) -> String {
        format!("service/{}", self.spec.name)
    }
}

/// A Service's `spec` as a manifest has it; values are checked by the daemon, which names
/// the field of a bad one.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ServiceManifestSpec {
    selector: BTreeMap<String, String>,
    #[serde(rename = "type")]
    service_type: Option<String>,
    ports: Vec<ServiceManifestPort>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    session_affinity: Option<String>,
    session_affinity_config: Option<AffinityConfig>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ServiceManifestPort {
    name: Option<String>,
    protocol: Option<String>,
    port: i64,
    target_port: Option<IntOrString>,
    node_port: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    String(String),
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct AffinityConfig {
    #[serde(rename = "clientIP")]
    client_ip: Option<ClientIpConfig>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ClientIpConfig {
    timeout_seconds: Option<i64>,
}

fn service_spec(metadata: ObjectMeta, spec: ServiceManifestSpec) -> ServiceSpec {
    ServiceSpec {
        name: metadata.name,
        namespace: metadata.namespace.unwrap_or_default(),
        labels: metadata.labels.into_iter().collect(),
        selector: spec.selector.into_iter().collect(),
        r#type: spec.service_type.unwrap_or_default(),
        ports: spec
            .ports
            .into_iter()
            .map(|p| ServicePort {
                name: p.name.unwrap_or_default(),
                protocol: p.protocol.unwrap_or_default(),
                port: p.port,
                target_port: p.target_port.map(|t| match t {
                    IntOrString::Int(n) => TargetPort::TargetPortNumber(n),
                    IntOrString::String(s) => TargetPort::TargetPortName(s),
                }),
                node_port: p.node_port.unwrap_or(0),
            })
            .collect(),
        cluster_ip: spec.cluster_ip.unwrap_or_default(),
        session_affinity: spec.session_affinity.unwrap_or_default(),
        session_affinity_timeout_seconds: spec
            .session_affinity_config
            .and_then(|c| c.client_ip)
            .and_then(|c| c.timeout_seconds)
            .unwrap_or(0),
    }
}

/// Reads every document of a manifest; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> anyhow::Result<Vec<Object>> {
    let mut objects = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let at = format!("{source}, document {}", index + 1);
        let value = serde_json::Value::deserialize(document)
            .with_context(|| format!("{at}: not valid YAML"))?;
        if value.is_null() {
            continue; // an empty document, as after a trailing `---`
        }
        let api_version = value["apiVersion"].as_str().unwrap_or_default();
        let kind = value["kind"].as_str().unwrap_or_default();
        match (api_version, kind) {
            ("v1", "Pod" | "Service") => {}
            (_, "") => bail!("{at}: kind is missing"),
            ("v1", other) => bail!("{at}: kind {other} is not supported (Pod and Service are)"),
            (other, kind) => bail!("{at}: apiVersion {other:?} of {kind} is not supported (v1 is)"),
        }
        let metadata: ObjectMeta = field(&value, "metadata").with_context(|| at.clone())?;
        if kind == "Service" {
            if metadata.name.is_empty() {
                bail!("{at}: metadata.name is missing");
            }
            let spec: ServiceManifestSpec = field(&value, "spec")
                .with_context(|| format!("{at} (service/{})", metadata.name))?;
            objects.push(Object::Service(ServiceObject {
                spec: service_spec(metadata, spec),
            }));
            continue;
        }
        let spec: PodSpec =
            field(&value, "spec").with_context(|| format!("{at} (pod/{})", metadata.name))?;
        let pod = Pod {
            metadata,
            spec,
            document: value,
        };
        check(&pod).with_context(|| format!("{at} ({})", pod.describe()))?;
        objects.push(Object::Pod(pod));
    }
    if objects.is_empty() {
        bail!("{source} holds no objects");
    }
    Ok(objects)
}

/// A top-level field of a document as `T`; a value of the wrong type is named by its path,
/// as the API server names it: "spec.ports[0].port: invalid type: string \"abc\", …".
fn field<T: serde::de::DeserializeOwned>(
    document: &serde_json::Value,
    name: &str,
) -> anyhow::Result<T> {
    serde_path_to_error::deserialize(&document[name]).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            name.to_string()
        } else {
            format!("{name}.{path}")
        };
        anyhow::anyhow!("{path}: {}", e.into_inner())
    })
}

fn check(pod: &Pod) -> anyhow::Result<()> {
    if pod.metadata.name.is_empty() {
        bail!("metadata.name is missing");
    }
    if pod.spec.containers.is_empty() {
        bail!("spec.containers is empty");
    }
    let mut names = std::collections::HashSet::new();
    for (list, containers) in [
        ("initContainers", &pod.spec.init_containers),
        ("containers", &pod.spec.containers),
    ] {
        for (i, c) in containers.iter().enumerate() {
            if c.name.is_empty() {
                bail!("spec.{list}[{i}].name is missing");
            }
            if c.image.is_empty() {
                bail!("spec.{list}[{i}].image is missing");
            }
            if !names.insert(c.name.as_str()) {
                bail!("spec.{list}[{i}].name: {:?} is used twice", c.name);
            }
            for (j, port) in c.ports.iter().enumerate() {
                if !(1..=65535).contains(&port.container_port) {
                    bail!(
                        "spec.{list}[{i}].ports[{j}].containerPort: {} is not a port (1-65535)",
                        port.container_port
                    );
                }
                protocol(port.protocol.as_deref())
                    .with_context(|| format!("spec.{list}[{i}].ports[{j}].protocol"))?;
            }
        }
    }
    Ok(())
}

fn protocol(name: Option<&str>) -> anyhow::Result<cri::Protocol> {
    match name.unwrap_or("TCP") {
        "TCP" => Ok(cri::Protocol::Tcp),
        "UDP" => Ok(cri::Protocol::Udp),
        "SCTP" => Ok(cri::Protocol::Sctp),
        other => bail!("{other:?} is not TCP, UDP or SCTP"),
    }
}

/// A fresh UUID (v4), as the API server gives each object.
pub fn new_uid() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

impl Pod {
    /// The pod sandbox config the kubelet would send for this pod.
    pub fn sandbox_config(&self, uid: &str, attempt: u32) -> anyhow::Result<cri::PodSandboxConfig> {
        let mut labels: std::collections::HashMap<String, String> =
            self.metadata.labels.clone().into_iter().collect();
        labels.insert(POD_NAME_LABEL.into(), self.metadata.name.clone());
        labels.insert(POD_NAMESPACE_LABEL.into(), self.namespace().into());
        labels.insert(POD_UID_LABEL.into(), uid.into());
        let mut annotations: std::collections::HashMap<String, String> =
            self.metadata.annotations.clone().into_iter().collect();
        // The digest tells an unchanged re-apply; the document itself is kept (for `get -o
        // json`) only within the API server's 256 KiB for all of a pod's annotations.
        let document = self.document.to_string();
        annotations.insert(APPLIED_DIGEST.into(), applied_digest(&self.document));
        if document.len() <= MAX_LAST_APPLIED {
            annotations.insert(LAST_APPLIED.into(), document);
        }
        let mut port_mappings = Vec::new();
        for c in &self.spec.containers {
            for p in &c.ports {
                if let Some(host_port) = p.host_port.filter(|p| *p != 0) {
                    port_mappings.push(cri::PortMapping {
                        protocol: protocol(p.protocol.as_deref())? as i32,
                        container_port: p.container_port,
                        host_port,
                        host_ip: p.host_ip.clone().unwrap_or_default(),
                    });
                }
            }
        }
        let options = cri::NamespaceOption {
            network: if self.spec.host_network {
                cri::NamespaceMode::Node
            } else {
                cri::NamespaceMode::Pod
            } as i32,
            pid: if self.spec.share_process_namespace {
                cri::NamespaceMode::Pod
            } else {
                cri::NamespaceMode::Container
            } as i32,
            ipc: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        };
        Ok(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: self.metadata.name.clone(),
                uid: uid.into(),
                namespace: self.namespace().into(),
                attempt,
            }),
            hostname: self.spec.hostname.clone().unwrap_or_default(),
            port_mappings,
            labels,
            annotations,
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(options),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// The container config the kubelet would send for `container` of this pod.
    pub fn container_config(
        &self,
        container: &Container,
        uid: &str,
        init: bool,
    ) -> cri::ContainerConfig {
        let mut labels: std::collections::HashMap<String, String> = [
            (POD_NAME_LABEL, self.metadata.name.as_str()),
            (POD_NAMESPACE_LABEL, self.namespace()),
            (POD_UID_LABEL, uid),
            (CONTAINER_NAME_LABEL, container.name.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if init {
            labels.insert(INIT_LABEL.into(), "true".into());
        }
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: container.name.clone(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: container.image.clone(),
                ..Default::default()
            }),
            command: container.command.clone(),
            args: container.args.clone(),
            working_dir: container.working_dir.clone().unwrap_or_default(),
            envs: container
                .env
                .iter()
                .map(|e| cri::KeyValue {
                    key: e.name.clone(),
                    value: e.value.clone(),
                })
                .collect(),
            labels,
            annotations: container_ports_annotation(&container.ports),
            ..Default::default()
        }
    }
}

/// The container's ports as kubelet annotates them, so services find named ports.
fn container_ports_annotation(
    ports: &[ContainerPort],
) -> std::collections::HashMap<String, String> {
    if ports.is_empty() {
        return Default::default();
    }
    let list: Vec<serde_json::Value> = ports
        .iter()
        .map(|p| {
            let mut port = serde_json::json!({
                "containerPort": p.container_port,
                "protocol": p.protocol.as_deref().unwrap_or("TCP"),
            });
            if let Some(name) = &p.name {
                port["name"] = name.clone().into();
            }
            port
        })
        .collect();
    [(
        CONTAINER_PORTS_ANNOTATION.to_string(),
        serde_json::Value::from(list).to_string(),
    )]
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD_PAUSE: &str = "apiVersion: v1
kind: Pod
metadata:
  name: pod-pause
spec:
  nodeSelector:
    kubernetes.io/hostname: k8s-node1
  containers:
  - name: container1
    image: kubetm/p8000
    ports:
    - containerPort: 8000
  - name: container2
    image: kubetm/p8080
    ports:
    - containerPort: 8080
";

    #[test]
    fn the_seed_pod_pause_manifest_reads_as_the_kubelet_would_send_it() {
        let objects = parse(POD_PAUSE, "pod-pause.yaml").unwrap();
        assert_eq!(objects.len(), 1);
        let Object::Pod(pod) = &objects[0] else {
            panic!("not a pod: {objects:?}")
        };
        assert_eq!(pod.namespace(), "default");
        assert_eq!(
            pod.spec.node_selector["kubernetes.io/hostname"],
            "k8s-node1"
        );
        let sandbox = pod.sandbox_config("u-1", 0).unwrap();
        assert_eq!(sandbox.metadata.as_ref().unwrap().name, "pod-pause");
        assert_eq!(sandbox.labels[POD_NAME_LABEL], "pod-pause");
        assert!(sandbox.annotations[LAST_APPLIED].contains("kubetm/p8000"));
        assert_eq!(
            sandbox.annotations[APPLIED_DIGEST],
            applied_digest(&pod.document)
        );
        assert!(sandbox.port_mappings.is_empty());
        let c = pod.container_config(&pod.spec.containers[1], "u-1", false);
        assert_eq!(
            c.annotations[CONTAINER_PORTS_ANNOTATION],
            r#"[{"containerPort":8080,"protocol":"TCP"}]"#
        );
        assert_eq!(c.image.unwrap().image, "kubetm/p8080");
        assert_eq!(c.labels[CONTAINER_NAME_LABEL], "container2");
    }

    /// The seeds' two services, as the Services API takes them.
    #[test]
    fn the_seed_services_read_as_api_specs() {
        let text = "apiVersion: v1
kind: Service
metadata:
  name: svc-nodeport
spec:
  selector:
    type: dest
  ports:
    - port: 8080
      targetPort: 8080
      nodePort: 31080
  type: NodePort
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: team, labels: {app: web}}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{name: http, port: 80, targetPort: http, protocol: TCP}]
";
        let objects = parse(text, "svc.yaml").unwrap();
        let [Object::Service(nodeport), Object::Service(web)] = &objects[..] else {
            panic!("not two services: {objects:?}")
        };
        assert_eq!(nodeport.describe(), "service/svc-nodeport");
        let spec = &nodeport.spec;
        assert_eq!(
            (spec.r#type.as_str(), spec.namespace.as_str()),
            ("NodePort", "")
        );
        assert_eq!(spec.selector["type"], "dest");
        assert_eq!((spec.ports[0].port, spec.ports[0].node_port), (8080, 31080));
        assert_eq!(
            spec.ports[0].target_port,
            Some(TargetPort::TargetPortNumber(8080))
        );
        let spec = &web.spec;
        assert_eq!(spec.namespace, "team");
        assert_eq!(spec.session_affinity_timeout_seconds, 60);
        assert_eq!(
            spec.ports[0].target_port,
            Some(TargetPort::TargetPortName("http".into()))
        );
        let message = format!(
            "{:#}",
            parse(
                "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: 80}",
                "f"
            )
            .unwrap_err()
        );
        assert!(
            message.contains("document 1 (service/s): spec.ports: invalid type: integer `80`, expected a sequence"),
            "{message}"
        );
    }

    #[test]
    fn multi_document_manifests_and_their_errors() {
        let two = format!(
            "{POD_PAUSE}---\n{}\n---\n",
            POD_PAUSE.replace("pod-pause", "second")
        );
        assert_eq!(parse(&two, "x").unwrap().len(), 2);
        let message = |text: &str| format!("{:#}", parse(text, "f.yaml").unwrap_err());
        assert!(message(
            "kind: Pod\napiVersion: v1\nmetadata: {}\nspec: {containers: [{name: a, image: b}]}"
        )
        .contains("metadata.name is missing"));
        assert!(message(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: a}]}"
        )
        .contains("spec.containers[0].image is missing"));
        assert!(message("apiVersion: v1\nkind: Secret\nmetadata: {name: x}")
            .contains("kind Secret is not supported"));
        assert!(
            message("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: 3}")
                .contains("document 1 (pod/x): spec.containers: invalid type: integer `3`, expected a sequence")
        );
        assert!(
            message("apiVersion: v1\nkind: Pod\nmetadata: {name: x\n").contains("not valid YAML")
        );
        assert!(message(&format!("{POD_PAUSE}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: y}}\nspec: {{containers: [{{name: a, image: b, ports: [{{containerPort: 0}}]}}]}}"))
            .contains("document 2 (pod/y): spec.containers[0].ports[0].containerPort: 0 is not a port"));
    }
}
