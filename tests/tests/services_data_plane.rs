//! The Services data plane against the kernel, with real connections: a node (a network
//! namespace that routes) between a client namespace and server namespaces running
//! hostname-server, the rules programmed in the node, in every mode: nftables (the table
//! `ip sandboxd`, over netlink as the daemon does; endpoints chosen by a cascade, and by a
//! numgen map as the largest services do) and iptables (`iptables-restore`). Checks what
//! kube-proxy does:
//! ClusterIP DNAT to a random endpoint, NodePort on the node's address, reject at once
//! without endpoints, hairpin, ClientIP affinity, an update that leaves other services'
//! rules alone, and an idempotent full sync. Needs root, nft and iptables.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sandboxd::netlink::nftables::NftSocket;
use sandboxd::service::iptables;
use sandboxd::service::plan::{self, Cluster, Plan, ProgrammedPort, ProgrammedService};
use sandboxd::service::{nftables, Protocol};
use sandboxd_tests::{require_root, run, unique_name, workspace_binary, Netns};

struct Server {
    ns: Netns,
    ip: Ipv4Addr,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node routing between a client (10.244.1.2) and servers (10.244.<n>.2, n ≥ 2), each
/// server a hostname-server on 8080 answering with its name.
struct Lab {
    node: Netns,
    client: Netns,
    servers: Vec<Server>,
}

fn link(node: &Netns, pod: &Netns, subnet: u8) {
    // Interface names have 15 characters at most.
    let host_if = unique_name("sv").chars().take(15).collect::<String>();
    run(
        "ip",
        &[
            "link",
            "add",
            &host_if,
            "netns",
            node.path().to_str().unwrap(),
            "type",
            "veth",
            "peer",
            "eth0",
            "netns",
            pod.path().to_str().unwrap(),
        ],
    );
    node.exec(&[
        "ip",
        "addr",
        "add",
        &format!("10.244.{subnet}.1/24"),
        "dev",
        &host_if,
    ]);
    node.exec(&["ip", "link", "set", &host_if, "up"]);
    pod.exec(&[
        "ip",
        "addr",
        "add",
        &format!("10.244.{subnet}.2/24"),
        "dev",
        "eth0",
    ]);
    pod.exec(&["ip", "link", "set", "eth0", "up"]);
    pod.exec(&["ip", "link", "set", "lo", "up"]);
    pod.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &format!("10.244.{subnet}.1"),
    ]);
}

impl Lab {
    fn new(servers: u8) -> Lab {
        require_root();
        let node = Netns::new("sbt-svcnode");
        node.exec(&["ip", "link", "set", "lo", "up"]);
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        node.add_default_route();
        let client = Netns::new("sbt-client");
        link(&node, &client, 1);
        let mut lab = Lab {
            node,
            client,
            servers: Vec::new(),
        };
        for n in 0..servers {
            lab.add_server(n + 2);
        }
        lab
    }

