//! Address ranges as host-local reads them: a subnet, an optional first and last address
//! and a gateway, filled in as upstream does (gateway and first address: the subnet's
//! first host; last: its last address, less the broadcast for IPv4); a range set is a
//! list of ranges one address is taken from.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cni_host::result::IpNetwork;
use serde::Deserialize;

/// A range as the config writes it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RangeConfig {
    pub subnet: IpNetwork,
    #[serde(default)]
    pub range_start: Option<IpAddr>,
    #[serde(default)]
    pub range_end: Option<IpAddr>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

/// A range with everything filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The subnet, at its network address.
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

/// An address as a number, for arithmetic on either family.
pub fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(ip) => u32::from(ip) as u128,
        IpAddr::V6(ip) => u128::from(ip),
    }
}

/// The address of a number, of the family `v4` says.
pub fn address(value: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(value as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(value))
    }
}

/// An IPv4-mapped IPv6 address is its IPv4 address, as Go's To4 makes it.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Range {
    /// Checks and fills in a configured range (upstream's Canonicalize).
    pub fn canonicalize(config: &RangeConfig) -> Result<Range, String> {
        let ip = canonical(config.subnet.addr);
        let bits: u8 = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = config.subnet.prefix;
        if prefix > bits.saturating_sub(2) {
            return Err(format!(
                "Network {} too small to allocate from",
                config.subnet
            ));
        }
        let host_bits = u32::from(bits - prefix);
        let host_mask: u128 = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let network = number(ip) & !host_mask;
        let subnet = IpNetwork {
            addr: address(network, ip.is_ipv4()),
            prefix,
        };
        let first_host = address(network + 1, ip.is_ipv4());
        let mut last = network | host_mask;
        if ip.is_ipv4() {
            last -= 1;
        }
        let mut range = Range {
            subnet,
            start: first_host,
            end: address(last, ip.is_ipv4()),
            gateway: first_host,
        };
        if let Some(gateway) = config.gateway.map(canonical) {
            if !subnet.contains(gateway) {
                return Err(format!("gateway {gateway} not in network {subnet}"));
            }
            range.gateway = gateway;
        }
        if let Some(start) = config.range_start.map(canonical) {
            range.check(start)?;
            range.start = start;
        }
        if let Some(end) = config.range_end.map(canonical) {
            range.check(end)?;
            range.end = end;
        }
        Ok(range)
    }

    /// Whether `ip` may be handed out from this range (upstream's IPInRange).
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        let ip = canonical(ip);
        if ip.is_ipv4() != self.subnet.is_ipv4() {
            return Err(format!(
                "IP {ip} is not the same protocol as subnet {}",
                self.subnet
            ));
        }
        if !self.subnet.contains(ip) {
            return Err(format!("{ip} not in network {}", self.subnet));
        }
        if number(ip) < number(self.start) {
            return Err(format!(
                "{ip} is in network {} but before start {}",
                self.subnet, self.start
            ));
        }
        if number(ip) > number(self.end) {
            return Err(format!(
                "{ip} is in network {} but after end {}",
                self.subnet, self.end
            ));
        }
        Ok(())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.check(ip).is_ok()
    }

    fn overlaps(&self, other: &Range) -> bool {
        self.subnet.is_ipv4() == other.subnet.is_ipv4()
            && (self.contains(other.start)
                || self.contains(other.end)
                || other.contains(self.start)
                || other.contains(self.end))
    }
}

