//! sandboxd-monitor: one per container, as CRI-O's conmon is. It creates the container with
//! the OCI runtime, holds the container's stdout and stderr, writes them to the container's
//! log in the CRI format, and records the exit code when the container ends, so neither
//! output nor exit codes are lost while sandboxd restarts.
//!
//!   sandboxd-monitor --id ID --bundle DIR --runtime runc --runtime-root DIR
//!                    --log FILE --exit-file FILE
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
use sandboxd::container::log::LineWriter;

struct Args {
    id: String,
    bundle: PathBuf,
    runtime: PathBuf,
    runtime_root: PathBuf,
    log: PathBuf,
    exit_file: PathBuf,
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
    let mut take = |flag: &str| {
        values
            .remove(flag)
            .with_context(|| format!("{flag} is required"))
    };
    Ok(Args {
        id: take("--id")?,
        bundle: take("--bundle")?.into(),
        runtime: take("--runtime")?.into(),
        runtime_root: take("--runtime-root")?.into(),
        log: take("--log")?.into(),
        exit_file: take("--exit-file")?.into(),
    })
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
        Ok(0) => Ok(None),
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

type Stream = (Option<OwnedFd>, LineWriter);

/// Moves everything readable now from the container's pipes into the log.
fn pump(streams: &mut [Stream], buf: &mut [u8], log: &mut std::fs::File) -> Result<()> {
    for (fd, writer) in streams.iter_mut() {
        let Some(stream) = fd.as_ref() else { continue };
        loop {
            match read_some(stream, buf)? {
                None => {
                    writer.finish(now_ns(), log)?;
                    *fd = None;
                    break;
                }
                Some(0) => break,
                Some(n) => writer.push(&buf[..n], now_ns(), log)?,
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
    let pid_file = args.bundle.join("container.pid");
    let _ = std::fs::remove_file(&pid_file);

    // The runtime hands its stdio to the container process, so the pipes become the
    // container's stdout and stderr.
    let mut create = Command::new(&args.runtime);
    create
        .arg("--root")
        .arg(&args.runtime_root)
        .args(["create", "--bundle"])
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&args.id)
        .stdin(Stdio::null())
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
    set_nonblocking(&out_read)?;
    set_nonblocking(&err_read)?;
    let mut streams = [
        (Some(out_read), LineWriter::new("stdout")),
        (Some(err_read), LineWriter::new("stderr")),
    ];
    let mut buf = vec![0u8; 32 * 1024];
    // A pidfd polls readable when the container exits, so the exit is recorded at once.
    // SAFETY: pidfd_open(2) returns a new descriptor we own, or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a fresh descriptor nothing else owns.
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd as i32) });
    let exit = loop {
        let mut fds: Vec<PollFd> = streams
            .iter()
            .filter_map(|(fd, _)| fd.as_ref())
            .chain(pidfd.as_ref())
            .map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .collect();
        // The timeout is a fallback: a signal or the pidfd ends the wait sooner.
        let _ = poll(&mut fds, PollTimeout::from(1000u16));
        drop(fds);
        if REOPEN.swap(false, Ordering::SeqCst) {
            log.sync_all()?;
            log = open_log()?;
        }
        pump(&mut streams, &mut buf, &mut log)?;
        if let Some(status) = reap(pid) {
            // Take what the container wrote last; a descendant still holding a pipe open
            // must not keep the exit code from being recorded.
            pump(&mut streams, &mut buf, &mut log)?;
            for (fd, writer) in streams.iter_mut() {
                if fd.take().is_some() {
                    writer.finish(now_ns(), &mut log)?;
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
