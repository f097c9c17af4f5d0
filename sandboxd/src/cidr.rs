//! IPv4 networks (`10.244.1.0/24`): the cluster's pod CIDR, the per-node subnets cut from
//! it, the lab's underlay.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 network: its first address and prefix length (the address is kept as given;
/// [`Ipv4Cidr::network`] masks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub const fn new(addr: Ipv4Addr, prefix: u8) -> Ipv4Cidr {
        Ipv4Cidr { addr, prefix }
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// The network itself: the address with the host bits cleared.
    pub fn network(&self) -> Ipv4Cidr {
        Ipv4Cidr::new(
            Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            self.prefix,
        )
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// Whether `other` lies wholly inside this network.
    pub fn covers(&self, other: &Ipv4Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// The `n`th address of the network (0 is the network address itself).
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from((u32::from(self.addr) & self.mask()).wrapping_add(n))
    }

    /// How many subnets of length `prefix` it holds (0 if `prefix` is shorter).
    pub fn subnet_count(&self, prefix: u8) -> u32 {
        if prefix < self.prefix || prefix > 32 {
            return 0;
        }
        1u32.checked_shl(u32::from(prefix - self.prefix))
            .unwrap_or(u32::MAX)
    }

    /// Its `index`th subnet of length `prefix` (10.244.0.0/16, 24, 3 → 10.244.3.0/24).
    pub fn subnet(&self, prefix: u8, index: u32) -> Option<Ipv4Cidr> {
        if index >= self.subnet_count(prefix) {
            return None;
        }
        let size = 1u64 << (32 - u32::from(prefix));
        let base = u64::from(u32::from(self.network().addr)) + u64::from(index) * size;
        Some(Ipv4Cidr::new(Ipv4Addr::from(base as u32), prefix))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (ip, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a CIDR (like 10.244.0.0/16)"))?;
        let addr: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (1..=32).contains(p))
            .ok_or_else(|| format!("{prefix:?} is not a prefix length (1-32)"))?;
        Ok(Ipv4Cidr { addr, prefix })
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_cut_in_order_and_bounded() {
        let cluster: Ipv4Cidr = "10.244.0.0/16".parse().unwrap();
        assert_eq!(cluster.subnet_count(24), 256);
        assert_eq!(cluster.subnet(24, 3).unwrap().to_string(), "10.244.3.0/24");
        assert_eq!(
            cluster.subnet(24, 255).unwrap().to_string(),
            "10.244.255.0/24"
        );
        assert_eq!(cluster.subnet(24, 256), None);
        assert_eq!(cluster.subnet(8, 0), None);
        let small: Ipv4Cidr = "10.244.0.0/23".parse().unwrap();
        assert_eq!(small.subnet_count(24), 2);
    }

    #[test]
    fn containment_and_hosts() {
        let subnet: Ipv4Cidr = "10.244.2.0/24".parse().unwrap();
        assert!(subnet.contains(Ipv4Addr::new(10, 244, 2, 77)));
        assert!(!subnet.contains(Ipv4Addr::new(10, 244, 3, 1)));
        assert_eq!(subnet.host(1), Ipv4Addr::new(10, 244, 2, 1));
        let cluster: Ipv4Cidr = "10.244.0.0/16".parse().unwrap();
        assert!(cluster.covers(&subnet));
        assert!(!subnet.covers(&cluster));
        assert_eq!(
            "192.168.102.11/24"
                .parse::<Ipv4Cidr>()
                .unwrap()
                .network()
                .to_string(),
            "192.168.102.0/24"
        );
    }

    #[test]
    fn bad_text_is_refused_with_the_reason() {
        assert!("10.244.0.0"
            .parse::<Ipv4Cidr>()
            .unwrap_err()
            .contains("not a CIDR"));
        assert!("10.244.0/16"
            .parse::<Ipv4Cidr>()
            .unwrap_err()
            .contains("not an IPv4"));
        assert!("10.244.0.0/33"
            .parse::<Ipv4Cidr>()
            .unwrap_err()
            .contains("prefix"));
        assert!("10.244.0.0/0"
            .parse::<Ipv4Cidr>()
            .unwrap_err()
            .contains("prefix"));
    }
}
