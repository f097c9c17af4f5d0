//! Attach: a client joins a running container's own stdio, as `docker attach` and
//! `kubectl attach` do. The container's monitor holds that stdio (its stdin pipe, or its
//! terminal's master, and its output), so it serves attaches: on a unix socket in the
//! container's dir (`attach.sock`), each client says which streams it wants, then reads
//! the container's output from the moment it joined (the log has what came before) and
//! writes to its stdin. Several clients may be attached at once; each gets all output.
//!
//! On the socket, both ways, frames of `kind: u8`, `length: u32` (big-endian), payload:
//!
//! | kind | from    | payload                                                      |
//! |------|---------|--------------------------------------------------------------|
//! | 1    | client  | hello, first: one byte of flags (1 stdin, 2 stdout, 4 stderr) |
//! | 2    | client  | bytes for the container's stdin                              |
//! | 3    | client  | the client's stdin ended                                     |
//! | 4    | client  | terminal size: width, height (u16 big-endian each)           |
//! | 16   | monitor | the container's stdout (its terminal, with one)              |
//! | 17   | monitor | the container's stderr                                       |
//!
//! The monitor closes a client's connection when the container exits (after its last
//! output), and when that client's stdin ends, except that for a container created with
//! `stdin_once` and no terminal, the end of an attached stdin is the end of the
//! container's stdin and the client stays to read the output to the container's exit
//! (containerd's rules, which kubectl relies on).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};

use crate::container::ContainerState;
use crate::error::{Error, Result};
use crate::runtime::Runtime;

/// The attach socket's name in the container's dir.
pub const SOCKET_FILE: &str = "attach.sock";

/// The largest payload a frame may carry; a peer sending more is cut off.
pub const MAX_PAYLOAD: usize = 1 << 20;

const HEADER: usize = 5;

/// The container's own stdio, as created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStdio {
    /// It has a stdin that attached clients write to (else /dev/null).
    pub stdin: bool,
    /// Its stdin closes when the first attached client's stdin ends.
    pub stdin_once: bool,
    /// Its stdio is a terminal (stdout and stderr are one stream).
    pub tty: bool,
}

impl ContainerStdio {
    /// Whether the end of an attached client's stdin is the end of the container's.
    pub fn stdin_ends_with_client(&self) -> bool {
        self.stdin_once && !self.tty
    }
}

/// Which of the container's streams a client attaches to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wants {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl Wants {
    fn flags(self) -> u8 {
        self.stdin as u8 | (self.stdout as u8) << 1 | (self.stderr as u8) << 2
    }

    fn from_flags(flags: u8) -> Wants {
        Wants {
            stdin: flags & 1 != 0,
            stdout: flags & 2 != 0,
            stderr: flags & 4 != 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Wants),
    Stdin(Vec<u8>),
    StdinEnd,
    Resize { width: u16, height: u16 },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

impl Frame {
    /// The frame on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, &[u8]) = match self {
            Frame::Hello(wants) => return frame(1, &[wants.flags()]),
            Frame::Stdin(data) => (2, data),
            Frame::StdinEnd => (3, &[]),
            Frame::Resize { width, height } => {
                let [w0, w1] = width.to_be_bytes();
                let [h0, h1] = height.to_be_bytes();
                return frame(4, &[w0, w1, h0, h1]);
            }
            Frame::Stdout(data) => (16, data),
            Frame::Stderr(data) => (17, data),
        };
        frame(kind, payload)
    }
}

/// An output frame built straight from the bytes read, without a copy into a Frame.
pub fn output_frame(stderr: bool, data: &[u8]) -> Vec<u8> {
    frame(if stderr { 17 } else { 16 }, data)
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Frames out of a byte stream that may split them anywhere.
#[derive(Default)]
pub struct FrameReader {
    pending: Vec<u8>,
}

impl FrameReader {
    pub fn push(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
    }

    /// The next whole frame, if one has arrived; an error for a frame no peer sends.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        if self.pending.len() < HEADER {
            return Ok(None);
        }
        let kind = self.pending[0];
        let length = u32::from_be_bytes(self.pending[1..HEADER].try_into().expect("4 bytes"));
        let length = length as usize;
        if length > MAX_PAYLOAD {
            return Err(invalid(format!(
                "an attach frame of {length} bytes (at most {MAX_PAYLOAD})"
            )));
        }
        if self.pending.len() < HEADER + length {
            return Ok(None);
        }
        let payload: Vec<u8> = self.pending.drain(..HEADER + length).skip(HEADER).collect();
        let frame = match (kind, payload.len()) {
            (1, 1) => Frame::Hello(Wants::from_flags(payload[0])),
            (2, _) => Frame::Stdin(payload),
            (3, 0) => Frame::StdinEnd,
            (4, 4) => Frame::Resize {
                width: u16::from_be_bytes([payload[0], payload[1]]),
                height: u16::from_be_bytes([payload[2], payload[3]]),
            },
            (16, _) => Frame::Stdout(payload),
            (17, _) => Frame::Stderr(payload),
            (kind, length) => {
                return Err(invalid(format!(
                    "an attach frame of kind {kind} with {length} bytes"
                )))
            }
        };
        Ok(Some(frame))
    }
}

