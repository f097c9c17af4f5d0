//! Services end to end through sandboxd and sandboxctl, with the seeds' manifests
//! unchanged, in both proxy modes: pods applied, services applied, traffic from pod-src to
//! the ClusterIP and from a client on the node's network to the NodePort, endpoints
//! following pods, a restart that rebuilds the same rules while a connection stays up,
//! bad services refused with the field named and nothing left behind, and `--cleanup`.
//! Needs root; every namespace is the test's own.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sandboxd::services_api::v1::services_client::ServicesClient;
use sandboxd::services_api::v1::{CreateServiceRequest, ServicePort, ServiceSpec};
use sandboxd_tests::daemon::SandboxdProcess;
use sandboxd_tests::{fetch_in, process_packets_elsewhere, workspace_binary, Netns};

const NODE_IP: &str = "192.168.102.11";

/// A node running sandboxd in `mode`, with a default route (as a real node has: a
/// ClusterIP without endpoints must be routed to reach the reject) and a client on the
/// node's network (192.168.102.0/24, the lab's underlay).
struct Node {
    daemon: SandboxdProcess,
    client: Netns,
    mode: &'static str,
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

impl Node {
    fn start(mode: &'static str) -> Node {
        let daemon = SandboxdProcess::start_with(&["--proxy-mode", mode]);
        let node = &daemon.node;
        node.add_default_route();
        let client = Netns::new("sbt-extclient");
        node.exec(&[
            "ip",
            "link",
            "add",
            "eth1",
            "type",
            "veth",
            "peer",
            "eth0",
            "netns",
            client.path().to_str().unwrap(),
        ]);
        node.exec(&["ip", "addr", "add", &format!("{NODE_IP}/24"), "dev", "eth1"]);
        node.exec(&["ip", "link", "set", "eth1", "up"]);
        client.exec(&["ip", "addr", "add", "192.168.102.100/24", "dev", "eth0"]);
        client.exec(&["ip", "link", "set", "eth0", "up"]);
        Node {
            daemon,
            client,
            mode,
        }
    }

    /// sandboxctl, which must succeed; its output.
    fn ctl(&self, args: &[&str]) -> String {
        let (code, out, err) = self.daemon.sandboxctl(args);
        assert_eq!(
            code,
            Some(0),
            "sandboxctl {args:?}: {err}\n{}",
            self.daemon.log()
        );
        out
    }

    /// sandboxctl, which must fail; its error.
    fn ctl_fails(&self, args: &[&str]) -> String {
        let (code, out, err) = self.daemon.sandboxctl(args);
        assert_ne!(code, Some(0), "sandboxctl {args:?} succeeded: {out}");
        err
    }

    fn apply(&self, manifest: &Path) -> String {
        self.ctl(&["apply", "-f", manifest.to_str().unwrap()])
    }

    /// Applies YAML given inline.
    fn apply_text(&self, yaml: &str) -> String {
        let path = self.daemon.path(&format!(
            "manifest-{}.yaml",
            sandboxd_tests::unique_name("m")
        ));
        std::fs::write(&path, yaml).unwrap();
        self.apply(&path)
    }

    fn apply_text_fails(&self, yaml: &str) -> String {
        let path = self.daemon.path(&format!(
            "manifest-{}.yaml",
            sandboxd_tests::unique_name("m")
        ));
        std::fs::write(&path, yaml).unwrap();
        self.ctl_fails(&["apply", "-f", path.to_str().unwrap()])
    }

    fn pod_netns(&self, pod: &str) -> PathBuf {
        let id = self.ctl(&["pods", "--name", pod, "-q"]);
        let id = id.lines().next().unwrap_or_else(|| panic!("no pod {pod}"));
        self.daemon.netns_dir().join(id.trim())
    }

    fn cluster_ip(&self, service: &str) -> String {
        let json: serde_json::Value =
            serde_json::from_str(&self.ctl(&["get", "svc", service, "-o", "json"])).unwrap();
        json["spec"]["clusterIP"].as_str().unwrap().to_string()
    }

