//! Containers of a pod: the record of each, its states, and the verbs (one module each).
//!
//! ```text
//!   CreateContainer ──► CREATED ──StartContainer──► RUNNING ──(exits, or StopContainer)──► EXITED
//!          │               └──────────(killed, or StopContainer)──────────────────────────┘
//!          └── RemoveContainer from any state: stop, delete, unmount, forget
//! ```
//!
//! A container is `container:<pause-id>`: it joins the pause process's net, ipc and uts
//! namespaces and has its own mount and pid namespaces (or the pod's pid namespace).
//!
//! * [`rootfs`]: an overlayfs of the image's layers with a writable upper dir of its own;
//! * [`bundle`]: the OCI runtime bundle (`config.json`, built with the `oci-spec` crate);
//! * [`oci`]: the OCI runtime (runc's command line) that starts, execs in and deletes it;
//! * [`monitor`]: `sandboxd-monitor`, one per container, which creates it with the runtime,
//!   holds its output and records its exit, so both outlive a restart of sandboxd;
//! * [`log`]: the CRI log format the monitor writes;
//! * the verbs: `create`, `start`, `stop`, `remove`, `status` (status and list), `exec`,
//!   and `recover` (start-up).
//!
//! Each container's files are in `<state dir>/containers/<id>/`: the record
//! (`container.json`), `bundle/` (`config.json`, `rootfs/`), the overlay's `upper/` and
//! `work/`, `exit.json` (written by the monitor), `monitor.log`, `attach.sock` (the
//! monitor's, while the container lives), and `container.log` unless the pod gave a log
//! directory.

pub mod attach;
pub mod bundle;
pub mod cgroup;
pub mod console;
mod create;
mod exec;
pub mod log;
pub mod monitor;
pub mod oci;
pub mod propagation;
mod recover;
mod remove;
pub mod resources;
pub mod rootfs;
pub mod seccomp;
pub mod security;
mod start;
mod stats;
mod status;
mod stop;
mod update;
pub mod user;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::process::ProcessHandle;

pub use exec::{ExecOutput, StreamedExec};
pub(crate) use stats::ContainerUsage;
pub use stats::{stats_filter, Usage};
pub use status::ContainerFilter;

/// Version of the on-disk record format.
pub const RECORD_VERSION: u32 = 1;
/// The record's file in `<state dir>/containers/<id>/`.
pub const RECORD_FILE: &str = "container.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ContainerState {
    Created,
    Running,
    Exited,
}

impl ContainerState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ContainerState::Created => "CONTAINER_CREATED",
            ContainerState::Running => "CONTAINER_RUNNING",
            ContainerState::Exited => "CONTAINER_EXITED",
        }
    }
}

/// A host path mounted into the container, as the CRI request gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    #[serde(default)]
    pub propagation: propagation::Propagation,
}

/// The intent's file in `<state dir>/containers/<id>/`, there from before the rootfs is
/// mounted until the record is saved.
pub const CREATE_INTENT_FILE: &str = "create-intent.json";

/// What a CreateContainer is about to make, written (fsynced) before it makes anything, so
/// a restart after a crash at any moment can undo it: the rootfs mount and files in the
/// container's dir, the monitor and the runtime under it (tagged with the id, see
/// [`crate::process::tagged`]), and the runtime's state, deleted with the same runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateIntent {
    pub version: u32,
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub runtime: PathBuf,
}

/// Everything sandboxd knows about one container; persisted after every change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub version: u32,
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub attempt: u32,
    /// The image as the request named it, and the id it resolved to.
    pub image: String,
    pub image_id: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub mounts: Vec<MountRecord>,
    /// Its own stdin and terminal, which clients attach to.
    #[serde(default)]
    pub stdio: attach::ContainerStdio,
    /// Its CPU and memory resources, as created or last updated.
    #[serde(default)]
    pub resources: resources::Resources,
    pub log_path: PathBuf,
    /// The OCI runtime it was created with; it is deleted with the same one.
    pub runtime: PathBuf,
    pub created_at_ns: i64,
    pub started_at_ns: i64,
    pub finished_at_ns: i64,
    pub exit_code: i32,
    /// Why it is in its state, in the kubelet's words ("Completed", "Error", …).
    pub reason: String,
    pub message: String,
    pub state: ContainerState,
    /// Its monitor, while it runs.
    pub monitor: Option<ProcessHandle>,
    /// The container's first process, while it runs.
    pub process: Option<ProcessHandle>,
}

impl ContainerRecord {
    /// "container 3f2a6b1c0d9e (web in pod 9a8b7c6d5e4f)", for messages.
    pub fn describe(&self) -> String {
        describe(&self.id, &self.name, &self.sandbox_id)
    }
}

pub fn describe(id: &str, name: &str, sandbox_id: &str) -> String {
    format!(
        "container {} ({name} in pod {})",
        crate::sandbox::short(id),
        crate::sandbox::short(sandbox_id)
    )
}

/// Where one container's files are.
#[derive(Debug, Clone)]
pub struct ContainerDir(pub PathBuf);

impl ContainerDir {
    pub fn bundle(&self) -> PathBuf {
        self.0.join("bundle")
    }
    pub fn exit_file(&self) -> PathBuf {
        self.0.join("exit.json")
    }
    /// Where the monitor serves attaches to the container's stdio.
    pub fn attach_socket(&self) -> PathBuf {
        self.0.join(attach::SOCKET_FILE)
    }
    pub fn default_log(&self) -> PathBuf {
        self.0.join("container.log")
    }
    pub fn rootfs(&self, layers: Vec<PathBuf>) -> rootfs::Rootfs {
        rootfs::Rootfs::in_dir(layers, &self.0, &self.bundle())
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// What the monitor wrote when the container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ExitRecord {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished_at_ns: i64,
}

impl ExitRecord {
    pub fn read(path: &Path) -> Option<ExitRecord> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}
