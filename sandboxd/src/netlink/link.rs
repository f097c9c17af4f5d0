//! Links (network interfaces): read them, and make the kinds sandboxd needs — veth pairs
//! (the lab's node cables), bridges (the lab's underlay), VXLAN devices (the overlay's
//! `flannel.1`) — then set them up, under a bridge, or delete them.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::{attributes, u32_at, Encoder, KernelError, RouteSocket};
use super::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL};

// linux/rtnetlink.h, linux/if_link.h
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_VXLAN_ID: u16 = 1;
const IFLA_VXLAN_LINK: u16 = 3;
const IFLA_VXLAN_LOCAL: u16 = 4;
const IFLA_VXLAN_LEARNING: u16 = 7;
const IFLA_VXLAN_PORT: u16 = 15;
const IFF_UP: u32 = 0x1;
const IFF_PROMISC: u32 = 0x100;
const RTM_SETLINK: u16 = 19;
const IFLA_PROTINFO: u16 = 12;
const IFLA_BRPORT_MODE: u16 = 4;
const NLA_F_NESTED: u16 = 0x8000;

/// A link as `ip -d link show` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
    /// The bridge it is a port of.
    pub master: Option<u32>,
    /// The index of the link it is tied to, in the peer's namespace: a veth's other end
    /// (the `@if7` of `eth0@if7`).
    pub peer_index: Option<u32>,
    /// `veth`, `bridge`, `vxlan`, …; None for physical devices and loopback.
    pub kind: Option<String>,
    pub vxlan: Option<Vxlan>,
}

/// A VXLAN device's settings, as given at creation and read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: u32,
    /// The source address of the outer packets.
    pub local: Option<Ipv4Addr>,
    /// The underlay device the outer packets leave by.
    pub underlay: Option<u32>,
    /// The UDP port (Linux's default 8472; IANA's is 4789).
    pub port: u16,
    /// Whether the device learns remote MACs from what it receives.
    pub learning: bool,
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// ifinfomsg: family, type, index, flags, change.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut header = [0u8; 16];
    header[4..8].copy_from_slice(&index.to_ne_bytes());
    header[8..12].copy_from_slice(&flags.to_ne_bytes());
    header[12..16].copy_from_slice(&change.to_ne_bytes());
    header
}

fn parse_link(payload: &[u8]) -> Option<Link> {
    if payload.len() < 16 {
        return None;
    }
    let mut link = Link {
        index: u32_at(payload, 4),
        name: String::new(),
        mtu: 0,
        mac: None,
        up: u32_at(payload, 8) & IFF_UP != 0,
        master: None,
        peer_index: None,
        kind: None,
        vxlan: None,
    };
    for (attr, value) in attributes(&payload[16..]) {
        match attr {
            IFLA_IFNAME => {
                let name = value.split(|c| *c == 0).next().unwrap_or_default();
                link.name = String::from_utf8_lossy(name).into_owned();
            }
            IFLA_MTU if value.len() >= 4 => link.mtu = u32_at(value, 0),
            IFLA_ADDRESS if value.len() == 6 => link.mac = value.try_into().ok(),
            IFLA_MASTER if value.len() >= 4 => link.master = Some(u32_at(value, 0)),
            IFLA_LINK if value.len() >= 4 => link.peer_index = Some(u32_at(value, 0)),
            IFLA_LINKINFO => parse_link_info(value, &mut link),
            _ => {}
        }
    }
    Some(link)
}

fn parse_link_info(info: &[u8], link: &mut Link) {
    let mut data = None;
    for (attr, value) in attributes(info) {
        match attr {
            IFLA_INFO_KIND => {
                let kind = value.split(|c| *c == 0).next().unwrap_or_default();
                link.kind = Some(String::from_utf8_lossy(kind).into_owned());
            }
            IFLA_INFO_DATA => data = Some(value),
            _ => {}
        }
    }
    if link.kind.as_deref() != Some("vxlan") {
        return;
    }
    let mut vxlan = Vxlan {
        vni: 0,
        local: None,
        underlay: None,
        port: 0,
        learning: true,
    };
    for (attr, value) in attributes(data.unwrap_or_default()) {
        match attr {
            IFLA_VXLAN_ID if value.len() >= 4 => vxlan.vni = u32_at(value, 0),
            IFLA_VXLAN_LOCAL if value.len() == 4 => {
                vxlan.local = Some(Ipv4Addr::new(value[0], value[1], value[2], value[3]))
            }
            IFLA_VXLAN_LINK if value.len() >= 4 => vxlan.underlay = Some(u32_at(value, 0)),
            IFLA_VXLAN_PORT if value.len() == 2 => {
                vxlan.port = u16::from_be_bytes([value[0], value[1]])
            }
            IFLA_VXLAN_LEARNING if !value.is_empty() => vxlan.learning = value[0] != 0,
            _ => {}
        }
    }
    link.vxlan = Some(vxlan);
}