    /// The data plane as its mode lists it, without counters.
    fn rules(&self) -> String {
        let node = &self.daemon.node;
        if self.mode == "nftables" {
            return node.exec(&["nft", "list", "table", "ip", "sandboxd"]);
        }
        ["nat", "filter"]
            .iter()
            .map(|t| node.exec(&["iptables-save", "-t", t]))
            .collect::<String>()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// sandboxd listens on the node port in the node, as `ss -lntp` shows.
    fn assert_node_port_held(&self, port: u16) {
        let listening = self.listening();
        assert!(
            listening
                .lines()
                .any(|l| l.contains(&format!("0.0.0.0:{port} ")) && l.contains("\"sandboxd\"")),
            "{listening}"
        );
    }

    /// Ports listening in the node, with their processes.
    fn listening(&self) -> String {
        self.daemon.node.exec(&["ss", "-lntpH"])
    }

    /// One more pod the seed's services select; its manifest.
    fn dest_pod(&self, name: &str) -> PathBuf {
        let path = self.daemon.path(&format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    type: dest\nspec:\n  containers:\n  - name: container\n    image: kubetm/app\n    ports:\n    - containerPort: 8080\n"
            ),
        )
        .unwrap();
        self.apply(&path);
        path
    }
}

macro_rules! in_both_modes {
    ($($test:ident),* $(,)?) => {
        mod nftables_mode {
            $(#[test]
            fn $test() {
                super::$test("nftables")
            })*
        }
        mod iptables_mode {
            $(#[test]
            fn $test() {
                super::$test("iptables")
            })*
        }
    };
}

in_both_modes!(
    the_seed_services_reach_the_pods,
    a_named_target_port_is_the_containers_port_of_that_name,
    an_update_keeps_the_address_and_moves_the_node_port,
    a_restart_rebuilds_the_same_rules_and_keeps_connections,
    bad_services_name_the_field_and_leave_nothing,
    cleanup_removes_every_rule,
);

fn the_seed_services_reach_the_pods(mode: &'static str) {
    let node = Node::start(mode);
    node.apply(&example("pod-src.yaml"));
    node.apply(&example("pod-dest.yaml"));
    assert_eq!(
        node.apply(&example("svc-clusterip.yaml")),
        "service/svc-clusterip created\n"
    );
    assert_eq!(
        node.apply(&example("svc-clusterip.yaml")),
        "service/svc-clusterip unchanged\n"
    );
    let ip = node.cluster_ip("svc-clusterip");
    let listing = node.ctl(&["get", "svc", "-o", "wide"]);
    assert!(
        listing.contains(&format!("ClusterIP   {ip}"))
            && listing.contains("8080/TCP")
            && listing.contains("type=dest"),
        "{listing}"
    );
    let dest_ip = node.ctl(&["get", "pods", "pod-dest", "-o", "json"]);
    let dest_ip: serde_json::Value = serde_json::from_str(&dest_ip).unwrap();
    let dest_ip = dest_ip["status"]["podIP"].as_str().unwrap().to_string();
    let endpoints = node.ctl(&["get", "endpoints"]);
    assert!(
        endpoints.contains(&format!("svc-clusterip   {dest_ip}:8080")),
        "{endpoints}"
    );

    // pod-src → ClusterIP → pod-dest, as the seed's curl.
    let src = node.pod_netns("pod-src");
    let service = format!("{ip}:8080");
    let fetch = fetch_in(&src, &service);
    assert!(fetch.answered && fetch.body == "pod-dest", "{fetch:?}");

    // Two endpoints: each gets a fair share of 200 requests.
    let dest2 = node.dest_pod("pod-dest2");
    let mut seen = std::collections::HashMap::new();
    for _ in 0..200 {
        let fetch = fetch_in(&src, &service);
        assert!(fetch.answered, "{fetch:?}");
        *seen.entry(fetch.body).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.values().all(|n| *n >= 40), "{seen:?}");

    // Hairpin: an endpoint calling its own service, and reaching itself (half of the
    // time; one in 2^20 runs never does).
    let dest = node.pod_netns("pod-dest");
    let answers: Vec<String> = (0..20)
        .map(|_| {
            let fetch = fetch_in(&dest, &service);
            assert!(fetch.answered, "hairpin: {fetch:?}");
            fetch.body
        })
        .collect();
    assert!(answers.iter().any(|a| a == "pod-dest"), "{answers:?}");

    // ClientIP affinity: one client stays on one endpoint.
    node.apply_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: svc-sticky}\nspec:\n  selector: {type: dest}\n  sessionAffinity: ClientIP\n  ports: [{port: 8080, targetPort: 8080}]\n",
    );
    let sticky = format!("{}:8080", node.cluster_ip("svc-sticky"));
    let chosen: std::collections::HashSet<String> =
        (0..20).map(|_| fetch_in(&src, &sticky).body).collect();
    assert_eq!(chosen.len(), 1, "affinity did not hold: {chosen:?}");

    // NodePort 31080 from a client on the node's network, held open by sandboxd.
    assert_eq!(
        node.apply(&example("svc-nodeport.yaml")),
        "service/svc-nodeport created\n"
    );
    node.assert_node_port_held(31080);
    let node_port = format!("{NODE_IP}:31080");
    let fetch = fetch_in(&node.client.path(), &node_port);
    assert!(
        fetch.answered && fetch.body.starts_with("pod-dest"),
        "{fetch:?}"
    );

    // Scaled to zero: refused at once, not left to time out.
    node.ctl(&["delete", "-f", example("pod-dest.yaml").to_str().unwrap()]);
    node.ctl(&["delete", "-f", dest2.to_str().unwrap()]);
    let endpoints = node.ctl(&["get", "endpoints", "svc-clusterip"]);
    assert!(endpoints.contains("<none>"), "{endpoints}");
    let at_once = if process_packets_elsewhere(&node.daemon.node) {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(1500)
    };
    for (from, to) in [(&src, &service), (&node.client.path(), &node_port)] {
        let fetch = fetch_in(from, to);
        assert!(
            !fetch.answered && fetch.body.contains("refused"),
            "{to}: {fetch:?}"
        );
        assert!(fetch.took < at_once, "{to}: refused after {:?}", fetch.took);
    }

    // The node port goes with its service.
    node.ctl(&[
        "delete",
        "-f",
        example("svc-nodeport.yaml").to_str().unwrap(),
    ]);
    assert!(!node.listening().contains(":31080"), "{}", node.listening());
    assert!(!node.rules().contains("31080"), "{}", node.rules());
}

