//! What the nftables data plane should hold, independent of how it gets to the kernel:
//! a list of operations on sandboxd's table (`ip sandboxd`), in an order the kernel accepts
//! as one transaction. [`super::nftables`] renders a plan as `nft -f` text, and
//! [`super::netlink`] as nf_tables netlink messages; both produce the same ruleset (a test
//! compares `nft list table` of the two).
//!
//! The shape is kube-proxy's nftables mode (KEP-3866):
//!
//! ```text
//!  nat-prerouting / nat-output ─► services ─┬─ ip daddr . l4proto . dport  vmap @service-ips
//!                                           └─ fib daddr type local:
//!                                              l4proto . dport            vmap @service-nodeports
//!        @service-ips / @service-nodeports ─► svc-<ns>/<name>/<proto>/<port>
//!            (traffic from outside the pod CIDR marked for masquerade; ClientIP affinity;
//!             then an endpoint at random, see below)
//!        ep-<…>__<ip>/<port>: hairpin (from the endpoint itself) marked; dnat to ip:port
//!  nat-postrouting ─► masquerading: marked packets are masqueraded
//!  filter-input / -forward / -output: new connections to a service without endpoints
//!     ─► @no-endpoint-services / @no-endpoint-nodeports ─► reject (port unreachable)
//! ```
//!
//! Lookups are verdict maps, so the cost of a packet does not grow with the number of
//! services (iptables' SERVICES chain is a list). A change to one service replaces only
//! its own chains, sets and map elements.
//!
//! Choosing the endpoint: KEP-3866 gives every service an anonymous verdict map
//! (`numgen random mod N vmap { 0 : goto ep-a, 1 : goto ep-b }`). Every set of a table
//! costs the kernel a walk of the table's set list when a set is created or looked up,
//! and a walk of the whole transaction when a rule binds it, so a full sync of 10,000
//! such services takes over a minute (measured; kubernetes#139513 found the same, and
//! kube-proxy now skips the map for one endpoint). So the map is kept for services with
//! many endpoints ([`Cluster::endpoint_map_min`]), where it bounds a packet's cost; below
//! that a service chooses with a cascade as iptables' statistic does, with no set:
//! `numgen random mod 2 == 0 goto ep-a`, then `goto ep-b` (each endpoint 1/N); a single
//! endpoint is a plain `goto`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::service::Protocol;

pub const TABLE: &str = "sandboxd";
/// The packet mark of connections to masquerade, as kube-proxy's.
pub const MASQUERADE_MARK: u32 = 0x4000;

pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
const MASQUERADING: &str = "masquerading";
const SERVICES: &str = "services";
const REJECT_CHAIN: &str = "reject-chain";
const ENDPOINTS_CHECK: &str = "endpoints-check";

/// One port of a service, as programmed: where it listens and where it forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgrammedPort {
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    pub endpoints: Vec<SocketAddrV4>,
}

/// A service with its ClusterIP and resolved endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgrammedService {
    /// `namespace/name`.
    pub key: String,
    pub cluster_ip: Ipv4Addr,
    pub ports: Vec<ProgrammedPort>,
    pub affinity_seconds: Option<u32>,
}

/// How many endpoints make a service choose through a numgen verdict map (see the module
/// documentation).
pub const ENDPOINT_MAP_MIN: usize = 16;

/// What the ruleset depends on besides the services.
#[derive(Debug, Clone, Copy)]
pub struct Cluster {
    /// Where pods' addresses come from: traffic from elsewhere to a service is masqueraded
    /// so the reply comes back through this node.
    pub pod_cidr: (Ipv4Addr, u8),
    /// Services with at least this many endpoints choose one through a numgen verdict
    /// map, the others through a cascade of rules.
    pub endpoint_map_min: usize,
}

impl Cluster {
    pub fn new(pod_cidr: (Ipv4Addr, u8)) -> Cluster {
        Cluster {
            pod_cidr,
            endpoint_map_min: ENDPOINT_MAP_MIN,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    Nat,
    Filter,
}

/// What makes a chain a base chain: where the kernel calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub chain_type: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

/// The key of a verdict map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKey {
    /// `ipv4_addr . inet_proto . inet_service`: a ClusterIP and port (`ipv6_addr . …` in
    /// an ip6 table).
    AddressProtocolPort,
    /// `inet_proto . inet_service`: a node port.
    ProtocolPort,
    /// `ifname`: an interface a packet came in on.
    Interface,
}

/// An element of a verdict map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// An address (of the table's family), protocol and port.
    Service(IpAddr, Protocol, u16),
    NodePort(Protocol, u16),
    /// An interface name, NUL-padded as the kernel keeps it (IFNAMSIZ).
    Interface([u8; 16]),
}

