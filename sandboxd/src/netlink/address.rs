//! Addresses of links, IPv4 and IPv6.

use std::net::IpAddr;

use super::{attributes, ip_octets, u32_at, Encoder, Family, KernelError, RouteSocket};
use super::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};

// linux/rtnetlink.h, linux/if_addr.h
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const IFA_F_DADFAILED: u32 = 0x08;
const IFA_F_TENTATIVE: u32 = 0x40;
const IFA_F_NOPREFIXROUTE: u32 = 0x200;

/// An address of a link, as `ip addr show` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub ip: IpAddr,
    pub prefix: u8,
}

/// How an address is added beyond `ip addr replace`'s defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddOptions {
    /// `nodad`: usable at once rather than after IPv6 duplicate address detection
    /// (about a second), for an address that is known to be this link's alone or meant
    /// to be on several links.
    pub skip_dad: bool,
    /// `noprefixroute`: no `<subnet> dev <link>` route comes with it.
    pub no_prefix_route: bool,
}

impl AddOptions {
    fn flags(self) -> u32 {
        let mut flags = 0;
        if self.skip_dad {
            flags |= IFA_F_NODAD;
        }
        if self.no_prefix_route {
            flags |= IFA_F_NOPREFIXROUTE;
        }
        flags
    }
}

/// Where IPv6 duplicate address detection stands for an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dad {
    /// Done (or skipped): the address is usable.
    Settled,
    /// Still probing: the kernel will not use it as a source yet.
    Tentative,
    /// Another node answered for it.
    Failed,
}

/// ifaddrmsg: family, prefix length, flags, scope, index.
fn ifaddrmsg(family: u8, prefix: u8, index: u32) -> [u8; 8] {
    let mut header = [0u8; 8];
    header[0] = family;
    header[1] = prefix;
    header[4..8].copy_from_slice(&index.to_ne_bytes());
    header
}

fn parse_dad(payload: &[u8]) -> Dad {
    let mut flags = u32::from(payload[2]);
    for (attr, value) in attributes(&payload[8..]) {
        if attr == IFA_FLAGS && value.len() == 4 {
            flags = u32_at(value, 0);
        }
    }
    if flags & IFA_F_DADFAILED != 0 {
        Dad::Failed
    } else if flags & IFA_F_TENTATIVE != 0 {
        Dad::Tentative
    } else {
        Dad::Settled
    }
}

fn parse_address(payload: &[u8]) -> Option<Address> {
    if payload.len() < 8 {
        return None;
    }
    let family = Family::from_af(payload[0])?;
    let (mut local, mut address) = (None, None);
    for (attr, value) in attributes(&payload[8..]) {
        match attr {
            IFA_LOCAL => local = family.ip(value),
            IFA_ADDRESS => address = family.ip(value),
            _ => {}
        }
    }
    // On a point-to-point link IFA_ADDRESS is the peer's; IFA_LOCAL is always ours, but
    // IPv6 sends only IFA_ADDRESS.
    Some(Address {
        index: u32_at(payload, 4),
        ip: local.or(address)?,
        prefix: payload[1],
    })
}

impl RouteSocket {
    /// `ip addr replace IP/PREFIX dev INDEX`.
    pub fn replace_address(&mut self, address: &Address) -> Result<(), KernelError> {
        self.replace_address_with(address, AddOptions::default())
    }

    /// `ip addr replace IP/PREFIX dev INDEX [nodad] [noprefixroute]`.
    pub fn replace_address_with(
        &mut self,
        address: &Address,
        options: AddOptions,
    ) -> Result<(), KernelError> {
        let mut request = Encoder::new(
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK,
            &ifaddrmsg(Family::of(&address.ip).af(), address.prefix, address.index),
        );
        let ip = ip_octets(&address.ip);
        request.attr(IFA_LOCAL, &ip).attr(IFA_ADDRESS, &ip);
        let flags = options.flags();
        if flags != 0 {
            request.u32(IFA_FLAGS, flags);
        }
        self.0.request(request)
    }

    /// `ip addr del IP/PREFIX dev INDEX`.
    pub fn delete_address(&mut self, address: &Address) -> Result<(), KernelError> {
        let mut request = Encoder::new(
            RTM_DELADDR,
            NLM_F_ACK,
            &ifaddrmsg(Family::of(&address.ip).af(), address.prefix, address.index),
        );
        request.attr(IFA_LOCAL, &ip_octets(&address.ip));
        self.0.request(request)
    }

    /// `ip addr show dev INDEX` (every link's with None), both families.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>, KernelError> {
        let request = Encoder::new(RTM_GETADDR, NLM_F_DUMP, &ifaddrmsg(0, 0, 0));
        Ok(self
            .0
            .dump(request)?
            .iter()
            .filter_map(|p| parse_address(p))
            .filter(|a| index.is_none_or(|i| a.index == i))
            .collect())
    }

    /// `ip -6 addr show dev INDEX` with each address's duplicate address detection state.
    pub fn ipv6_addresses_dad(&mut self, index: u32) -> Result<Vec<(Address, Dad)>, KernelError> {
        let request = Encoder::new(RTM_GETADDR, NLM_F_DUMP, &ifaddrmsg(Family::V6.af(), 0, 0));
        Ok(self
            .0
            .dump(request)?
            .iter()
            .filter_map(|p| Some((parse_address(p)?, parse_dad(p))))
            .filter(|(a, _)| a.index == index && Family::of(&a.ip) == Family::V6)
            .collect())
    }
}