fn a_named_target_port_is_the_containers_port_of_that_name(mode: &'static str) {
    let node = Node::start(mode);
    node.apply(&example("pod-src.yaml"));
    // kubetm/app serves 8080; the pod names that port "http", the service targets the name.
    node.apply_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {app: web}}\nspec:\n  containers:\n  - name: app\n    image: kubetm/app\n    ports: [{name: http, containerPort: 8080}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: unnamed, labels: {app: web}}\nspec:\n  containers:\n  - name: app\n    image: kubetm/app\n    ports: [{containerPort: 8080}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{name: web, port: 80, targetPort: http}]\n",
    );
    let web: serde_json::Value =
        serde_json::from_str(&node.ctl(&["get", "pods", "web", "-o", "json"])).unwrap();
    let web_ip = web["status"]["podIP"].as_str().unwrap().to_string();
    // The pod without a port of that name is no endpoint of it, as in Kubernetes.
    let endpoints: serde_json::Value =
        serde_json::from_str(&node.ctl(&["get", "endpoints", "web", "-o", "json"])).unwrap();
    let subsets = &endpoints["subsets"];
    assert_eq!(subsets.as_array().map(Vec::len), Some(1), "{endpoints}");
    assert_eq!(
        subsets[0]["addresses"].as_array().map(Vec::len),
        Some(1),
        "{endpoints}"
    );
    assert_eq!(
        subsets[0]["addresses"][0]["ip"],
        web_ip.as_str(),
        "{endpoints}"
    );
    assert_eq!(
        subsets[0]["addresses"][0]["targetRef"]["name"], "web",
        "{endpoints}"
    );
    assert_eq!(subsets[0]["ports"][0]["port"], 8080, "{endpoints}");
    assert_eq!(subsets[0]["ports"][0]["name"], "web", "{endpoints}");
    let fetch = fetch_in(
        &node.pod_netns("pod-src"),
        &format!("{}:80", node.cluster_ip("web")),
    );
    assert!(fetch.answered && fetch.body == "web", "{fetch:?}");
}

