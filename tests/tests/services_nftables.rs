//! The nftables data plane against the kernel, with real connections: a node (a network
//! namespace that routes) between a client namespace and server namespaces running
//! hostname-server, the table `ip sandboxd` programmed in the node with `nft -f`. Checks
//! what kube-proxy's nftables mode does: ClusterIP DNAT to a random endpoint, NodePort on
//! the node's address, reject at once without endpoints, hairpin, ClientIP affinity, an
//! update that touches one service only, and an idempotent full sync. Needs root and nft.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sandboxd::service::nftables::{self, Cluster, ProgrammedPort, ProgrammedService};
use sandboxd::service::Protocol;
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

    fn apply(&self, script: &str) {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.node.path().display()))
            .args(["nft", "-f", "-"])
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
            "nft -f failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn table(&self) -> String {
        self.node.exec(&["nft", "list", "table", "ip", "sandboxd"])
    }
}

/// `GET /hostname` to `addr` from inside `ns` (a thread that joins it): (answered, body or
/// error, how long it took).
fn fetch_in(ns: &Netns, addr: &str) -> (bool, String, Duration) {
    let path = ns.path();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let netns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let start = Instant::now();
        let attempt = || -> std::io::Result<String> {
            let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            stream.write_all(b"GET /hostname HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.trim().to_string())
                .unwrap_or(response))
        };
        match attempt() {
            Ok(body) => (true, body, start.elapsed()),
            Err(e) => (false, e.to_string(), start.elapsed()),
        }
    })
    .join()
    .unwrap()
}

fn cluster() -> Cluster {
    Cluster {
        pod_cidr: (Ipv4Addr::new(10, 244, 0, 0), 16),
    }
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

#[test]
fn cluster_ips_and_node_ports_reach_the_endpoints() {
    let lab = Lab::new(2);
    let (a, b) = (lab.servers[0].ip, lab.servers[1].ip);
    let web = service("default/web", [10, 96, 0, 10], Some(31080), &[a, b]);
    lab.apply(&nftables::full_sync(&cluster(), std::slice::from_ref(&web)));

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
    let before = lab.table();
    lab.apply(&nftables::full_sync(&cluster(), &[web]));
    assert_eq!(lab.table(), before);
}

#[test]
fn a_service_without_endpoints_is_refused_at_once() {
    let lab = Lab::new(1);
    let empty = service("default/empty", [10, 96, 0, 20], Some(31081), &[]);
    lab.apply(&nftables::full_sync(&cluster(), &[empty]));
    for addr in ["10.96.0.20:8080", "10.244.1.1:31081"] {
        let (ok, body, took) = fetch_in(&lab.client, addr);
        assert!(!ok);
        assert!(
            body.contains("refused") || body.contains("unreachable"),
            "{body}"
        );
        assert!(
            took < Duration::from_secs(2),
            "{addr}: took {took:?}, not at once"
        );
    }
}

#[test]
fn an_update_changes_one_service_and_affinity_sticks() {
    let lab = Lab::new(2);
    let (a, b) = (lab.servers[0].ip, lab.servers[1].ip);
    let one = service("default/one", [10, 96, 0, 31], None, &[a]);
    let two = service("default/two", [10, 96, 0, 32], None, &[b]);
    lab.apply(&nftables::full_sync(
        &cluster(),
        &[one.clone(), two.clone()],
    ));
    let chain_of = |table: &str, name: &str| {
        let start = table.find(&format!("chain {name} {{")).expect("chain");
        table[start..start + table[start..].find('}').unwrap()].to_string()
    };
    let two_before = chain_of(&lab.table(), "svc-default/two/tcp/8080");

    // one: a → both, with ClientIP affinity.
    let mut sticky = service("default/one", [10, 96, 0, 31], None, &[a, b]);
    sticky.affinity_seconds = Some(60);
    lab.apply(&nftables::update(&cluster(), Some(&one), Some(&sticky)));
    let table = lab.table();
    assert_eq!(chain_of(&table, "svc-default/two/tcp/8080"), two_before);
    assert!(table.contains("numgen random mod 2"), "{table}");
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
    lab.apply(&nftables::update(&cluster(), Some(&sticky), None));
    let table = lab.table();
    assert!(!table.contains("default/one"), "{table}");
    assert_eq!(chain_of(&table, "svc-default/two/tcp/8080"), two_before);
    let (ok, body, _) = fetch_in(&lab.client, "10.96.0.32:8080");
    assert!(ok, "{body}");
}
