//! The monitor's side of attach (see `sandboxd::container::attach` for the protocol): it
//! accepts clients on the attach socket, copies the container's output to each, and
//! writes what they send to the container's stdin. Everything is non-blocking and driven
//! by the monitor's one poll loop: a slow client must never stall the container's log.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::poll::PollFlags;
use sandboxd::container::attach::{self, ContainerStdio, Frame, FrameReader, Wants};

/// Output a client may fall behind by before it is cut off.
const MAX_BACKLOG: usize = 8 << 20;
/// Stdin bytes taken from clients and not yet written before clients are read again.
const MAX_STDIN_PENDING: usize = 256 << 10;

struct Client {
    stream: UnixStream,
    reader: FrameReader,
    /// None until its hello arrives.
    wants: Option<Wants>,
    /// Output frames not yet written, oldest first.
    backlog: VecDeque<Vec<u8>>,
    /// Bytes of the front frame already written.
    written: usize,
    backlog_bytes: usize,
    gone: bool,
}

impl Client {
    fn queue(&mut self, frame: Vec<u8>) {
        self.backlog_bytes += frame.len();
        self.backlog.push_back(frame);
        if self.backlog_bytes > MAX_BACKLOG {
            eprintln!("attach: a client fell {MAX_BACKLOG} bytes behind; cut off");
            self.gone = true;
        }
    }

    fn flush(&mut self) {
        while let Some(front) = self.backlog.front() {
            match self.stream.write(&front[self.written..]) {
                Ok(n) => {
                    self.written += n;
                    if self.written == front.len() {
                        self.backlog_bytes -= front.len();
                        self.backlog.pop_front();
                        self.written = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.gone = true;
                    return;
                }
            }
        }
    }
}

pub struct AttachServer {
    listener: UnixListener,
    path: PathBuf,
    stdio: ContainerStdio,
    clients: Vec<Client>,
    /// Where clients' stdin goes: the write end of the container's stdin pipe, or its
    /// terminal's master; none once closed.
    stdin: Option<OwnedFd>,
    stdin_pending: Vec<u8>,
    /// Close the container's stdin once what is pending is written.
    close_stdin: bool,
    /// The terminal's master, for resizes.
    terminal: Option<OwnedFd>,
}

impl AttachServer {
    /// Listens at `path` (in the container's dir; reached through the dir when long).
    pub fn bind(
        path: &Path,
        stdio: ContainerStdio,
        stdin: Option<OwnedFd>,
        terminal: Option<OwnedFd>,
    ) -> io::Result<AttachServer> {
        let _ = std::fs::remove_file(path);
        let (reachable, _dir) = attach::reachable(path)?;
        let listener = UnixListener::bind(&reachable)?;
        listener.set_nonblocking(true)?;
        for fd in stdin.iter() {
            set_nonblocking(fd)?;
        }
        Ok(AttachServer {
            listener,
            path: path.to_path_buf(),
            stdio,
            clients: Vec::new(),
            stdin,
            stdin_pending: Vec::new(),
            close_stdin: false,
            terminal,
        })
    }

    /// What to poll for: new clients, clients' frames (unless stdin is backed up), room
    /// for clients' backlogs and for pending stdin.
    pub fn poll_set(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut set = vec![(self.listener.as_fd(), PollFlags::POLLIN)];
        let reading = self.stdin_pending.len() < MAX_STDIN_PENDING;
        for client in &self.clients {
            let mut flags = PollFlags::empty();
            if reading {
                flags |= PollFlags::POLLIN;
            }
            if !client.backlog.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            set.push((client.stream.as_fd(), flags));
        }
        if let (Some(stdin), false) = (&self.stdin, self.stdin_pending.is_empty()) {
            set.push((stdin.as_fd(), PollFlags::POLLOUT));
        }
        set
    }

    /// Does whatever can be done now without blocking.
    pub fn serve(&mut self) {
        self.accept();
        let mut buf = [0u8; 32 * 1024];
        for i in 0..self.clients.len() {
            self.read_client(i, &mut buf);
            self.clients[i].flush();
        }
        self.write_stdin();
        self.clients.retain(|c| !c.gone);
    }

    /// Copies output of the container to every client that wants that stream.
    pub fn broadcast(&mut self, stderr: bool, data: &[u8]) {
        let mut frame = None;
        for client in &mut self.clients {
            let wanted = client
                .wants
                .is_some_and(|w| if stderr { w.stderr } else { w.stdout });
            if wanted && !client.gone {
                let frame = frame.get_or_insert_with(|| attach::output_frame(stderr, data));
                client.queue(frame.clone());
                client.flush();
            }
        }
    }

    /// The container has exited: gives clients a moment to take their last output, then
    /// closes every connection, which ends their attach.
    pub fn finish(mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while self
            .clients
            .iter()
            .any(|c| !c.backlog.is_empty() && !c.gone)
            && std::time::Instant::now() < deadline
        {
            for client in &mut self.clients {
                client.flush();
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = std::fs::remove_file(&self.path);
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.clients.push(Client {
                            stream,
                            reader: FrameReader::default(),
                            wants: None,
                            backlog: VecDeque::new(),
                            written: 0,
                            backlog_bytes: 0,
                            gone: false,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn read_client(&mut self, i: usize, buf: &mut [u8]) {
        while self.stdin_pending.len() < MAX_STDIN_PENDING && !self.clients[i].gone {
            match self.clients[i].stream.read(buf) {
                Ok(0) => {
                    self.clients[i].gone = true;
                    return;
                }
                Ok(n) => self.clients[i].reader.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.clients[i].gone = true;
                    return;
                }
            }
            loop {
                match self.clients[i].reader.next_frame() {
                    Ok(Some(frame)) => self.handle(i, frame),
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("attach: {e}; client cut off");
                        self.clients[i].gone = true;
                        return;
                    }
                }
            }
        }
    }

    fn handle(&mut self, i: usize, frame: Frame) {
        let client = &mut self.clients[i];
        match (client.wants, frame) {
            (None, Frame::Hello(wants)) => client.wants = Some(wants),
            (Some(wants), Frame::Stdin(data)) if wants.stdin => {
                if self.stdin.is_some() && !self.close_stdin {
                    self.stdin_pending.extend_from_slice(&data);
                }
            }
            (Some(wants), Frame::StdinEnd) if wants.stdin => {
                if self.stdio.stdin_ends_with_client() {
                    self.close_stdin = true;
                } else {
                    // The client detaches; the container keeps its stdin for the next.
                    client.gone = true;
                }
            }
            (Some(_), Frame::Resize { width, height }) => {
                if let Some(master) = &self.terminal {
                    let _ = sandboxd::container::console::resize(master, width, height);
                }
            }
            (_, frame) => {
                eprintln!("attach: unexpected {frame:?}; client cut off");
                client.gone = true;
            }
        }
    }

    fn write_stdin(&mut self) {
        let Some(stdin) = &self.stdin else {
            self.stdin_pending.clear();
            return;
        };
        while !self.stdin_pending.is_empty() {
            match nix::unistd::write(stdin, &self.stdin_pending) {
                Ok(n) => {
                    self.stdin_pending.drain(..n);
                }
                Err(nix::Error::EAGAIN) => return,
                Err(nix::Error::EINTR) => {}
                Err(_) => {
                    // The container closed its stdin (or exited): nothing more goes in.
                    self.stdin = None;
                    self.stdin_pending.clear();
                    return;
                }
            }
        }
        if self.close_stdin {
            self.stdin = None;
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}
