//! Routes of the main table, IPv4 and IPv6.

use std::net::IpAddr;

use super::{attributes, ip_octets, u32_at, Encoder, Family, KernelError, RouteSocket};
use super::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};

// linux/rtnetlink.h
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
/// What `ip route add` records as the route's origin.
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
/// In a delete: whatever the route's scope.
const RT_SCOPE_NOWHERE: u8 = 255;
const RTN_UNICAST: u8 = 1;
const RTNH_F_ONLINK: u32 = 4;

/// A unicast route of the main table, as `ip route` shows it. Its family is its
/// destination's; the gateway and source must be of the same family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub destination: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    /// The outgoing link.
    pub device: Option<u32>,
    /// The gateway is taken as on the link even with no address of its subnet there
    /// (flannel's routes via `<subnet>.0` on flannel.1).
    pub onlink: bool,
    /// The source address the node picks for traffic on this route (`src`).
    pub source: Option<IpAddr>,
}

impl Route {
    pub fn family(&self) -> Family {
        Family::of(&self.destination)
    }

    fn scope(&self) -> u8 {
        if self.gateway.is_some() {
            RT_SCOPE_UNIVERSE
        } else {
            RT_SCOPE_LINK
        }
    }

    fn encode(&self, msg_type: u16, flags: u16) -> Encoder {
        // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut header = [0u8; 12];
        header[0] = self.family().af();
        header[1] = self.prefix;
        header[4] = RT_TABLE_MAIN;
        if msg_type == RTM_DELROUTE {
            // As `ip route del`: any origin and scope, so the kernel's own prefix routes
            // can go too; the destination, gateway and device still have to match.
            header[6] = RT_SCOPE_NOWHERE;
        } else {
            header[5] = RTPROT_BOOT;
            header[6] = self.scope();
        }
        header[7] = RTN_UNICAST;
        let route_flags = if self.onlink { RTNH_F_ONLINK } else { 0 };
        header[8..12].copy_from_slice(&route_flags.to_ne_bytes());
        let mut request = Encoder::new(msg_type, flags, &header);
        request.attr(RTA_DST, &ip_octets(&self.destination));
        if let Some(gateway) = self.gateway {
            request.attr(RTA_GATEWAY, &ip_octets(&gateway));
        }
        if let Some(device) = self.device {
            request.u32(RTA_OIF, device);
        }
        if let Some(source) = self.source {
            request.attr(RTA_PREFSRC, &ip_octets(&source));
        }
        request
    }
}

fn parse_route(payload: &[u8]) -> Option<Route> {
    if payload.len() < 12 || payload[7] != RTN_UNICAST {
        return None;
    }
    let family = Family::from_af(payload[0])?;
    let mut table = u32::from(payload[4]);
    let mut route = Route {
        destination: family.unspecified(),
        prefix: payload[1],
        gateway: None,
        device: None,
        onlink: u32_at(payload, 8) & RTNH_F_ONLINK != 0,
        source: None,
    };
    for (attr, value) in attributes(&payload[12..]) {
        match attr {
            RTA_DST => route.destination = family.ip(value)?,
            RTA_GATEWAY => route.gateway = family.ip(value),
            RTA_OIF if value.len() == 4 => route.device = Some(u32_at(value, 0)),
            RTA_PREFSRC => route.source = family.ip(value),
            RTA_TABLE if value.len() == 4 => table = u32_at(value, 0),
            _ => {}
        }
    }
    (table == u32::from(RT_TABLE_MAIN)).then_some(route)
}

impl RouteSocket {
    /// `ip route replace DST/PREFIX [via GATEWAY] [dev DEVICE] [onlink] [src SOURCE]`.
    pub fn replace_route(&mut self, route: &Route) -> Result<(), KernelError> {
        self.0
            .request(route.encode(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK))
    }

    /// `ip route del DST/PREFIX [via GATEWAY] [dev DEVICE]`.
    pub fn delete_route(&mut self, route: &Route) -> Result<(), KernelError> {
        self.0.request(route.encode(RTM_DELROUTE, NLM_F_ACK))
    }

    /// `ip -4 route show table main` (or `-6`): its unicast routes.
    pub fn routes(&mut self, family: Family) -> Result<Vec<Route>, KernelError> {
        let mut header = [0u8; 12];
        header[0] = family.af();
        let request = Encoder::new(RTM_GETROUTE, NLM_F_DUMP, &header);
        Ok(self
            .0
            .dump(request)?
            .iter()
            .filter_map(|p| parse_route(p))
            .collect())
    }
}
