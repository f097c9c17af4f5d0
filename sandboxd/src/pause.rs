//! Starting the pause process: the pod's first process and the owner of its namespaces.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sched::{unshare, CloneFlags};

/// The binary's name, as the workspace builds it.
pub const PAUSE_BINARY_NAME: &str = "pause";

#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("pause binary not found (looked at {}); build it with `cargo build --release` or pass its path", .searched.join(", "))]
    NotFound { searched: Vec<String> },
    #[error("cannot start pause {} for pod {pod}: {source}", .binary.display())]
    Spawn {
        binary: PathBuf,
        pod: String,
        #[source]
        source: io::Error,
    },
}

/// Finds the pause binary: the configured path if given, else beside the running executable
/// (`target/release/pause` next to `target/release/sandboxd`). Never pulled from anywhere.
pub fn locate(configured: Option<&Path>) -> Result<PathBuf, PauseError> {
    let mut candidates = Vec::new();
    match configured {
        Some(path) => candidates.push(path.to_path_buf()),
        None => {
            if let Some(dir) = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_path_buf))
            {
                candidates.push(dir.join(PAUSE_BINARY_NAME));
                // Test and example binaries live one level down, in deps/ or examples/.
                if let Some(parent) = dir.parent() {
                    candidates.push(parent.join(PAUSE_BINARY_NAME));
                }
            }
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| PauseError::NotFound {
            searched: candidates.iter().map(|p| p.display().to_string()).collect(),
        })
}

/// Namespaces and identity of a new pod.
#[derive(Debug, Clone, Default)]
pub struct PodNamespaces {
    /// Written into the pod's new uts namespace.
    pub hostname: Option<String>,
    /// Stay in the node's network namespace (a hostNetwork pod).
    pub host_network: bool,
}

/// Starts pause in new ipc and uts namespaces, and a new net namespace unless the pod uses
/// the node's network; `pod` names the pod in errors. The caller reaps the child.
///
/// The namespaces are made in the child between fork and exec, so the first instruction
/// pause runs is already inside them and nothing else ever shares them by accident.
pub fn spawn(
    binary: &Path,
    pod: &str,
    namespaces: &PodNamespaces,
) -> Result<tokio::process::Child, PauseError> {
    let hostname = namespaces.hostname.clone();
    let mut flags = CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    if !namespaces.host_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let mut command = tokio::process::Command::new(binary);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid(2), unshare(2) and sethostname(2) are plain syscalls, safe between
    // fork and exec.
    unsafe {
        command.pre_exec(move || {
            // Its own session: a Ctrl-C aimed at the daemon's terminal must not stop pods.
            nix::unistd::setsid()?;
            unshare(flags)?;
            if let Some(name) = &hostname {
                nix::unistd::sethostname(name)?;
            }
            Ok(())
        });
    }
    command.spawn().map_err(|source| PauseError::Spawn {
        binary: binary.to_path_buf(),
        pod: pod.to_string(),
        source,
    })
}
