//! Packets seen on one interface of any network namespace, through a packet socket (what
//! `tcpdump -i IFACE` opens), decoded as far as the seeds look at them: the IPv4 header,
//! TCP/UDP ports, and — for VXLAN on flannel's port 8472 or the IANA port 4789 — the VNI
//! and the packet inside.
//!
//! Only what crosses the interface after `open` is seen; the socket is bound to the
//! interface, so other interfaces' traffic never reaches it.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// UDP ports VXLAN is decoded on: flannel's (the Linux default) and IANA's.
pub const VXLAN_PORTS: [u16; 2] = [8472, 4789];

const ETH_P_ALL: u16 = 0x0003;
/// A frame's largest size as a packet socket hands it over (a GSO frame included).
const RECEIVE_BUFFER: usize = 65_536 + 256;
// asm-generic/socket.h (x86_64: a timespec with 64-bit fields, the "old" layout).
const SO_TIMESTAMPNS: i32 = 35;
const ETH_P_IP: u16 = 0x0800;
const ETHERNET_HEADER: usize = 14;
const VXLAN_HEADER: usize = 8;

pub struct Capture {
    socket: OwnedFd,
    interface: String,
    /// Where frames are received, before they are copied out at their size.
    buffer: Vec<u8>,
}

/// One frame as the socket saw it.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Sent by this host (rather than received).
    pub outgoing: bool,
    /// When the kernel saw it (since the Unix epoch), so frames of several interfaces
    /// and namespaces can be put in the order they crossed them.
    pub at: Duration,
    pub data: Vec<u8>,
}

/// An IPv4 packet's addresses and, for TCP and UDP, its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Summary {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// 6 TCP, 17 UDP, 1 ICMP, …
    pub protocol: u8,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    /// TCP's flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, …).
    pub tcp_flags: Option<u8>,
    /// What the L4 header carries: TCP's or UDP's payload bytes, else the IP payload's.
    pub length: usize,
}

impl Ipv4Summary {
    /// The flags as tcpdump writes them: `S`, `S.`, `P.`, `F.`, `.` (ACK alone).
    pub fn tcp_flags_text(&self) -> Option<String> {
        let flags = self.tcp_flags?;
        let mut text = String::new();
        for (bit, letter) in [
            (0x01, 'F'),
            (0x02, 'S'),
            (0x04, 'R'),
            (0x08, 'P'),
            (0x20, 'U'),
            (0x40, 'E'),
            (0x80, 'W'),
            (0x10, '.'),
        ] {
            if flags & bit != 0 {
                text.push(letter);
            }
        }
        if text.is_empty() {
            text.push_str("none");
        }
        Some(text)
    }
}

/// One line as tcpdump prints it: `IP 10.244.2.2.58274 > 10.244.1.2.8080: Flags [S],
/// length 0`.
impl std::fmt::Display for Ipv4Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let end = |ip: Ipv4Addr, port: Option<u16>| match port {
            Some(port) => format!("{ip}.{port}"),
            None => ip.to_string(),
        };
        write!(
            f,
            "IP {} > {}: ",
            end(self.src, self.src_port),
            end(self.dst, self.dst_port)
        )?;
        match (self.protocol, self.tcp_flags_text()) {
            (6, Some(flags)) => write!(f, "Flags [{flags}], length {}", self.length),
            (17, _) => write!(f, "UDP, length {}", self.length),
            (1, _) => write!(f, "ICMP, length {}", self.length),
            (protocol, _) => write!(f, "ip-proto-{protocol} {}", self.length),
        }
    }
}

/// As tcpdump prints VXLAN (`-T vxlan`): the envelope's line, then the packet inside.
impl std::fmt::Display for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.vxlan {
            Some((vni, inner)) => {
                let outer = self.outer;
                let end = |ip: Ipv4Addr, port: Option<u16>| match port {
                    Some(port) => format!("{ip}.{port}"),
                    None => ip.to_string(),
                };
                write!(
                    f,
                    "IP {} > {}: VXLAN, flags [I] (0x08), vni {vni}\n{inner}",
                    end(outer.src, outer.src_port),
                    end(outer.dst, outer.dst_port)
                )
            }
            None => self.outer.fmt(f),
        }
    }
}

