//! sandboxd-runtime: the OCI runtime sandboxd runs containers with by default. It is youki's
//! `libcontainer` (namespaces, pivot_root, mounts, capabilities, no_new_privileges: the code
//! where runtimes get their CVEs, not written again here) behind the subset of runc's
//! command line that sandboxd and its monitor use, so runc, crun and this binary are
//! interchangeable with `sandboxd --runtime`:
//!
//!   sandboxd-runtime --root DIR create --bundle DIR [--pid-file FILE] [--console-socket SOCK] ID
//!   sandboxd-runtime --root DIR start ID
//!   sandboxd-runtime --root DIR kill ID [SIGNAL]
//!   sandboxd-runtime --root DIR delete [--force] ID
//!   sandboxd-runtime --root DIR exec [--pid-file FILE] [-d [--tty --console-socket SOCK]] ID CMD [ARG...]
//!   sandboxd-runtime --root DIR state ID
//!
//! As with runc, `create` leaves the container's process waiting for `start`, with the
//! caller's stdio as its own; `exec` waits for the command and exits with its status.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use nix::sys::wait::{waitpid, WaitStatus};

mod exec;

#[derive(Parser)]
#[command(
    name = "sandboxd-runtime",
    version,
    about = "An OCI runtime (youki's libcontainer) with runc's command line"
)]
struct Cli {
    /// The runtime's state dir.
    #[arg(long, default_value = "/run/sandboxd/runtime")]
    root: PathBuf,
    /// Accepted for runc compatibility; log to stderr.
    #[arg(long, hide = true)]
    log: Option<PathBuf>,
    /// Accepted for runc compatibility.
    #[arg(long, hide = true)]
    log_format: Option<String>,
    /// Use systemd to manage the container's cgroup.
    #[arg(long)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a container from a bundle; it runs its program after `start`.
    Create {
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// For a container with a terminal (`process.terminal`): an AF_UNIX socket that
        /// receives the terminal's master end (SCM_RIGHTS).
        #[arg(long)]
        console_socket: Option<PathBuf>,
        id: String,
    },
    /// Run a created container's program.
    Start { id: String },
    /// Signal a container's process (default SIGTERM).
    Kill {
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
        /// Signal every process of the container.
        #[arg(long, short)]
        all: bool,
    },
    /// Delete a container's state; with --force, kill it first.
    Delete {
        #[arg(long, short)]
        force: bool,
        id: String,
    },
    /// Run a command in a running container and wait for it.
    Exec {
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Give the command a terminal; its master end goes to --console-socket.
        #[arg(long, short)]
        tty: bool,
        /// An AF_UNIX socket that receives the terminal's master end (SCM_RIGHTS).
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Start the command and exit, leaving it to the caller's subreaper.
        #[arg(long, short)]
        detach: bool,
        id: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Print a container's state as JSON.
    State { id: String },
}

fn load(root: &std::path::Path, id: &str) -> anyhow::Result<Container> {
    let dir = root.join(id);
    if !dir.exists() {
        bail!("container {id} does not exist");
    }
    Container::load(dir).with_context(|| format!("load container {id}"))
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    std::fs::create_dir_all(&cli.root).with_context(|| format!("create {}", cli.root.display()))?;
    match cli.command {
        Command::Create {
            bundle,
            pid_file,
            console_socket,
            id,
        } => {
            ContainerBuilder::new(id.clone(), SyscallType::default())
                .with_executor(DefaultExecutor {})
                .with_console_socket(console_socket)
                .with_pid_file(pid_file)?
                .with_root_path(&cli.root)?
                .validate_id()?
                .as_init(&bundle)
                .with_systemd(cli.systemd_cgroup)
                .with_detach(true)
                .build()
                .with_context(|| format!("create container {id}"))?;
            Ok(0)
        }
        Command::Start { id } => {
            load(&cli.root, &id)?
                .start()
                .with_context(|| format!("start container {id}"))?;
            Ok(0)
        }
        Command::Kill { id, signal, all } => {
            let signal = Signal::try_from(signal.as_str())?;
            load(&cli.root, &id)?
                .kill(signal, all)
                .with_context(|| format!("kill container {id}"))?;
            Ok(0)
        }
        Command::Delete { force, id } => {
            load(&cli.root, &id)?
                .delete(force)
                .with_context(|| format!("delete container {id}"))?;
            Ok(0)
        }
        Command::Exec {
            pid_file,
            tty,
            console_socket,
            detach,
            id,
            command,
        } => {
            // As runc: the runtime keeps no terminal of its own, it hands the master end
            // of one to a detached command's caller.
            if tty && (console_socket.is_none() || !detach) {
                bail!("exec --tty needs --detach and --console-socket to hand the terminal to");
            }
            // libcontainer's tenant runs as root in / unless told otherwise; runc's exec
            // runs as the container's process does: its user, groups and cwd, and under
            // its seccomp filter.
            let spec = container_spec(&load(&cli.root, &id)?)?;
            let process = spec
                .process()
                .clone()
                .context("the container has no process")?;
            let user = process.user();
            let executor = exec::FilteredExecutor::new(&spec);
            let builder = ContainerBuilder::new(id.clone(), SyscallType::default())
                .with_executor(executor.clone())
                .with_console_socket(console_socket.filter(|_| tty))
                .with_pid_file(pid_file)?
                .with_root_path(&cli.root)?
                .as_tenant();
            let (pid, _process_file) = if tty {
                // libcontainer hands a terminal only to a process whose spec asks for one:
                // the whole process (the container's, with this command and a terminal)
                // goes in a file, as `runc exec --process` takes it.
                let mut exec_process = process.clone();
                exec_process.set_args(Some(command));
                exec_process.set_terminal(Some(true));
                exec::borrow_capabilities(&mut exec_process, &executor);
                let file = tempfile::NamedTempFile::new().context("write the exec's process")?;
                serde_json::to_writer(file.as_file(), &exec_process)?;
                let pid = builder
                    .with_process(Some(file.path()))
                    .with_detach(true)
                    .build()
                    .with_context(|| format!("exec in container {id}"))?;
                (pid, Some(file))
            } else {
                let pid = builder
                    .with_capabilities(executor.borrowed_capability_names())
                    .with_user(Some(user.uid()))
                    .with_group(Some(user.gid()))
                    .with_additional_gids(user.additional_gids().clone().unwrap_or_default())
                    .with_cwd(Some(process.cwd().clone()))
                    .with_container_args(command)
                    .with_detach(detach)
                    .build()
                    .with_context(|| format!("exec in container {id}"))?;
                (pid, None)
            };
            if detach {
                return Ok(0);
            }
            // The command runs as our child: its status is ours, as with runc exec.
            Ok(match waitpid(pid, None)? {
                WaitStatus::Exited(_, code) => code,
                WaitStatus::Signaled(_, signal, _) => 128 + signal as i32,
                _ => 1,
            })
        }
        Command::State { id } => {
            let container = load(&cli.root, &id)?;
            let state = serde_state(&container);
            println!("{state}");
            Ok(0)
        }
    }
}

/// The spec of a container's bundle (`config.json`), as `create` ran it.
fn container_spec(container: &Container) -> anyhow::Result<Spec> {
    let path = container.bundle().join("config.json");
    Spec::load(&path).with_context(|| format!("read {}", path.display()))
}

/// runc's `state` fields that callers read.
fn serde_state(container: &Container) -> String {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "id": container.id(),
        "status": format!("{:?}", container.status()).to_lowercase(),
        "pid": container.pid().map(|p| p.as_raw()).unwrap_or(0),
        "bundle": container.bundle(),
    })
    .to_string()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("sandboxd-runtime: {e:#}");
            ExitCode::FAILURE
        }
    }
}
