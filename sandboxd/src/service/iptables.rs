//! The data plane as kube-proxy's iptables mode builds it, for comparison and teaching
//! (`--proxy-mode iptables`): chains applied with one `iptables-restore --noflush`.
//!
//! ```text
//!  nat PREROUTING / OUTPUT ─► SBX-SERVICES: one rule per service port (-d ip -p proto --dport)
//!        └─ last: -m addrtype --dst-type LOCAL ─► SBX-NODEPORTS: one rule per node port
//!  SBX-SVC-<hash>: traffic from outside the pod CIDR ─► SBX-MARK-MASQ; ClientIP affinity
//!        (-m recent --rcheck); endpoint i of n chosen with
//!        -m statistic --mode random --probability 1/(n-i)
//!  SBX-SEP-<hash>: hairpin ─► SBX-MARK-MASQ; -m recent --set; DNAT
//!  nat POSTROUTING ─► SBX-POSTROUTING: marked packets are masqueraded
//!  filter INPUT / FORWARD / OUTPUT (new connections) ─► SBX-FILTER: services without
//!        endpoints REJECT (icmp-port-unreachable)
//! ```
//!
//! Unlike nftables' verdict maps, SBX-SERVICES is a list: the first packet of a connection
//! walks it rule by rule, so its cost grows with the number of services.

use std::collections::BTreeSet;
use std::fmt::Write;

use sha2::Digest;

use crate::service::plan::{Cluster, ProgrammedPort, ProgrammedService, MASQUERADE_MARK};

const SERVICES: &str = "SBX-SERVICES";
const NODEPORTS: &str = "SBX-NODEPORTS";
const POSTROUTING: &str = "SBX-POSTROUTING";
const MARK_MASQ: &str = "SBX-MARK-MASQ";
const FILTER: &str = "SBX-FILTER";

/// Chain names have at most 28 characters: a prefix and 16 hex digits of a hash, as
/// kube-proxy names its chains.
fn chain(prefix: &str, name: &str) -> String {
    let digest = sha2::Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02X}")).collect();
    format!("{prefix}-{hex}")
}

fn svc_chain(key: &str, p: &ProgrammedPort) -> String {
    chain("SBX-SVC", &format!("{key}/{}/{}", p.protocol.nft(), p.port))
}

fn sep_chain(key: &str, p: &ProgrammedPort, ep: &std::net::SocketAddrV4) -> String {
    chain(
        "SBX-SEP",
        &format!("{key}/{}/{}/{ep}", p.protocol.nft(), p.port),
    )
}

/// The chains of the ruleset, for finding stale ones.
pub fn chains(services: &[ProgrammedService]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for s in services {
        for p in &s.ports {
            if p.endpoints.is_empty() {
                continue;
            }
            names.insert(svc_chain(&s.key, p));
            for ep in &p.endpoints {
                names.insert(sep_chain(&s.key, p, ep));
            }
        }
    }
    names
}

