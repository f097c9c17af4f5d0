//! Connection tracking over ctnetlink: the entries `conntrack -L` lists, read to learn
//! where a flow's addresses were translated (a Service's DNAT, a masquerade's SNAT).

use std::io;
use std::net::Ipv4Addr;

use super::{attributes, u32_at, Encoder, KernelError, Socket, NETLINK_NETFILTER, NLM_F_DUMP};

// linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const NFNETLINK_V0: u8 = 0;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
// linux/netfilter/nf_conntrack_common.h
const IPS_SRC_NAT: u32 = 1 << 4;
const IPS_DST_NAT: u32 = 1 << 5;

/// One direction of a connection: what a packet of that direction carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// 6 TCP, 17 UDP, …
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Tuple {
    /// The tuple of the other direction, untranslated.
    pub fn reversed(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            protocol: self.protocol,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// A tracked connection: the original direction as it arrived, the reply direction as
/// it is expected back (after translation), and the status bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    pub original: Tuple,
    pub reply: Tuple,
    pub status: u32,
}

impl Connection {
    /// Where the original direction's destination was translated to (a Service's
    /// endpoint), when it was.
    pub fn translated_destination(&self) -> Option<(Ipv4Addr, u16)> {
        (self.status & IPS_DST_NAT != 0).then_some((self.reply.src, self.reply.src_port))
    }

    /// What the original direction's source became (a masquerade), when it was
    /// translated.
    pub fn translated_source(&self) -> Option<(Ipv4Addr, u16)> {
        (self.status & IPS_SRC_NAT != 0).then_some((self.reply.dst, self.reply.dst_port))
    }

    /// The original direction as it leaves this namespace: both translations applied.
    pub fn translated(&self) -> Tuple {
        self.reply.reversed()
    }
}

/// A ctnetlink socket of one network namespace.
pub struct ConntrackSocket(Socket);

impl ConntrackSocket {
    /// Opens it in the caller's namespace.
    pub fn open() -> io::Result<ConntrackSocket> {
        Socket::open(NETLINK_NETFILTER).map(ConntrackSocket)
    }

    /// Opens it in the namespace at `netns` (None: the caller's).
    pub fn open_in(netns: Option<&std::path::Path>) -> io::Result<ConntrackSocket> {
        Socket::open_in(netns, NETLINK_NETFILTER).map(ConntrackSocket)
    }

    /// The IPv4 connections the namespace tracks (`conntrack -L -f ipv4`). A namespace
    /// where nothing needs tracking has none.
    pub fn connections(&mut self) -> Result<Vec<Connection>, KernelError> {
        let header = [libc::AF_INET as u8, NFNETLINK_V0, 0, 0];
        let request = Encoder::new(
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
            NLM_F_DUMP,
            &header,
        );
        Ok(self
            .0
            .dump(request)?
            .iter()
            .filter_map(|payload| parse_connection(payload))
            .collect())
    }
}

/// A CT_NEW message's payload (after the netlink header): nfgenmsg, then attributes.
fn parse_connection(payload: &[u8]) -> Option<Connection> {
    let (mut original, mut reply, mut status) = (None, None, 0);
    for (kind, value) in attributes(payload.get(4..)?) {
        match kind {
            CTA_TUPLE_ORIG => original = parse_tuple(value),
            CTA_TUPLE_REPLY => reply = parse_tuple(value),
            CTA_STATUS if value.len() >= 4 => status = u32::from_be(u32_at(value, 0)),
            _ => {}
        }
    }
    Some(Connection {
        original: original?,
        reply: reply?,
        status,
    })
}

fn parse_tuple(nested: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut protocol, mut ports) = (None, None, None, (0, 0));
    for (kind, value) in attributes(nested) {
        match kind {
            CTA_TUPLE_IP => {
                for (kind, value) in attributes(value) {
                    let address: Option<[u8; 4]> = value.try_into().ok();
                    match kind {
                        CTA_IP_V4_SRC => src = address.map(Ipv4Addr::from),
                        CTA_IP_V4_DST => dst = address.map(Ipv4Addr::from),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (kind, value) in attributes(value) {
                    let port = || Some(u16::from_be_bytes(value.try_into().ok()?));
                    match kind {
                        CTA_PROTO_NUM => protocol = value.first().copied(),
                        CTA_PROTO_SRC_PORT => ports.0 = port().unwrap_or(0),
                        CTA_PROTO_DST_PORT => ports.1 = port().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        src: src?,
        dst: dst?,
        protocol: protocol?,
        src_port: ports.0,
        dst_port: ports.1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(e: &mut Encoder, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) {
        e.nested(CTA_TUPLE_IP, |e| {
            e.attr(CTA_IP_V4_SRC, &src).attr(CTA_IP_V4_DST, &dst);
        })
        .nested(CTA_TUPLE_PROTO, |e| {
            e.u8(CTA_PROTO_NUM, 6)
                .be16(CTA_PROTO_SRC_PORT, sport)
                .be16(CTA_PROTO_DST_PORT, dport);
        });
    }

    #[test]
    fn a_service_connection_reads_as_dnat_and_masquerade() {
        // pod-src → ClusterIP 10.96.0.2:8080, translated to pod-dest 10.244.1.2:8080 and
        // masqueraded to 10.244.2.0:31234, as `conntrack -L` would list it.
        let mut e = Encoder::new(0, 0, &[2, 0, 0, 0]);
        e.nested(CTA_TUPLE_ORIG, |e| {
            tuple(e, [10, 244, 2, 2], [10, 96, 0, 2], 40000, 8080)
        })
        .nested(CTA_TUPLE_REPLY, |e| {
            tuple(e, [10, 244, 1, 2], [10, 244, 2, 0], 8080, 31234)
        })
        .be32(CTA_STATUS, IPS_SRC_NAT | IPS_DST_NAT | 0x8);
        let connection = parse_connection(&e.buf[16..]).unwrap();
        assert_eq!(connection.original.dst, Ipv4Addr::new(10, 96, 0, 2));
        assert_eq!(
            connection.translated_destination(),
            Some((Ipv4Addr::new(10, 244, 1, 2), 8080))
        );
        assert_eq!(
            connection.translated_source(),
            Some((Ipv4Addr::new(10, 244, 2, 0), 31234))
        );
        let out = connection.translated();
        assert_eq!(
            (out.src, out.src_port, out.dst, out.dst_port),
            (
                Ipv4Addr::new(10, 244, 2, 0),
                31234,
                Ipv4Addr::new(10, 244, 1, 2),
                8080
            )
        );
    }
}
