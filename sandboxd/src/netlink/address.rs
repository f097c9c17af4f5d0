//! IPv4 addresses of links.

use std::net::Ipv4Addr;

use super::{attributes, u32_at, Encoder, KernelError, RouteSocket};
use super::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};

// linux/rtnetlink.h, linux/if_addr.h
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

/// An address of a link, as `ip -4 addr show` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub ip: Ipv4Addr,
    pub prefix: u8,
}

/// ifaddrmsg: family, prefix length, flags, scope, index.
fn ifaddrmsg(prefix: u8, index: u32) -> [u8; 8] {
    let mut header = [0u8; 8];
    header[0] = libc::AF_INET as u8;
    header[1] = prefix;
    header[4..8].copy_from_slice(&index.to_ne_bytes());
    header
}

fn parse_address(payload: &[u8]) -> Option<Address> {
    if payload.len() < 8 || payload[0] != libc::AF_INET as u8 {
        return None;
    }
    let mut ip = None;
    for (attr, value) in attributes(&payload[8..]) {
        if (attr == IFA_LOCAL || (attr == IFA_ADDRESS && ip.is_none())) && value.len() == 4 {
            ip = Some(Ipv4Addr::new(value[0], value[1], value[2], value[3]));
        }
    }
    Some(Address {
        index: u32_at(payload, 4),
        ip: ip?,
        prefix: payload[1],
    })
}

impl RouteSocket {
    /// `ip addr replace IP/PREFIX dev INDEX`.
    pub fn replace_address(&mut self, address: &Address) -> Result<(), KernelError> {
        let mut request = Encoder::new(
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK,
            &ifaddrmsg(address.prefix, address.index),
        );
        request
            .attr(IFA_LOCAL, &address.ip.octets())
            .attr(IFA_ADDRESS, &address.ip.octets());
        self.0.request(request)
    }

    /// `ip addr del IP/PREFIX dev INDEX`.
    pub fn delete_address(&mut self, address: &Address) -> Result<(), KernelError> {
        let mut request = Encoder::new(
            RTM_DELADDR,
            NLM_F_ACK,
            &ifaddrmsg(address.prefix, address.index),
        );
        request.attr(IFA_LOCAL, &address.ip.octets());
        self.0.request(request)
    }

    /// `ip -4 addr show dev INDEX` (every link's with None).
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>, KernelError> {
        let request = Encoder::new(RTM_GETADDR, NLM_F_DUMP, &ifaddrmsg(0, 0));
        Ok(self
            .0
            .dump(request)?
            .iter()
            .filter_map(|p| parse_address(p))
            .filter(|a| index.is_none_or(|i| a.index == i))
            .collect())
    }
}
