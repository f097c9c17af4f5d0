//! Neighbours: ARP entries (`ip neigh`) and a bridge's or VXLAN device's forwarding
//! entries (`bridge fdb`), both neighbour messages of the kernel's, in two families.

use std::net::Ipv4Addr;

use super::{attributes, u16_at, u32_at, Encoder, KernelError, RouteSocket};
use super::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};

// linux/rtnetlink.h, linux/neighbour.h
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
pub const NUD_PERMANENT: u16 = 0x80;
/// The entry belongs to the device itself (a VXLAN device's FDB), not to a bridge
/// master.
const NTF_SELF: u8 = 0x02;

/// A neighbour entry of one link: an IPv4 neighbour (`ip neigh`) or a forwarding entry
/// (`bridge fdb`: MAC → the remote's IP, for a VXLAN device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub device: u32,
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<[u8; 6]>,
    /// NUD_* (`permanent` is NUD_PERMANENT).
    pub state: u16,
}

impl Neighbour {
    pub fn is_permanent(&self) -> bool {
        self.state & NUD_PERMANENT != 0
    }
}

/// ndmsg: family, pads, ifindex, state, flags, type.
fn ndmsg(family: u8, device: u32, state: u16, flags: u8) -> [u8; 12] {
    let mut header = [0u8; 12];
    header[0] = family;
    header[4..8].copy_from_slice(&device.to_ne_bytes());
    header[8..10].copy_from_slice(&state.to_ne_bytes());
    header[10] = flags;
    header
}

fn parse_neighbour(payload: &[u8], family: u8) -> Option<Neighbour> {
    if payload.len() < 12 || payload[0] != family {
        return None;
    }
    let mut neighbour = Neighbour {
        device: u32_at(payload, 4),
        ip: None,
        mac: None,
        state: u16_at(payload, 8),
    };
    for (attr, value) in attributes(&payload[12..]) {
        match attr {
            NDA_DST if value.len() == 4 => {
                neighbour.ip = Some(Ipv4Addr::new(value[0], value[1], value[2], value[3]))
            }
            NDA_LLADDR if value.len() == 6 => neighbour.mac = value.try_into().ok(),
            _ => {}
        }
    }
    Some(neighbour)
}

impl RouteSocket {
    /// `ip neigh replace IP lladdr MAC dev DEVICE nud permanent`.
    pub fn replace_neighbour(
        &mut self,
        device: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), KernelError> {
        let mut request = Encoder::new(
            RTM_NEWNEIGH,
            NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK,
            &ndmsg(libc::AF_INET as u8, device, NUD_PERMANENT, 0),
        );
        request.attr(NDA_DST, &ip.octets()).attr(NDA_LLADDR, &mac);
        self.0.request(request)
    }

    /// `ip neigh del IP dev DEVICE`.
    pub fn delete_neighbour(&mut self, device: u32, ip: Ipv4Addr) -> Result<(), KernelError> {
        let mut request = Encoder::new(
            RTM_DELNEIGH,
            NLM_F_ACK,
            &ndmsg(libc::AF_INET as u8, device, 0, 0),
        );
        request.attr(NDA_DST, &ip.octets());
        self.0.request(request)
    }

    /// `ip -4 neigh show dev DEVICE`.
    pub fn neighbours(&mut self, device: u32) -> Result<Vec<Neighbour>, KernelError> {
        self.neighbour_dump(libc::AF_INET as u8, device)
    }

    /// `bridge fdb replace MAC dev DEVICE dst IP self permanent`.
    pub fn replace_fdb(
        &mut self,
        device: u32,
        mac: [u8; 6],
        dst: Ipv4Addr,
    ) -> Result<(), KernelError> {
        let mut request = Encoder::new(
            RTM_NEWNEIGH,
            NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK,
            &ndmsg(libc::AF_BRIDGE as u8, device, NUD_PERMANENT, NTF_SELF),
        );
        request.attr(NDA_LLADDR, &mac).attr(NDA_DST, &dst.octets());
        self.0.request(request)
    }

    /// `bridge fdb del MAC dev DEVICE dst IP self`.
    pub fn delete_fdb(
        &mut self,
        device: u32,
        mac: [u8; 6],
        dst: Ipv4Addr,
    ) -> Result<(), KernelError> {
        let mut request = Encoder::new(
            RTM_DELNEIGH,
            NLM_F_ACK,
            &ndmsg(libc::AF_BRIDGE as u8, device, 0, NTF_SELF),
        );
        request.attr(NDA_LLADDR, &mac).attr(NDA_DST, &dst.octets());
        self.0.request(request)
    }

    /// `bridge fdb show dev DEVICE`.
    pub fn fdb(&mut self, device: u32) -> Result<Vec<Neighbour>, KernelError> {
        self.neighbour_dump(libc::AF_BRIDGE as u8, device)
    }

    fn neighbour_dump(&mut self, family: u8, device: u32) -> Result<Vec<Neighbour>, KernelError> {
        let request = Encoder::new(RTM_GETNEIGH, NLM_F_DUMP, &ndmsg(family, 0, 0, 0));
        Ok(self
            .0
            .dump(request)?
            .iter()
            .filter_map(|p| parse_neighbour(p, family))
            .filter(|n| n.device == device)
            .collect())
    }
}
