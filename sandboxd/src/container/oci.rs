//! The OCI runtime, driven through runc's command line (`runc`, `crun` and youki share it):
//! `start`, `exec` and `delete`. `create` is the monitor's, which must be the parent of
//! what it creates (see `monitor`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::AsyncReadExt;

/// The most output ExecSync keeps of each stream, as the kubelet caps it (16 MiB).
pub const MAX_EXEC_OUTPUT: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct OciRuntime {
    pub binary: PathBuf,
    /// Its state dir (`--root`).
    pub root: PathBuf,
}

/// What an exec ended with.
#[derive(Debug, Clone, Default)]
pub struct ExecResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
    /// The command ran past its deadline and was killed.
    pub timed_out: bool,
}

impl OciRuntime {
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        OciRuntime {
            binary: binary.into(),
            root: root.into(),
        }
    }

    fn command(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .arg("--root")
            .arg(&self.root)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs the runtime with `args`; its stdout if it succeeds, else its stderr as the error.
    async fn run(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        let output = self
            .command()
            .args(args)
            .output()
            .await
            .with_context(|| format!("run {}", self.binary.display()))?;
        if !output.status.success() {
            bail!(
                "{} {} failed ({}): {}",
                self.binary.display(),
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(output.stdout)
    }

    /// Lets a created container's process run its program.
    pub async fn start(&self, id: &str) -> anyhow::Result<()> {
        self.run(&["start", id]).await.map(drop)
    }

    /// The container's status as the runtime's `state` reports it: "created", "running",
    /// "stopped", "paused".
    pub async fn status(&self, id: &str) -> anyhow::Result<String> {
        let stdout = self.run(&["state", id]).await?;
        let state: serde_json::Value = serde_json::from_slice(&stdout)
            .with_context(|| format!("parse {} state {id}", self.binary.display()))?;
        Ok(state["status"].as_str().unwrap_or_default().to_string())
    }

    /// Deletes the runtime's state of a container, killing what still runs of it; one the
    /// runtime does not know is already deleted.
    pub async fn delete(&self, id: &str) -> anyhow::Result<()> {
        if !self.root.join(id).exists() {
            return Ok(());
        }
        self.run(&["delete", "--force", id]).await.map(drop)
    }

    /// Runs `args` in the running container `id` (with the container's env, cwd and user),
    /// keeping at most [`MAX_EXEC_OUTPUT`] of each stream; kills it at `timeout`.
    pub async fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout: Option<Duration>,
        pid_file: &Path,
    ) -> anyhow::Result<ExecResult> {
        let mut child = self.spawn_exec(id, args, &ExecStdio::Pipes { stdin: false }, pid_file)?;
        let stdout = read_capped(child.stdout.take().expect("piped stdout"));
        let stderr = read_capped(child.stderr.take().expect("piped stderr"));
        let finished = match timeout {
            None => Some(tokio::join!(stdout, stderr, child.wait())),
            Some(limit) => {
                let output = async { tokio::join!(stdout, stderr, child.wait()) };
                tokio::time::timeout(limit, output).await.ok()
            }
        };
        let Some((stdout, stderr, status)) = finished else {
            kill_exec(&mut child, pid_file).await;
            return Ok(ExecResult {
                timed_out: true,
                exit_code: -1,
                ..Default::default()
            });
        };
        let timed_out = false;
        let _ = std::fs::remove_file(pid_file);
        let status = status.with_context(|| format!("wait for {}", self.binary.display()))?;
        use std::os::unix::process::ExitStatusExt;
        let exit_code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(-1);
        Ok(ExecResult {
            stdout: stdout?,
            stderr: stderr?,
            exit_code,
            timed_out,
        })
    }
}

impl OciRuntime {
    /// Starts `args` in the running container `id` (as [`exec`](Self::exec) runs them)
    /// for the caller to stream: with pipes (stdin piped if asked, else empty), or with a
    /// terminal whose master end the runtime sends to a console socket (its own stderr
    /// then piped, for its errors); [`kill_exec`] ends it early.
    pub fn spawn_exec(
        &self,
        id: &str,
        args: &[String],
        stdio: &ExecStdio,
        pid_file: &Path,
    ) -> anyhow::Result<tokio::process::Child> {
        let _ = std::fs::remove_file(pid_file);
        let mut command = self.command();
        command.arg("exec").arg("--pid-file").arg(pid_file);
        match stdio {
            ExecStdio::Pipes { stdin } => {
                command.stdout(Stdio::piped()).stderr(Stdio::piped());
                if *stdin {
                    command.stdin(Stdio::piped());
                }
            }
            ExecStdio::Terminal {
                console_socket,
                monitor,
            } => {
                // Runtimes hand a terminal only to a detached command: the monitor's exec
                // mode runs the runtime and waits for the command in its place.
                let runtime =
                    std::mem::replace(&mut command, tokio::process::Command::new(monitor));
                let runtime = runtime.as_std();
                command
                    .kill_on_drop(true)
                    .stdin(Stdio::null())
                    .arg("exec")
                    .arg("--pid-file")
                    .arg(pid_file)
                    .arg("--")
                    .arg(runtime.get_program())
                    .args(runtime.get_args())
                    .args(["--detach", "--tty", "--console-socket"])
                    .arg(console_socket)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
            }
        }
        command
            .arg(id)
            .args(args)
            .spawn()
            .with_context(|| format!("run {}", self.binary.display()))
    }
}

/// How a streamed exec's stdio is wired.
pub enum ExecStdio {
    Pipes {
        stdin: bool,
    },
    /// `monitor`: sandboxd-monitor, which waits for the detached command.
    Terminal {
        console_socket: PathBuf,
        monitor: PathBuf,
    },
}

/// Ends an exec early. The runtime's exec waits for the process it started: kill that,
/// not the runtime, then wait for the runtime to reap it and exit, so no trace of the
/// command (not even a zombie in the container's pid namespace) outlives the call.
pub async fn kill_exec(child: &mut tokio::process::Child, pid_file: &Path) {
    if let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if tokio::time::timeout(EXEC_REAP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    let _ = std::fs::remove_file(pid_file);
}

/// How long the runtime gets to reap a timed-out exec's process it was told to kill.
const EXEC_REAP_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads a stream to its end, keeping its first [`MAX_EXEC_OUTPUT`] bytes (and draining the
/// rest, so the writer never blocks on a full pipe).
async fn read_capped(mut stream: impl tokio::io::AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = MAX_EXEC_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}
