//! `runp POD-CONFIG.json`: run a pod sandbox, print its id.
//!
//! The file is crictl's pod config: the CRI `PodSandboxConfig` in JSON or YAML with its
//! field names (`metadata`, `hostname`, `log_directory`, `labels`, `annotations`,
//! `port_mappings`, `dns_config`, `linux.security_context.namespace_options`). Protocols and namespace modes may be given
//! as names ("TCP", "NODE") or numbers.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use k8s_cri::v1 as cri;
use serde::Deserialize;

use crate::Client;

#[derive(clap::Args)]
pub struct Args {
    /// The pod config file, JSON or YAML (`-` for stdin).
    config: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct PodConfig {
    metadata: Metadata,
    hostname: String,
    log_directory: String,
    labels: HashMap<String, String>,
    annotations: HashMap<String, String>,
    port_mappings: Vec<PortMapping>,
    linux: Linux,
    dns_config: Option<DnsConfig>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct DnsConfig {
    servers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Metadata {
    name: String,
    namespace: String,
    uid: String,
    attempt: u32,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct PortMapping {
    protocol: Named,
    container_port: i32,
    host_port: i32,
    host_ip: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Linux {
    security_context: SecurityContext,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SecurityContext {
    namespace_options: NamespaceOptions,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NamespaceOptions {
    network: Named,
    pid: Named,
    ipc: Named,
}

/// An enum given by name or by number.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Named {
    #[default]
    Unset,
    Number(i32),
    Name(String),
}

impl Named {
    fn resolve(&self, field: &str, names: &[&str], default: i32) -> anyhow::Result<i32> {
        match self {
            Named::Unset => Ok(default),
            Named::Number(n) => Ok(*n),
            Named::Name(name) => names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(name))
                .map(|i| i as i32)
                .with_context(|| format!("{field}: {name:?} is not one of {}", names.join(", "))),
        }
    }
}

const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];
const NAMESPACE_MODES: &[&str] = &["POD", "CONTAINER", "NODE", "TARGET"];

fn to_cri(config: PodConfig) -> anyhow::Result<cri::PodSandboxConfig> {
    let mut port_mappings = Vec::new();
    for (i, p) in config.port_mappings.iter().enumerate() {
        port_mappings.push(cri::PortMapping {
            protocol: p
                .protocol
                .resolve(&format!("port_mappings[{i}].protocol"), PROTOCOLS, 0)?,
            container_port: p.container_port,
            host_port: p.host_port,
            host_ip: p.host_ip.clone(),
        });
    }
    let ns = &config.linux.security_context.namespace_options;
    let options = cri::NamespaceOption {
        network: ns.network.resolve(
            "linux.security_context.namespace_options.network",
            NAMESPACE_MODES,
            0,
        )?,
        pid: ns.pid.resolve(
            "linux.security_context.namespace_options.pid",
            NAMESPACE_MODES,
            1,
        )?,
        ipc: ns.ipc.resolve(
            "linux.security_context.namespace_options.ipc",
            NAMESPACE_MODES,
            0,
        )?,
        ..Default::default()
    };
    Ok(cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: config.metadata.name,
            uid: config.metadata.uid,
            namespace: config.metadata.namespace,
            attempt: config.metadata.attempt,
        }),
        hostname: config.hostname,
        log_directory: config.log_directory,
        port_mappings,
        labels: config.labels,
        annotations: config.annotations,
        dns_config: config.dns_config.map(|d| cri::DnsConfig {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        }),
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

pub fn read_config(path: &std::path::Path) -> anyhow::Result<cri::PodSandboxConfig> {
    let text = crate::output::read_file(path)?;
    let config: PodConfig = serde_norway::from_str(&text)
        .with_context(|| format!("{} is not a valid pod config", path.display()))?;
    if config.metadata.name.is_empty() {
        bail!("{}: metadata.name is missing", path.display());
    }
    to_cri(config).with_context(|| format!("{}", path.display()))
}

pub async fn run(client: &mut Client, args: Args) -> anyhow::Result<()> {
    let config = read_config(&args.config)?;
    let reply = client
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner();
    println!("{}", reply.pod_sandbox_id);
    Ok(())
}