/// A decoded frame: its IPv4 packet and, when that is VXLAN, what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub outer: Ipv4Summary,
    /// The VNI and the inner packet.
    pub vxlan: Option<(u32, Ipv4Summary)>,
}

impl Capture {
    /// Starts capturing on `interface` of the namespace at `netns` (None: the caller's).
    pub fn open(netns: Option<&Path>, interface: &str) -> io::Result<Capture> {
        Ok(Capture::open_all(netns, &[interface.to_string()])?.remove(0))
    }

    /// Starts capturing on each of `interfaces` of one namespace, entering it once
    /// (entering a network namespace costs milliseconds).
    pub fn open_all(netns: Option<&Path>, interfaces: &[String]) -> io::Result<Vec<Capture>> {
        let names = interfaces.to_vec();
        crate::netns::run_in(netns, move || {
            names
                .iter()
                .map(|name| {
                    Ok(Capture {
                        socket: packet_socket(name).map_err(|e| {
                            io::Error::new(e.kind(), format!("capture on {name}: {e}"))
                        })?,
                        interface: name.clone(),
                        buffer: vec![0; RECEIVE_BUFFER],
                    })
                })
                .collect()
        })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The next frame, waiting at most `timeout`; None when none came.
    pub fn next(&mut self, timeout: Duration) -> io::Result<Option<Frame>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [nix::poll::PollFd::new(
                self.socket.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            match nix::poll::poll(&mut fds, millis) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let data = &mut self.buffer;
            // SAFETY: plain data; zero is a valid start for each.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut control = [0u64; 8];
            let mut iov = libc::iovec {
                iov_base: data.as_mut_ptr().cast(),
                iov_len: data.len(),
            };
            // SAFETY: as above.
            let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
            message.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
            message.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            message.msg_iov = &mut iov;
            message.msg_iovlen = 1;
            message.msg_control = control.as_mut_ptr().cast();
            message.msg_controllen = std::mem::size_of_val(&control);
            // SAFETY: every pointer in message points at a live buffer of the size given.
            let received =
                unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut message, libc::MSG_DONTWAIT) };
            if received < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::WouldBlock
                    || error.kind() == io::ErrorKind::Interrupted
                {
                    continue;
                }
                return Err(error);
            }
            return Ok(Some(Frame {
                outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
                at: stamp_of(&message),
                data: data[..received as usize].to_vec(),
            }));
        }
    }

    /// Frames until `found` accepts one's packet (returned) or `timeout` passes (None).
    pub fn until(
        &mut self,
        timeout: Duration,
        mut found: impl FnMut(&Packet) -> bool,
    ) -> io::Result<Option<(Frame, Packet)>> {
        let deadline = Instant::now() + timeout;
        while let Some(frame) = self.next(deadline.saturating_duration_since(Instant::now()))? {
            if let Some(packet) = Packet::parse(&frame.data) {
                if found(&packet) {
                    return Ok(Some((frame, packet)));
                }
            }
        }
        Ok(None)
    }
}

/// A packet socket bound to `name` in the caller's namespace, stamping what it receives.
fn packet_socket(name: &str) -> io::Result<OwnedFd> {
    let index = nix::net::if_::if_nametoindex(name)
        .map_err(|e| io::Error::new(io::ErrorKind::NotFound, format!("{name}: {e}")))?;
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ALL.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = ETH_P_ALL.to_be();
    address.sll_ifindex = index as i32;
    // SAFETY: address is a valid sockaddr_ll of the size given.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if bound < 0 {
        return Err(io::Error::last_os_error());
    }
    // Every frame stamped by the kernel on arrival, handed over with it.
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with an int of the size given.
    let stamped = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if stamped < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// The kernel's time stamp of a received frame (the SO_TIMESTAMPNS control message);
/// now, if it carries none.
fn stamp_of(message: &libc::msghdr) -> Duration {
    // SAFETY: the CMSG_* macros walk the control buffer recvmsg filled, within the length
    // it set; the payload is read unaligned.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == SO_TIMESTAMPNS {
                let stamp: libc::timespec =
                    std::ptr::read_unaligned(libc::CMSG_DATA(header).cast());
                return Duration::new(stamp.tv_sec as u64, stamp.tv_nsec as u32);
            }
            header = libc::CMSG_NXTHDR(message, header);
        }
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

