//! sandboxd-monitor: one per container, as CRI-O's conmon is. It creates the container with
//! the OCI runtime, holds the container's stdout and stderr, writes them to the container's
//! log in the CRI format, and records the exit code when the container ends, so neither
//! output nor exit codes are lost while sandboxd restarts.
//!
//!   sandboxd-monitor --id ID --bundle DIR --runtime runc --runtime-root DIR
//!                    --log FILE --exit-file FILE --attach-socket PATH
//!                    [--stdin open|once] [--console-socket PATH]
//!
//! Prints the container's pid on stdout once it is created (then closes stdout); the
//! container runs once sandboxd calls `<runtime> start ID`. The monitor is the container's
//! subreaper, so the container process becomes its child when the runtime exits.
//! The exit file is JSON: `{"exit_code": 3, "signal": null, "finished_at_ns": …}`, written
//! atomically; a container killed by signal N has exit code 128 + N, as the kubelet reports.
//! Once the container is created, the monitor's own messages go to `monitor.log` beside the
//! exit file (whoever started it may be gone). SIGUSR1 makes it reopen the log, for
//! ReopenContainerLog after the kubelet rotated it.
//!
//! With `--stdin`, the container's stdin is a pipe the monitor holds (`once`: closed when
//! the first attached client's stdin ends); with `--console-socket`, the container has a
//! terminal (its config.json says so), whose master the runtime hands to that socket and
//! the monitor keeps: it is the container's stdin and its one output. Clients attach to
//! that stdio on the attach socket (see the `attach` module).
//!
//!   sandboxd-monitor exec --pid-file FILE -- RUNTIME [ARG…] exec --detach …
//!
//! waits for a command a runtime started detached (an exec with a terminal: runtimes hand
//! a terminal only to a detached process): it becomes a subreaper, runs the runtime, reads
//! the command's pid from the pid file, waits for the command (its orphan, now the
//! monitor's child) and exits with its status (128 + N for signal N).

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use sandboxd::container::attach::ContainerStdio;
use sandboxd::container::console::ConsoleSocket;
use sandboxd::container::log::LineWriter;

mod attach;

struct Args {
    id: String,
    bundle: PathBuf,
    runtime: PathBuf,
    runtime_root: PathBuf,
    log: PathBuf,
    exit_file: PathBuf,
    attach_socket: PathBuf,
    stdio: ContainerStdio,
    console_socket: Option<PathBuf>,
}

fn parse() -> Result<Args> {
    let mut values = std::collections::HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        values.insert(flag, value);
    }
    let (stdin, stdin_once) = match values.remove("--stdin").as_deref() {
        None => (false, false),
        Some("open") => (true, false),
        Some("once") => (true, true),
        Some(other) => bail!("--stdin {other:?}: expected open or once"),
    };
    let console_socket = values.remove("--console-socket").map(PathBuf::from);
    let mut take = |flag: &str| {
        values
            .remove(flag)
            .with_context(|| format!("{flag} is required"))
    };
    let args = Args {
        id: take("--id")?,
        bundle: take("--bundle")?.into(),
        runtime: take("--runtime")?.into(),
        runtime_root: take("--runtime-root")?.into(),
        log: take("--log")?.into(),
        exit_file: take("--exit-file")?.into(),
        attach_socket: take("--attach-socket")?.into(),
        stdio: ContainerStdio {
            stdin,
            stdin_once,
            tty: console_socket.is_some(),
        },
        console_socket,
    };
    if let Some(flag) = values.keys().next() {
        bail!("unknown flag {flag}");
    }
    Ok(args)
}