fn an_update_keeps_the_address_and_moves_the_node_port(mode: &'static str) {
    let node = Node::start(mode);
    node.apply(&example("pod-dest.yaml"));
    node.apply(&example("svc-nodeport.yaml"));
    let ip = node.cluster_ip("svc-nodeport");
    let moved = std::fs::read_to_string(example("svc-nodeport.yaml"))
        .unwrap()
        .replace("nodePort: 31080", "nodePort: 31081");
    assert_eq!(node.apply_text(&moved), "service/svc-nodeport configured\n");
    assert_eq!(node.apply_text(&moved), "service/svc-nodeport unchanged\n");
    assert_eq!(node.cluster_ip("svc-nodeport"), ip, "the ClusterIP changed");
    let listening = node.listening();
    assert!(
        listening.contains("0.0.0.0:31081") && !listening.contains(":31080"),
        "{listening}"
    );
    let rules = node.rules();
    assert!(
        rules.contains("31081") && !rules.contains("31080"),
        "{rules}"
    );
    let fetch = fetch_in(&node.client.path(), &format!("{NODE_IP}:31081"));
    assert!(fetch.answered && fetch.body == "pod-dest", "{fetch:?}");
    // The freed port is anyone's again; the address cannot change.
    node.apply_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: other}\nspec:\n  type: NodePort\n  selector: {type: dest}\n  ports: [{port: 80, targetPort: 8080, nodePort: 31080}]\n",
    );
    let error = node.apply_text_fails(&moved.replace(
        "type: NodePort",
        "type: NodePort\n  clusterIP: 10.96.100.100",
    ));
    assert!(
        error.contains(&format!(
            "spec.clusterIP of service default/svc-nodeport: is immutable: the service has {ip}"
        )),
        "{error}"
    );
}

fn a_restart_rebuilds_the_same_rules_and_keeps_connections(mode: &'static str) {
    let mut node = Node::start(mode);
    node.apply(&example("pod-src.yaml"));
    node.apply(&example("pod-dest.yaml"));
    node.apply(&example("svc-clusterip.yaml"));
    node.apply(&example("svc-nodeport.yaml"));
    let service = format!("{}:8080", node.cluster_ip("svc-clusterip"));
    let before = node.rules();

    // A connection through the service, its request half sent.
    let src = node.pod_netns("pod-src");
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let (ready, connected) = std::sync::mpsc::channel::<()>();
    let connection = std::thread::spawn(move || -> std::io::Result<String> {
        let netns = std::fs::File::open(&src)?;
        nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut stream =
            TcpStream::connect_timeout(&service.parse().unwrap(), Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET /hostname HTTP/1.0\r\n")?;
        ready.send(()).unwrap();
        wait.recv().unwrap();
        stream.write_all(b"\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    });
    connected
        .recv_timeout(Duration::from_secs(5))
        .expect("connected");

    node.daemon.kill9();
    node.daemon.spawn();
    let after = node.rules();
    assert_eq!(after, before, "the restart changed the rules");
    node.assert_node_port_held(31080);

    go.send(()).unwrap();
    let response = connection.join().unwrap().expect("the connection survived");
    assert!(
        response.ends_with("pod-dest\n") || response.trim_end().ends_with("pod-dest"),
        "{response}"
    );
}

fn bad_services_name_the_field_and_leave_nothing(mode: &'static str) {
    let node = Node::start(mode);
    node.apply(&example("svc-nodeport.yaml"));
    let taken_ip = node.cluster_ip("svc-nodeport");
    let rules = node.rules();
    let services = node.ctl(&["get", "svc"]);
    let listening = node.listening();

    let service = |spec: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: bad}}\nspec:\n{spec}")
    };
    let selector = "  selector: {type: dest}\n";
    let cases = [
        (service("  ports: [{port: 80}]\n"), "invalid spec.selector of service default/bad"),
        (service(&format!("{selector}  ports: [{{port: 0}}]\n")), "invalid spec.ports[0].port of service default/bad: 0 is not a port"),
        (service(&format!("{selector}  ports: [{{port: abc}}]\n")), "(service/bad): spec.ports[0].port: invalid type: string \"abc\", expected i64"),
        (service(&format!("{selector}  ports: [{{port: 70000}}]\n")), "spec.ports[0].port of service default/bad: 70000 is not a port"),
        (service(&format!("{selector}  type: NodePort\n  ports: [{{port: 80, nodePort: 80}}]\n")), "spec.ports[0].nodePort of service default/bad: 80 is outside the node port range 30000-32767"),
        (service(&format!("{selector}  type: NodePort\n  ports: [{{port: 80, nodePort: 31080}}]\n")), "spec.ports[0].nodePort of service default/bad: node port 31080 is already allocated to service default/svc-nodeport"),
        (service(&format!("{selector}  clusterIP: 10.0.0.1\n  ports: [{{port: 80}}]\n")), "spec.clusterIP of service default/bad: 10.0.0.1 is outside the service CIDR 10.96.0.0/12"),
        (service(&format!("{selector}  clusterIP: {taken_ip}\n  ports: [{{port: 80}}]\n")), &*format!("spec.clusterIP of service default/bad: {taken_ip} is already allocated to service default/svc-nodeport")),
        (service(&format!("{selector}  ports: [{{port: 80, protocol: SCTP}}]\n")), "spec.ports[0].protocol of service default/bad: \"SCTP\" is not TCP or UDP"),
        (service(&format!("{selector}  ports: [{{name: a, port: 80}}, {{name: a, port: 81}}]\n")), "spec.ports[1].name of service default/bad: \"a\" is given twice"),
    ];
    let check_nothing_left = |what: &str| {
        assert_eq!(node.rules(), rules, "{what} changed the rules");
        assert_eq!(
            node.ctl(&["get", "svc"]).lines().count(),
            services.lines().count(),
            "{what}"
        );
        assert_eq!(
            node.listening(),
            listening,
            "{what} changed the listening ports"
        );
    };
    for (yaml, expected) in &cases {
        let error = node.apply_text_fails(yaml);
        assert!(
            error.contains(expected),
            "expected {expected:?} in: {error}"
        );
        check_nothing_left(expected);
    }

    // A duplicate name, through the API (apply would update it).
    let error = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let channel = sandboxd::client::channel(&node.daemon.endpoint())
            .await
            .unwrap();
        let spec = ServiceSpec {
            name: "svc-nodeport".into(),
            selector: [("type".to_string(), "dest".to_string())].into(),
            ports: vec![ServicePort {
                port: 8080,
                ..Default::default()
            }],
            ..Default::default()
        };
        ServicesClient::new(channel)
            .create_service(CreateServiceRequest { spec: Some(spec) })
            .await
            .unwrap_err()
    });
    assert_eq!(error.code(), tonic::Code::AlreadyExists, "{error:?}");
    assert!(
        error
            .message()
            .contains("service default/svc-nodeport already exists"),
        "{error:?}"
    );
    check_nothing_left("a duplicate name");

    // A node port another process holds: refused, and given back for later.
    let holder = {
        let netns = std::fs::File::open(node.daemon.node.path()).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            std::net::TcpListener::bind("0.0.0.0:31999").unwrap()
        })
        .join()
        .unwrap()
    };
    let held = service(&format!(
        "{selector}  type: NodePort\n  ports: [{{port: 80, nodePort: 31999}}]\n"
    ));
    let listening_with_holder = node.listening();
    let error = node.apply_text_fails(&held);
    assert!(
        error.contains("spec.ports[0].nodePort of service default/bad: node port 31999/tcp is in use by another process on this node"),
        "{error}"
    );
    assert_eq!(node.rules(), rules);
    assert_eq!(node.listening(), listening_with_holder);
    drop(holder);
    assert_eq!(node.apply_text(&held), "service/bad created\n");
}

