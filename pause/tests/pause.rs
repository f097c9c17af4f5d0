//! Runs the real pause binary. The pid-namespace test needs root (CI runs as root).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn pause_binary() -> &'static str {
    pause::BUILT_BINARY
}

/// Kills the process when the test ends, passed or failed, so no pause is left running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn children_of(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(&path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// (state, ppid) from /proc/<pid>/stat; the command name may hold spaces, so parse after ')'.
fn state_and_parent(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn zombies_parented_by(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| matches!(state_and_parent(*pid), Some(('Z', ppid)) if ppid == parent))
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        sleep(Duration::from_millis(20));
    }
}

#[test]
fn binary_is_static_and_small() {
    let bytes = std::fs::read(pause_binary()).expect("read pause binary");
    assert_eq!(&bytes[..4], b"\x7fELF");
    // No PT_INTERP program header means no dynamic loader: parse the ELF64 program headers.
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
    let phentsize = u16::from_le_bytes(bytes[54..56].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(bytes[56..58].try_into().unwrap()) as usize;
    const PT_INTERP: u32 = 3;
    const PT_DYNAMIC: u32 = 2;
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let kind = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap());
        assert!(
            kind != PT_INTERP && kind != PT_DYNAMIC,
            "pause has a dynamic segment ({kind})"
        );
    }
    assert!(
        bytes.len() <= 4096,
        "pause grew to {} bytes, the budget is 4 KiB",
        bytes.len()
    );
}

#[test]
fn version_flag_prints_version_and_exits_zero() {
    let out = Command::new(pause_binary())
        .arg("-v")
        .output()
        .expect("run pause -v");
    assert!(out.status.success(), "pause -v exited with {}", out.status);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("pause.rs {}\n", pause::VERSION)
    );
}

fn exits_zero_on(signal: Signal) {
    let child = Command::new(pause_binary())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pause");
    let mut child = KillOnDrop(child);
    let pid = child.0.id();
    // Wait until the handlers are installed: the process sleeps in pause(2) (state S).
    wait_until("pause to block", Duration::from_secs(5), || {
        matches!(state_and_parent(pid), Some(('S', _)))
    });
    kill(Pid::from_raw(pid as i32), signal).expect("send signal");
    let status = child.0.wait().expect("wait pause");
    assert_eq!(
        status.code(),
        Some(0),
        "pause exited with {status} on {signal}"
    );
    let mut stderr = String::new();
    use std::io::Read;
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("not running as PID 1"),
        "no PID-1 warning on stderr: {stderr:?}"
    );
}

#[test]
fn sigterm_exits_zero() {
    exits_zero_on(Signal::SIGTERM);
}

#[test]
fn sigint_exits_zero() {
    exits_zero_on(Signal::SIGINT);
}

#[test]
fn as_pid_one_reaps_orphans_of_its_pid_namespace() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: it creates a pid namespace"
    );
    // unshare forks pause as PID 1 of a new pid namespace and exits with its status.
    let unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child=SIGKILL", pause_binary()])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unshare (util-linux)");
    let mut unshare = KillOnDrop(unshare);
    let mut pause_pid = 0;
    wait_until(
        "pause to start in the new pid namespace",
        Duration::from_secs(5),
        || {
            pause_pid = children_of(unshare.0.id()).first().copied().unwrap_or(0);
            pause_pid != 0 && matches!(state_and_parent(pause_pid), Some(('S', _)))
        },
    );
    assert!(Path::new(&format!("/proc/{pause_pid}/ns/pid")).exists());

    // Each subshell starts a sleep in the background and exits at once, so the sleeps are
    // orphans; the kernel hands orphans of a pid namespace to its PID 1, which is pause.
    let orphans = 8;
    let status = Command::new("nsenter")
        .args([
            "--target",
            &pause_pid.to_string(),
            "--pid",
            "--",
            "sh",
            "-c",
        ])
        .arg(format!(
            "for i in $(seq {orphans}); do (sleep 0.5 &); done; exit 0"
        ))
        .status()
        .expect("run nsenter (util-linux)");
    assert!(status.success());
    assert!(
        children_of(pause_pid).len() >= orphans / 2,
        "the orphans were not reparented to pause: children {:?}",
        children_of(pause_pid)
    );

    wait_until(
        "pause to reap every orphan",
        Duration::from_secs(10),
        || children_of(pause_pid).is_empty(),
    );
    assert_eq!(zombies_parented_by(pause_pid), Vec::<u32>::new());

    kill(Pid::from_raw(pause_pid as i32), Signal::SIGTERM).expect("SIGTERM pause");
    let status = unshare.0.wait().expect("wait unshare");
    assert_eq!(
        status.code(),
        Some(0),
        "pause as PID 1 exited with {status} on SIGTERM"
    );
    let mut stderr = String::new();
    use std::io::Read;
    unshare
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        !stderr.contains("not running as PID 1"),
        "PID 1 warned: {stderr:?}"
    );
}
