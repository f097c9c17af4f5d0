//! The data plane as kube-proxy's nftables mode builds it (KEP-3866), in one table that
//! sandboxd owns (`ip sandboxd`), applied with `nft -f` so every change is one atomic
//! transaction:
//!
//! ```text
//!  nat-prerouting / nat-output ─► services ─┬─ ip daddr . l4proto . dport  vmap @service-ips
//!                                           └─ fib daddr type local:
//!                                              l4proto . dport            vmap @service-nodeports
//!        @service-ips / @service-nodeports ─► svc-<ns>/<name>/<proto>/<port>
//!            (traffic from outside the pod CIDR marked for masquerade; ClientIP affinity;
//!             numgen random mod N vmap { i : goto ep-… })
//!        ep-<…>__<ip>/<port>: hairpin (from the endpoint itself) marked; dnat to ip:port
//!  nat-postrouting ─► masquerading: marked packets are masqueraded
//!  filter-input / -forward / -output: new connections to a service without endpoints
//!     ─► @no-endpoint-services / @no-endpoint-nodeports ─► reject (port unreachable)
//! ```
//!
//! Lookups are verdict maps, so the cost of a packet does not grow with the number of
//! services (iptables' SERVICES chain is a list). A change to one service replaces only
//! its own chains, sets and map elements.

use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::service::Protocol;

pub const TABLE: &str = "sandboxd";
/// The packet mark of connections to masquerade, as kube-proxy's.
pub const MASQUERADE_MARK: u32 = 0x4000;

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

