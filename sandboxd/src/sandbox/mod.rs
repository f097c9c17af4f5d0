//! Pod sandboxes: the record of each, its states, and the verbs (one module each).
//!
//! ```text
//!   RunPodSandbox ──► READY ──StopPodSandbox──► NOTREADY ──RemovePodSandbox──► (gone)
//!                       │                          ▲
//!                       └── pause died, or found ──┘
//!                           dead after a restart
//! ```
//!
//! READY: pause runs, its netns is pinned, the network is attached. NOTREADY: any of those
//! may be partly gone; Stop finishes releasing what is left (idempotent), Remove deletes
//! the record. Remove of a READY sandbox stops it first, as the CRI allows.

pub mod files;
mod recover;
mod remove;
mod run;
mod stats;
mod status;
mod stop;
pub mod sysctl;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::process::ProcessHandle;

pub(crate) use run::check_name;
pub use status::ListFilter;

/// Version of the on-disk record format.
pub const RECORD_VERSION: u32 = 1;
/// The record's file in `<state dir>/sandboxes/<id>/`.
pub const RECORD_FILE: &str = "sandbox.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SandboxState {
    Ready,
    NotReady,
}

impl SandboxState {
    pub fn as_str(&self) -> &'static str {
        match self {
            SandboxState::Ready => "SANDBOX_READY",
            SandboxState::NotReady => "SANDBOX_NOTREADY",
        }
    }
}

/// Who the pod is: the four fields that make a sandbox unique (with the attempt).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodMetadata {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// "tcp", "udp" or "sctp", as portmap spells them.
    pub protocol: String,
    pub container_port: u16,
    pub host_port: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// The intent's file in `<state dir>/sandboxes/<id>/`, there from before pause starts
/// until the record is saved.
pub const RUN_INTENT_FILE: &str = "run-intent.json";

/// What a RunPodSandbox is about to create, written (fsynced) before it creates anything,
/// so a restart after a crash at any moment can undo it: the sandbox as it will be (with
/// its netns pin's path and its pause tagged by the id, see [`crate::process::tagged`]),
/// and the network config its CNI ADD uses, for a DEL that needs neither the conf dir nor
/// the CNI cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunIntent {
    pub version: u32,
    pub record: SandboxRecord,
    pub network_config: Option<serde_json::Value>,
}

/// Everything sandboxd knows about one pod sandbox; persisted after every change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub version: u32,
    pub id: String,
    pub metadata: PodMetadata,
    pub hostname: String,
    pub log_directory: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub port_mappings: Vec<PortMapping>,
    /// The pod uses the node's network namespace (no pause netns, no CNI).
    pub host_network: bool,
    /// The pod has a pid namespace of its own, pause its PID 1.
    #[serde(default)]
    pub pid_namespace: bool,
    /// The pod uses the node's IPC namespace.
    #[serde(default)]
    pub host_ipc: bool,
    pub created_at_ns: i64,
    pub state: SandboxState,
    /// The pause process, while it runs.
    pub pause: Option<ProcessHandle>,
    /// Where its netns is pinned, while it is.
    pub netns_path: Option<PathBuf>,
    /// The CNI network it is attached to, while it is.
    pub network: Option<String>,
    pub ip: String,
    pub additional_ips: Vec<String>,
    /// The CNI ADD result, as the network's version printed it.
    pub cni_result: Option<serde_json::Value>,
    /// The pod's /dev/shm tmpfs, while it is mounted.
    #[serde(default)]
    pub shm: Option<PathBuf>,
    /// The sysctls set in its IPC and network namespaces.
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// The kubelet's cgroup for the pod (`linux.cgroup_parent`): its containers' cgroups
    /// are made under it. Empty: where the runtime puts them by default.
    #[serde(default)]
    pub cgroup_parent: String,
}

impl SandboxRecord {
    /// "pod sandbox 3f2a6b1c0d9e (default/web)", for messages.
    pub fn describe(&self) -> String {
        describe(&self.id, &self.metadata)
    }
}

pub fn describe(id: &str, metadata: &PodMetadata) -> String {
    format!(
        "pod sandbox {} ({}/{})",
        short(id),
        metadata.namespace,
        metadata.name
    )
}

/// The first 12 characters of an id, as crictl prints them.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
