//! Netlink, the kernel's configuration socket, spoken directly: no `ip`, no `nft`, no
//! `bridge` processes on any path sandboxd runs often.
//!
//! * this module: the socket (opened in a chosen network namespace), message encoding
//!   ([`Encoder`]: headers, attributes, nesting), replies (acknowledgements with the
//!   kernel's extended-ack text; multi-part dumps) and attribute parsing ([`attributes`]);
//! * [`nftables`]: nf_tables batches (the service proxy's data plane); [`conntrack`]: the
//!   tracked connections (`conntrack -L`), read by `sandboxctl trace`;
//! * rtnetlink, one module per kernel object kind, each request documented with the `ip`
//!   or `bridge` command it matches: [`link`] (veth, bridge, vxlan; up, master, netns),
//!   [`address`], [`route`], [`neighbour`] (ARP entries and bridge FDB entries).

pub mod address;
pub mod conntrack;
pub mod link;
pub mod neighbour;
pub mod nftables;
pub mod route;

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

// linux/netlink.h
pub(crate) const NETLINK_ROUTE: i32 = 0;
pub(crate) const NETLINK_NETFILTER: i32 = 12;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_MULTI: u16 = 0x2;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_REPLACE: u16 = 0x100;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
const SOL_NETLINK: i32 = 270;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLM_F_ACK_TLVS: u16 = 0x200;

/// Linux's default socket buffer (net.core.wmem_default).
const DEFAULT_SNDBUF: i32 = 212_992;

/// The kernel said no: the errno, and its extended-ack text when it gave one.
#[derive(Debug, thiserror::Error)]
#[error("{errno}{}", .message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
pub struct KernelError {
    pub errno: io::Error,
    pub message: Option<String>,
}

impl KernelError {
    pub fn raw_os_error(&self) -> Option<i32> {
        self.errno.raw_os_error()
    }
}

/// A netlink socket of one protocol in one network namespace.
pub struct Socket {
    fd: OwnedFd,
    /// Sequence numbers continue across requests, so a late reply is never taken for the
    /// current request's.
    next_seq: u32,
}

/// One acknowledgement or error.
pub(crate) struct Ack {
    pub seq: u32,
    pub errno: i32,
    pub message: Option<String>,
}

impl Socket {
    /// Opens a socket of `protocol` in the calling thread's network namespace.
    pub fn open(protocol: i32) -> io::Result<Socket> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Errors without the failed message echoed back, but with the kernel's reason.
        for option in [NETLINK_CAP_ACK, NETLINK_EXT_ACK] {
            set_option(&fd, SOL_NETLINK, option, 1)?;
        }
        let address = kernel_address();
        // SAFETY: address is a valid sockaddr_nl of the given size.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &address as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket { fd, next_seq: 1 })
    }

    /// Opens a socket in the network namespace at `netns` (None: the caller's); the socket
    /// stays bound to that namespace whichever thread uses it later.
    pub fn open_in(netns: Option<&Path>, protocol: i32) -> io::Result<Socket> {
        crate::netns::run_in(netns, move || Socket::open(protocol))
    }

    /// A sequence number for one request.
    fn take_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    /// The first sequence number of a batch being encoded.
    pub(crate) fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// The batch took sequence numbers up to `next - 1`.
    pub(crate) fn continue_at(&mut self, next: u32) {
        self.next_seq = next;
    }

    pub(crate) fn send(&self, buf: &[u8]) -> io::Result<()> {
        // The kernel refuses a message larger than the send buffer; a full sync of 10,000
        // services is ~10 MB.
        let wanted = (buf.len() + 4096).min(i32::MAX as usize / 2) as i32;
        if wanted > DEFAULT_SNDBUF {
            set_option(&self.fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, wanted)?;
        }
        let address = kernel_address();
        // SAFETY: buf and address outlive the call; lengths match.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                &address as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        if sent as usize != buf.len() {
            return Err(io::Error::other(format!(
                "sent {sent} of {} bytes",
                buf.len()
            )));
        }
        Ok(())
    }

    /// One datagram (possibly several messages); blocks unless `wait` is false, then None
    /// when nothing is queued.
    fn recv(&self, buf: &mut [u8], wait: bool) -> io::Result<Option<usize>> {
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        loop {
            // SAFETY: buf is writable for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                )
            };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock if !wait => return Ok(None),
                _ => return Err(e),
            }
        }
    }

    /// Every acknowledgement and error queued now (nf_tables runs a batch inside
    /// sendmsg(), so all its replies are queued when send returns).
    pub(crate) fn drain_acks(&self) -> io::Result<Vec<Ack>> {
        let mut acks = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Some(n) = self.recv(&mut buf, false)? {
            for message in messages(&buf[..n]) {
                if let Some(ack) = message.ack() {
                    acks.push(ack);
                }
            }
        }
        Ok(acks)
    }

    /// Sends one request that asks for an acknowledgement and waits for it.
    pub fn request(&mut self, mut message: Encoder) -> Result<(), KernelError> {
        let seq = self.take_seq();
        message.set_seq(seq);
        self.send(&message.buf).map_err(|errno| KernelError {
            errno,
            message: None,
        })?;
        let mut buf = vec![0u8; 65536];
        loop {
            let n = self
                .recv(&mut buf, true)
                .map_err(|errno| KernelError {
                    errno,
                    message: None,
                })?
                .unwrap_or(0);
            for reply in messages(&buf[..n]) {
                if let Some(ack) = reply.ack().filter(|a| a.seq == seq) {
                    return match ack.errno {
                        0 => Ok(()),
                        errno => Err(KernelError {
                            errno: io::Error::from_raw_os_error(errno),
                            message: ack.message,
                        }),
                    };
                }
            }
        }
    }

    /// Sends a dump request and returns the payload (after the netlink header) of every
    /// message of the reply, up to NLMSG_DONE.
    pub fn dump(&mut self, mut message: Encoder) -> Result<Vec<Vec<u8>>, KernelError> {
        let seq = self.take_seq();
        message.set_seq(seq);
        let fail = |errno| KernelError {
            errno,
            message: None,
        };
        self.send(&message.buf).map_err(fail)?;
        let mut out = Vec::new();
        // A dump comes in datagrams of up to a page or more each; 64 KiB takes any.
        let mut buf = vec![0u8; 65536];
        loop {
            let n = self.recv(&mut buf, true).map_err(fail)?.unwrap_or(0);
            for reply in messages(&buf[..n]) {
                if reply.seq != seq {
                    continue;
                }
                match reply.msg_type {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let ack = reply.ack().expect("an error message");
                        if ack.errno == 0 {
                            return Ok(out);
                        }
                        return Err(KernelError {
                            errno: io::Error::from_raw_os_error(ack.errno),
                            message: ack.message,
                        });
                    }
                    _ => out.push(reply.payload.to_vec()),
                }
                if reply.flags & NLM_F_MULTI == 0 {
                    return Ok(out);
                }
            }
        }
    }
}

