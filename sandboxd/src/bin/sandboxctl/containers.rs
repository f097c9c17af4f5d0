//! `create`, `start`, `stop` and `rm`: the container verbs, as crictl has them.
//!
//! `create POD CONTAINER-CONFIG [POD-CONFIG]` takes crictl's container config: the CRI
//! `ContainerConfig` in JSON or YAML with its field names (`metadata`, `image`, `command`,
//! `args`, `working_dir`, `envs`, `mounts`, `labels`, `annotations`, `log_path`,
//! `linux.security_context.run_as_user`). POD is an id, id prefix or pod name.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use k8s_cri::v1 as cri;
use serde::Deserialize;

use crate::Client;

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The pod sandbox: id, id prefix or name.
    pod: String,
    /// The container config file, JSON or YAML (`-` for stdin).
    config: PathBuf,
    /// The pod config file it was run with (crictl passes it; sandboxd does not need it).
    pod_config: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct StartArgs {
    /// Container ids or unique id prefixes.
    #[arg(required = true)]
    ids: Vec<String>,
}

#[derive(clap::Args)]
pub struct StopArgs {
    /// Container ids or unique id prefixes.
    #[arg(required = true)]
    ids: Vec<String>,
    /// Seconds between SIGTERM and SIGKILL.
    #[arg(long, short, default_value_t = 0)]
    timeout: i64,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    /// Container ids or unique id prefixes.
    ids: Vec<String>,
    /// Stop running containers first (else they are refused).
    #[arg(long, short)]
    force: bool,
    /// Remove every container.
    #[arg(long, short)]
    all: bool,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerConfig {
    pub metadata: Metadata,
    pub image: Image,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    pub envs: Vec<KeyValue>,
    pub mounts: Vec<Mount>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub log_path: String,
    pub stdin: bool,
    pub tty: bool,
    pub linux: Linux,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    pub attempt: u32,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Image {
    pub image: String,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Mount {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Linux {
    pub security_context: SecurityContext,
}

/// The security context fields crictl's configs carry that sandboxd applies or checks;
/// an unknown one is refused rather than dropped unseen.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityContext {
    pub run_as_user: Option<Int64>,
    pub run_as_group: Option<Int64>,
    pub capabilities: Option<Capabilities>,
    pub privileged: bool,
    pub readonly_rootfs: bool,
    pub no_new_privs: bool,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub seccomp_profile_path: String,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Capabilities {
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Int64 {
    pub value: i64,
}

impl ContainerConfig {
    pub fn into_cri(self) -> cri::ContainerConfig {
        let security = self.linux.security_context;
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: self.metadata.name,
                attempt: self.metadata.attempt,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.image,
                ..Default::default()
            }),
            command: self.command,
            args: self.args,
            working_dir: self.working_dir,
            envs: self
                .envs
                .into_iter()
                .map(|kv| cri::KeyValue {
                    key: kv.key,
                    value: kv.value,
                })
                .collect(),
            mounts: self
                .mounts
                .into_iter()
                .map(|m| cri::Mount {
                    container_path: m.container_path,
                    host_path: m.host_path,
                    readonly: m.readonly,
                    ..Default::default()
                })
                .collect(),
            labels: self.labels,
            annotations: self.annotations,
            log_path: self.log_path,
            stdin: self.stdin,
            tty: self.tty,
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(security.into_cri()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

impl SecurityContext {
    // seccomp_profile_path is deprecated in the CRI, and still what crictl's configs hold.
    #[allow(deprecated)]
    fn into_cri(self) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            run_as_user: self.run_as_user.map(|v| cri::Int64Value { value: v.value }),
            run_as_group: self
                .run_as_group
                .map(|v| cri::Int64Value { value: v.value }),
            capabilities: self.capabilities.map(|c| cri::Capability {
                add_capabilities: c.add_capabilities,
                drop_capabilities: c.drop_capabilities,
                ..Default::default()
            }),
            privileged: self.privileged,
            readonly_rootfs: self.readonly_rootfs,
            no_new_privs: self.no_new_privs,
            masked_paths: self.masked_paths,
            readonly_paths: self.readonly_paths,
            seccomp_profile_path: self.seccomp_profile_path,
            ..Default::default()
        }
    }
}

pub fn read_config(path: &std::path::Path) -> anyhow::Result<cri::ContainerConfig> {
    let text = crate::output::read_file(path)?;
    let config: ContainerConfig = serde_norway::from_str(&text)
        .with_context(|| format!("{} is not a valid container config", path.display()))?;
    if config.metadata.name.is_empty() {
        bail!("{}: metadata.name is missing", path.display());
    }
    if config.image.image.is_empty() {
        bail!("{}: image.image is missing", path.display());
    }
    Ok(config.into_cri())
}

pub async fn create(client: &mut Client, args: CreateArgs) -> anyhow::Result<()> {
    let config = read_config(&args.config)?;
    let sandbox_config = match &args.pod_config {
        Some(path) => Some(crate::runp::read_config(path)?),
        None => None,
    };
    let pod = crate::lookup::pod_id(client, &args.pod).await?;
    let reply = client
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod,
            config: Some(config),
            sandbox_config,
        })
        .await?
        .into_inner();
    println!("{}", reply.container_id);
    Ok(())
}

pub async fn start(client: &mut Client, args: StartArgs) -> anyhow::Result<()> {
    for id in args.ids {
        client
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
        println!("{id}");
    }
    Ok(())
}

pub async fn stop(client: &mut Client, args: StopArgs) -> anyhow::Result<()> {
    for id in args.ids {
        client
            .stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: args.timeout,
            })
            .await?;
        println!("{id}");
    }
    Ok(())
}

pub async fn remove(client: &mut Client, args: RemoveArgs) -> anyhow::Result<()> {
    let mut ids = args.ids;
    if args.all {
        let all = client
            .list_containers(cri::ListContainersRequest { filter: None })
            .await?
            .into_inner();
        ids.extend(all.containers.into_iter().map(|c| c.id));
    }
    if ids.is_empty() {
        bail!("rm needs container ids, or --all");
    }
    for id in ids {
        let status = client
            .container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .unwrap_or_default();
        if status.state == cri::ContainerState::ContainerRunning as i32 && !args.force {
            bail!("container {id} is running; stop it first, or use rm --force");
        }
        client
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await?;
        println!("{id}");
    }
    Ok(())
}