impl Packet {
    /// Decodes an Ethernet frame; None when it holds no IPv4 packet.
    pub fn parse(frame: &[u8]) -> Option<Packet> {
        let (outer, payload) = ipv4_in_ethernet(frame)?;
        let vxlan = match outer.dst_port {
            Some(port) if outer.protocol == 17 && VXLAN_PORTS.contains(&port) => {
                let vxlan = payload.get(8..)?;
                // The I flag says the VNI is valid.
                if vxlan.len() < VXLAN_HEADER || vxlan[0] & 0x08 == 0 {
                    None
                } else {
                    let vni = u32::from_be_bytes([0, vxlan[4], vxlan[5], vxlan[6]]);
                    ipv4_in_ethernet(&vxlan[VXLAN_HEADER..]).map(|(inner, _)| (vni, inner))
                }
            }
            _ => None,
        };
        Some(Packet { outer, vxlan })
    }
}

/// pcap's magic for time stamps in nanoseconds (tcpdump reads it; `-r` prints them).
const PCAP_MAGIC_NANOS: u32 = 0xa1b2_3c4d;
/// LINKTYPE_ETHERNET: every interface a trace captures on (veths, eth1) frames Ethernet.
const LINKTYPE_ETHERNET: u32 = 1;
/// Larger than any frame a packet socket hands over (a GSO frame may exceed 64 KiB).
const PCAP_SNAPLEN: u32 = 262_144;

/// Writes `frames` as a pcap file (`tcpdump -r FILE` reads it), in the order given.
pub fn write_pcap<'a>(
    out: &mut impl std::io::Write,
    frames: impl IntoIterator<Item = &'a Frame>,
) -> io::Result<()> {
    let mut header = Vec::with_capacity(24);
    header.extend_from_slice(&PCAP_MAGIC_NANOS.to_le_bytes());
    header.extend_from_slice(&2u16.to_le_bytes());
    header.extend_from_slice(&4u16.to_le_bytes());
    header.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    header.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    header.extend_from_slice(&PCAP_SNAPLEN.to_le_bytes());
    header.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    out.write_all(&header)?;
    for frame in frames {
        let length = frame.data.len().min(PCAP_SNAPLEN as usize) as u32;
        let mut record = Vec::with_capacity(16);
        record.extend_from_slice(&(frame.at.as_secs() as u32).to_le_bytes());
        record.extend_from_slice(&frame.at.subsec_nanos().to_le_bytes());
        record.extend_from_slice(&length.to_le_bytes());
        record.extend_from_slice(&(frame.data.len() as u32).to_le_bytes());
        out.write_all(&record)?;
        out.write_all(&frame.data[..length as usize])?;
    }
    out.flush()
}

