//! Processes sandboxd started and may have to find again after a restart.
//!
//! A pid alone can be reused by another process once the first exits, so a process is
//! named by its pid and its start time (field 22 of `/proc/<pid>/stat`, in clock ticks since
//! boot): the pair is unique for the life of the machine.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessHandle {
    pub pid: u32,
    pub start_time: u64,
}

/// `(state, start time)` of a live process.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may contain spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, starttime field 22 (1-based over the whole line).
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((state, start_time))
}

impl ProcessHandle {
    /// Names the live process `pid`.
    pub fn of(pid: u32) -> Option<Self> {
        stat(pid).map(|(_, start_time)| ProcessHandle { pid, start_time })
    }

    /// Whether this very process still runs (an unreaped zombie does not count).
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Some((state, start)) if start == self.start_time && state != 'Z' && state != 'X')
    }

    /// Whether the process has a handler for `signal` (`SigCgt` of its status); none if
    /// it is gone.
    pub fn catches(&self, signal: Signal) -> Option<bool> {
        if !self.is_alive() {
            return None;
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let mask = status
            .lines()
            .find_map(|line| line.strip_prefix("SigCgt:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())?;
        Some(mask & (1 << (signal as i32 - 1)) != 0)
    }

    pub fn signal(&self, signal: Signal) -> nix::Result<()> {
        if !self.is_alive() {
            return Ok(());
        }
        kill(Pid::from_raw(self.pid as i32), signal)
    }

    /// Sends `signal`, then SIGKILL if the process is still there after `grace`, and waits
    /// until it is gone. Works for processes that are not our children (after a restart).
    pub async fn terminate(&self, signal: Signal, grace: Duration) -> nix::Result<()> {
        self.signal(signal)?;
        if self.wait_gone(grace).await {
            return Ok(());
        }
        self.signal(Signal::SIGKILL)?;
        self.wait_gone(Duration::from_secs(10)).await;
        Ok(())
    }

    async fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_alive() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

/// Live processes whose environment holds one of `vars`: `(handle, var, value)`.
///
/// sandboxd tags what it starts for a pod or a container before it can record a pid (pause
/// with [`crate::pause::SANDBOX_ID_ENV`], the monitor and so the runtime under it with
/// [`crate::container::monitor::CONTAINER_ID_ENV`]; CNI plugins carry `CNI_CONTAINERID`),
/// so that after a crash at any moment a restart can find them by the id it wrote down
/// first. Only read when such an unfinished operation exists.
pub fn tagged(vars: &[&str]) -> Vec<(ProcessHandle, String, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        for pair in environ.split(|b| *b == 0) {
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            let (name, value) = (&pair[..eq], &pair[eq + 1..]);
            if let Some(var) = vars.iter().find(|v| v.as_bytes() == name) {
                if let Some(handle) = ProcessHandle::of(pid).filter(|h| h.is_alive()) {
                    found.push((
                        handle,
                        var.to_string(),
                        String::from_utf8_lossy(value).into_owned(),
                    ));
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_live_process_and_sees_it_go() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let handle = ProcessHandle::of(child.id()).unwrap();
        assert!(handle.is_alive());
        let reused = ProcessHandle {
            start_time: handle.start_time + 1,
            ..handle
        };
        assert!(!reused.is_alive(), "another start time is another process");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!handle.is_alive());
    }
}