/// The input of `iptables-restore --noflush`: every sandboxd chain declared (and so
/// flushed) and refilled, the jumps from the built-in chains added where `jumps_present`
/// says they are missing, and `stale` chains (sandboxd's, no longer used) deleted.
pub fn restore(
    cluster: &Cluster,
    services: &[ProgrammedService],
    jumps_present: bool,
    stale: &BTreeSet<String>,
) -> String {
    let (net, prefix) = cluster.pod_cidr;
    let mark = format!("{MASQUERADE_MARK:#x}");
    let mut nat = String::from("*nat\n");
    let mut rules = String::new();
    for name in [SERVICES, NODEPORTS, POSTROUTING, MARK_MASQ]
        .iter()
        .map(|s| s.to_string())
        .chain(chains(services))
    {
        let _ = writeln!(nat, ":{name} - [0:0]");
    }
    for name in stale {
        let _ = writeln!(nat, ":{name} - [0:0]");
    }
    if !jumps_present {
        let _ = writeln!(
            rules,
            "-A PREROUTING -m comment --comment \"sandboxd services\" -j {SERVICES}"
        );
        let _ = writeln!(
            rules,
            "-A OUTPUT -m comment --comment \"sandboxd services\" -j {SERVICES}"
        );
        let _ = writeln!(
            rules,
            "-A POSTROUTING -m comment --comment \"sandboxd masquerade\" -j {POSTROUTING}"
        );
    }
    let _ = writeln!(
        rules,
        "-A {POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN"
    );
    let _ = writeln!(rules, "-A {POSTROUTING} -j MARK --xor-mark {mark}");
    let _ = writeln!(rules, "-A {POSTROUTING} -j MASQUERADE --random-fully");
    let _ = writeln!(rules, "-A {MARK_MASQ} -j MARK --or-mark {mark}");

    let mut filter = String::from("*filter\n");
    let _ = writeln!(filter, ":{FILTER} - [0:0]");
    let mut filter_rules = String::new();
    if !jumps_present {
        for hook in ["INPUT", "FORWARD", "OUTPUT"] {
            let _ = writeln!(
                filter_rules,
                "-A {hook} -m conntrack --ctstate NEW -m comment --comment \"sandboxd services without endpoints\" -j {FILTER}"
            );
        }
    }

    let mut node_ports = String::new();
    for s in services {
        for p in &s.ports {
            let proto = p.protocol.nft();
            let comment = format!("{}:{}/{proto}", s.key, p.port);
            if p.endpoints.is_empty() {
                let mut reject = |destination: String, port: u16| {
                    let _ = writeln!(
                        filter_rules,
                        "-A {FILTER} {destination} -p {proto} -m {proto} --dport {port} -m comment --comment \"{comment} has no endpoints\" -j REJECT --reject-with icmp-port-unreachable"
                    );
                };
                reject(format!("-d {}/32", s.cluster_ip), p.port);
                if let Some(node_port) = p.node_port {
                    reject("-m addrtype --dst-type LOCAL".into(), node_port);
                }
                continue;
            }
            let svc = svc_chain(&s.key, p);
            let _ = writeln!(
                rules,
                "-A {SERVICES} -d {}/32 -p {proto} -m {proto} --dport {} -m comment --comment \"{comment}\" -j {svc}",
                s.cluster_ip, p.port
            );
            if let Some(node_port) = p.node_port {
                let _ = writeln!(
                    node_ports,
                    "-A {NODEPORTS} -p {proto} -m {proto} --dport {node_port} -m comment --comment \"{comment}\" -j {svc}"
                );
            }
            let _ = writeln!(rules, "-A {svc} ! -s {net}/{prefix} -j {MARK_MASQ}");
            let seps: Vec<String> = p
                .endpoints
                .iter()
                .map(|ep| sep_chain(&s.key, p, ep))
                .collect();
            if let Some(seconds) = s.affinity_seconds {
                for sep in &seps {
                    let _ = writeln!(
                        rules,
                        "-A {svc} -m recent --name {sep} --rcheck --seconds {seconds} --reap -j {sep}"
                    );
                }
            }
            let n = seps.len();
            for (i, sep) in seps.iter().enumerate() {
                if i + 1 < n {
                    let _ = writeln!(
                        rules,
                        "-A {svc} -m statistic --mode random --probability {:.10} -j {sep}",
                        1.0 / (n - i) as f64
                    );
                } else {
                    let _ = writeln!(rules, "-A {svc} -j {sep}");
                }
            }
            for (ep, sep) in p.endpoints.iter().zip(&seps) {
                let _ = writeln!(rules, "-A {sep} -s {}/32 -j {MARK_MASQ}", ep.ip());
                let recent = if s.affinity_seconds.is_some() {
                    format!(" -m recent --name {sep} --set")
                } else {
                    String::new()
                };
                let _ = writeln!(
                    rules,
                    "-A {sep} -p {proto} -m {proto}{recent} -j DNAT --to-destination {ep}"
                );
            }
        }
    }
    // Node ports last: they apply to any local address, after every ClusterIP.
    let _ = writeln!(
        rules,
        "-A {SERVICES} -m addrtype --dst-type LOCAL -j {NODEPORTS}"
    );
    rules.push_str(&node_ports);
    for name in stale {
        let _ = writeln!(rules, "-X {name}");
    }
    nat.push_str(&rules);
    nat.push_str("COMMIT\n");
    filter.push_str(&filter_rules);
    filter.push_str("COMMIT\n");
    nat + &filter
}

/// sandboxd's chains in `iptables-save -t nat` output that `wanted` does not have.
pub fn stale_chains(saved_nat: &str, wanted: &BTreeSet<String>) -> BTreeSet<String> {
    saved_nat
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("SBX-SVC-") || name.starts_with("SBX-SEP-"))
        .filter(|name| !wanted.contains(*name))
        .map(String::from)
        .collect()
}