/// A running container a client may attach to as it asked.
pub struct AttachTarget {
    pub object: String,
    /// Its monitor's attach socket.
    pub socket: PathBuf,
}

impl Runtime {
    /// Checks an Attach request against the container: it runs, and has the stdin and the
    /// terminal the request would use.
    pub async fn attach_target(&self, request: &cri::AttachRequest) -> Result<AttachTarget> {
        let (_, entry) = self.lookup_container(&request.container_id)?;
        let mut record = entry.lock().await;
        self.observe(&mut record)?;
        let object = record.describe();
        if record.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "{object} is {}; attach needs a running container",
                record.state.as_str()
            )));
        }
        if !(request.stdin || request.stdout || request.stderr) {
            return Err(Error::invalid(
                object,
                "stdin, stdout, stderr",
                "are all false: an attach streams at least one of them",
            ));
        }
        if request.stdin && !record.stdio.stdin {
            return Err(Error::invalid(
                object,
                "stdin",
                "is true, but the container was created without stdin",
            ));
        }
        if request.tty && !record.stdio.tty {
            return Err(Error::invalid(
                object,
                "tty",
                "is true, but the container was created without a terminal",
            ));
        }
        if request.tty && request.stderr {
            return Err(Error::invalid(
                object,
                "stderr",
                "is true with tty: a terminal has one output",
            ));
        }
        Ok(AttachTarget {
            socket: self.container_dir(&record.id).attach_socket(),
            object,
        })
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// A unix socket's path the kernel takes (sun_path holds 108 bytes): the path itself, or,
/// for a longer one, the same file reached through a descriptor of its directory, which
/// must stay open while the path is used.
pub fn reachable(path: &Path) -> io::Result<(PathBuf, Option<OwnedFd>)> {
    if path.as_os_str().len() < 100 {
        return Ok((path.to_path_buf(), None));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(invalid(format!("{} names no file", path.display())));
    };
    let dir = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: open(2) just returned this descriptor; nothing else owns it.
    let dir = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dir) };
    let short = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    Ok((short, Some(dir)))
}

/// Connects to the attach socket at `path` and says what the client wants.
pub async fn connect(path: &Path, wants: Wants) -> io::Result<tokio::net::UnixStream> {
    use tokio::io::AsyncWriteExt;
    let (reachable, _dir) = reachable(path)?;
    let mut stream = tokio::net::UnixStream::connect(&reachable).await?;
    stream.write_all(&Frame::Hello(wants).encode()).await?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_split() {
        let frames = vec![
            Frame::Hello(Wants {
                stdin: true,
                stdout: false,
                stderr: true,
            }),
            Frame::Stdin(b"echo hello\n".to_vec()),
            Frame::Resize {
                width: 300,
                height: 40,
            },
            Frame::StdinEnd,
            Frame::Stdout(vec![7; 70_000]),
            Frame::Stderr(Vec::new()),
        ];
        let wire: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        for chunk in [1, 3, 5, 4096, wire.len()] {
            let mut reader = FrameReader::default();
            let mut read = Vec::new();
            for piece in wire.chunks(chunk) {
                reader.push(piece);
                while let Some(frame) = reader.next_frame().unwrap() {
                    read.push(frame);
                }
            }
            assert_eq!(read, frames, "in pieces of {chunk}");
        }
        assert_eq!(
            output_frame(true, b"x"),
            Frame::Stderr(b"x".to_vec()).encode()
        );
    }

    #[test]
    fn frames_no_peer_sends_are_refused() {
        for wire in [
            frame(9, b""),
            frame(3, b"x"),
            frame(4, b"abc"),
            vec![2, 0xff, 0xff, 0xff, 0xff],
        ] {
            let mut reader = FrameReader::default();
            reader.push(&wire);
            assert!(reader.next_frame().is_err(), "{wire:?}");
        }
    }

    #[test]
    fn long_paths_are_reached_through_their_directory() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(120));
        std::fs::create_dir(&deep).unwrap();
        let path = deep.join(SOCKET_FILE);
        let (short, held) = reachable(&path).unwrap();
        assert!(held.is_some() && short.as_os_str().len() < 108);
        let listener = std::os::unix::net::UnixListener::bind(&short).unwrap();
        assert!(path.exists());
        let (again, _held) = reachable(&path).unwrap();
        std::os::unix::net::UnixStream::connect(again).unwrap();
        listener.accept().unwrap();
    }
}