/// Set by SIGUSR1: reopen the log at its path.
static REOPEN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_reopen(_: libc::c_int) {
    REOPEN.store(true, Ordering::SeqCst);
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Reads what is there without blocking; `Ok(None)` at end of stream.
fn read_some(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    match nix::unistd::read(fd.as_raw_fd(), buf) {
        // A terminal's master reads EIO once no process holds its other end.
        Ok(0) | Err(nix::Error::EIO) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(nix::Error::EAGAIN) => Ok(Some(0)),
        Err(e) => Err(e.into()),
    }
}

fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// One output of the container: its pipe (or terminal), and its lines in the log.
struct Output {
    fd: Option<OwnedFd>,
    log: LineWriter,
    stderr: bool,
}

/// Moves everything readable now from the container's outputs into the log and to the
/// attached clients.
fn pump(
    outputs: &mut [Output],
    buf: &mut [u8],
    log: &mut std::fs::File,
    attached: &mut attach::AttachServer,
) -> Result<()> {
    for output in outputs.iter_mut() {
        let Some(stream) = output.fd.as_ref() else {
            continue;
        };
        loop {
            match read_some(stream, buf)? {
                None => {
                    output.log.finish(now_ns(), log)?;
                    output.fd = None;
                    break;
                }
                Some(0) => break,
                Some(n) => {
                    output.log.push(&buf[..n], now_ns(), log)?;
                    attached.broadcast(output.stderr, &buf[..n]);
                }
            }
        }
    }
    Ok(())
}

/// Reaps every exited child (orphans come to us as subreaper); the container's status once
/// it has exited.
fn reap(container: i32) -> Option<WaitStatus> {
    let mut found = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(status @ (WaitStatus::Exited(p, _) | WaitStatus::Signaled(p, _, _)))
                if p.as_raw() == container =>
            {
                found = Some(status)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(_) => {}
        }
    }
}

fn run(args: Args) -> Result<()> {
    // SAFETY: prctl(2) with an integer argument.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!("become a subreaper: {}", std::io::Error::last_os_error());
    }
    let (out_read, out_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (err_read, err_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (stdin_read, stdin_write) = if args.stdio.stdin && !args.stdio.tty {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        (Some(read), Some(write))
    } else {
        (None, None)
    };
    let console = match &args.console_socket {
        Some(path) => Some(
            ConsoleSocket::bind(path)
                .with_context(|| format!("open the console socket {}", path.display()))?,
        ),
        None => None,
    };
    let pid_file = args.bundle.join("container.pid");
    let _ = std::fs::remove_file(&pid_file);

    // The runtime hands its stdio to the container process (unless it makes a terminal
    // for it), so the pipes become the container's stdin, stdout and stderr.
    let mut create = Command::new(&args.runtime);
    create
        .arg("--root")
        .arg(&args.runtime_root)
        .args(["create", "--bundle"])
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(&pid_file);
    if let Some(console) = &console {
        create.arg("--console-socket").arg(console.path());
    }
    create
        .arg(&args.id)
        .stdin(stdin_read.map_or_else(Stdio::null, Stdio::from))
        .stdout(Stdio::from(out_write))
        .stderr(Stdio::from(err_write));
    let status = create
        .status()
        .with_context(|| format!("run {}", args.runtime.display()))?;
    drop(create);
    if !status.success() {
        set_nonblocking(&err_read)?;
        let mut message = vec![0u8; 64 * 1024];
        let n = read_some(&err_read, &mut message)?.unwrap_or(0);
        bail!(
            "{} create {} failed ({status}): {}",
            args.runtime.display(),
            args.id,
            String::from_utf8_lossy(&message[..n]).trim()
        );
    }
    // The runtime sent the master before `create` returned: it waits in the socket.
    let terminal = match console {
        Some(console) => Some(
            console
                .receive_within(std::time::Duration::from_secs(10))
                .context("take the container's terminal")?,
        ),
        None => None,
    };
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("read {}", pid_file.display()))?
        .trim()
        .parse()
        .context("the pid file holds no pid")?;
    let monitor_log = args.exit_file.with_file_name("monitor.log");
    let own_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&monitor_log)
        .with_context(|| format!("open {}", monitor_log.display()))?;
    nix::unistd::dup2(own_log.as_raw_fd(), 2)?;
    // Listening before the pid is out: a client may attach as soon as the container runs.
    let container_stdin = match (&terminal, stdin_write) {
        (Some(master), _) if args.stdio.stdin => Some(master.try_clone()?),
        (_, pipe) => pipe,
    };
    let resizes = terminal.as_ref().map(OwnedFd::try_clone).transpose()?;
    let mut attached =
        attach::AttachServer::bind(&args.attach_socket, args.stdio, container_stdin, resizes)
            .with_context(|| format!("listen on {}", args.attach_socket.display()))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{pid}")?;
    stdout.flush()?;
    // sandboxd reads the pid and stops listening; nothing more goes to our stdout.
    let devnull = std::fs::File::options().write(true).open("/dev/null")?;
    nix::unistd::dup2(devnull.as_raw_fd(), 1)?;

    let open_log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args.log)
            .with_context(|| format!("open {}", args.log.display()))
    };
    let mut log = open_log()?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        nix::sys::signal::sigaction(
            nix::sys::signal::Signal::SIGUSR1,
            &nix::sys::signal::SigAction::new(
                nix::sys::signal::SigHandler::Handler(on_reopen),
                nix::sys::signal::SaFlags::empty(),
                nix::sys::signal::SigSet::empty(),
            ),
        )?;
    }
    let mut outputs = match terminal {
        // A terminal is one output; the runtime is gone, so the pipes say nothing more.
        Some(master) => vec![Output {
            fd: Some(master),
            log: LineWriter::new("stdout"),
            stderr: false,
        }],
        None => vec![
            Output {
                fd: Some(out_read),
                log: LineWriter::new("stdout"),
                stderr: false,
            },
            Output {
                fd: Some(err_read),
                log: LineWriter::new("stderr"),
                stderr: true,
            },
        ],
    };
    for output in outputs.iter().filter_map(|o| o.fd.as_ref()) {
        set_nonblocking(output)?;
    }
    let mut buf = vec![0u8; 32 * 1024];
    // A pidfd polls readable when the container exits, so the exit is recorded at once.
    // SAFETY: pidfd_open(2) returns a new descriptor we own, or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a fresh descriptor nothing else owns.
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd as i32) });
    let exit = loop {
        let mut fds: Vec<PollFd> = outputs
            .iter()
            .filter_map(|o| o.fd.as_ref())
            .chain(pidfd.as_ref())
            .map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .chain(
                attached
                    .poll_set()
                    .into_iter()
                    .map(|(fd, flags)| PollFd::new(fd, flags)),
            )
            .collect();
        // The timeout is a fallback: a signal or the pidfd ends the wait sooner.
        let _ = poll(&mut fds, PollTimeout::from(1000u16));
        drop(fds);
        if REOPEN.swap(false, Ordering::SeqCst) {
            log.sync_all()?;
            log = open_log()?;
        }
        attached.serve();
        pump(&mut outputs, &mut buf, &mut log, &mut attached)?;
        if let Some(status) = reap(pid) {
            // Take what the container wrote last; a descendant still holding a pipe open
            // must not keep the exit code from being recorded.
            pump(&mut outputs, &mut buf, &mut log, &mut attached)?;
            for output in outputs.iter_mut() {
                if output.fd.take().is_some() {
                    output.log.finish(now_ns(), &mut log)?;
                }
            }
            break status;
        }
    };
    log.sync_all()?;

    let (code, signal) = match exit {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, signal, _) => (128 + signal as i32, Some(signal as i32)),
        other => bail!("unexpected wait status {other:?}"),
    };
    let record =
        serde_json::json!({ "exit_code": code, "signal": signal, "finished_at_ns": now_ns() });
    let staging = args.exit_file.with_extension("tmp");
    let mut file = std::fs::File::create(&staging)?;
    file.write_all(record.to_string().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&staging, &args.exit_file)
        .with_context(|| format!("write {}", args.exit_file.display()))?;
    attached.finish();
    Ok(())
}

