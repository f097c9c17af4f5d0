//! The daemon's core: the sandboxes it holds and the parts it drives. The CRI server is a
//! thin layer over this; each verb lives in its own module under `sandbox/`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use cni_host::{CniHost, NetworkConfigList, RuntimeConf};

use crate::cni_plugin::in_process::InProcessExec;

use crate::config::Config;
use crate::container::ContainerRecord;
use crate::error::{Error, Result};
use crate::sandbox::{PodMetadata, SandboxRecord, RECORD_FILE, RUN_INTENT_FILE};
use crate::store::Store;

/// One sandbox held in memory; its mutex serializes the verbs on it.
pub type SandboxEntry = Arc<tokio::sync::Mutex<SandboxRecord>>;
/// One container held in memory. A verb that needs both locks takes the sandbox's first.
pub type ContainerEntry = Arc<tokio::sync::Mutex<ContainerRecord>>;

/// A container in the daemon's map, with its pod (fixed for its life) beside the lock.
#[derive(Clone)]
pub(crate) struct ContainerSlot {
    pub sandbox_id: String,
    pub entry: ContainerEntry,
}

/// What makes a container unique in its pod: its name and attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ContainerName {
    pub sandbox_id: String,
    pub name: String,
    pub attempt: u32,
}

pub struct Runtime {
    pub config: Config,
    pub(crate) cni: CniHost<InProcessExec>,
    pub(crate) sandboxes: Store,
    /// The intents of RunPodSandbox calls, beside the records (see
    /// [`crate::sandbox::RunIntent`]).
    pub(crate) run_intents: Store,
    pub(crate) pause_binary: PathBuf,
    pub images: Arc<crate::image::ImageStore>,
    pub(crate) pods: RwLock<HashMap<String, SandboxEntry>>,
    /// Pod identity → sandbox id: a name is taken from the moment a RunPodSandbox
    /// starts, so two concurrent runs of the same pod cannot both succeed.
    pub(crate) names: std::sync::Mutex<HashMap<PodMetadata, String>>,
    pub(crate) container_records: Store,
    /// The intents of CreateContainer calls, beside the records (see
    /// [`crate::container::CreateIntent`]).
    pub(crate) create_intents: Store,
    pub(crate) containers: RwLock<HashMap<String, ContainerSlot>>,
    /// Taken from the moment a CreateContainer starts, like `names`.
    pub(crate) container_names: std::sync::Mutex<HashMap<ContainerName, String>>,
    pub(crate) monitor_binary: PathBuf,
    pub(crate) oci_runtime: PathBuf,
    /// The service proxy, once recovery has made the pods known (None without one).
    pub(crate) services: std::sync::OnceLock<Option<crate::service::verbs::Services>>,
}

impl Runtime {
    /// Builds the runtime of a node alone and recovers what an earlier daemon left (see
    /// `sandbox::recover`).
    pub async fn start(config: Config) -> anyhow::Result<Arc<Runtime>> {
        Self::start_with(config, None).await
    }