/// The kernel's netlink address (port 0, no groups); also ours, bound to any free port.
fn kernel_address() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data; all zeros is a valid value of it.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as u16;
    address
}

fn set_option(fd: &OwnedFd, level: i32, option: i32, value: i32) -> io::Result<()> {
    // SAFETY: value is an int, as every option set here takes.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            option,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// One message of a datagram.
pub(crate) struct Message<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    /// What follows the 16-byte header.
    pub payload: &'a [u8],
}

impl Message<'_> {
    /// An acknowledgement (errno 0) or an error, with the kernel's extended-ack text.
    fn ack(&self) -> Option<Ack> {
        if self.msg_type != NLMSG_ERROR || self.payload.len() < 4 + 16 {
            return None;
        }
        let errno = -(u32_at(self.payload, 0) as i32);
        // The request's header follows the errno; its sequence number is ours.
        let seq = u32_at(self.payload, 4 + 8);
        let mut message = None;
        if self.flags & NLM_F_ACK_TLVS != 0 {
            // With NETLINK_CAP_ACK only the failed message's header is echoed.
            for (attr_type, value) in attributes(&self.payload[20..]) {
                if attr_type == NLMSGERR_ATTR_MSG {
                    let text = value.split(|c| *c == 0).next().unwrap_or_default();
                    message = Some(String::from_utf8_lossy(text).into_owned());
                }
            }
        }
        Some(Ack {
            seq,
            errno,
            message,
        })
    }
}

/// The messages of one datagram.
pub(crate) fn messages(mut b: &[u8]) -> impl Iterator<Item = Message<'_>> {
    std::iter::from_fn(move || {
        if b.len() < 16 {
            return None;
        }
        let len = (u32_at(b, 0) as usize).clamp(16, b.len());
        let message = Message {
            msg_type: u16_at(b, 4),
            flags: u16_at(b, 6),
            seq: u32_at(b, 8),
            payload: &b[16..len],
        };
        b = &b[align(len).min(b.len())..];
        Some(message)
    })
}

/// The attributes of a message or of a nested attribute: (type without flags, value).
pub fn attributes(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = (u16_at(b, 0) as usize).clamp(4, b.len());
        let item = (u16_at(b, 2) & !NLA_F_NESTED, &b[4..len]);
        b = &b[align(len).min(b.len())..];
        Some(item)
    })
}

/// Encodes netlink messages: a header, a family header, attributes.
pub struct Encoder {
    pub(crate) buf: Vec<u8>,
    start: usize,
}

impl Encoder {
    /// A message of `msg_type` with `flags` (NLM_F_REQUEST is added) and the family
    /// header `header` (ifinfomsg, rtmsg, …, as bytes).
    pub fn new(msg_type: u16, flags: u16, header: &[u8]) -> Encoder {
        let mut encoder = Encoder {
            buf: Vec::with_capacity(256),
            start: 0,
        };
        encoder.begin(msg_type, flags | NLM_F_REQUEST, 0);
        encoder.buf.extend_from_slice(header);
        encoder.buf.resize(align(encoder.buf.len()), 0);
        encoder.finish();
        encoder
    }

    /// Starts a message at the end of the buffer (for batches of several).
    pub(crate) fn begin(&mut self, msg_type: u16, flags: u16, seq: u32) {
        self.start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&msg_type.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.finish();
    }