impl RouteSocket {
    /// `ip -d link show NAME`; None if there is no such link.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, KernelError> {
        let mut request = Encoder::new(RTM_GETLINK, 0, &ifinfomsg(0, 0, 0));
        request.str(IFLA_IFNAME, name);
        match self.0.dump(request) {
            Ok(replies) => Ok(replies.iter().find_map(|p| parse_link(p))),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `ip -d link show`: every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, KernelError> {
        // A dump request carries rtgenmsg, whose family is the first byte of ifinfomsg.
        let request = Encoder::new(RTM_GETLINK, super::NLM_F_DUMP, &ifinfomsg(0, 0, 0));
        Ok(self
            .0
            .dump(request)?
            .iter()
            .filter_map(|p| parse_link(p))
            .collect())
    }

    /// `ip link add NAME type bridge`.
    pub fn add_bridge(&mut self, name: &str) -> Result<(), KernelError> {
        let mut request = Encoder::new(
            RTM_NEWLINK,
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
            &ifinfomsg(0, 0, 0),
        );
        request.str(IFLA_IFNAME, name).nested(IFLA_LINKINFO, |m| {
            m.str(IFLA_INFO_KIND, "bridge");
        });
        self.0.request(request)
    }

    /// `ip link add NAME type veth peer name PEER netns PEER_NETNS`: the peer is made
    /// directly in the other namespace, so its name never clashes with one here.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: Option<BorrowedFd<'_>>,
    ) -> Result<(), KernelError> {
        let mut request = Encoder::new(
            RTM_NEWLINK,
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
            &ifinfomsg(0, 0, 0),
        );
        request.str(IFLA_IFNAME, name).nested(IFLA_LINKINFO, |m| {
            m.str(IFLA_INFO_KIND, "veth");
            m.nested(IFLA_INFO_DATA, |m| {
                m.nested(VETH_INFO_PEER, |m| {
                    m.raw(&ifinfomsg(0, 0, 0));
                    m.str(IFLA_IFNAME, peer);
                    if let Some(fd) = peer_netns {
                        m.u32(IFLA_NET_NS_FD, fd.as_raw_fd() as u32);
                    }
                });
            });
        });
        self.0.request(request)
    }

    /// `ip link add NAME mtu MTU type vxlan id VNI local LOCAL dev UNDERLAY dstport PORT
    /// nolearning`.
    pub fn add_vxlan(&mut self, name: &str, mtu: u32, vxlan: &Vxlan) -> Result<(), KernelError> {
        let mut request = Encoder::new(
            RTM_NEWLINK,
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
            &ifinfomsg(0, 0, 0),
        );
        request
            .str(IFLA_IFNAME, name)
            .u32(IFLA_MTU, mtu)
            .nested(IFLA_LINKINFO, |m| {
                m.str(IFLA_INFO_KIND, "vxlan");
                m.nested(IFLA_INFO_DATA, |m| {
                    m.u32(IFLA_VXLAN_ID, vxlan.vni);
                    if let Some(local) = vxlan.local {
                        m.attr(IFLA_VXLAN_LOCAL, &local.octets());
                    }
                    if let Some(underlay) = vxlan.underlay {
                        m.u32(IFLA_VXLAN_LINK, underlay);
                    }
                    m.be16(IFLA_VXLAN_PORT, vxlan.port);
                    m.u8(IFLA_VXLAN_LEARNING, u8::from(vxlan.learning));
                });
            });
        self.0.request(request)
    }

