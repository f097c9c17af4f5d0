//! Starting a container's monitor (`sandboxd-monitor`), which creates the container with
//! the OCI runtime and stays its parent: it holds the container's stdout and stderr, writes
//! them to the CRI log, and records the exit code in the exit file.
//!
//! The monitor runs in a session of its own, so neither a signal aimed at the daemon's
//! terminal nor the daemon's death reach it; it prints the container's pid once the
//! container is created, or fails with the runtime's error on stderr.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::container::attach::ContainerStdio;
use crate::container::oci::OciRuntime;
use crate::process::ProcessHandle;

/// The binary's name, as the workspace builds it.
pub const MONITOR_BINARY_NAME: &str = "sandboxd-monitor";

/// What the monitor needs to create one container.
pub struct MonitorArgs<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub runtime: &'a OciRuntime,
    pub log: &'a Path,
    pub exit_file: &'a Path,
    pub attach_socket: &'a Path,
    pub stdio: ContainerStdio,
    /// Where the runtime hands over the container's terminal, when it has one.
    pub console_socket: Option<&'a Path>,
}

/// Finds the monitor: the configured path, else beside the running executable.
pub fn locate(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    crate::config::locate_beside_exe(MONITOR_BINARY_NAME, configured).map_err(|searched| {
        anyhow::anyhow!(
            "{MONITOR_BINARY_NAME} not found (looked at {}); build it with `cargo build --release` or pass its path",
            searched.join(", ")
        )
    })
}

/// The monitor's tag, inherited by the runtime it runs: the container id, by which a
/// restarted daemon finds a container it was creating (see [`crate::process::tagged`]).
pub const CONTAINER_ID_ENV: &str = "SANDBOXD_CONTAINER_ID";

/// Starts the monitor, which creates the container; returns the monitor and the
/// container's first process. The container runs its program once the runtime's `start`.
pub async fn spawn(
    binary: &Path,
    args: &MonitorArgs<'_>,
) -> anyhow::Result<(ProcessHandle, ProcessHandle)> {
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("--id")
        .arg(args.id)
        .arg("--bundle")
        .arg(args.bundle)
        .arg("--runtime")
        .arg(&args.runtime.binary)
        .arg("--runtime-root")
        .arg(&args.runtime.root)
        .arg("--log")
        .arg(args.log)
        .arg("--exit-file")
        .arg(args.exit_file)
        .arg("--attach-socket")
        .arg(args.attach_socket);
    match (args.stdio.stdin, args.stdio.stdin_once) {
        (true, true) => {
            command.args(["--stdin", "once"]);
        }
        (true, false) => {
            command.args(["--stdin", "open"]);
        }
        _ => {}
    }
    if let Some(console_socket) = args.console_socket {
        command.arg("--console-socket").arg(console_socket);
    }
    command
        .env(CONTAINER_ID_ENV, args.id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("run {}", binary.display()))?;
    let monitor_pid = child.id().context("the monitor exited at once")?;
    let monitor = ProcessHandle::of(monitor_pid);
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut stderr = child.stderr.take().expect("piped stderr");
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .await
        .context("read the container's pid from the monitor")?;
    let container_pid = line.trim().parse::<u32>().ok();
    if let (Some(pid), Some(monitor)) = (container_pid, monitor) {
        if let Some(process) = ProcessHandle::of(pid) {
            // Reap the monitor whenever it ends; after a restart of the daemon, init does.
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            return Ok((monitor, process));
        }
    }
    let mut message = String::new();
    let _ = stderr.read_to_string(&mut message).await;
    let status = child.wait().await.context("wait for the monitor")?;
    bail!(
        "{} ({status}): {}",
        binary.display(),
        message.trim().trim_start_matches("sandboxd-monitor: ")
    )
}
