//! A [`Plan`] as `nft -f` text: the readable form of the data plane (what `nft list table
//! ip sandboxd` shows back), and the baseline the netlink backend is measured against.

use std::fmt::Write;

use crate::service::plan::{
    BaseChain, ChainType, Hook, Key, MapKey, Op, Plan, Rule, Verdict, TABLE,
};

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Drop => write!(f, "drop"),
            Verdict::Return => write!(f, "return"),
            Verdict::Jump(chain) => write!(f, "jump {chain}"),
            Verdict::Goto(chain) => write!(f, "goto {chain}"),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Service(ip, protocol, port) => write!(f, "{ip} . {} . {port}", protocol.nft()),
            Key::NodePort(protocol, port) => write!(f, "{} . {port}", protocol.nft()),
            Key::Interface(name) => {
                let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
                write!(f, "{:?}", String::from_utf8_lossy(&name[..len]))
            }
        }
    }
}

/// nft's name for an address's header: `ip` or `ip6`.
fn ip_of(address: &std::net::IpAddr) -> &'static str {
    if address.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::SetMark(bits) => write!(f, "meta mark set meta mark or {bits:#x}"),
            Rule::ReturnUnlessMarked(bits) => write!(f, "meta mark and {bits:#x} == 0 return"),
            Rule::ToggleMark(bits) => write!(f, "meta mark set meta mark xor {bits:#x}"),
            Rule::MasqueradeFullyRandom => write!(f, "masquerade fully-random"),
            Rule::DestinationVmap(map) => {
                write!(f, "ip daddr . meta l4proto . th dport vmap @{map}")
            }
            Rule::LocalPortVmap(map) => write!(
                f,
                "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @{map}"
            ),
            Rule::AnyLocalPortVmap(map) => write!(
                f,
                "fib daddr type local meta l4proto . th dport vmap @{map}"
            ),
            Rule::Always(verdict) => write!(f, "{verdict}"),
            Rule::InterfaceVmap(map) => write!(f, "iifname vmap @{map}"),
            Rule::FromMac(mac, verdict) => write!(
                f,
                "ether saddr {} {verdict}",
                crate::netlink::link::format_mac(mac)
            ),
            Rule::Reject => write!(f, "reject"),
            Rule::NewConnection(verdict) => write!(f, "ct state new {verdict}"),
            Rule::FromAddress(ip, verdict) => write!(f, "{} saddr {ip} {verdict}", ip_of(ip)),
            Rule::FromOutside((net, prefix), verdict) => {
                write!(f, "{} saddr != {net}/{prefix} {verdict}", ip_of(net))
            }
            Rule::FromNetwork((net, prefix), verdict) => {
                write!(f, "{} saddr {net}/{prefix} {verdict}", ip_of(net))
            }
            Rule::ToNetwork((net, prefix), verdict) => {
                write!(f, "{} daddr {net}/{prefix} {verdict}", ip_of(net))
            }
            Rule::RememberSource(set) => write!(f, "update @{set} {{ ip saddr }}"),
            Rule::FromRemembered(set, verdict) => write!(f, "ip saddr @{set} {verdict}"),
            Rule::Dnat(protocol, to) => write!(f, "meta l4proto {} dnat to {to}", protocol.nft()),
            Rule::OneIn(n, verdict) => write!(f, "numgen random mod {n} == 0 {verdict}"),
            Rule::RandomGoto(chains) => {
                write!(f, "numgen random mod {} vmap {{ ", chains.len())?;
                for (i, chain) in chains.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{i} : goto {chain}")?;
                }
                write!(f, " }}")
            }
        }
    }
}

fn map_key(key: &MapKey) -> &'static str {
    match key {
        MapKey::AddressProtocolPort => "ipv4_addr . inet_proto . inet_service",
        MapKey::ProtocolPort => "inet_proto . inet_service",
        MapKey::Interface => "ifname",
    }
}

fn base_chain(base: &BaseChain) -> String {
    let chain_type = match base.chain_type {
        ChainType::Nat => "nat",
        ChainType::Filter => "filter",
    };
    let hook = match base.hook {
        Hook::Prerouting => "prerouting",
        Hook::Input => "input",
        Hook::Forward => "forward",
        Hook::Output => "output",
        Hook::Postrouting => "postrouting",
    };
    format!(
        "{{ type {chain_type} hook {hook} priority {} ; policy accept ; }}",
        base.priority
    )
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = TABLE;
        match self {
            Op::AddTable => write!(f, "add table ip {t}"),
            Op::DeleteTable => write!(f, "delete table ip {t}"),
            Op::AddMap { name, key } => write!(
                f,
                "add map ip {t} {name} {{ type {} : verdict ; }}",
                map_key(key)
            ),
            Op::AddAffinitySet {
                name,
                timeout_seconds,
            } => write!(
                f,
                "add set ip {t} {name} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout_seconds}s ; }}"
            ),
            Op::DeleteSet(name) => write!(f, "delete set ip {t} {name}"),
            Op::AddChain { name, base: None } => write!(f, "add chain ip {t} {name}"),
            Op::AddChain {
                name,
                base: Some(base),
            } => write!(f, "add chain ip {t} {name} {}", base_chain(base)),
            Op::FlushChain(name) => write!(f, "flush chain ip {t} {name}"),
            Op::DeleteChain(name) => write!(f, "delete chain ip {t} {name}"),
            Op::AddRule { chain, rule } => write!(f, "add rule ip {t} {chain} {rule}"),
            Op::AddElement { map, key, verdict } => {
                write!(f, "add element ip {t} {map} {{ {key} : {verdict} }}")
            }
            Op::ClaimElement { map, key, verdict } => {
                write!(f, "create element ip {t} {map} {{ {key} : {verdict} }}")
            }
            Op::DeleteElement { map, key } => write!(f, "delete element ip {t} {map} {{ {key} }}"),
        }
    }
}