/// The input of `iptables-restore --noflush` that removes everything of sandboxd's from
/// `saved` (iptables-save output of the nat and filter tables): the jumps from built-in
/// chains, then the SBX-* chains (all flushed before any is deleted, as they refer to each
/// other). Empty when nothing of ours is there.
pub fn cleanup(saved: &str) -> String {
    let mut out = String::new();
    let mut table: Option<&str> = None;
    let mut jumps = Vec::new();
    let mut ours = Vec::new();
    let flush = |out: &mut String, table: &str, jumps: &mut Vec<&str>, ours: &mut Vec<&str>| {
        if jumps.is_empty() && ours.is_empty() {
            return;
        }
        let _ = writeln!(out, "*{table}");
        for rule in jumps.drain(..) {
            let _ = writeln!(out, "-D {rule}");
        }
        for chain in ours.iter() {
            let _ = writeln!(out, "-F {chain}");
        }
        for chain in ours.drain(..) {
            let _ = writeln!(out, "-X {chain}");
        }
        out.push_str("COMMIT\n");
    };
    for line in saved.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = Some(name);
        } else if line == "COMMIT" {
            if let Some(name) = table.take() {
                flush(&mut out, name, &mut jumps, &mut ours);
            }
        } else if let Some(chain) = line.strip_prefix(':') {
            let chain = chain.split_whitespace().next().unwrap_or_default();
            if chain.starts_with("SBX-") {
                ours.push(chain);
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            if !chain.starts_with("SBX-") && rule.contains(" -j SBX-") {
                jumps.push(rule);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn web(eps: &[&str]) -> ProgrammedService {
        crate::service::plan::fixtures::web(eps, None)
    }

    #[test]
    fn endpoints_are_chosen_with_kube_proxys_probabilities() {
        let cluster = Cluster::new((Ipv4Addr::new(10, 244, 0, 0), 16));
        let text = restore(
            &cluster,
            &[web(&[
                "10.244.1.5:8080",
                "10.244.2.7:8080",
                "10.244.3.9:8080",
            ])],
            false,
            &BTreeSet::new(),
        );
        assert!(text.contains("--probability 0.3333333333 -j SBX-SEP-"));
        assert!(text.contains("--probability 0.5000000000 -j SBX-SEP-"));
        assert!(text
            .contains("-A PREROUTING -m comment --comment \"sandboxd services\" -j SBX-SERVICES"));
        assert!(text.contains("--dport 31080"));
        assert!(chains(&[web(&["10.244.1.5:8080"])])
            .iter()
            .all(|c| c.len() <= 28));
        let again = restore(&cluster, &[web(&[])], true, &BTreeSet::new());
        assert!(!again.contains("-A PREROUTING"));
        assert!(again.contains("-j REJECT --reject-with icmp-port-unreachable"));
    }

    #[test]
    fn stale_chains_are_found_in_saved_rules() {
        let wanted: BTreeSet<String> = ["SBX-SVC-AAAA".to_string()].into();
        let saved = ":SBX-SVC-AAAA - [0:0]\n:SBX-SEP-BBBB - [0:0]\n:KUBE-SVC-X - [0:0]\n";
        assert_eq!(
            stale_chains(saved, &wanted),
            ["SBX-SEP-BBBB".to_string()].into()
        );
    }

    #[test]
    fn cleanup_removes_our_jumps_and_chains_only() {
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:SBX-SERVICES - [0:0]\n:SBX-SVC-AAAA - [0:0]\n:KUBE-SVC-X - [0:0]\n\
-A PREROUTING -m comment --comment \"sandboxd services\" -j SBX-SERVICES\n\
-A PREROUTING -j KUBE-SERVICES\n-A SBX-SERVICES -d 10.96.0.10/32 -j SBX-SVC-AAAA\nCOMMIT\n\
*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DOCKER\nCOMMIT\n";
        assert_eq!(
            cleanup(saved),
            "*nat\n-D PREROUTING -m comment --comment \"sandboxd services\" -j SBX-SERVICES\n\
-F SBX-SERVICES\n-F SBX-SVC-AAAA\n-X SBX-SERVICES\n-X SBX-SVC-AAAA\nCOMMIT\n"
        );
        assert_eq!(cleanup("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"), "");
    }
}