    /// `ip link set dev INDEX up`.
    pub fn set_up(&mut self, index: u32) -> Result<(), KernelError> {
        let request = Encoder::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, IFF_UP, IFF_UP));
        self.0.request(request)
    }

    /// `ip link set dev INDEX down`.
    pub fn set_down(&mut self, index: u32) -> Result<(), KernelError> {
        let request = Encoder::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, 0, IFF_UP));
        self.0.request(request)
    }

    /// `bridge link set dev INDEX hairpin on|off`: whether the bridge sends a port's frames
    /// back out of it (a pod reaching itself through a Service).
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<(), KernelError> {
        let mut header = ifinfomsg(index, 0, 0);
        header[0] = libc::AF_BRIDGE as u8;
        let mut request = Encoder::new(RTM_SETLINK, NLM_F_ACK, &header);
        request.nested(IFLA_PROTINFO | NLA_F_NESTED, |m| {
            m.u8(IFLA_BRPORT_MODE, u8::from(on));
        });
        self.0.request(request)
    }

    /// `ip link set dev INDEX promisc on`.
    pub fn set_promiscuous(&mut self, index: u32) -> Result<(), KernelError> {
        let request = Encoder::new(
            RTM_NEWLINK,
            NLM_F_ACK,
            &ifinfomsg(index, IFF_PROMISC, IFF_PROMISC),
        );
        self.0.request(request)
    }

    /// `ip link set dev INDEX master BRIDGE`.
    pub fn set_master(&mut self, index: u32, bridge: u32) -> Result<(), KernelError> {
        let mut request = Encoder::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, 0, 0));
        request.u32(IFLA_MASTER, bridge);
        self.0.request(request)
    }

    /// `ip link set dev INDEX mtu MTU`.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), KernelError> {
        let mut request = Encoder::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, 0, 0));
        request.u32(IFLA_MTU, mtu);
        self.0.request(request)
    }

    /// `ip link set dev INDEX address MAC`.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), KernelError> {
        let mut request = Encoder::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, 0, 0));
        request.attr(IFLA_ADDRESS, &mac);
        self.0.request(request)
    }

    /// `ip link set dev INDEX netns NETNS`.
    pub fn move_to_netns(&mut self, index: u32, netns: BorrowedFd<'_>) -> Result<(), KernelError> {
        let mut request = Encoder::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, 0, 0));
        request.u32(IFLA_NET_NS_FD, netns.as_raw_fd() as u32);
        self.0.request(request)
    }

    /// `ip link del dev INDEX` (a veth takes its peer with it).
    pub fn delete_link(&mut self, index: u32) -> Result<(), KernelError> {
        let request = Encoder::new(RTM_DELLINK, NLM_F_ACK, &ifinfomsg(index, 0, 0));
        self.0.request(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_print_and_parse_as_ip_shows_them() {
        let mac = [0x0a, 0x58, 0xc0, 0xa8, 0x66, 0x0b];
        assert_eq!(format_mac(&mac), "0a:58:c0:a8:66:0b");
        assert_eq!(parse_mac("0a:58:c0:a8:66:0b"), Some(mac));
        assert_eq!(parse_mac("0a:58:c0:a8:66"), None);
        assert_eq!(parse_mac("0a:58:c0:a8:66:0b:00"), None);
        assert_eq!(parse_mac("0a:58:c0:a8:66:zz"), None);
    }

    #[test]
    fn a_vxlan_link_info_parses_back() {
        let mut m = Encoder::new(RTM_NEWLINK, 0, &ifinfomsg(7, IFF_UP, 0));
        m.str(IFLA_IFNAME, "flannel.1")
            .u32(IFLA_MTU, 1450)
            .attr(IFLA_ADDRESS, &[1, 2, 3, 4, 5, 6])
            .nested(IFLA_LINKINFO, |m| {
                m.str(IFLA_INFO_KIND, "vxlan");
                m.nested(IFLA_INFO_DATA, |m| {
                    m.u32(IFLA_VXLAN_ID, 1)
                        .attr(IFLA_VXLAN_LOCAL, &[192, 168, 102, 11])
                        .u32(IFLA_VXLAN_LINK, 2)
                        .be16(IFLA_VXLAN_PORT, 8472)
                        .u8(IFLA_VXLAN_LEARNING, 0);
                });
            });
        let link = parse_link(&m.buf[16..]).unwrap();
        assert_eq!(link.index, 7);
        assert!(link.up);
        assert_eq!(link.name, "flannel.1");
        assert_eq!(link.mtu, 1450);
        assert_eq!(link.mac, Some([1, 2, 3, 4, 5, 6]));
        assert_eq!(
            link.vxlan,
            Some(Vxlan {
                vni: 1,
                local: Some(Ipv4Addr::new(192, 168, 102, 11)),
                underlay: Some(2),
                port: 8472,
                learning: false,
            })
        );
    }
}
