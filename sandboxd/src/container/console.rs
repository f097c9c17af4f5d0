//! A terminal for a container or a command in it: the OCI runtime makes the pseudoterminal
//! in the container (`create`/`exec --tty --console-socket`) and hands its master end over
//! a unix socket (SCM_RIGHTS), as runc does for containerd's shim; the container's monitor
//! (for its own terminal) or sandboxd (for an exec's) then reads and writes the master and
//! sets its window size.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// The socket a runtime hands a terminal's master to; removed when dropped.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub fn bind(path: &Path) -> io::Result<ConsoleSocket> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        Ok(ConsoleSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for the runtime to connect and send the master.
    pub async fn receive(self, timeout: Duration) -> io::Result<OwnedFd> {
        tokio::task::spawn_blocking(move || self.receive_within(timeout))
            .await
            .map_err(io::Error::other)?
    }

    /// [`ConsoleSocket::receive`] for a caller that may block (the container's monitor).
    pub fn receive_within(&self, timeout: Duration) -> io::Result<OwnedFd> {
        let timed_out = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the runtime did not hand over the terminal",
            )
        };
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut ready = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        if poll(&mut ready, PollTimeout::from(millis)).map_err(io::Error::from)? == 0 {
            return Err(timed_out());
        }
        let (stream, _) = self.listener.accept()?;
        // The runtime sends as soon as it connects; a peer that connects and says nothing
        // must not hold us past the timeout.
        stream.set_read_timeout(Some(timeout))?;
        let mut name = [0u8; 4096];
        let mut iov = [io::IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let message = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| match e {
            nix::Error::EAGAIN => timed_out(),
            e => io::Error::from(e),
        })?;
        for control in message.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = control {
                if let Some(fd) = fds.first() {
                    // SAFETY: the kernel just installed this descriptor for us.
                    return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
                }
            }
        }
        Err(io::Error::other("the runtime sent no terminal descriptor"))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The prefix of console sockets' names in their directory.
pub const SOCKET_PREFIX: &str = "console-";

/// Removes console sockets a crashed sandboxd left in `dir` (no runtime waits on them:
/// the exec they were for died with the daemon's end of it).
pub fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(SOCKET_PREFIX) && name.ends_with(".sock") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Sets a terminal's window size (columns, rows).
pub fn resize(master: &OwnedFd, width: u16, height: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage};

    #[tokio::test]
    async fn a_descriptor_sent_over_the_socket_is_received() {
        let dir = tempfile::tempdir().unwrap();
        let socket = ConsoleSocket::bind(&dir.path().join("c.sock")).unwrap();
        let path = socket.path().to_path_buf();
        let pty = nix::pty::openpty(None, None).unwrap();
        let master = pty.master.as_raw_fd();
        let sender = std::thread::spawn(move || {
            let stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
            let fds = [master];
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[io::IoSlice::new(b"/dev/pts/0")],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
        });
        let received = socket.receive(Duration::from_secs(5)).await.unwrap();
        sender.join().unwrap();
        resize(&received, 100, 40).unwrap();
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) },
            0
        );
        assert_eq!((size.ws_col, size.ws_row), (100, 40));
    }

    #[test]
    fn stale_sockets_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("console-0123.sock"), "").unwrap();
        std::fs::write(dir.path().join("sandboxd.sock"), "").unwrap();
        remove_stale(dir.path());
        assert!(!dir.path().join("console-0123.sock").exists());
        assert!(dir.path().join("sandboxd.sock").exists());
    }

    #[tokio::test]
    async fn a_runtime_that_never_connects_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let socket = ConsoleSocket::bind(&dir.path().join("c.sock")).unwrap();
        let err = socket
            .receive(Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(!dir.path().join("c.sock").exists(), "the socket is removed");
    }
}