    fn set_seq(&mut self, seq: u32) {
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    }

    /// Writes the current message's length; attributes added later call it again.
    fn finish(&mut self) {
        let len = (self.buf.len() - self.start) as u32;
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    pub fn attr(&mut self, attr_type: u16, payload: &[u8]) -> &mut Self {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&attr_type.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align(self.buf.len()), 0);
        self.finish();
        self
    }

    /// A NUL-terminated string.
    pub fn str(&mut self, attr_type: u16, s: &str) -> &mut Self {
        let mut bytes = Vec::with_capacity(s.len() + 1);
        bytes.extend_from_slice(s.as_bytes());
        bytes.push(0);
        self.attr(attr_type, &bytes)
    }

    pub fn u8(&mut self, attr_type: u16, v: u8) -> &mut Self {
        self.attr(attr_type, &[v])
    }

    pub fn u32(&mut self, attr_type: u16, v: u32) -> &mut Self {
        self.attr(attr_type, &v.to_ne_bytes())
    }

    pub fn be16(&mut self, attr_type: u16, v: u16) -> &mut Self {
        self.attr(attr_type, &v.to_be_bytes())
    }

    pub fn be32(&mut self, attr_type: u16, v: u32) -> &mut Self {
        self.attr(attr_type, &v.to_be_bytes())
    }

    /// A nested attribute whose content `body` writes.
    pub fn nested(&mut self, attr_type: u16, body: impl FnOnce(&mut Encoder)) -> &mut Self {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(attr_type | NLA_F_NESTED).to_ne_bytes());
        body(self);
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self.finish();
        self
    }

    /// Raw bytes inside a nested attribute (a family header, as veth's peer carries).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align(self.buf.len()), 0);
        self.finish();
        self
    }
}

/// An address family, as `ip -4` and `ip -6` pick it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The `AF_*` number rtnetlink headers carry.
    pub(crate) fn af(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }

    pub(crate) fn from_af(af: u8) -> Option<Family> {
        match i32::from(af) {
            libc::AF_INET => Some(Family::V4),
            libc::AF_INET6 => Some(Family::V6),
            _ => None,
        }
    }

    /// An address attribute of this family; None if it is not that long.
    pub(crate) fn ip(self, value: &[u8]) -> Option<IpAddr> {
        match self {
            Family::V4 => <[u8; 4]>::try_from(value).ok().map(IpAddr::from),
            Family::V6 => <[u8; 16]>::try_from(value).ok().map(IpAddr::from),
        }
    }

    /// The prefix length of a single address (32 or 128).
    pub fn host_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The address that stands for "any" (the default route's destination).
    pub fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        }
    }
}

/// An address as netlink carries it (network byte order).
pub(crate) fn ip_octets(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A netlink socket to the routing subsystem (links, addresses, routes, neighbours) of
/// one network namespace.
pub struct RouteSocket(pub(crate) Socket);

impl RouteSocket {
    /// Opens it in the namespace at `netns` (None: the caller's).
    pub fn open_in(netns: Option<&Path>) -> io::Result<RouteSocket> {
        Socket::open_in(netns, NETLINK_ROUTE).map(RouteSocket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_message_parses_back_with_nesting_and_padding() {
        let mut m = Encoder::new(16, NLM_F_CREATE, &[1, 2, 3, 4]);
        m.str(3, "flannel.1").nested(18, |m| {
            m.str(1, "vxlan");
            m.nested(2, |m| {
                m.u32(1, 1).be16(15, 8472).u8(7, 0);
            });
        });
        let buf = m.buf.clone();
        let parsed: Vec<Message> = messages(&buf).collect();
        let bare = Encoder::new(18, 0, &[0; 16]);
        assert_eq!(
            u32_at(&bare.buf, 0),
            32,
            "a message without attributes counts its header"
        );
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].msg_type, 16);
        assert_eq!(parsed[0].flags, NLM_F_CREATE | NLM_F_REQUEST);
        assert_eq!(u32_at(&buf, 0) as usize, buf.len());
        let attrs: Vec<(u16, &[u8])> = attributes(&parsed[0].payload[4..]).collect();
        assert_eq!(attrs[0], (3, &b"flannel.1\0"[..]));
        assert_eq!(attrs[1].0, 18);
        let info: Vec<(u16, &[u8])> = attributes(attrs[1].1).collect();
        assert_eq!(info[0], (1, &b"vxlan\0"[..]));
        let data: Vec<(u16, &[u8])> = attributes(info[1].1).collect();
        assert_eq!(data[0], (1, &1u32.to_ne_bytes()[..]));
        assert_eq!(data[1], (15, &8472u16.to_be_bytes()[..]));
        assert_eq!(data[2], (7, &[0u8][..]));
        assert!(buf.len().is_multiple_of(4));
    }

    #[test]
    fn truncated_input_ends_the_iterators_without_panicking() {
        assert_eq!(attributes(&[8, 0, 1]).count(), 0);
        assert_eq!(attributes(&[200, 0, 1, 0, 9]).count(), 1);
        assert_eq!(messages(&[0; 15]).count(), 0);
    }
}
