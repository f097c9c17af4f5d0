//! ClusterIPs from the service CIDR and node ports from their range: a requested one is
//! checked for range and conflicts, an absent one is the first free one after the last
//! handed out (so a just-released address is not reused at once, as the API server avoids).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::service::{NODE_PORTS, SERVICE_CIDR};

/// Whether `ip` is a usable address of the service CIDR (not its network or broadcast
/// address).
pub fn in_service_cidr(ip: Ipv4Addr) -> bool {
    let (network, prefix) = SERVICE_CIDR;
    let mask = u32::MAX << (32 - prefix);
    let ip = u32::from(ip);
    ip & mask == u32::from(network)
        && ip != u32::from(network)
        && ip != (u32::from(network) | !mask)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    #[error("{0} is already allocated to service {1}")]
    Taken(String, String),
    #[error("no {0} is free")]
    Exhausted(&'static str),
}

/// Numbers in use within `range`, each with its owner, and where the next search starts.
#[derive(Debug, Clone)]
struct Pool {
    what: &'static str,
    first: u32,
    last: u32,
    used: std::collections::BTreeMap<u32, String>,
    next: u32,
}

impl Pool {
    fn new(what: &'static str, first: u32, last: u32) -> Self {
        Pool {
            what,
            first,
            last,
            used: Default::default(),
            next: first,
        }
    }

    fn take(
        &mut self,
        value: u32,
        owner: &str,
        show: impl Fn(u32) -> String,
    ) -> Result<(), AllocationError> {
        match self.used.get(&value) {
            Some(other) if other != owner => {
                Err(AllocationError::Taken(show(value), other.clone()))
            }
            _ => {
                self.used.insert(value, owner.to_string());
                Ok(())
            }
        }
    }

    fn allocate(&mut self, owner: &str) -> Result<u32, AllocationError> {
        let size = self.last - self.first + 1;
        for offset in 0..size {
            let candidate = self.first + (self.next - self.first + offset) % size;
            if let std::collections::btree_map::Entry::Vacant(slot) = self.used.entry(candidate) {
                slot.insert(owner.to_string());
                self.next = if candidate == self.last {
                    self.first
                } else {
                    candidate + 1
                };
                return Ok(candidate);
            }
        }
        Err(AllocationError::Exhausted(self.what))
    }

    fn resume(&mut self, used: impl IntoIterator<Item = (u32, String)>) {
        self.used.extend(
            used.into_iter()
                .filter(|(value, _)| (self.first..=self.last).contains(value)),
        );
        if let Some(highest) = self.used.keys().next_back() {
            self.next = if *highest >= self.last {
                self.first
            } else {
                highest + 1
            };
        }
    }

    fn release(&mut self, value: u32) {
        self.used.remove(&value);
    }
}

/// The ClusterIPs and node ports of one node's (or cluster's) services.
#[derive(Debug, Clone)]
pub struct Allocator {
    ips: Pool,
    ports: Pool,
}

impl Default for Allocator {
    fn default() -> Self {
        let (network, prefix) = SERVICE_CIDR;
        let base = u32::from(network);
        let broadcast = base | !(u32::MAX << (32 - prefix));
        // .1 is the `kubernetes` Service's in a cluster; start after it, as the API server
        // hands it out first.
        Allocator {
            ips: Pool::new("ClusterIP", base + 2, broadcast - 1),
            ports: Pool::new(
                "node port",
                *NODE_PORTS.start() as u32,
                *NODE_PORTS.end() as u32,
            ),
        }
    }
}

impl Allocator {
    /// An allocator with these addresses and ports in use, handing out next the first
    /// free one after the highest in use (how a cluster's API half plans from the store's
    /// allocations).
    pub fn resuming(
        cluster_ips: impl IntoIterator<Item = (Ipv4Addr, String)>,
        node_ports: impl IntoIterator<Item = (u16, String)>,
    ) -> Allocator {
        let mut allocator = Allocator::default();
        allocator.ips.resume(
            cluster_ips
                .into_iter()
                .map(|(ip, owner)| (u32::from(ip), owner)),
        );
        allocator.ports.resume(
            node_ports
                .into_iter()
                .map(|(port, owner)| (u32::from(port), owner)),
        );
        allocator
    }

    /// The ClusterIP for `owner`: `requested` if it is free (or already `owner`'s), else
    /// the next free one.
    pub fn cluster_ip(
        &mut self,
        owner: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, AllocationError> {
        match requested {
            Some(ip) => self
                .ips
                .take(u32::from(ip), owner, |v| Ipv4Addr::from(v).to_string())
                .map(|()| ip),
            None => self.ips.allocate(owner).map(Ipv4Addr::from),
        }
    }

    /// A node port for `owner`, as [`cluster_ip`](Self::cluster_ip) does.
    pub fn node_port(
        &mut self,
        owner: &str,
        requested: Option<u16>,
    ) -> Result<u16, AllocationError> {
        match requested {
            Some(port) => self
                .ports
                .take(port as u32, owner, |v| format!("node port {v}"))
                .map(|()| port),
            None => self.ports.allocate(owner).map(|p| p as u16),
        }
    }

    pub fn release_cluster_ip(&mut self, ip: Ipv4Addr) {
        self.ips.release(u32::from(ip));
    }

    pub fn release_node_port(&mut self, port: u16) {
        self.ports.release(port as u32);
    }

    /// Node ports in use, with their owners.
    pub fn node_ports(&self) -> BTreeSet<u16> {
        self.ports.used.keys().map(|p| *p as u16).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ips_come_from_the_service_cidr_and_do_not_collide() {
        assert!(in_service_cidr("10.96.0.10".parse().unwrap()));
        assert!(in_service_cidr("10.111.255.254".parse().unwrap()));
        assert!(!in_service_cidr("10.112.0.1".parse().unwrap()));
        assert!(!in_service_cidr("10.96.0.0".parse().unwrap()));
        let mut a = Allocator::default();
        assert_eq!(
            a.cluster_ip("default/a", None).unwrap(),
            Ipv4Addr::new(10, 96, 0, 2)
        );
        let given = Ipv4Addr::new(10, 96, 0, 3);
        assert_eq!(a.cluster_ip("default/b", Some(given)).unwrap(), given);
        assert_eq!(
            a.cluster_ip("default/c", Some(given))
                .unwrap_err()
                .to_string(),
            "10.96.0.3 is already allocated to service default/b"
        );
        // The same owner asking again keeps its address (an update, or a restart).
        assert_eq!(a.cluster_ip("default/b", Some(given)).unwrap(), given);
        assert_eq!(
            a.cluster_ip("default/c", None).unwrap(),
            Ipv4Addr::new(10, 96, 0, 4)
        );
        a.release_cluster_ip(Ipv4Addr::new(10, 96, 0, 2));
        assert_eq!(
            a.cluster_ip("default/d", None).unwrap(),
            Ipv4Addr::new(10, 96, 0, 5)
        );
    }

    #[test]
    fn a_resumed_allocator_continues_after_the_highest_in_use() {
        let mut a = Allocator::resuming(
            [
                (Ipv4Addr::new(10, 96, 0, 2), "default/a".to_string()),
                (Ipv4Addr::new(10, 96, 0, 9), "default/b".to_string()),
            ],
            [(32767, "default/c".to_string())],
        );
        assert_eq!(
            a.cluster_ip("default/d", None).unwrap(),
            Ipv4Addr::new(10, 96, 0, 10)
        );
        assert!(a
            .cluster_ip("default/d", Some(Ipv4Addr::new(10, 96, 0, 9)))
            .is_err());
        assert_eq!(a.node_port("default/d", None).unwrap(), 30000);
    }

    #[test]
    fn node_ports_are_checked_and_run_out() {
        let mut a = Allocator::default();
        assert_eq!(a.node_port("default/a", Some(31080)).unwrap(), 31080);
        assert!(a
            .node_port("default/b", Some(31080))
            .unwrap_err()
            .to_string()
            .contains("node port 31080 is already allocated to service default/a"));
        for i in 0..2767 {
            a.node_port(&format!("default/s{i}"), None).unwrap();
        }
        assert_eq!(
            a.node_port("default/last", None).unwrap_err(),
            AllocationError::Exhausted("node port")
        );
        a.release_node_port(31080);
        assert_eq!(a.node_port("default/last", None).unwrap(), 31080);
        assert_eq!(a.node_ports().len(), 2768);
    }
}