impl Key {
    /// The key of the interface `name` (at most 15 bytes, as the kernel allows).
    pub fn interface(name: &str) -> Key {
        let mut key = [0u8; 16];
        let len = name.len().min(15);
        key[..len].copy_from_slice(&name.as_bytes()[..len]);
        Key::Interface(key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

/// A rule: each variant is one fixed sequence of expressions (see the renderers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `meta mark set meta mark or BITS`
    SetMark(u32),
    /// `meta mark and BITS == 0 return`
    ReturnUnlessMarked(u32),
    /// `meta mark set meta mark xor BITS`
    ToggleMark(u32),
    /// `masquerade fully-random`
    MasqueradeFullyRandom,
    /// `ip daddr . meta l4proto . th dport vmap @MAP` (`ip6 daddr` in an ip6 table)
    DestinationVmap(&'static str),
    /// `fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @MAP`
    LocalPortVmap(&'static str),
    /// `fib daddr type local meta l4proto . th dport vmap @MAP` (loopback included, as a
    /// hostPort is reachable on 127.0.0.1).
    AnyLocalPortVmap(&'static str),
    /// `jump CHAIN` and the like.
    Always(Verdict),
    /// `iifname vmap @MAP`
    InterfaceVmap(&'static str),
    /// `ether saddr MAC VERDICT`
    FromMac([u8; 6], Verdict),
    /// `reject` (ICMP port unreachable).
    Reject,
    /// `ct state new VERDICT`
    NewConnection(Verdict),
    /// `ip saddr ADDR VERDICT` (`ip6 saddr` for an IPv6 address, in an ip6 table)
    FromAddress(IpAddr, Verdict),
    /// `ip saddr != NET/PREFIX VERDICT` (or `ip6`, as the others)
    FromOutside((IpAddr, u8), Verdict),
    /// `ip saddr NET/PREFIX VERDICT`
    FromNetwork((IpAddr, u8), Verdict),
    /// `ip daddr NET/PREFIX VERDICT`
    ToNetwork((IpAddr, u8), Verdict),
    /// `update @SET { ip saddr }`
    RememberSource(String),
    /// `ip saddr @SET VERDICT`
    FromRemembered(String, Verdict),
    /// `meta l4proto PROTO dnat to ADDR:PORT` (`[ADDR]:PORT` in an ip6 table)
    Dnat(Protocol, SocketAddr),
    /// `numgen random mod N vmap { 0 : goto C0, 1 : goto C1, … }`
    RandomGoto(Vec<String>),
    /// `numgen random mod N == 0 VERDICT`: taken one time in N.
    OneIn(u32, Verdict),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddTable,
    DeleteTable,
    AddMap {
        name: &'static str,
        key: MapKey,
    },
    /// A set of client addresses that forgets each one `timeout_seconds` after its last
    /// connection (ClientIP affinity).
    AddAffinitySet {
        name: String,
        timeout_seconds: u32,
    },
    DeleteSet(String),
    AddChain {
        name: String,
        base: Option<BaseChain>,
    },
    FlushChain(String),
    DeleteChain(String),
    AddRule {
        chain: String,
        rule: Rule,
    },
    AddElement {
        map: &'static str,
        key: Key,
        verdict: Verdict,
    },
    /// An element added only if its key is free (the transaction fails otherwise).
    ClaimElement {
        map: &'static str,
        key: Key,
        verdict: Verdict,
    },
    DeleteElement {
        map: &'static str,
        key: Key,
    },
}

/// Operations applied as one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
}

fn svc_chain(key: &str, p: &ProgrammedPort) -> String {
    format!("svc-{key}/{}/{}", p.protocol.nft(), p.port)
}

fn ep_chain(key: &str, p: &ProgrammedPort, ep: &SocketAddrV4) -> String {
    format!(
        "ep-{key}/{}/{}__{}/{}",
        p.protocol.nft(),
        p.port,
        ep.ip(),
        ep.port()
    )
}

fn affinity_set(ep_chain: &str) -> String {
    format!("aff-{}", ep_chain.trim_start_matches("ep-"))
}

fn jump(chain: &str) -> Verdict {
    Verdict::Jump(chain.to_string())
}

impl Plan {
    fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    fn chain(&mut self, name: &str) {
        self.push(Op::AddChain {
            name: name.to_string(),
            base: None,
        });
    }

    fn base_chain(&mut self, name: &str, chain_type: ChainType, hook: Hook, priority: i32) {
        self.push(Op::AddChain {
            name: name.to_string(),
            base: Some(BaseChain {
                chain_type,
                hook,
                priority,
            }),
        });
    }

    fn rule(&mut self, chain: &str, rule: Rule) {
        self.push(Op::AddRule {
            chain: chain.to_string(),
            rule,
        });
    }

    /// The objects every ruleset has, added idempotently.
    fn base(&mut self) {
        let mark = MASQUERADE_MARK;
        self.push(Op::AddTable);
        for (name, key) in [
            (SERVICE_IPS, MapKey::AddressProtocolPort),
            (SERVICE_NODEPORTS, MapKey::ProtocolPort),
            (NO_ENDPOINT_SERVICES, MapKey::AddressProtocolPort),
            (NO_ENDPOINT_NODEPORTS, MapKey::ProtocolPort),
        ] {
            self.push(Op::AddMap { name, key });
        }
        self.chain(MARK_FOR_MASQUERADE);
        self.rule(MARK_FOR_MASQUERADE, Rule::SetMark(mark));
        self.chain(MASQUERADING);
        self.rule(MASQUERADING, Rule::ReturnUnlessMarked(mark));
        self.rule(MASQUERADING, Rule::ToggleMark(mark));
        self.rule(MASQUERADING, Rule::MasqueradeFullyRandom);
        self.chain(SERVICES);
        self.rule(SERVICES, Rule::DestinationVmap(SERVICE_IPS));
        self.rule(SERVICES, Rule::LocalPortVmap(SERVICE_NODEPORTS));
        // dstnat is -100; nft 1.0.6 refuses the name on the output hook.
        self.base_chain("nat-prerouting", ChainType::Nat, Hook::Prerouting, -100);
        self.rule("nat-prerouting", Rule::Always(jump(SERVICES)));
        self.base_chain("nat-output", ChainType::Nat, Hook::Output, -100);
        self.rule("nat-output", Rule::Always(jump(SERVICES)));
        self.base_chain("nat-postrouting", ChainType::Nat, Hook::Postrouting, 100);
        self.rule("nat-postrouting", Rule::Always(jump(MASQUERADING)));
        self.chain(REJECT_CHAIN);
        self.rule(REJECT_CHAIN, Rule::Reject);
        self.chain(ENDPOINTS_CHECK);
        self.rule(ENDPOINTS_CHECK, Rule::DestinationVmap(NO_ENDPOINT_SERVICES));
        self.rule(ENDPOINTS_CHECK, Rule::LocalPortVmap(NO_ENDPOINT_NODEPORTS));
        // Before the NAT hooks' conntrack-based decisions (-100), as kube-proxy's filter
        // chains run at -110.
        for (name, hook) in [
            ("filter-input", Hook::Input),
            ("filter-forward", Hook::Forward),
            ("filter-output", Hook::Output),
        ] {
            self.base_chain(name, ChainType::Filter, hook, -110);
            self.rule(name, Rule::NewConnection(jump(ENDPOINTS_CHECK)));
        }
    }

    /// Adds one service's chains, sets and map elements.
    fn add_service(&mut self, cluster: &Cluster, s: &ProgrammedService) {
        for p in &s.ports {
            let service_key = Key::Service(s.cluster_ip.into(), p.protocol, p.port);
            let node_port_key = p.node_port.map(|n| Key::NodePort(p.protocol, n));
            if p.endpoints.is_empty() {
                let reject = Verdict::Goto(REJECT_CHAIN.to_string());
                self.push(Op::AddElement {
                    map: NO_ENDPOINT_SERVICES,
                    key: service_key,
                    verdict: reject.clone(),
                });
                if let Some(key) = node_port_key {
                    self.push(Op::AddElement {
                        map: NO_ENDPOINT_NODEPORTS,
                        key,
                        verdict: reject,
                    });
                }
                continue;
            }
            let svc = svc_chain(&s.key, p);
            let eps: Vec<String> = p
                .endpoints
                .iter()
                .map(|ep| ep_chain(&s.key, p, ep))
                .collect();
            for (ep, chain) in p.endpoints.iter().zip(&eps) {
                self.chain(chain);
                if let Some(timeout_seconds) = s.affinity_seconds {
                    self.push(Op::AddAffinitySet {
                        name: affinity_set(chain),
                        timeout_seconds,
                    });
                }
                self.rule(
                    chain,
                    Rule::FromAddress((*ep.ip()).into(), jump(MARK_FOR_MASQUERADE)),
                );
                if s.affinity_seconds.is_some() {
                    self.rule(chain, Rule::RememberSource(affinity_set(chain)));
                }
                self.rule(chain, Rule::Dnat(p.protocol, (*ep).into()));
            }
            self.chain(&svc);
            self.rule(
                &svc,
                Rule::FromOutside(
                    (cluster.pod_cidr.0.into(), cluster.pod_cidr.1),
                    jump(MARK_FOR_MASQUERADE),
                ),
            );
            if s.affinity_seconds.is_some() {
                for chain in &eps {
                    self.rule(
                        &svc,
                        Rule::FromRemembered(affinity_set(chain), Verdict::Goto(chain.clone())),
                    );
                }
            }
            self.choose_endpoint(cluster, &svc, eps);
            self.push(Op::AddElement {
                map: SERVICE_IPS,
                key: service_key,
                verdict: Verdict::Goto(svc.clone()),
            });
            if let Some(key) = node_port_key {
                self.push(Op::AddElement {
                    map: SERVICE_NODEPORTS,
                    key,
                    verdict: Verdict::Goto(svc),
                });
            }
        }
    }

    /// Sends a connection on to one of `eps` at random, each equally likely.
    fn choose_endpoint(&mut self, cluster: &Cluster, svc: &str, mut eps: Vec<String>) {
        if eps.len() >= cluster.endpoint_map_min.max(2) {
            self.rule(svc, Rule::RandomGoto(eps));
            return;
        }
        // Endpoint i of n is taken with 1/(n-i) of what the ones before left: 1/n each.
        let last = eps.pop().expect("a service with endpoints");
        let n = eps.len() + 1;
        for (i, chain) in eps.into_iter().enumerate() {
            self.rule(svc, Rule::OneIn((n - i) as u32, Verdict::Goto(chain)));
        }
        self.rule(svc, Rule::Always(Verdict::Goto(last)));
    }

    /// Removes one service's map elements, chains and sets, references first (the order
    /// the kernel accepts).
    fn remove_service(&mut self, s: &ProgrammedService) {
        for p in &s.ports {
            let service_key = Key::Service(s.cluster_ip.into(), p.protocol, p.port);
            let node_port_key = p.node_port.map(|n| Key::NodePort(p.protocol, n));
            let (services, node_ports) = if p.endpoints.is_empty() {
                (NO_ENDPOINT_SERVICES, NO_ENDPOINT_NODEPORTS)
            } else {
                (SERVICE_IPS, SERVICE_NODEPORTS)
            };
            self.push(Op::DeleteElement {
                map: services,
                key: service_key,
            });
            if let Some(key) = node_port_key {
                self.push(Op::DeleteElement {
                    map: node_ports,
                    key,
                });
            }
            if p.endpoints.is_empty() {
                continue;
            }
            let svc = svc_chain(&s.key, p);
            self.push(Op::FlushChain(svc.clone()));
            self.push(Op::DeleteChain(svc));
            for ep in &p.endpoints {
                let chain = ep_chain(&s.key, p, ep);
                self.push(Op::FlushChain(chain.clone()));
                self.push(Op::DeleteChain(chain.clone()));
                if s.affinity_seconds.is_some() {
                    self.push(Op::DeleteSet(affinity_set(&chain)));
                }
            }
        }
    }
}

/// The whole ruleset, replacing whatever the table held: one transaction, idempotent.
/// Conntrack keeps established connections' translations, so they survive it.
pub fn full_sync(cluster: &Cluster, services: &[ProgrammedService]) -> Plan {
    let mut plan = Plan::default();
    // `add` first so the `delete` never fails on a fresh node.
    plan.push(Op::AddTable);
    plan.push(Op::DeleteTable);
    plan.base();
    for s in services {
        plan.add_service(cluster, s);
    }
    plan
}

/// The change from `old` to `new` of one service (either may be absent): only its own
/// chains, sets and map elements.
pub fn update(
    cluster: &Cluster,
    old: Option<&ProgrammedService>,
    new: Option<&ProgrammedService>,
) -> Plan {
    let mut plan = Plan::default();
    if let Some(old) = old {
        plan.remove_service(old);
    }
    if let Some(new) = new {
        plan.add_service(cluster, new);
    }
    plan
}

/// Removes the table (`sandboxd --cleanup`); absent is fine.
pub fn cleanup() -> Plan {
    Plan {
        ops: vec![Op::AddTable, Op::DeleteTable],
    }
}

/// Services the renderers' unit tests share.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub fn cluster() -> Cluster {
        Cluster::new((Ipv4Addr::new(10, 244, 0, 0), 16))
    }

    /// default/web: 10.96.0.10:8080/tcp, NodePort 31080, the given endpoints.
    pub fn web(endpoints: &[&str], affinity_seconds: Option<u32>) -> ProgrammedService {
        ProgrammedService {
            key: "default/web".into(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            ports: vec![ProgrammedPort {
                protocol: Protocol::Tcp,
                port: 8080,
                node_port: Some(31080),
                endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            }],
            affinity_seconds,
        }
    }
}