/// `exec` mode: runs the runtime's detached exec and waits for what it started.
fn wait_detached_exec() -> Result<i32> {
    let mut args = std::env::args().skip(2);
    let (Some(flag), Some(pid_file)) = (args.next(), args.next()) else {
        bail!("usage: sandboxd-monitor exec --pid-file FILE -- RUNTIME [ARG…]");
    };
    if flag != "--pid-file" || args.next().as_deref() != Some("--") {
        bail!("usage: sandboxd-monitor exec --pid-file FILE -- RUNTIME [ARG…]");
    }
    let command: Vec<String> = args.collect();
    let (program, runtime_args) = command.split_first().context("no runtime to run")?;
    nix::sys::prctl::set_child_subreaper(true).context("become a subreaper")?;
    let status = Command::new(program)
        .args(runtime_args)
        .status()
        .with_context(|| format!("run {program}"))?;
    if !status.success() {
        bail!("{program} exec failed ({status})");
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("read {pid_file}"))?
        .trim()
        .parse()
        .with_context(|| format!("{pid_file} holds no pid"))?;
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) => continue,
            // Not reparented yet: the runtime's intermediate process is still exiting.
            Err(nix::errno::Errno::ECHILD)
                if std::path::Path::new(&format!("/proc/{pid}")).exists() =>
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(e) => bail!("wait for the exec'd process {pid}: {e}"),
        }
    }
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("exec") {
        return match wait_detached_exec() {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("sandboxd-monitor: {e:#}");
                ExitCode::from(255)
            }
        };
    }
    let outcome = parse().and_then(run);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandboxd-monitor: {e:#}");
            ExitCode::FAILURE
        }
    }
}
