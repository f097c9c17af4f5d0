//! Running plugin binaries: the seam between the runtime and the processes it starts.
//!
//! [`PluginExec`] is the one side effect of the runtime; [`ProcessExec`] is the real thing
//! (tokio processes, a deadline per call, the plugin's whole process group killed when the
//! deadline passes), and unit tests put a recording fake in its place.

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The CNI variables this runtime sets; any of them inherited from our own environment is
/// removed first, so a plugin never sees a stale value.
pub const CNI_VARIABLES: &[&str] = &[
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

/// Only this much of a plugin's stderr is kept for error messages.
const STDERR_KEEP: usize = 4096;

/// One plugin call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub plugin: PathBuf,
    /// CNI_* variables to set, in order.
    pub env: Vec<(&'static str, String)>,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
}

impl Invocation {
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How a plugin call went wrong at the process level.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start {}: {source}", .plugin.display())]
    Spawn {
        plugin: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Its output or exit status could not be read.
    #[error("lost track of it: {0}")]
    Io(#[source] io::Error),
    #[error("did not finish within {0:?} and was killed")]
    TimedOut(Duration),
    /// Non-zero exit or death by signal; stdout may hold a CNI error object.
    #[error("exited with {status}")]
    Failed {
        status: String,
        stdout: Vec<u8>,
        stderr: String,
    },
}

/// Runs plugins. Implementations must honour `Invocation::timeout`.
pub trait PluginExec: Send + Sync {
    /// Runs one plugin to completion and returns its stdout if it exited 0.
    fn run(
        &self,
        invocation: Invocation,
    ) -> impl Future<Output = Result<Vec<u8>, ExecError>> + Send;

    /// Finds the binary for plugin `plugin_type` in `dirs`, first match wins.
    fn find(&self, plugin_type: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        dirs.iter().map(|d| d.join(plugin_type)).find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    }
}

/// Runs plugins as child processes, optionally inside another network namespace.
#[derive(Debug, Default)]
pub struct ProcessExec {
    /// The "host" side of the plugins: where bridges and host veths go. None runs plugins
    /// in the caller's own network namespace, as on a real node; the lab sets a node's netns.
    host_netns: Option<NetnsSpawner>,
}

impl ProcessExec {
    pub fn new() -> Self {
        ProcessExec::default()
    }

    /// Plugins run with `netns` as their current network namespace.
    pub fn in_netns(netns: impl Into<PathBuf>) -> Self {
        ProcessExec {
            host_netns: Some(NetnsSpawner::start(netns.into())),
        }
    }

    pub fn host_netns(&self) -> Option<&Path> {
        self.host_netns.as_ref().map(|s| s.netns.as_path())
    }
}

type SpawnJob = Box<dyn FnOnce(Result<(), &io::Error>) + Send>;

/// A thread that has joined a network namespace and starts processes from there.
///
/// A child inherits the network namespace of the thread that forks it. Entering the
/// namespace in the child instead (a `pre_exec` setns) would force a full fork() of this
/// whole process for every plugin call, where a thread already inside lets the standard
/// library use posix_spawn (vfork): measured 0.3 ms less per plugin call.
#[derive(Debug)]
struct NetnsSpawner {
    netns: PathBuf,
    jobs: std::sync::mpsc::Sender<SpawnJob>,
}

impl NetnsSpawner {
    fn start(netns: PathBuf) -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<SpawnJob>();
        let target = netns.clone();
        std::thread::Builder::new()
            .name("cni-netns-spawner".into())
            .spawn(move || {
                // setns(2) here moves only this thread.
                let entered = std::fs::File::open(&target).and_then(|file| {
                    // SAFETY: setns on a valid fd; affects only the calling thread.
                    match unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } {
                        0 => Ok(()),
                        _ => Err(io::Error::last_os_error()),
                    }
                });
                while let Ok(job) = queue.recv() {
                    job(entered.as_ref().map(|_| ()));
                }
            })
            .expect("start the netns spawner thread");
        NetnsSpawner { netns, jobs }
    }

    /// Spawns `command` from inside the namespace.
    async fn spawn(
        &self,
        mut command: tokio::process::Command,
    ) -> io::Result<tokio::process::Child> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Handle::current();
        let netns = self.netns.clone();
        let job: SpawnJob = Box::new(move |entered| {
            let outcome = match entered {
                Ok(()) => {
                    // The child is registered with the caller's runtime for its exit status.
                    let _context = runtime.enter();
                    command.spawn()
                }
                Err(e) => Err(io::Error::new(
                    e.kind(),
                    format!("cannot enter the host netns {}: {e}", netns.display()),
                )),
            };
            let _ = reply.send(outcome);
        });
        self.jobs
            .send(job)
            .map_err(|_| io::Error::other("the netns spawner thread is gone"))?;
        answer
            .await
            .map_err(|_| io::Error::other("the netns spawner thread dropped the request"))?
    }
}

impl PluginExec for ProcessExec {
    async fn run(&self, invocation: Invocation) -> Result<Vec<u8>, ExecError> {
        let spawn_error = |source| ExecError::Spawn {
            plugin: invocation.plugin.clone(),
            source,
        };
        let mut command = tokio::process::Command::new(&invocation.plugin);
        for var in CNI_VARIABLES {
            command.env_remove(var);
        }
        command
            .envs(invocation.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a deadline kills whatever the plugin started too.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match &self.host_netns {
            Some(spawner) => spawner.spawn(command).await,
            None => command.spawn(),
        }
        .map_err(spawn_error)?;
        let pgid = child.id().map(|pid| pid as i32);

        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let input = invocation.stdin;
        let io = async move {
            // A plugin may exit without reading its config; that is not our failure.
            let write = async move {
                let _ = stdin.write_all(&input).await;
                drop(stdin);
            };
            let mut out = Vec::new();
            let mut err = Vec::new();
            let (_, out_read, err_read) = tokio::join!(
                write,
                stdout.read_to_end(&mut out),
                stderr.read_to_end(&mut err)
            );
            out_read.and(err_read).map(|_| (out, err))
        };
        let finished = async { tokio::join!(io, child.wait()) };

        match tokio::time::timeout(invocation.timeout, finished).await {
            Ok((io_result, status)) => {
                let (stdout, stderr) = io_result.map_err(ExecError::Io)?;
                let status = status.map_err(ExecError::Io)?;
                if status.success() {
                    return Ok(stdout);
                }
                let status = match (status.code(), status.signal()) {
                    (Some(code), _) => format!("status {code}"),
                    (None, Some(signal)) => format!("signal {signal}"),
                    _ => status.to_string(),
                };
                let start = stderr.len().saturating_sub(STDERR_KEEP);
                Err(ExecError::Failed {
                    status,
                    stdout,
                    stderr: String::from_utf8_lossy(&stderr[start..]).trim().to_string(),
                })
            }
            Err(_) => {
                if let Some(pgid) = pgid {
                    // SAFETY: plain kill(2) on the process group we created.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                }
                let _ = child.wait().await;
                Err(ExecError::TimedOut(invocation.timeout))
            }
        }
    }
}