    fn add_server(&mut self, subnet: u8) {
        let ns = Netns::new("sbt-server");
        link(&self.node, &ns, subnet);
        // A uts namespace of its own, so each server answers with its own name.
        let script = format!(
            "hostname server-{subnet} && exec {} --port 8080",
            workspace_binary("hostname-server").display()
        );
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["unshare", "--uts", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let ip = Ipv4Addr::new(10, 244, subnet, 2);
        // Held by the lab from here, so a failure below still stops it.
        self.servers.push(Server { ns, ip, child });
        let ns = &self.servers.last().unwrap().ns;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !fetch_in(ns, "127.0.0.1:8080").0 {
            assert!(
                Instant::now() < deadline,
                "hostname-server did not start: {:?}",
                fetch_in(ns, "127.0.0.1:8080")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The whole set of services, as a (re)start does.
    fn sync(&self, mode: Mode, services: &[ProgrammedService]) {
        match mode {
            Mode::Nftables | Mode::NftablesMap => {
                self.apply(&plan::full_sync(&cluster_for(mode), services))
            }
            Mode::Iptables => {
                let saved = self.node.exec(&["iptables-save", "-t", "nat"]);
                let jumps = saved.contains(
                    "-A PREROUTING -m comment --comment \"sandboxd services\" -j SBX-SERVICES",
                );
                let stale = iptables::stale_chains(&saved, &iptables::chains(services));
                let text = iptables::restore(&cluster(), services, jumps, &stale);
                self.feed(&["iptables-restore", "--noflush"], &text);
            }
        }
    }

    /// One service changed from `old` to `new`; `all` is the whole set after the change.
    fn update(
        &self,
        mode: Mode,
        old: Option<&ProgrammedService>,
        new: Option<&ProgrammedService>,
        all: &[ProgrammedService],
    ) {
        match mode {
            Mode::Nftables | Mode::NftablesMap => {
                self.apply(&plan::update(&cluster_for(mode), old, new))
            }
            // The iptables mode rewrites its chains whole, as kube-proxy's does.
            Mode::Iptables => self.sync(mode, all),
        }
    }

    /// A plan sent over netlink, in the node.
    fn apply(&self, plan: &Plan) {
        let mut socket = NftSocket::open_in(Some(&self.node.path())).unwrap();
        if let Err(e) = socket.apply(plan) {
            panic!("{e:#}\n{}", nftables::render(plan));
        }
    }

    fn feed(&self, command: &[&str], script: &str) {
        feed_in(&self.node, command, script);
    }

    /// The rules as the mode lists them (without counters).
    fn rules(&self, mode: Mode) -> String {
        match mode {
            Mode::Nftables | Mode::NftablesMap => {
                self.node.exec(&["nft", "list", "table", "ip", "sandboxd"])
            }
            Mode::Iptables => ["nat", "filter"]
                .iter()
                .map(|t| self.node.exec(&["iptables-save", "-t", t]))
                .collect::<String>()
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| {
                    if l.starts_with(':') {
                        l.split(' ').next().unwrap_or(l)
                    } else {
                        l
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// The rules of one service's own chain.
    fn service_rules(&self, mode: Mode, service: &ProgrammedService) -> String {
        let rules = self.rules(mode);
        match mode {
            Mode::Nftables | Mode::NftablesMap => {
                let name = format!("chain svc-{}/tcp/8080 {{", service.key);
                let start = rules.find(&name).expect("the service chain");
                rules[start..start + rules[start..].find('}').unwrap()].to_string()
            }
            Mode::Iptables => {
                let ours: Vec<&str> = rules
                    .lines()
                    .filter(|l| l.starts_with("-A SBX-SERVICES "))
                    .filter(|l| l.contains(&format!("{}:8080/tcp", service.key)))
                    .collect();
                let chain = ours[0].rsplit(' ').next().unwrap().to_string();
                rules
                    .lines()
                    .filter(|l| l.starts_with(&format!("-A {chain} ")))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
    }
}

/// Runs `command` in `ns` with `script` on its stdin; it must succeed.
fn feed_in(ns: &Netns, command: &[&str], script: &str) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(script.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `GET /hostname` from inside `ns`: (answered, body or error, how long it took).
fn fetch_in(ns: &Netns, addr: &str) -> (bool, String, Duration) {
    let fetch = sandboxd_tests::fetch_in(&ns.path(), addr);
    (fetch.answered, fetch.body, fetch.took)
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Nftables,
    NftablesMap,
    Iptables,
}

macro_rules! in_every_mode {
    ($($test:ident),* $(,)?) => {
        mod nftables_mode {
            $(#[test]
            fn $test() {
                super::$test(super::Mode::Nftables)
            })*
        }
        mod nftables_map_mode {
            $(#[test]
            fn $test() {
                super::$test(super::Mode::NftablesMap)
            })*
        }
        mod iptables_mode {
            $(#[test]
            fn $test() {
                super::$test(super::Mode::Iptables)
            })*
        }
    };
}

in_every_mode!(
    cluster_ips_and_node_ports_reach_the_endpoints,
    a_service_without_endpoints_is_refused_at_once,
    an_update_changes_one_service_and_affinity_sticks,
);

fn cluster() -> Cluster {
    Cluster::new((Ipv4Addr::new(10, 244, 0, 0), 16))
}

/// The cluster as `mode` programs it: in `NftablesMap` every service with two or more
/// endpoints chooses through a numgen verdict map, as the largest services do.
fn cluster_for(mode: Mode) -> Cluster {
    let mut cluster = cluster();
    if let Mode::NftablesMap = mode {
        cluster.endpoint_map_min = 2;
    }
    cluster
}

fn service(key: &str, ip: [u8; 4], node_port: Option<u16>, eps: &[Ipv4Addr]) -> ProgrammedService {
    ProgrammedService {
        key: key.into(),
        cluster_ip: Ipv4Addr::from(ip),
        ports: vec![ProgrammedPort {
            protocol: Protocol::Tcp,
            port: 8080,
            node_port,
            endpoints: eps.iter().map(|ip| SocketAddrV4::new(*ip, 8080)).collect(),
        }],
        affinity_seconds: None,
    }
}

fn cluster_ips_and_node_ports_reach_the_endpoints(mode: Mode) {
    let lab = Lab::new(2);
    let (a, b) = (lab.servers[0].ip, lab.servers[1].ip);
    let web = service("default/web", [10, 96, 0, 10], Some(31080), &[a, b]);
    lab.sync(mode, std::slice::from_ref(&web));

    // Both endpoints get traffic, each at least 20 % of 100 requests.
    let mut seen = std::collections::HashMap::new();
    for _ in 0..100 {
        let (ok, body, _) = fetch_in(&lab.client, "10.96.0.10:8080");
        assert!(ok, "{body}");
        *seen.entry(body).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.values().all(|n| *n >= 20), "{seen:?}");

    // NodePort on the node's address.
    let (ok, body, _) = fetch_in(&lab.client, "10.244.1.1:31080");
    assert!(ok, "{body}");

    // Hairpin: an endpoint reaching its own service.
    let (ok, body, _) = fetch_in(&lab.servers[0].ns, "10.96.0.10:8080");
    assert!(ok, "hairpin: {body}");

    // A full sync again changes nothing and duplicates nothing.
    let before = lab.rules(mode);
    lab.sync(mode, &[web]);
    assert_eq!(lab.rules(mode), before);
}

fn a_service_without_endpoints_is_refused_at_once(mode: Mode) {
    let lab = Lab::new(1);
    let empty = service("default/empty", [10, 96, 0, 20], Some(31081), &[]);
    lab.sync(mode, &[empty]);
    let at_once = if sandboxd_tests::process_packets_elsewhere(&lab.node) {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(1500)
    };
    for addr in ["10.96.0.20:8080", "10.244.1.1:31081"] {
        let (ok, body, took) = fetch_in(&lab.client, addr);
        assert!(!ok);
        assert!(body.contains("refused"), "{addr}: {body}");
        assert!(took < at_once, "{addr}: took {took:?}, not at once");
    }
}

fn an_update_changes_one_service_and_affinity_sticks(mode: Mode) {
    let lab = Lab::new(2);
    let (a, b) = (lab.servers[0].ip, lab.servers[1].ip);
    let one = service("default/one", [10, 96, 0, 31], None, &[a]);
    let two = service("default/two", [10, 96, 0, 32], None, &[b]);
    lab.sync(mode, &[one.clone(), two.clone()]);
    let two_before = lab.service_rules(mode, &two);

    // one: a → both, with ClientIP affinity.
    let mut sticky = service("default/one", [10, 96, 0, 31], None, &[a, b]);
    sticky.affinity_seconds = Some(60);
    lab.update(
        mode,
        Some(&one),
        Some(&sticky),
        &[sticky.clone(), two.clone()],
    );
    assert_eq!(lab.service_rules(mode, &two), two_before);
    let sticky_rules = lab.service_rules(mode, &sticky);
    let jumps =
        sticky_rules.matches("goto ep-").count() + sticky_rules.matches("-j SBX-SEP-").count();
    assert_eq!(
        jumps, 4,
        "two affinity checks and two choices: {sticky_rules}"
    );
    let mut chosen = std::collections::HashSet::new();
    for _ in 0..20 {
        let (ok, body, _) = fetch_in(&lab.client, "10.96.0.31:8080");
        assert!(ok, "{body}");
        chosen.insert(body);
    }
    assert_eq!(
        chosen.len(),
        1,
        "affinity did not keep one endpoint: {chosen:?}"
    );

    // Removing one leaves two.
    lab.update(mode, Some(&sticky), None, std::slice::from_ref(&two));
    let rules = lab.rules(mode);
    assert!(!rules.contains("default/one"), "{rules}");
    assert_eq!(lab.service_rules(mode, &two), two_before);
    let (ok, body, _) = fetch_in(&lab.client, "10.96.0.32:8080");
    assert!(ok, "{body}");
}

/// The netlink backend and `nft -f` (commands, and blocks for a full sync) build the same
/// table, byte for byte as nft lists it, for a full sync with every kind of service and
/// for updates of one service.
#[test]
fn netlink_and_nft_text_program_the_same_table() {
    require_root();
    let by_text = Netns::new("sbt-nfttext");
    let by_blocks = Netns::new("sbt-nftblk");
    let by_netlink = Netns::new("sbt-nftnl");
    let mut socket = NftSocket::open_in(Some(&by_netlink.path())).unwrap();
    let list = |ns: &Netns| ns.exec(&["nft", "list", "table", "ip", "sandboxd"]);
    let feed = |plan: &Plan| feed_in(&by_text, &["nft", "-f", "-"], &nftables::render(plan));
    let eps =
        |n: u8| -> Vec<Ipv4Addr> { (0..n).map(|i| Ipv4Addr::new(10, 244, 3, i + 2)).collect() };
    let mut sticky = service("default/sticky", [10, 96, 0, 12], Some(30012), &eps(3));
    sticky.affinity_seconds = Some(10800);
    let mut udp = service("kube-system/dns", [10, 96, 0, 13], None, &eps(1));
    udp.ports[0].protocol = Protocol::Udp;
    udp.ports[0].port = 53;
    let services = vec![
        service("default/web", [10, 96, 0, 10], Some(31080), &eps(2)),
        service("default/empty", [10, 96, 0, 11], Some(31081), &[]),
        sticky.clone(),
        udp,
    ];
    // Both a whole-byte and a masked pod CIDR prefix; endpoints chosen by cascade and by
    // map.
    for cluster in [
        cluster(),
        Cluster {
            pod_cidr: (Ipv4Addr::new(10, 240, 0, 0), 12),
            endpoint_map_min: 2,
        },
    ] {
        let plan = plan::full_sync(&cluster, &services);
        feed(&plan);
        feed_in(
            &by_blocks,
            &["nft", "-f", "-"],
            &nftables::render_blocks(&plan).unwrap(),
        );
        socket.apply(&plan).unwrap();
        assert_eq!(list(&by_netlink), list(&by_text));
        assert_eq!(list(&by_blocks), list(&by_text));

        let mut moved = sticky.clone();
        moved.ports[0].endpoints.pop();
        moved.affinity_seconds = None;
        for (old, new) in [
            (Some(&sticky), Some(&moved)),
            (Some(&moved), None),
            (None, Some(&sticky)),
        ] {
            let plan = plan::update(&cluster, old, new);
            feed(&plan);
            socket.apply(&plan).unwrap();
            assert_eq!(list(&by_netlink), list(&by_text));
        }
    }
}

/// A refused batch changes nothing and the error names the operation and the reason.
#[test]
fn a_refused_netlink_batch_leaves_the_table_as_it_was() {
    require_root();
    let ns = Netns::new("sbt-nftnl");
    let mut socket = NftSocket::open_in(Some(&ns.path())).unwrap();
    let web = service(
        "default/web",
        [10, 96, 0, 10],
        Some(31080),
        &[Ipv4Addr::new(10, 244, 3, 2)],
    );
    socket
        .apply(&plan::full_sync(&cluster(), std::slice::from_ref(&web)))
        .unwrap();
    let before = ns.exec(&["nft", "list", "table", "ip", "sandboxd"]);

    // Removing a service that is not there: its map element does not exist.
    let ghost = service(
        "default/ghost",
        [10, 96, 0, 99],
        None,
        &[Ipv4Addr::new(10, 244, 3, 9)],
    );
    let mut plan = plan::update(&cluster(), None, Some(&ghost));
    plan.ops
        .extend(plan::update(&cluster(), Some(&ghost), None).ops);
    plan.ops
        .extend(plan::update(&cluster(), Some(&ghost), None).ops);
    let error = socket.apply(&plan).unwrap_err().to_string();
    assert!(
        error.contains("delete element ip sandboxd service-ips { 10.96.0.99 . tcp . 8080 }"),
        "{error}"
    );
    assert!(error.contains("No such file or directory"), "{error}");
    assert_eq!(ns.exec(&["nft", "list", "table", "ip", "sandboxd"]), before);
}
