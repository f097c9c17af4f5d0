//! Starting the lab's daemons inside a node's network namespace, detached from the
//! command that starts them (their own session, output to a log file), so they outlive
//! `sandboxctl lab up` as a machine's daemons outlive the shell that started them.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context;

use crate::process::ProcessHandle;

/// Starts `command` in the network namespace pinned at `netns`, in a session of its own,
/// its output appended to `log`.
pub fn detached(mut command: Command, netns: &Path, log: &Path) -> anyhow::Result<ProcessHandle> {
    let program = command.get_program().to_string_lossy().into_owned();
    let namespace =
        std::fs::File::open(netns).with_context(|| format!("open {}", netns.display()))?;
    let output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let fd = namespace.as_raw_fd();
    command
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output);
    // SAFETY: between fork and exec only async-signal-safe calls (setns, setsid).
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 || libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("start {program}"))?;
    let pid = child.id();
    // Not waited for here: it is a daemon. Its exit is noticed through its pid and start
    // time; the zombie of a daemon that dies while we still run is reaped by the reaper
    // below, or by init once we exit.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    ProcessHandle::of(pid)
        .with_context(|| format!("{program} exited at once (see {})", log.display()))
}