/// Where pods' addresses come from: traffic from elsewhere to a service is masqueraded so
/// the reply comes back through this node.
#[derive(Debug, Clone, Copy)]
pub struct Cluster {
    pub pod_cidr: (Ipv4Addr, u8),
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

/// The objects every ruleset has, added idempotently.
fn base(out: &mut String) {
    let t = TABLE;
    let mark = MASQUERADE_MARK;
    let _ = write!(
        out,
        "add table ip {t}
add map ip {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}
add map ip {t} service-nodeports {{ type inet_proto . inet_service : verdict ; }}
add map ip {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}
add map ip {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; }}
add chain ip {t} mark-for-masquerade
add rule ip {t} mark-for-masquerade meta mark set meta mark or {mark:#x}
add chain ip {t} masquerading
add rule ip {t} masquerading meta mark and {mark:#x} == 0 return
add rule ip {t} masquerading meta mark set meta mark xor {mark:#x}
add rule ip {t} masquerading masquerade fully-random
add chain ip {t} services
add rule ip {t} services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip {t} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
add chain ip {t} nat-prerouting {{ type nat hook prerouting priority dstnat ; policy accept ; }}
add rule ip {t} nat-prerouting jump services
add chain ip {t} nat-output {{ type nat hook output priority -100 ; policy accept ; }}
add rule ip {t} nat-output jump services
add chain ip {t} nat-postrouting {{ type nat hook postrouting priority srcnat ; policy accept ; }}
add rule ip {t} nat-postrouting jump masquerading
add chain ip {t} reject-chain
add rule ip {t} reject-chain reject
add chain ip {t} endpoints-check
add rule ip {t} endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add rule ip {t} endpoints-check fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports
"
    );
    for (chain, hook) in [
        ("filter-input", "input"),
        ("filter-forward", "forward"),
        ("filter-output", "output"),
    ] {
        let _ = writeln!(
            out,
            "add chain ip {t} {chain} {{ type filter hook {hook} priority -110 ; policy accept ; }}\n\
             add rule ip {t} {chain} ct state new jump endpoints-check"
        );
    }
}

/// Adds one service's chains, sets and map elements.
fn add_service(out: &mut String, cluster: &Cluster, s: &ProgrammedService) {
    let t = TABLE;
    let (net, prefix) = cluster.pod_cidr;
    for p in &s.ports {
        let proto = p.protocol.nft();
        if p.endpoints.is_empty() {
            let _ = writeln!(
                out,
                "add element ip {t} no-endpoint-services {{ {} . {proto} . {} : goto reject-chain }}",
                s.cluster_ip, p.port
            );
            if let Some(node_port) = p.node_port {
                let _ = writeln!(
                    out,
                    "add element ip {t} no-endpoint-nodeports {{ {proto} . {node_port} : goto reject-chain }}"
                );
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
            let _ = writeln!(out, "add chain ip {t} {chain}");
            if let Some(seconds) = s.affinity_seconds {
                let _ = writeln!(
                    out,
                    "add set ip {t} {} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {seconds}s ; }}",
                    affinity_set(chain)
                );
            }
            let _ = writeln!(
                out,
                "add rule ip {t} {chain} ip saddr {} jump mark-for-masquerade",
                ep.ip()
            );
            if s.affinity_seconds.is_some() {
                let _ = writeln!(
                    out,
                    "add rule ip {t} {chain} update @{} {{ ip saddr }}",
                    affinity_set(chain)
                );
            }
            let _ = writeln!(
                out,
                "add rule ip {t} {chain} meta l4proto {proto} dnat to {ep}"
            );
        }
        let _ = writeln!(out, "add chain ip {t} {svc}");
        let _ = writeln!(
            out,
            "add rule ip {t} {svc} ip saddr != {net}/{prefix} jump mark-for-masquerade"
        );
        if s.affinity_seconds.is_some() {
            for chain in &eps {
                let _ = writeln!(
                    out,
                    "add rule ip {t} {svc} ip saddr @{} goto {chain}",
                    affinity_set(chain)
                );
            }
        }
        let arms: Vec<String> = eps
            .iter()
            .enumerate()
            .map(|(i, chain)| format!("{i} : goto {chain}"))
            .collect();
        let _ = writeln!(
            out,
            "add rule ip {t} {svc} numgen random mod {} vmap {{ {} }}",
            eps.len(),
            arms.join(", ")
        );
        let _ = writeln!(
            out,
            "add element ip {t} service-ips {{ {} . {proto} . {} : goto {svc} }}",
            s.cluster_ip, p.port
        );
        if let Some(node_port) = p.node_port {
            let _ = writeln!(
                out,
                "add element ip {t} service-nodeports {{ {proto} . {node_port} : goto {svc} }}"
            );
        }
    }
}

/// Removes one service's map elements, chains and sets (in the order the kernel accepts:
/// references first).
fn remove_service(out: &mut String, s: &ProgrammedService) {
    let t = TABLE;
    for p in &s.ports {
        let proto = p.protocol.nft();
        if p.endpoints.is_empty() {
            let _ = writeln!(
                out,
                "delete element ip {t} no-endpoint-services {{ {} . {proto} . {} }}",
                s.cluster_ip, p.port
            );
            if let Some(node_port) = p.node_port {
                let _ = writeln!(
                    out,
                    "delete element ip {t} no-endpoint-nodeports {{ {proto} . {node_port} }}"
                );
            }
            continue;
        }
        let svc = svc_chain(&s.key, p);
        let _ = writeln!(
            out,
            "delete element ip {t} service-ips {{ {} . {proto} . {} }}",
            s.cluster_ip, p.port
        );
        if let Some(node_port) = p.node_port {
            let _ = writeln!(
                out,
                "delete element ip {t} service-nodeports {{ {proto} . {node_port} }}"
            );
        }
        let _ = writeln!(out, "flush chain ip {t} {svc}\ndelete chain ip {t} {svc}");
        for ep in &p.endpoints {
            let chain = ep_chain(&s.key, p, ep);
            let _ = writeln!(
                out,
                "flush chain ip {t} {chain}\ndelete chain ip {t} {chain}"
            );
            if s.affinity_seconds.is_some() {
                let _ = writeln!(out, "delete set ip {t} {}", affinity_set(&chain));
            }
        }
    }
}

/// The whole ruleset, replacing whatever the table held: one transaction, idempotent.
/// Conntrack keeps established connections' translations, so they survive it.
pub fn full_sync(cluster: &Cluster, services: &[ProgrammedService]) -> String {
    let mut out = String::new();
    // `add` first so the `delete` never fails on a fresh node.
    let _ = writeln!(out, "add table ip {TABLE}\ndelete table ip {TABLE}");
    base(&mut out);
    for s in services {
        add_service(&mut out, cluster, s);
    }
    out
}

/// The change from `old` to `new` of one service (either may be absent): only its own
/// chains, sets and map elements.
pub fn update(
    cluster: &Cluster,
    old: Option<&ProgrammedService>,
    new: Option<&ProgrammedService>,
) -> String {
    let mut out = String::new();
    if let Some(old) = old {
        remove_service(&mut out, old);
    }
    if let Some(new) = new {
        add_service(&mut out, cluster, new);
    }
    out
}

/// Removes the table (`sandboxd --cleanup`); absent is fine.
pub fn cleanup() -> String {
    format!("add table ip {TABLE}\ndelete table ip {TABLE}\n")
}

/// Applies a script with `nft -f -`, as one transaction.
pub fn apply(script: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("run nft: {e} (install nftables)"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        anyhow::bail!(
            "nft -f failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        Cluster {
            pod_cidr: (Ipv4Addr::new(10, 244, 0, 0), 16),
        }
    }

    fn web(endpoints: &[&str], affinity: Option<u32>) -> ProgrammedService {
        ProgrammedService {
            key: "default/web".into(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            ports: vec![ProgrammedPort {
                protocol: Protocol::Tcp,
                port: 8080,
                node_port: Some(31080),
                endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            }],
            affinity_seconds: affinity,
        }
    }

    #[test]
    fn a_service_is_a_map_element_a_chain_and_a_chain_per_endpoint() {
        let script = full_sync(
            &cluster(),
            &[web(&["10.244.1.5:8080", "10.244.2.7:8080"], None)],
        );
        assert!(script.contains("add element ip sandboxd service-ips { 10.96.0.10 . tcp . 8080 : goto svc-default/web/tcp/8080 }"));
        assert!(script.contains("add element ip sandboxd service-nodeports { tcp . 31080 : goto svc-default/web/tcp/8080 }"));
        assert!(script.contains("numgen random mod 2 vmap { 0 : goto ep-default/web/tcp/8080__10.244.1.5/8080, 1 : goto ep-default/web/tcp/8080__10.244.2.7/8080 }"));
        assert!(script.contains("add rule ip sandboxd ep-default/web/tcp/8080__10.244.2.7/8080 ip saddr 10.244.2.7 jump mark-for-masquerade"));
        assert!(script.contains("ip saddr != 10.244.0.0/16 jump mark-for-masquerade"));
        assert!(!script.contains("aff-"));
    }

    #[test]
    fn no_endpoints_reject_and_affinity_keeps_a_set_per_endpoint() {
        let empty = full_sync(&cluster(), &[web(&[], None)]);
        assert!(
            empty.contains("no-endpoint-services { 10.96.0.10 . tcp . 8080 : goto reject-chain }")
        );
        assert!(!empty.contains("add chain ip sandboxd svc-"));
        let sticky = full_sync(&cluster(), &[web(&["10.244.1.5:8080"], Some(60))]);
        assert!(sticky.contains("add set ip sandboxd aff-default/web/tcp/8080__10.244.1.5/8080 { type ipv4_addr ; flags dynamic,timeout ; timeout 60s ; }"));
        assert!(sticky.contains("update @aff-default/web/tcp/8080__10.244.1.5/8080 { ip saddr }"));
    }

    #[test]
    fn an_update_touches_only_its_own_service() {
        let script = update(
            &cluster(),
            Some(&web(&["10.244.1.5:8080"], None)),
            Some(&web(&["10.244.1.6:8080"], None)),
        );
        assert!(script.starts_with("delete element ip sandboxd service-ips"));
        assert!(
            script.contains("delete chain ip sandboxd ep-default/web/tcp/8080__10.244.1.5/8080")
        );
        assert!(script.contains("dnat to 10.244.1.6:8080"));
        assert!(!script.contains("table"));
        assert!(script.lines().all(|l| l.contains("default/web")
            || l.contains("10.96.0.10")
            || l.contains(" . 31080")));
    }
}