/// The ranges one address is taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    pub fn canonicalize(configs: &[RangeConfig]) -> Result<RangeSet, String> {
        if configs.is_empty() {
            return Err("empty range set".into());
        }
        let ranges = configs
            .iter()
            .map(Range::canonicalize)
            .collect::<Result<Vec<_>, _>>()?;
        let v4 = ranges[0].subnet.is_ipv4();
        if ranges.iter().any(|r| r.subnet.is_ipv4() != v4) {
            return Err("mixed address families".into());
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                if a.overlaps(b) {
                    return Err(format!("subnets {} and {} overlap", a.subnet, b.subnet));
                }
            }
        }
        Ok(RangeSet(ranges))
    }

    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.0.iter().any(|a| other.0.iter().any(|b| a.overlaps(b)))
    }

    /// Candidates in upstream's round-robin order: from the address after `last` (when it
    /// is in the set), else from the first range's start, through every range and back,
    /// gateways skipped; each once. Walked lazily: an IPv6 /64 holds more addresses than
    /// could ever be listed, and the first free one is usually next.
    pub fn candidates(&self, last: Option<IpAddr>) -> impl Iterator<Item = (IpAddr, Range)> + '_ {
        let resume = last
            .map(canonical)
            .and_then(|ip| self.0.iter().position(|r| r.contains(ip)).map(|i| (i, ip)));
        let (mut index, mut current) = match resume {
            Some((i, ip)) => (i, Some(ip)),
            None => (0, None),
        };
        let mut first: Option<IpAddr> = None;
        let walk = std::iter::from_fn(move || {
            let range = self.0[index];
            let next = match current {
                None => range.start,
                Some(ip) if ip == range.end => {
                    index = (index + 1) % self.0.len();
                    self.0[index].start
                }
                Some(ip) => address(number(ip) + 1, ip.is_ipv4()),
            };
            current = Some(next);
            match first {
                Some(start) if start == next => return None,
                None => first = Some(next),
                _ => {}
            }
            Some((next, self.0[index]))
        });
        walk.filter(|(ip, range)| *ip != range.gateway)
    }
}

impl std::fmt::Display for RangeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end))
            .collect();
        write!(f, "{}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(subnet: &str) -> RangeConfig {
        RangeConfig {
            subnet: subnet.parse().unwrap(),
            range_start: None,
            range_end: None,
            gateway: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_are_filled_in_as_upstream_does() {
        let range = Range::canonicalize(&config("10.1.2.77/24")).unwrap();
        assert_eq!(range.subnet.to_string(), "10.1.2.0/24");
        assert_eq!(
            (range.start, range.end, range.gateway),
            (ip("10.1.2.1"), ip("10.1.2.254"), ip("10.1.2.1"))
        );
        let v6 = Range::canonicalize(&config("fd00::/120")).unwrap();
        assert_eq!((v6.start, v6.end), (ip("fd00::1"), ip("fd00::ff")));
        assert!(Range::canonicalize(&config("10.0.0.0/31"))
            .unwrap_err()
            .contains("too small"));
        let mut bad = config("10.0.0.0/24");
        bad.gateway = Some(ip("10.0.1.1"));
        assert!(Range::canonicalize(&bad)
            .unwrap_err()
            .contains("not in network"));
        let mut bounded = config("10.0.0.0/24");
        bounded.range_start = Some(ip("10.0.0.10"));
        bounded.range_end = Some(ip("10.0.0.20"));
        let bounded = Range::canonicalize(&bounded).unwrap();
        assert!(bounded
            .check(ip("10.0.0.9"))
            .unwrap_err()
            .contains("before start"));
        assert!(bounded
            .check(ip("10.0.0.21"))
            .unwrap_err()
            .contains("after end"));
    }

    #[test]
    fn candidates_go_round_robin_skipping_the_gateway() {
        let set = RangeSet::canonicalize(&[config("10.0.0.0/29"), config("10.0.1.0/30")]).unwrap();
        let order: Vec<String> = set.candidates(None).map(|(ip, _)| ip.to_string()).collect();
        assert_eq!(
            order,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.1.2"]
        );
        let after: Vec<String> = set
            .candidates(Some(ip("10.0.0.5")))
            .map(|(ip, _)| ip.to_string())
            .collect();
        assert_eq!(
            after,
            ["10.0.0.6", "10.0.1.2", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]
        );
        // An IPv6 /64 is walked, not listed: the next free address comes at once.
        let v6 = RangeSet::canonicalize(&[config("fd00:10:244:1::/64")]).unwrap();
        let first: Vec<String> = v6
            .candidates(None)
            .take(2)
            .map(|(ip, _)| ip.to_string())
            .collect();
        assert_eq!(first, ["fd00:10:244:1::2", "fd00:10:244:1::3"]);
        let wrapped: Vec<String> = v6
            .candidates(Some(ip("fd00:10:244:1:ffff:ffff:ffff:ffff")))
            .take(1)
            .map(|(ip, _)| ip.to_string())
            .collect();
        assert_eq!(wrapped, ["fd00:10:244:1::2"]);
        assert!(
            RangeSet::canonicalize(&[config("10.0.0.0/24"), config("10.0.0.128/25")])
                .unwrap_err()
                .contains("overlap")
        );
    }
}