/// The IPv4 packet of an Ethernet frame, and its payload (from the L4 header on).
fn ipv4_in_ethernet(frame: &[u8]) -> Option<(Ipv4Summary, &[u8])> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype != ETH_P_IP {
        return None;
    }
    let ip = frame.get(ETHERNET_HEADER..)?;
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let header = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let protocol = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let payload = ip.get(header..)?;
    // The IP header's length, not the frame's: a short frame is padded on the wire, and
    // a GSO frame a socket sees may be larger than one packet.
    let ip_payload = total.saturating_sub(header);
    // Ports only in a first fragment's TCP or UDP header.
    let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
    let (src_port, dst_port) = match protocol {
        6 | 17 if first_fragment && payload.len() >= 4 => (
            Some(u16::from_be_bytes([payload[0], payload[1]])),
            Some(u16::from_be_bytes([payload[2], payload[3]])),
        ),
        _ => (None, None),
    };
    let (tcp_flags, length) = match protocol {
        6 if first_fragment && payload.len() >= 14 => {
            let offset = usize::from(payload[12] >> 4) * 4;
            (Some(payload[13]), ip_payload.saturating_sub(offset))
        }
        17 if first_fragment => (None, ip_payload.saturating_sub(8)),
        _ => (None, ip_payload),
    };
    Some((
        Ipv4Summary {
            src,
            dst,
            protocol,
            src_port,
            dst_port,
            tcp_flags,
            length,
        },
        payload,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame around an IPv4 header (no options) and `l4`.
    fn frame(src: [u8; 4], dst: [u8; 4], protocol: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ETH_P_IP.to_be_bytes());
        let total = (20 + l4.len()) as u16;
        f.extend_from_slice(&[0x45, 0, total.to_be_bytes()[0], total.to_be_bytes()[1]]);
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(l4);
        f
    }

    #[test]
    fn vxlan_is_decoded_to_the_vni_and_the_inner_packet() {
        // The inner TCP SYN from a pod to another node's pod.
        let inner = frame(
            [10, 244, 2, 2],
            [10, 244, 1, 2],
            6,
            &[0xa4, 0x10, 0x1f, 0x90],
        );
        let mut udp = vec![0xc3, 0x50, 0x21, 0x18, 0, 0, 0, 0]; // 50000 → 8472
        udp.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 1, 0]); // I flag, VNI 1
        udp.extend_from_slice(&inner);
        let outer = frame([192, 168, 102, 12], [192, 168, 102, 11], 17, &udp);
        let packet = Packet::parse(&outer).unwrap();
        assert_eq!(packet.outer.dst_port, Some(8472));
        let (vni, inner) = packet.vxlan.unwrap();
        assert_eq!(vni, 1);
        assert_eq!(inner.dst, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(inner.dst_port, Some(8080));
        assert_eq!(inner.src_port, Some(42000));
    }

    #[test]
    fn packets_print_as_tcpdump_prints_them() {
        // A SYN-ACK with a 20-byte TCP header and no data, inside VXLAN.
        let mut tcp = vec![0x1f, 0x90, 0xe3, 0xa2, 0, 0, 0, 1, 0, 0, 0, 2, 0x50, 0x12];
        tcp.extend_from_slice(&[0u8; 6]);
        let inner = frame([10, 244, 1, 2], [10, 244, 2, 2], 6, &tcp);
        let mut udp = vec![0x86, 0xc5, 0x21, 0x18, 0, 0, 0, 0];
        udp.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 1, 0]);
        udp.extend_from_slice(&inner);
        let outer = frame([192, 168, 102, 11], [192, 168, 102, 12], 17, &udp);
        let packet = Packet::parse(&outer).unwrap();
        assert_eq!(
            packet.to_string(),
            "IP 192.168.102.11.34501 > 192.168.102.12.8472: VXLAN, flags [I] (0x08), vni 1\n\
             IP 10.244.1.2.8080 > 10.244.2.2.58274: Flags [S.], length 0"
        );
        // Data with PSH and ACK: the length is the payload's, after the TCP header.
        let mut data = tcp.clone();
        data[13] = 0x18;
        data.extend_from_slice(b"GET /hostname");
        let plain = Packet::parse(&frame([10, 244, 2, 2], [10, 244, 1, 2], 6, &data)).unwrap();
        assert_eq!(
            plain.to_string(),
            "IP 10.244.2.2.8080 > 10.244.1.2.58274: Flags [P.], length 13"
        );
    }

    #[test]
    fn a_pcap_file_holds_a_header_and_one_record_per_frame() {
        let frames = [Frame {
            outgoing: true,
            at: Duration::new(1_796_000_000, 123_456_789),
            data: frame(
                [10, 0, 0, 1],
                [10, 0, 0, 2],
                17,
                &[0, 53, 0, 53, 0, 8, 0, 0],
            ),
        }];
        let mut file = Vec::new();
        write_pcap(&mut file, &frames).unwrap();
        assert_eq!(file.len(), 24 + 16 + frames[0].data.len());
        assert_eq!(file[..4], PCAP_MAGIC_NANOS.to_le_bytes());
        assert_eq!(file[20..24], LINKTYPE_ETHERNET.to_le_bytes());
        assert_eq!(file[24..28], 1_796_000_000u32.to_le_bytes());
        assert_eq!(file[28..32], 123_456_789u32.to_le_bytes());
        assert_eq!(&file[40..], &frames[0].data[..]);
    }

    #[test]
    fn other_frames_are_plain_or_nothing() {
        let udp = frame(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            17,
            &[0, 53, 0, 53, 0, 8, 0, 0],
        );
        let packet = Packet::parse(&udp).unwrap();
        assert_eq!(packet.vxlan, None);
        assert_eq!(packet.outer.dst_port, Some(53));
        let mut arp = udp.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(Packet::parse(&arp), None);
        assert_eq!(Packet::parse(&udp[..20]), None);
    }
}