/// The plan as an `nft -f` script, one command per line.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    for op in &plan.ops {
        let _ = writeln!(out, "{op}");
    }
    out
}

/// A plan of additions (a full sync) in nft's block syntax: one `table` block declaring
/// every map with its elements, every set and every chain with its rules. nft parses this
/// far faster than one command per object (it expands the block itself, chains before
/// rules, so forward jumps resolve). Operations before the first addition to the table's
/// contents (the `add table` / `delete table` that replace it) stay commands; None when
/// the plan deletes anything after that.
pub fn render_blocks(plan: &Plan) -> Option<String> {
    let mut out = String::new();
    let mut ops = plan.ops.iter().peekable();
    while let Some(op) = ops.next_if(|op| matches!(op, Op::AddTable | Op::DeleteTable)) {
        let _ = writeln!(out, "{op}");
    }
    // Declaration order is kept: maps, then sets, then chains, as nft lists them.
    let mut maps: Vec<(&str, &MapKey, Vec<String>)> = Vec::new();
    let mut sets: Vec<String> = Vec::new();
    let mut chains: Vec<(&str, Option<&BaseChain>, Vec<String>)> = Vec::new();
    let mut chain_index = std::collections::HashMap::new();
    for op in ops {
        match op {
            Op::AddMap { name, key } => maps.push((name, key, Vec::new())),
            Op::AddAffinitySet {
                name,
                timeout_seconds,
            } => sets.push(format!(
                "\tset {name} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout_seconds}s ; }}\n"
            )),
            Op::AddChain { name, base } => {
                chain_index.insert(name.as_str(), chains.len());
                chains.push((name, base.as_ref(), Vec::new()));
            }
            Op::AddRule { chain, rule } => {
                let index = *chain_index.get(chain.as_str())?;
                chains[index].2.push(rule.to_string());
            }
            Op::AddElement { map, key, verdict } => {
                let (_, _, elements) = maps.iter_mut().find(|(name, _, _)| name == map)?;
                elements.push(format!("{key} : {verdict}"));
            }
            _ => return None,
        }
    }
    let _ = writeln!(out, "table ip {TABLE} {{");
    for (name, key, elements) in maps {
        let _ = write!(out, "\tmap {name} {{ type {} : verdict ; ", map_key(key));
        if !elements.is_empty() {
            let _ = write!(out, "elements = {{ {} }} ; ", elements.join(", "));
        }
        out.push_str("}\n");
    }
    for set in sets {
        out.push_str(&set);
    }
    for (name, base, rules) in chains {
        let _ = writeln!(out, "\tchain {name} {{");
        if let Some(base) = base {
            let spec = base_chain(base);
            let _ = writeln!(
                out,
                "\t\t{}",
                spec.trim_matches(|c| c == '{' || c == '}').trim()
            );
        }
        for rule in rules {
            let _ = writeln!(out, "\t\t{rule}");
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    Some(out)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::service::plan::fixtures::{cluster, web};
    use crate::service::plan::{self, Cluster, ProgrammedService};

    fn full_sync(cluster: &Cluster, services: &[ProgrammedService]) -> String {
        render(&plan::full_sync(cluster, services))
    }

    fn update(
        cluster: &Cluster,
        old: Option<&ProgrammedService>,
        new: Option<&ProgrammedService>,
    ) -> String {
        render(&plan::update(cluster, old, new))
    }

    #[test]
    fn a_service_is_a_map_element_a_chain_and_a_chain_per_endpoint() {
        let script = full_sync(
            &cluster(),
            &[web(&["10.244.1.5:8080", "10.244.2.7:8080"], None)],
        );
        assert!(script.contains("add element ip sandboxd service-ips { 10.96.0.10 . tcp . 8080 : goto svc-default/web/tcp/8080 }"));
        assert!(script.contains("add element ip sandboxd service-nodeports { tcp . 31080 : goto svc-default/web/tcp/8080 }"));
        assert!(script.contains("add rule ip sandboxd svc-default/web/tcp/8080 numgen random mod 2 == 0 goto ep-default/web/tcp/8080__10.244.1.5/8080\nadd rule ip sandboxd svc-default/web/tcp/8080 goto ep-default/web/tcp/8080__10.244.2.7/8080\n"));
        let mut by_map = cluster();
        by_map.endpoint_map_min = 2;
        let script = full_sync(
            &by_map,
            &[web(&["10.244.1.5:8080", "10.244.2.7:8080"], None)],
        );
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
