//! Kubernetes `v1` manifests, as `apply -f` and `delete -f` read them: multi-document YAML
//! (or JSON), each document a `Pod`. A Pod becomes what the kubelet would make of it: a
//! pod sandbox config and one container config per container, labelled the kubelet's way
//! (`io.kubernetes.pod.name`, …) so CRI tools see the same labels as on a real node.
//!
//! Fields Kubernetes has that a single node without an API server has no use for
//! (`restartPolicy`, `resources`, probes, …) are accepted and kept in the manifest; a
//! field with the wrong type, a missing name or image, or an unknown kind is an error
//! naming the document and the field.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use k8s_cri::v1 as cri;
use serde::Deserialize;

/// Labels the kubelet puts on sandboxes and containers.
pub const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";
/// Marks init containers (the kubelet tells them apart by its own records).
pub const INIT_LABEL: &str = "sandboxd.io/init-container";
/// The manifest a pod was applied from, as kubectl keeps it.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

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

/// Reads every document of a manifest; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> anyhow::Result<Vec<Pod>> {
    let mut pods = Vec::new();
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
            ("v1", "Pod") => {}
            (_, "") => bail!("{at}: kind is missing"),
            ("v1", other) => bail!("{at}: kind {other} is not supported (Pod is)"),
            (other, kind) => bail!("{at}: apiVersion {other:?} of {kind} is not supported (v1 is)"),
        }
        let metadata: ObjectMeta = serde_json::from_value(value["metadata"].clone())
            .with_context(|| format!("{at}: invalid metadata"))?;
        let spec: PodSpec = serde_json::from_value(value["spec"].clone())
            .with_context(|| format!("{at}: invalid spec"))?;
        let pod = Pod {
            metadata,
            spec,
            document: value,
        };
        check(&pod).with_context(|| format!("{at} ({})", pod.describe()))?;
        pods.push(pod);
    }
    if pods.is_empty() {
        bail!("{source} holds no objects");
    }
    Ok(pods)
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
        annotations.insert(LAST_APPLIED.into(), self.document.to_string());
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
            ..Default::default()
        }
    }
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
        let pods = parse(POD_PAUSE, "pod-pause.yaml").unwrap();
        assert_eq!(pods.len(), 1);
        let pod = &pods[0];
        assert_eq!(pod.namespace(), "default");
        assert_eq!(
            pod.spec.node_selector["kubernetes.io/hostname"],
            "k8s-node1"
        );
        let sandbox = pod.sandbox_config("u-1", 0).unwrap();
        assert_eq!(sandbox.metadata.as_ref().unwrap().name, "pod-pause");
        assert_eq!(sandbox.labels[POD_NAME_LABEL], "pod-pause");
        assert!(sandbox.annotations[LAST_APPLIED].contains("kubetm/p8000"));
        assert!(sandbox.port_mappings.is_empty());
        let c = pod.container_config(&pod.spec.containers[1], "u-1", false);
        assert_eq!(c.image.unwrap().image, "kubetm/p8080");
        assert_eq!(c.labels[CONTAINER_NAME_LABEL], "container2");
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
                .contains("document 1: invalid spec")
        );
        assert!(
            message("apiVersion: v1\nkind: Pod\nmetadata: {name: x\n").contains("not valid YAML")
        );
        assert!(message(&format!("{POD_PAUSE}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: y}}\nspec: {{containers: [{{name: a, image: b, ports: [{{containerPort: 0}}]}}]}}"))
            .contains("document 2 (pod/y): spec.containers[0].ports[0].containerPort: 0 is not a port"));
    }
}
