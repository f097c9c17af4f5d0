//! Starting the pause process: the pod's first process and the owner of its namespaces.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sched::{clone, CloneFlags};

/// The binary's name, as the workspace builds it.
pub const PAUSE_BINARY_NAME: &str = "pause";
/// pause's one environment variable: its pod's sandbox id, by which a restarted daemon
/// finds a pause it started but had not recorded (see [`crate::process::tagged`]).
pub const SANDBOX_ID_ENV: &str = "SANDBOXD_SANDBOX_ID";

#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("pause binary not found (looked at {}); build it with `cargo build --release` or pass its path", .searched.join(", "))]
    NotFound { searched: Vec<String> },
    #[error("cannot start pause {} for pod {pod}: {source}", .binary.display())]
    Spawn {
        binary: PathBuf,
        pod: String,
        #[source]
        source: io::Error,
    },
}

/// Finds the pause binary: the configured path if given, else beside the running executable
/// (`target/release/pause` next to `target/release/sandboxd`). Never pulled from anywhere.
pub fn locate(configured: Option<&Path>) -> Result<PathBuf, PauseError> {
    crate::config::locate_beside_exe(PAUSE_BINARY_NAME, configured)
        .map_err(|searched| PauseError::NotFound { searched })
}

/// Namespaces and identity of a new pod.
#[derive(Debug, Clone, Default)]
pub struct PodNamespaces {
    /// Written into the pod's new uts namespace.
    pub hostname: Option<String>,
    /// Stay in the node's network namespace (a hostNetwork pod).
    pub host_network: bool,
    /// Stay in the node's IPC namespace (a hostIPC pod): its containers see the node's
    /// System V IPC objects and POSIX message queues.
    pub host_ipc: bool,
    /// The node's network namespace when it is not the caller's (a lab node): where a
    /// hostNetwork pod's pause goes.
    pub node_netns: crate::node::NodeNetns,
    /// Give the pod a pid namespace of its own with pause as its PID 1, so the pod's
    /// containers see each other and pause reaps their orphans (shareProcessNamespace).
    pub pid_namespace: bool,
    /// The pod's sandbox id, given to pause as [`SANDBOX_ID_ENV`].
    pub sandbox_id: String,
}

/// Starts pause in new ipc and uts namespaces, a new net namespace unless the pod uses the
/// node's, and a new pid namespace if asked; returns its pid. `pod` names the pod in errors.
/// pause is the caller's child and in a session of its own (a Ctrl-C aimed at the daemon's
/// terminal must not stop pods); the caller reaps it with [`reap`].
///
/// pause is started with clone(2) and the namespace flags rather than fork, unshare and
/// exec: only a process created into a new pid namespace is that namespace's PID 1. The
/// child runs no code but syscalls on data prepared before the clone (no allocation, since
/// other threads of the daemon may hold the allocator's locks), and reports a failed exec
/// through a close-on-exec pipe.
pub fn spawn(binary: &Path, pod: &str, namespaces: &PodNamespaces) -> Result<u32, PauseError> {
    let fail = |source: io::Error| PauseError::Spawn {
        binary: binary.to_path_buf(),
        pod: pod.to_string(),
        source,
    };
    let path =
        CString::new(binary.as_os_str().as_bytes()).map_err(|e| fail(io::Error::other(e)))?;
    let hostname = namespaces.hostname.clone().unwrap_or_default();
    let argv = [path.as_ptr(), std::ptr::null()];
    let tag = CString::new(format!("{SANDBOX_ID_ENV}={}", namespaces.sandbox_id))
        .map_err(|e| fail(io::Error::other(e)))?;
    let envp = [tag.as_ptr(), std::ptr::null()];
    let devnull = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(fail)?;
    let node_netns = match namespaces.host_network {
        true => namespaces.node_netns.open().map_err(fail)?,
        false => None,
    };
    let node_fd = node_netns.as_ref().map_or(-1, |f| f.as_raw_fd());
    let (report_read, report_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail(e.into()))?;
    let (null_fd, report_fd) = (devnull.as_raw_fd(), report_write.as_raw_fd());

    let mut flags = CloneFlags::CLONE_NEWUTS;
    if !namespaces.host_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if !namespaces.host_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if namespaces.pid_namespace {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    let mut stack = vec![0u8; 64 * 1024];
    let child = Box::new(|| -> isize {
        // SAFETY: plain syscalls on memory prepared before the clone.
        unsafe {
            let fail = |errno: i32| -> isize {
                libc::write(report_fd, (&errno as *const i32).cast(), 4);
                libc::_exit(127)
            };
            if libc::setsid() < 0
                || (node_fd >= 0 && libc::setns(node_fd, libc::CLONE_NEWNET) != 0)
                || (!hostname.is_empty()
                    && libc::sethostname(hostname.as_ptr().cast(), hostname.len()) != 0)
                || libc::dup2(null_fd, 0) < 0
                || libc::dup2(null_fd, 1) < 0
                || libc::dup2(null_fd, 2) < 0
            {
                return fail(*libc::__errno_location());
            }
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            fail(*libc::__errno_location())
        }
    });
    // SAFETY: the child only makes syscalls (see above) before exec.
    let pid = unsafe { clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|e| fail(e.into()))?;
    drop(report_write);
    let mut errno = [0u8; 4];
    let mut report = std::fs::File::from(report_read);
    match std::io::Read::read(&mut report, &mut errno) {
        Ok(4) => {
            let _ = nix::sys::wait::waitpid(pid, None);
            Err(fail(io::Error::from_raw_os_error(i32::from_ne_bytes(
                errno,
            ))))
        }
        // The pipe closed on exec: pause runs.
        _ => Ok(pid.as_raw() as u32),
    }
}

/// Registers a pidfd for readability with the runtime.
///
/// # Safety
/// `fd` must stay open and refer to the same pidfd while registered (the OwnedFd does).
unsafe fn register_readable(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: upheld by the caller.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Waits, without holding a thread, until the child `pid` exits, and reaps it. Returns its
/// wait status. Uses a pidfd, which a process that is not our child cannot be waited with.
pub async fn reap(pid: u32) -> io::Result<nix::sys::wait::WaitStatus> {
    // SAFETY: pidfd_open(2) returns a new descriptor we own, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns; the OwnedFd keeps it open
    // for as long as the AsyncFd lives.
    let pidfd = unsafe { register_readable(OwnedFd::from_raw_fd(fd as i32)) }?;
    // A pidfd polls readable once the process has exited.
    let _ready = pidfd.readable().await?;
    nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None).map_err(io::Error::from)
}
