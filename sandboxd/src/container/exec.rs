//! ExecSync: run a command in a running container and return its output and exit code;
//! the same command started for the streaming server (Exec), its stdio left to stream;
//! ReopenContainerLog: have the monitor reopen the log after it was rotated.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::container::console::{ConsoleSocket, SOCKET_PREFIX};
use crate::container::oci::{ExecStdio, OciRuntime};
use crate::container::ContainerState;
use crate::error::{Error, Result};
use crate::runtime::{new_id, Runtime};

/// How long the monitor gets to reopen a container's log.
const REOPEN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// A command started in a container for a streamed Exec.
pub struct StreamedExec {
    pub child: tokio::process::Child,
    /// Where the runtime wrote the command's pid ([`crate::container::oci::kill_exec`]).
    pub pid_file: std::path::PathBuf,
    pub object: String,
    /// The master end of its terminal, when it has one (its stdio is then the terminal).
    pub terminal: Option<std::os::fd::OwnedFd>,
}

/// One exec about to run: the container, its runtime, and the exec's own name and pid file.
pub struct ExecTarget {
    pub id: String,
    pub object: String,
    pub oci: OciRuntime,
    name: String,
    pid_file: std::path::PathBuf,
}

/// How long the runtime gets to hand over a terminal.
const TERMINAL_TIMEOUT: Duration = Duration::from_secs(10);

impl Runtime {
    /// Checks that `id` can run `cmd` now (a running container, a command) and names the
    /// exec. The container's lock is not held while the command runs: execs may be long
    /// and concurrent.
    pub async fn exec_target(&self, id: &str, cmd: &[String]) -> Result<ExecTarget> {
        let (_, entry) = self.lookup_container(id)?;
        let mut record = entry.lock().await;
        self.observe(&mut record)?;
        if record.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "{} is {}; exec needs a running container",
                record.describe(),
                record.state.as_str()
            )));
        }
        if cmd.is_empty() || cmd[0].is_empty() {
            return Err(Error::invalid(record.describe(), "cmd", "is empty"));
        }
        let name = new_id()[..16].to_string();
        Ok(ExecTarget {
            pid_file: self
                .container_dir(&record.id)
                .path()
                .join(format!("exec-{name}.pid")),
            name,
            oci: OciRuntime::new(record.runtime.clone(), &self.config.oci_runtime_root),
            id: record.id.clone(),
            object: record.describe(),
        })
    }

    /// Starts `cmd` in the running container `id`: with a terminal if `tty`, else with
    /// pipes (stdin piped if `stdin`).
    pub async fn exec_streamed(
        &self,
        id: &str,
        cmd: &[String],
        stdin: bool,
        tty: bool,
    ) -> Result<StreamedExec> {
        let ExecTarget {
            id: full_id,
            object,
            oci,
            name,
            pid_file,
        } = self.exec_target(id, cmd).await?;
        // Near the CRI socket: a unix socket's path is limited to 108 bytes.
        let console = if tty {
            let dir = self.config.socket.parent().unwrap_or(Path::new("/run"));
            Some(
                ConsoleSocket::bind(&dir.join(format!("{SOCKET_PREFIX}{name}.sock")))
                    .map_err(|e| Error::step("open a console socket", &object, e))?,
            )
        } else {
            None
        };
        let stdio = match &console {
            Some(console) => ExecStdio::Terminal {
                console_socket: console.path().to_path_buf(),
                monitor: self.monitor_binary.clone(),
            },
            None => ExecStdio::Pipes { stdin },
        };
        let mut child = oci
            .spawn_exec(&full_id, cmd, &stdio, &pid_file)
            .map_err(|e| Error::step("exec in the container", &object, e))?;
        let terminal = match console {
            None => None,
            Some(console) => {
                let received = tokio::select! {
                    master = console.receive(TERMINAL_TIMEOUT) => master.map_err(anyhow::Error::from),
                    _ = child.wait() => {
                        let mut stderr = String::new();
                        if let Some(mut pipe) = child.stderr.take() {
                            let _ = tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr).await;
                        }
                        Err(anyhow::anyhow!("the runtime exited: {}", stderr.trim()))
                    }
                };
                match received {
                    Ok(master) => Some(master),
                    Err(e) => {
                        crate::container::oci::kill_exec(&mut child, &pid_file).await;
                        return Err(Error::step("give the exec a terminal", &object, e));
                    }
                }
            }
        };
        Ok(StreamedExec {
            child,
            pid_file,
            object,
            terminal,
        })
    }

    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput> {
        let ExecTarget {
            id: full_id,
            object,
            oci,
            pid_file,
            ..
        } = self.exec_target(id, cmd).await?;
        let result = oci
            .exec(&full_id, cmd, timeout, &pid_file)
            .await
            .map_err(|e| Error::step("exec in the container", &object, e))?;
        if result.timed_out {
            return Err(Error::DeadlineExceeded(format!(
                "exec {:?} in {object} ran past its timeout of {:?} and was killed",
                cmd.join(" "),
                timeout.unwrap_or_default()
            )));
        }
        Ok(ExecOutput {
            stdout: result.stdout,
            stderr: result.stderr,
            exit_code: result.exit_code,
        })
    }

    /// Has the monitor reopen the log at its path, and returns once the file is there
    /// again (the kubelet's log rotation renames it, calls this, and reads the new one at
    /// once, as containerd, which reopens in-process, lets it).
    pub async fn reopen_container_log(&self, id: &str) -> Result<()> {
        let (_, entry) = self.lookup_container(id)?;
        let mut record = entry.lock().await;
        self.observe(&mut record)?;
        let Some(monitor) = record
            .monitor
            .filter(|_| record.state == ContainerState::Running)
        else {
            return Err(Error::FailedPrecondition(format!(
                "{} is not running; its log is closed",
                record.describe()
            )));
        };
        monitor
            .signal(Signal::SIGUSR1)
            .map_err(|e| Error::step("reopen the log", record.describe(), e))?;
        let deadline = tokio::time::Instant::now() + REOPEN_TIMEOUT;
        while !record.log_path.exists() {
            if tokio::time::Instant::now() > deadline || !monitor.is_alive() {
                return Err(Error::step(
                    "reopen the log",
                    record.describe(),
                    anyhow::anyhow!(
                        "the monitor did not reopen {} within {REOPEN_TIMEOUT:?}",
                        record.log_path.display()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}