    /// Builds the runtime; a cluster node's (`cluster` given) keeps its services in the
    /// cluster store.
    pub async fn start_with(
        config: Config,
        cluster: Option<Arc<dyn crate::cluster::store::ClusterStore>>,
    ) -> anyhow::Result<Arc<Runtime>> {
        let pause_binary = crate::pause::locate(config.pause_binary.as_deref())?;
        let monitor_binary = crate::container::monitor::locate(config.monitor_binary.as_deref())?;
        let oci_runtime = match &config.oci_runtime {
            None => crate::config::locate_beside_exe(crate::config::EMBEDDED_RUNTIME_NAME, None)
                .map_err(|searched| {
                    anyhow::anyhow!(
                        "the embedded OCI runtime is not built (looked at {}); run `cargo build --release` or pass --runtime runc",
                        searched.join(", ")
                    )
                })?,
            Some(name) => crate::config::find_in_path(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "OCI runtime {} not found; install runc (scripts/install-deps.sh) or give its path",
                    name.display()
                )
            })?,
        };
        let mut plugin_dirs = config.cni_bin_dirs.clone();
        let own_plugins = match config.cni_plugins {
            crate::config::CniPlugins::Upstream => None,
            crate::config::CniPlugins::Own => {
                let binary = crate::cni_plugin::in_process::install(&config.own_cni_bin_dir())?;
                plugin_dirs.insert(0, config.own_cni_bin_dir());
                Some(binary)
            }
        };
        let cni = CniHost::with_exec(
            plugin_dirs,
            config.cni_cache_dir(),
            InProcessExec::new(config.node.netns.plugin_exec(), own_plugins.as_deref()),
        )
        .plugin_timeout(config.cni_timeout);
        crate::netns::prepare_dir(&config.netns_dir)?;
        let images = Arc::new(crate::image::ImageStore::open(config.images_dir())?);
        let runtime = Arc::new(Runtime {
            images,
            sandboxes: Store::new(config.sandboxes_dir(), RECORD_FILE),
            run_intents: Store::transient(config.sandboxes_dir(), RUN_INTENT_FILE),
            container_records: Store::new(config.containers_dir(), crate::container::RECORD_FILE),
            create_intents: Store::new(
                config.containers_dir(),
                crate::container::CREATE_INTENT_FILE,
            ),
            containers: RwLock::new(HashMap::new()),
            container_names: std::sync::Mutex::new(HashMap::new()),
            monitor_binary,
            oci_runtime,
            config,
            cni,
            pause_binary,
            pods: RwLock::new(HashMap::new()),
            names: std::sync::Mutex::new(HashMap::new()),
            services: std::sync::OnceLock::new(),
        });
        runtime.recover().await?;
        match cluster {
            Some(store) => runtime.start_cluster_services(store).await?,
            None => runtime.start_services().await?,
        }
        Ok(runtime)
    }

    /// Finds a sandbox by id or unique id prefix (as crictl lets users type them).
    pub fn lookup(&self, id: &str) -> Result<(String, SandboxEntry)> {
        find(
            &self.pods.read().expect("pods lock"),
            id,
            "pod sandbox",
            "pod_sandbox_id",
        )
    }

    /// Finds a container by id or unique id prefix.
    pub fn lookup_container(&self, id: &str) -> Result<(String, ContainerEntry)> {
        find(
            &self.containers.read().expect("containers lock"),
            id,
            "container",
            "container_id",
        )
        .map(|(id, slot)| (id, slot.entry))
    }

    /// The containers of a sandbox.
    pub fn containers_of(&self, sandbox_id: &str) -> Vec<ContainerEntry> {
        self.containers
            .read()
            .expect("containers lock")
            .values()
            .filter(|slot| slot.sandbox_id == sandbox_id)
            .map(|slot| slot.entry.clone())
            .collect()
    }

    pub fn container_entries(&self) -> Vec<ContainerEntry> {
        self.containers
            .read()
            .expect("containers lock")
            .values()
            .map(|slot| slot.entry.clone())
            .collect()
    }

    pub fn entries(&self) -> Vec<SandboxEntry> {
        self.pods
            .read()
            .expect("pods lock")
            .values()
            .cloned()
            .collect()
    }

    /// The pod network for new sandboxes: the first valid config of the conf dir, read on
    /// every call so a changed config applies without a restart.
    pub fn pod_network(&self) -> Result<NetworkConfigList> {
        cni_host::load_default_network(&self.config.cni_conf_dir)
            .map_err(|e| Error::FailedPrecondition(format!("the pod network is not ready: {e}")))
    }

    /// The OCI runtime new containers run with.
    pub fn oci_runtime_path(&self) -> &std::path::Path {
        &self.oci_runtime
    }

    /// The network a sandbox was attached to, for DEL: by name from the conf dir, else the
    /// config the CNI cache kept from the ADD (the file may have changed or gone since).
    pub(crate) fn attached_network(
        &self,
        name: &str,
        rt: &RuntimeConf,
    ) -> anyhow::Result<NetworkConfigList> {
        if let Ok(list) = cni_host::load_network(&self.config.cni_conf_dir, name) {
            return Ok(list);
        }
        let cached = self
            .cni
            .cache()
            .load(name, &rt.container_id, &rt.ifname)?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "network {name} is neither in {} nor in the CNI cache",
                    self.config.cni_conf_dir.display()
                )
            })?;
        Ok(NetworkConfigList::from_bytes(
            &cached.config,
            "<cached config>",
        )?)
    }

    /// CNI arguments of a sandbox, the same for ADD and DEL.
    pub(crate) fn cni_runtime_conf(record: &SandboxRecord) -> RuntimeConf {
        let netns = record
            .netns_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut rt = RuntimeConf::new(&record.id, netns, "eth0").with_pod(
            &record.metadata.namespace,
            &record.metadata.name,
            &record.id,
        );
        rt.args
            .push(("K8S_POD_UID".to_string(), record.metadata.uid.clone()));
        if !record.port_mappings.is_empty() {
            let mappings: Vec<serde_json::Value> = record
                .port_mappings
                .iter()
                .map(|p| {
                    let mut m = serde_json::json!({
                        "hostPort": p.host_port,
                        "containerPort": p.container_port,
                        "protocol": p.protocol,
                    });
                    if !p.host_ip.is_empty() {
                        m["hostIP"] = serde_json::json!(p.host_ip);
                    }
                    m
                })
                .collect();
            rt.capability_args
                .insert("portMappings".into(), serde_json::Value::Array(mappings));
        }
        rt
    }

    pub(crate) fn save(&self, record: &SandboxRecord) -> Result<()> {
        self.sandboxes
            .save(&record.id, record)
            .map_err(|e| Error::step("persist the record", record.describe(), e))
    }
}

/// Finds an entry by id or unique id prefix.
fn find<T: Clone>(
    map: &HashMap<String, T>,
    id: &str,
    kind: &'static str,
    field: &str,
) -> Result<(String, T)> {
    if id.is_empty() {
        return Err(Error::invalid(kind, field, "is empty"));
    }
    if let Some(entry) = map.get(id) {
        return Ok((id.to_string(), entry.clone()));
    }
    let mut matches = map.iter().filter(|(full, _)| full.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some((full, entry)), None) => Ok((full.clone(), entry.clone())),
        (Some(_), Some(_)) => Err(Error::invalid(
            format!("{kind} {id}"),
            field,
            "the prefix matches more than one",
        )),
        _ => Err(Error::NotFound {
            kind,
            id: id.to_string(),
        }),
    }
}

/// A fresh 64-hex-digit id, as containerd makes them.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    let mut file = std::fs::File::open("/dev/urandom").expect("open /dev/urandom");
    std::io::Read::read_exact(&mut file, &mut bytes).expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `name` is an id as [`new_id`] makes them.
pub fn is_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Runtime {
    /// NetworkReady: the pod network's config loads and its plugins are ready (CNI STATUS).
    /// The error is a message a person can act on.
    pub async fn network_status(&self) -> Result<(), String> {
        let list = self.pod_network().map_err(|e| {
            format!(
                "{e}; put a network config in {} (see README)",
                self.config.cni_conf_dir.display()
            )
        })?;
        self.cni.status(&list).await.map_err(|e| e.to_string())
    }
}