fn cleanup_removes_every_rule(mode: &'static str) {
    let mut node = Node::start(mode);
    node.apply(&example("svc-nodeport.yaml"));
    assert!(node.rules().contains("31080"));
    node.daemon.kill9();
    let out = std::process::Command::new(workspace_binary("sandboxd"))
        .arg("--cleanup")
        .arg("--node-netns")
        .arg(node.daemon.node.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nft = node.daemon.node.exec(&["nft", "list", "ruleset"]);
    assert!(!nft.contains("sandboxd"), "{nft}");
    for table in ["nat", "filter"] {
        let saved = node.daemon.node.exec(&["iptables-save", "-t", table]);
        assert!(!saved.contains("SBX-"), "{saved}");
    }
}

/// A node switched between proxy modes keeps only the rules of the mode it runs.
#[test]
fn switching_modes_leaves_only_the_new_modes_rules() {
    let mut node = Node::start("nftables");
    node.apply(&example("pod-dest.yaml"));
    node.apply(&example("svc-nodeport.yaml"));
    let tables = |node: &Node| node.daemon.node.exec(&["nft", "list", "tables"]);
    let iptables = |node: &Node| node.daemon.node.exec(&["iptables-save", "-t", "nat"]);
    for (mode, ours, theirs) in [
        ("iptables", "SBX-", "ip sandboxd"),
        ("nftables", "ip sandboxd", "SBX-"),
    ] {
        node.daemon.respawn_with(&["--proxy-mode", mode]);
        node.mode = mode;
        let everything = tables(&node) + &iptables(&node);
        assert!(everything.contains(ours), "{mode}: {everything}");
        assert!(
            !everything.contains(theirs),
            "{mode} left the other mode's rules: {everything}"
        );
        let fetch = fetch_in(&node.client.path(), &format!("{NODE_IP}:31080"));
        assert!(
            fetch.answered && fetch.body == "pod-dest",
            "{mode}: {fetch:?}"
        );
    }
}
