//! cni-host against Debian's upstream plugins (bridge, host-local, portmap, loopback, ptp)
//! and the fake plugin, each test in a node netns and pod netns of its own; and the same
//! tests again with sandboxd-cni's plugins in their place (`own::…`), upstream's behaviour
//! being the reference. Needs root.

use std::path::PathBuf;
use std::time::Duration;

use cni_host::{CniHost, GcAttachment, NetworkConfigList, ProcessExec, RuntimeConf};
use sandboxd_tests::{
    call_from, files_under, ip_reservations, run, serve, unique_name, workspace_binary, Netns,
};
use serde_json::{json, Value};

const UPSTREAM_BIN_DIR: &str = "/usr/lib/cni";
const SUBNET_PREFIX: &str = "10.244.1.";
/// The IPv6 pod subnet of the dual-stack tests, a /64 as a node's would be.
const SUBNET6_PREFIX: &str = "fd00:10:244:1::";

/// Whose bridge, host-local, portmap, loopback and ptp a test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plugins {
    /// Debian's containernetworking-plugins.
    Upstream,
    /// sandboxd-cni, as links named after each plugin, found before Debian's.
    Own,
}

/// Runs each test once with Debian's plugins (`upstream::…`) and once with sandboxd-cni's
/// (`own::…`).
macro_rules! with_each_plugin_set {
    ($($test:ident),* $(,)?) => {
        mod upstream {
            $(#[tokio::test]
            async fn $test() {
                super::$test(super::Plugins::Upstream).await
            })*
        }
        mod own {
            $(#[tokio::test]
            async fn $test() {
                super::$test(super::Plugins::Own).await
            })*
        }
    };
}

with_each_plugin_set!(
    bridge_chain_add_check_del,
    a_cni_error_mid_chain_is_reported_and_rolled_back,
    garbage_output_is_reported_and_rolled_back,
    a_hanging_plugin_is_killed_and_rolled_back_with_a_fresh_deadline,
    a_silent_non_zero_exit_is_reported_and_rolled_back,
    a_result_in_an_unsupported_version_is_reported_and_rolled_back,
    a_plugin_without_the_networks_version_is_refused_before_any_side_effect,
    gc_removes_attachments_not_in_the_valid_list_and_frees_their_ips,
    two_hundred_add_del_cycles_leak_nothing,
    ptp_routes_each_pod_through_the_node,
    ip_masq_lets_pods_reach_a_network_with_no_route_back,
    bridge_gives_dual_stack_pods_both_families,
    ptp_routes_dual_stack_pods_through_the_node,
    bridge_with_enabledad_returns_once_ipv6_addresses_settle,
    bridge_macspoofchk_drops_frames_from_any_other_mac,
);

/// A node (netns) with its own conf, IPAM, cache and plugin dirs.
struct Node {
    netns: Netns,
    dir: tempfile::TempDir,
    bridge: String,
    plugins: Plugins,
}

impl Node {
    fn new(plugins: Plugins) -> Node {
        assert!(
            PathBuf::from(UPSTREAM_BIN_DIR).join("bridge").is_file(),
            "upstream CNI plugins are missing: apt-get install containernetworking-plugins"
        );
        let netns = Netns::new("sbt-node");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        if plugins == Plugins::Own {
            let own = dir.path().join("own-bin");
            std::fs::create_dir_all(&own).unwrap();
            for name in ["bridge", "host-local", "loopback", "portmap", "ptp"] {
                std::os::unix::fs::symlink(workspace_binary("sandboxd-cni"), own.join(name))
                    .unwrap();
            }
        }
        Node {
            netns,
            dir,
            bridge: format!("sbt{}", std::process::id() % 100_000),
            plugins,
        }
    }

    /// Whether a hostPort forward to `port` is in the node's firewall: upstream's portmap
    /// writes iptables rules, sandboxd-cni's a chain per mapping in nftables.
    fn forwards_host_port(&self, port: u16) -> bool {
        match self.plugins {
            Plugins::Upstream => self
                .netns
                .exec(&["iptables-save", "-t", "nat"])
                .contains(&format!("--dport {port}")),
            Plugins::Own => self
                .netns
                .exec(&["nft", "list", "ruleset"])
                .contains(&format!("/tcp/{port}")),
        }
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn bridge_plugin(&self) -> Value {
        json!({
            "type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": format!("{SUBNET_PREFIX}0/24") }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": self.ipam_dir(),
            }
        })
    }

    fn network(&self, plugins: Vec<Value>) -> NetworkConfigList {
        let doc = json!({ "cniVersion": "1.0.0", "name": "pods", "plugins": plugins });
        NetworkConfigList::from_bytes(doc.to_string().as_bytes(), "<test>")
            .expect("valid test network")
    }

    /// bridge + host-local, portmap, loopback: the default chain.
    fn standard_network(&self) -> NetworkConfigList {
        self.network(vec![
            self.bridge_plugin(),
            json!({ "type": "portmap", "capabilities": { "portMappings": true } }),
            json!({ "type": "loopback" }),
        ])
    }

    fn host(&self, timeout: Duration) -> CniHost<ProcessExec> {
        let mut dirs = vec![self.bin_dir()];
        if self.plugins == Plugins::Own {
            dirs.push(self.dir.path().join("own-bin"));
        }
        dirs.push(PathBuf::from(UPSTREAM_BIN_DIR));
        CniHost::with_exec(
            dirs,
            self.cache_dir(),
            ProcessExec::in_netns(self.netns.path()),
        )
        .plugin_timeout(timeout)
    }

    /// Installs the fake plugin as `name`, scripted by `script`.
    fn install_fake(&self, name: &str, script: Value) {
        let link = self.bin_dir().join(name);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cni-fake-plugin"), &link).unwrap();
        std::fs::write(
            self.bin_dir().join(format!("{name}.json")),
            script.to_string(),
        )
        .unwrap();
    }

    fn fake_calls(&self, name: &str) -> Vec<Value> {
        std::fs::read_to_string(self.bin_dir().join(format!("{name}.log")))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The CNI_COMMAND of each call the fake plugin `name` got, in order.
    fn fake_commands(&self, name: &str) -> Vec<String> {
        self.fake_calls(name)
            .iter()
            .map(|c| c["command"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn cache_files(&self) -> Vec<PathBuf> {
        files_under(&self.cache_dir())
    }

    /// Asserts nothing of any pod is left on the node: no veth, no IP lease, no cache entry.
    fn assert_clean(&self) {
        self.assert_clean_but(&[]);
    }

    /// As [`assert_clean`](Self::assert_clean), with veths of the test's own to keep.
    fn assert_clean_but(&self, kept_veths: &[&str]) {
        assert_eq!(self.netns.veths(), kept_veths, "veths left on the node");
        assert_eq!(
            ip_reservations(&self.ipam_dir()),
            Vec::<String>::new(),
            "IP reservations left"
        );
        assert_eq!(
            self.cache_files(),
            Vec::<PathBuf>::new(),
            "cache entries left"
        );
    }
}

fn pod_rt(pod: &Netns, id: &str) -> RuntimeConf {
    let mut rt =
        RuntimeConf::new(id, pod.path().display().to_string(), "eth0").with_pod("default", id, id);
    rt.capability_args.insert(
        "portMappings".into(),
        json!([{ "hostPort": 18080, "containerPort": 8080, "protocol": "tcp" }]),
    );
    rt
}

async fn bridge_chain_add_check_del(plugins: Plugins) {
    let node = Node::new(plugins);
    let pod = Netns::new("sbt-pod");
    let host = node.host(Duration::from_secs(20));
    let network = node.standard_network();
    let rt = pod_rt(&pod, &unique_name("ctr"));

    let result = host.add(&network, &rt).await.expect("ADD");
    let ip = result.ips.first().expect("an IP").address;
    assert!(
        ip.addr.to_string().starts_with(SUBNET_PREFIX) && ip.prefix == 24,
        "IP {ip} outside the subnet"
    );

    // eth0 in the pod has the IP and a default route through the gateway.
    let addrs = pod.exec(&["ip", "-o", "addr", "show", "eth0"]);
    assert!(addrs.contains(&ip.to_string()), "eth0 lacks {ip}: {addrs}");
    let routes = pod.exec(&["ip", "route"]);
    assert!(
        routes.contains(&format!("default via {SUBNET_PREFIX}1 dev eth0")),
        "no default route: {routes}"
    );
    // The host side veth is on the bridge.
    let host_veth = result
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_empty() && i.name != node.bridge)
        .expect("host-side veth in the result")
        .name
        .clone();
    let on_bridge = node
        .netns
        .exec(&["ip", "-o", "link", "show", "master", &node.bridge]);
    assert!(
        on_bridge.contains(&host_veth),
        "{host_veth} is not on {}: {on_bridge}",
        node.bridge
    );
    assert_eq!(ip_reservations(&node.ipam_dir()), vec![ip.addr.to_string()]);
    assert_eq!(node.cache_files().len(), 1);
    // portmap got its runtimeConfig: the DNAT rule exists in the node's netns.
    assert!(node.forwards_host_port(18080), "no portmap rule");

    // Debian's portmap 1.1.1 fails CHECK on IPv4-only pods, looking for ip6tables rules it
    // never made (containernetworking/plugins#819, fixed upstream in 1.2); CHECK the rest.
    let mut checked = network.clone();
    if plugins == Plugins::Upstream {
        checked.plugins.retain(|p| p.plugin_type != "portmap");
    }
    host.check(&checked, &rt).await.expect("CHECK");

    host.del(&network, &rt).await.expect("DEL");
    node.assert_clean();
    assert!(!node.forwards_host_port(18080), "the portmap rule is left");
    host.del(&network, &rt)
        .await
        .expect("a second DEL succeeds");
}

/// bridge (with host-local) then the fake plugin scripted to fail ADD in some way.
async fn failing_chain(plugins: Plugins, script: Value, expected: &[&str]) -> Node {
    let node = Node::new(plugins);
    node.install_fake("fake", script);
    let pod = Netns::new("sbt-pod");
    let host = node.host(Duration::from_secs(2));
    let network = node.network(vec![node.bridge_plugin(), json!({ "type": "fake" })]);
    let rt = pod_rt(&pod, &unique_name("ctr"));

    let err = host
        .add(&network, &rt)
        .await
        .expect_err("ADD must fail")
        .to_string();
    for fragment in expected {
        assert!(
            err.contains(fragment),
            "error {err:?} does not contain {fragment:?}"
        );
    }
    node.assert_clean();
    node
}

async fn a_cni_error_mid_chain_is_reported_and_rolled_back(plugins: Plugins) {
    let node = failing_chain(
        plugins,
        json!({ "ADD": { "action": "error", "code": 11, "msg": "try later", "details": "lock held" } }),
        &["plugin fake failed (ADD) for container ctr-", ": try later: lock held (code 11)"],
    )
    .await;
    assert_eq!(node.fake_commands("fake"), ["VERSION", "ADD", "DEL"]);
    // The cleanup DEL is told what the chain had made before the failure.
    let del = &node.fake_calls("fake")[2];
    let address = del["stdin"]["prevResult"]["ips"][0]["address"]
        .as_str()
        .unwrap_or_default();
    assert!(
        address.starts_with(SUBNET_PREFIX),
        "DEL got no prevResult: {del}"
    );
}

async fn garbage_output_is_reported_and_rolled_back(plugins: Plugins) {
    failing_chain(
        plugins,
        json!({ "ADD": { "action": "print", "output": "<html>oops</html>" } }),
        &[
            "plugin fake failed (ADD)",
            "printed something that is not a CNI result (output is not JSON",
            "<html>oops</html>",
        ],
    )
    .await;
}

async fn a_hanging_plugin_is_killed_and_rolled_back_with_a_fresh_deadline(plugins: Plugins) {
    let started = std::time::Instant::now();
    let node = failing_chain(
        plugins,
        json!({ "ADD": { "action": "hang" } }),
        &[
            "plugin fake failed (ADD) for container ctr-",
            "did not finish within 2s and was killed",
        ],
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the deadline did not stop the hang"
    );
    // The DEL after the killed ADD still ran, and succeeded, within a deadline of its own.
    assert_eq!(node.fake_commands("fake"), ["VERSION", "ADD", "DEL"]);
    let fake = node.bin_dir().join("fake").display().to_string();
    let survivors: Vec<String> = run("ps", &["-eo", "args"])
        .lines()
        .filter(|l| l.contains(&fake))
        .map(str::to_string)
        .collect();
    assert!(
        survivors.is_empty(),
        "the hung plugin is still running: {survivors:?}"
    );
}

async fn a_silent_non_zero_exit_is_reported_and_rolled_back(plugins: Plugins) {
    failing_chain(
        plugins,
        json!({ "ADD": { "action": "exit", "status": 3 } }),
        &[
            "plugin fake failed (ADD)",
            "exited with status 3 without a CNI error object",
        ],
    )
    .await;
}

async fn a_result_in_an_unsupported_version_is_reported_and_rolled_back(plugins: Plugins) {
    failing_chain(
        plugins,
        json!({ "ADD": { "action": "print", "output": "{\"cniVersion\":\"9.9.9\"}" } }),
        &[
            "plugin fake failed (ADD)",
            "result is for CNI version 9.9.9, which this runtime does not support",
        ],
    )
    .await;
}

async fn a_plugin_without_the_networks_version_is_refused_before_any_side_effect(plugins: Plugins) {
    let node = failing_chain(
        plugins,
        json!({ "VERSION": { "action": "version", "supportedVersions": ["0.3.1"] } }),
        &[
            "plugin fake failed (VERSION) for container ctr-",
            "does not support CNI version 1.0.0 (it supports 0.3.1)",
        ],
    )
    .await;
    assert_eq!(
        node.fake_commands("fake"),
        ["VERSION"],
        "nothing but VERSION may run"
    );
}

async fn gc_removes_attachments_not_in_the_valid_list_and_frees_their_ips(plugins: Plugins) {
    let node = Node::new(plugins);
    let host = node.host(Duration::from_secs(20));
    let network = node.standard_network();
    let (kept_ns, leaked_ns) = (Netns::new("sbt-pod"), Netns::new("sbt-pod"));
    let kept = pod_rt(&kept_ns, &unique_name("kept"));
    let mut leaked = pod_rt(&leaked_ns, &unique_name("leaked"));
    // A hostPort of its own: sandboxd-cni's portmap refuses one another pod holds, where
    // iptables would shadow it.
    leaked.capability_args.insert(
        "portMappings".into(),
        json!([{ "hostPort": 18081, "containerPort": 8080, "protocol": "tcp" }]),
    );
    let kept_ip = host.add(&network, &kept).await.unwrap().ips[0]
        .address
        .addr
        .to_string();
    let leaked_ip = host.add(&network, &leaked).await.unwrap().ips[0]
        .address
        .addr
        .to_string();
    assert_eq!(node.netns.veths().len(), 2);

    let valid = [GcAttachment {
        container_id: kept.container_id.clone(),
        ifname: "eth0".into(),
    }];
    let report = host.gc(&network, &valid).await.expect("GC");
    assert_eq!(
        report.removed,
        vec![GcAttachment {
            container_id: leaked.container_id.clone(),
            ifname: "eth0".into()
        }]
    );

    assert_eq!(
        ip_reservations(&node.ipam_dir()),
        vec![kept_ip],
        "the leaked IP {leaked_ip} came back"
    );
    assert_eq!(node.netns.veths().len(), 1);
    assert!(
        !leaked_ns.links().contains(&"eth0".to_string()),
        "the leaked pod still has eth0"
    );
    assert_eq!(node.cache_files().len(), 1);

    host.del(&network, &kept).await.unwrap();
    node.assert_clean();
}

async fn two_hundred_add_del_cycles_leak_nothing(plugins: Plugins) {
    let node = Node::new(plugins);
    let pod = Netns::new("sbt-pod");
    let host = node.host(Duration::from_secs(20));
    let network = node.standard_network();
    for cycle in 0..200 {
        let rt = pod_rt(&pod, &format!("cycle-{cycle}"));
        host.add(&network, &rt)
            .await
            .unwrap_or_else(|e| panic!("ADD {cycle}: {e}"));
        host.del(&network, &rt)
            .await
            .unwrap_or_else(|e| panic!("DEL {cycle}: {e}"));
    }
    node.assert_clean();
    assert_eq!(
        pod.links(),
        Vec::<String>::new(),
        "interfaces left in the pod"
    );
    assert_eq!(
        node.netns.links(),
        vec![node.bridge.clone()],
        "only the bridge stays on the node"
    );
}

/// ptp with host-local, IPv4.
fn ptp_plugin(node: &Node, ip_masq: bool) -> Value {
    json!({
        "type": "ptp", "ipMasq": ip_masq, "mtu": 1400,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": format!("{SUBNET_PREFIX}0/24") }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dataDir": node.ipam_dir(),
        }
    })
}

/// ptp + loopback: the routed network Calico builds.
fn routed_network(node: &Node, ip_masq: bool) -> NetworkConfigList {
    node.network(vec![
        ptp_plugin(node, ip_masq),
        json!({ "type": "loopback" }),
    ])
}

/// Whether `ping` from `netns` to `address` is answered within a second.
fn answers_ping(netns: &Netns, address: &str) -> bool {
    std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.path().display()))
        .args(["ping", "-c", "1", "-W", "1", address])
        .output()
        .unwrap()
        .status
        .success()
}

/// ptp: no bridge; each pod's packets, even to a pod of the same subnet, go to the gateway
/// (its host veth) and through the node's routing table; the node reaches each pod by a
/// /32 route. DEL removes the pair, its routes and the lease.
async fn ptp_routes_each_pod_through_the_node(plugins: Plugins) {
    let node = Node::new(plugins);
    let (pod_a, pod_b) = (Netns::new("sbt-pod"), Netns::new("sbt-pod"));
    let host = node.host(Duration::from_secs(20));
    let network = routed_network(&node, false);
    let (rt_a, rt_b) = (
        pod_rt(&pod_a, &unique_name("ptp")),
        pod_rt(&pod_b, &unique_name("ptp")),
    );
    let a = host.add(&network, &rt_a).await.expect("ADD a");
    let b = host.add(&network, &rt_b).await.expect("ADD b");
    let gateway = format!("{SUBNET_PREFIX}1");

    assert_eq!(a.interfaces.len(), 2, "{:?}", a.interfaces);
    assert!(a.interfaces[0].sandbox.is_empty() && a.interfaces[0].name.starts_with("veth"));
    assert_eq!(a.interfaces[1].name, "eth0");
    assert_eq!(a.interfaces[1].sandbox, pod_a.path().display().to_string());
    assert_eq!(a.ips[0].interface, Some(1));
    assert_eq!(
        a.ips[0].gateway.map(|g| g.to_string()),
        Some(gateway.clone())
    );
    let (ip_a, ip_b) = (
        a.ips[0].address.addr.to_string(),
        b.ips[0].address.addr.to_string(),
    );
    let host_veth = a.interfaces[0].name.clone();

    let routes = pod_a.exec(&["ip", "route"]);
    for expected in [
        format!("default via {gateway} dev eth0"),
        format!("{SUBNET_PREFIX}0/24 via {gateway} dev eth0"),
        format!("{gateway} dev eth0 scope link src {ip_a}"),
    ] {
        assert!(
            routes.contains(&expected),
            "pod routes lack {expected:?}: {routes}"
        );
    }
    assert!(
        !routes.contains("proto kernel"),
        "the kernel's subnet route is left: {routes}"
    );
    assert!(pod_a
        .exec(&["ip", "-o", "link", "show", "eth0"])
        .contains("mtu 1400"));
    let node_routes = node.netns.exec(&["ip", "route"]);
    // Upstream's route has scope host, ours scope link (as `ip route add` makes it); either
    // reaches the pod.
    assert!(
        node_routes.contains(&format!("{ip_a} dev {host_veth} scope ")),
        "{node_routes}"
    );
    let host_addr = node
        .netns
        .exec(&["ip", "-o", "addr", "show", "dev", &host_veth]);
    assert!(host_addr.contains(&format!("{gateway}/32")), "{host_addr}");
    assert!(
        node.netns.links().iter().all(|l| l != &node.bridge),
        "ptp makes no bridge"
    );
    assert_eq!(
        node.netns
            .exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])
            .trim(),
        "1"
    );

    // Pod to pod through the node, and to the gateway.
    assert!(answers_ping(&pod_a, &ip_b), "pod a cannot reach pod b");
    assert!(answers_ping(&pod_b, &ip_a), "pod b cannot reach pod a");
    assert!(
        answers_ping(&pod_a, &gateway),
        "pod a cannot reach its gateway"
    );
    host.check(&network, &rt_a).await.expect("CHECK");

    host.del(&network, &rt_a).await.expect("DEL a");
    host.del(&network, &rt_b).await.expect("DEL b");
    host.del(&network, &rt_b).await.expect("a second DEL");
    node.assert_clean();
    assert_eq!(pod_a.links(), Vec::<String>::new());
    let node_routes = node.netns.exec(&["ip", "route"]);
    assert!(!node_routes.contains(SUBNET_PREFIX), "{node_routes}");
}

/// bridge's and ptp's `ipMasq`, for a dual-stack pod: an "outside" network that has no
/// route back to the pod subnets answers the pod, over either family, only when the node
/// masquerades it; DEL takes the rules away.
async fn ip_masq_lets_pods_reach_a_network_with_no_route_back(plugins: Plugins) {
    let node = Node::new(plugins);
    let pod = Netns::new("sbt-pod");
    let outside = Netns::new("sbt-out");
    {
        let mut link = sandboxd::netlink::RouteSocket::open_in(Some(&node.netns.path())).unwrap();
        let fd = std::fs::File::open(outside.path()).unwrap();
        link.add_veth("out0", "eth0", Some(std::os::fd::AsFd::as_fd(&fd)))
            .unwrap();
    }
    node.netns
        .exec(&["ip", "addr", "add", "198.51.100.1/24", "dev", "out0"]);
    node.netns.exec(&[
        "ip",
        "addr",
        "add",
        "2001:db8:51::1/64",
        "dev",
        "out0",
        "nodad",
    ]);
    node.netns.exec(&["ip", "link", "set", "out0", "up"]);
    outside.exec(&["ip", "addr", "add", "198.51.100.2/24", "dev", "eth0"]);
    outside.exec(&[
        "ip",
        "addr",
        "add",
        "2001:db8:51::2/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    outside.exec(&["ip", "link", "set", "eth0", "up"]);
    let mut ipam = dual_stack_ipam(&node);
    ipam["routes"] = json!([{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }]);
    let host = node.host(Duration::from_secs(20));
    let firewall = || {
        let nft = node.netns.exec(&["nft", "list", "ruleset"]);
        let iptables = node.netns.exec(&["iptables-save", "-t", "nat"]);
        let ip6tables = node.netns.exec(&["ip6tables-save", "-t", "nat"]);
        format!("{nft}\n{iptables}\n{ip6tables}")
    };

    for interface_plugin in ["bridge", "ptp"] {
        for ip_masq in [false, true] {
            let mut plugin = match interface_plugin {
                "bridge" => node.bridge_plugin(),
                _ => ptp_plugin(&node, ip_masq),
            };
            plugin["ipMasq"] = json!(ip_masq);
            plugin["ipam"] = ipam.clone();
            let network = node.network(vec![plugin, json!({ "type": "loopback" })]);
            let rt = pod_rt(&pod, &unique_name("masq"));
            host.add(&network, &rt).await.expect("ADD");
            assert_eq!(
                answers_ping(&pod, "198.51.100.2"),
                ip_masq,
                "{interface_plugin} with ipMasq {ip_masq}"
            );
            // Upstream's IPv6 gateway may still be in duplicate address detection.
            let patience = Duration::from_secs(if ip_masq { 5 } else { 1 });
            assert_eq!(
                answers_ping_within(&pod, "2001:db8:51::2", patience),
                ip_masq,
                "{interface_plugin} with ipMasq {ip_masq}, over IPv6"
            );
            if ip_masq {
                assert!(firewall().contains(&rt.container_id), "no masquerade rule");
            }
            if ip_masq && plugins == Plugins::Own {
                let table = node
                    .netns
                    .exec(&["nft", "list", "table", "ip6", "sandboxd-masq"]);
                for rule in [
                    format!("ip6 daddr {SUBNET6_PREFIX}/64 return"),
                    "ip6 daddr ff00::/8 return".to_string(),
                    "masquerade fully-random".to_string(),
                ] {
                    assert!(table.contains(&rule), "no `{rule}` in {table}");
                }
                assert!(table.contains("ip6 saddr != fd00:10:244:1::"), "{table}");
            }
            host.del(&network, &rt).await.expect("DEL");
            node.assert_clean_but(&["out0"]);
            let left = firewall();
            assert!(
                !left.contains(&rt.container_id),
                "{interface_plugin}: a rule of {} is left: {left}",
                rt.container_id
            );
        }
    }
}

/// host-local with an IPv4 and an IPv6 range: one address of each.
fn dual_stack_ipam(node: &Node) -> Value {
    json!({
        "type": "host-local",
        "ranges": [
            [{ "subnet": format!("{SUBNET_PREFIX}0/24") }],
            [{ "subnet": format!("{SUBNET6_PREFIX}/64") }],
        ],
        "dataDir": node.ipam_dir(),
    })
}

/// Whether `ping` from `netns` to `address` is answered within `patience`: upstream's
/// plugins leave an IPv6 gateway in duplicate address detection for a second or two.
fn answers_ping_within(netns: &Netns, address: &str, patience: Duration) -> bool {
    let deadline = std::time::Instant::now() + patience;
    loop {
        if answers_ping(netns, address) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
    }
}

/// The pod's IPv6 (or IPv4) address in a result.
fn address_of(result: &cni_host::CniResult, v6: bool) -> String {
    result
        .ips
        .iter()
        .find(|ip| ip.address.addr.is_ipv6() == v6)
        .unwrap_or_else(|| {
            panic!(
                "no {} address in {:?}",
                if v6 { "IPv6" } else { "IPv4" },
                result.ips
            )
        })
        .address
        .addr
        .to_string()
}

/// bridge with two ranges: each pod gets an address of each family and a default route of
/// each via the bridge, which holds both gateways; pods reach each other and the gateway
/// over both; the node forwards both, and a hostPort answers on both. DEL gives both
/// leases back and takes both forwards away.
async fn bridge_gives_dual_stack_pods_both_families(plugins: Plugins) {
    let node = Node::new(plugins);
    let (pod_a, pod_b) = (Netns::new("sbt-pod"), Netns::new("sbt-pod"));
    let host = node.host(Duration::from_secs(20));
    let network = node.network(vec![
        json!({
            "type": "bridge", "bridge": node.bridge, "isDefaultGateway": true,
            "ipam": dual_stack_ipam(&node),
        }),
        json!({ "type": "portmap", "capabilities": { "portMappings": true } }),
        json!({ "type": "loopback" }),
    ]);
    let (rt_a, mut rt_b) = (
        pod_rt(&pod_a, &unique_name("dual")),
        pod_rt(&pod_b, &unique_name("dual")),
    );
    rt_b.capability_args.insert(
        "portMappings".into(),
        json!([{ "hostPort": 18081, "containerPort": 8080, "protocol": "tcp" }]),
    );
    let a = host.add(&network, &rt_a).await.expect("ADD a");
    let b = host.add(&network, &rt_b).await.expect("ADD b");
    assert_eq!(a.ips.len(), 2, "{:?}", a.ips);
    let (a4, a6, b6) = (
        address_of(&a, false),
        address_of(&a, true),
        address_of(&b, true),
    );
    assert!(
        a4.starts_with(SUBNET_PREFIX) && a6.starts_with(SUBNET6_PREFIX),
        "{a4} {a6}"
    );
    let gateway6 = format!("{SUBNET6_PREFIX}1");
    assert!(a.ips.iter().all(|ip| ip.interface == Some(2)));

    let addrs = pod_a.exec(&["ip", "-o", "addr", "show", "eth0"]);
    assert!(
        addrs.contains(&format!("{a4}/24")) && addrs.contains(&format!("{a6}/64")),
        "{addrs}"
    );
    assert!(
        !addrs.contains("tentative"),
        "the pod's addresses are usable at once: {addrs}"
    );
    let routes6 = pod_a.exec(&["ip", "-6", "route"]);
    assert!(
        routes6.contains(&format!("default via {gateway6} dev eth0")),
        "{routes6}"
    );
    assert!(pod_a
        .exec(&["ip", "route"])
        .contains(&format!("default via {SUBNET_PREFIX}1 dev eth0")));
    let bridge_addrs = node
        .netns
        .exec(&["ip", "-o", "addr", "show", "dev", &node.bridge]);
    for gateway in [format!("{SUBNET_PREFIX}1/24"), format!("{gateway6}/64")] {
        assert!(
            bridge_addrs.contains(&gateway),
            "the bridge lacks {gateway}: {bridge_addrs}"
        );
    }
    assert_eq!(
        node.netns
            .exec(&["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])
            .trim(),
        "1"
    );
    let accept_ra = format!("/proc/sys/net/ipv6/conf/{}/accept_ra", node.bridge);
    assert_eq!(
        node.netns.exec(&["cat", &accept_ra]).trim(),
        "0",
        "pods must not announce routes to the node"
    );
    let mut leases = ip_reservations(&node.ipam_dir());
    leases.sort();
    let mut expected = vec![a4.clone(), address_of(&b, false), a6.clone(), b6.clone()];
    expected.sort();
    assert_eq!(
        leases, expected,
        "one lease per address, named as upstream names them"
    );

    assert!(
        answers_ping(&pod_a, &address_of(&b, false)),
        "IPv4 pod to pod"
    );
    assert!(
        answers_ping_within(&pod_a, &b6, Duration::from_secs(3)),
        "IPv6 pod to pod"
    );
    assert!(
        answers_ping_within(&pod_b, &a6, Duration::from_secs(3)),
        "IPv6 pod to pod"
    );
    assert!(
        answers_ping_within(&pod_a, &gateway6, Duration::from_secs(5)),
        "pod a cannot reach its IPv6 gateway"
    );
    // The hostPort, on the node's address of each family.
    serve(&pod_a.path(), 8080, "a");
    for address in [
        format!("{SUBNET_PREFIX}1:18080"),
        format!("[{gateway6}]:18080"),
    ] {
        assert_eq!(
            call_from(&node.netns.path(), &address),
            "pong from a\n",
            "{address}"
        );
    }
    if plugins == Plugins::Own {
        // nft reads the IPv6 forward back as the rules it would have written.
        let table = node
            .netns
            .exec(&["nft", "list", "table", "ip6", "sandboxd-hostports"]);
        for rule in [
            "ip6 daddr . meta l4proto . th dport vmap @hostip-hostports".to_string(),
            format!("ip6 saddr {a6} jump mark-for-masquerade"),
            format!("meta l4proto tcp dnat to [{a6}]:8080"),
        ] {
            assert!(table.contains(&rule), "no `{rule}` in {table}");
        }
    }
    // Debian's portmap 1.1.1 looks for the IPv4 rules in the ip6tables table at CHECK
    // (the bug of the IPv4-only test above); CHECK the rest.
    let mut checked = network.clone();
    if plugins == Plugins::Upstream {
        checked.plugins.retain(|p| p.plugin_type != "portmap");
    }
    host.check(&checked, &rt_a).await.expect("CHECK");

    host.del(&network, &rt_a).await.expect("DEL a");
    host.del(&network, &rt_b).await.expect("DEL b");
    host.del(&network, &rt_a).await.expect("a second DEL");
    node.assert_clean_but(&[]);
    for address in [
        format!("{SUBNET_PREFIX}1:18080"),
        format!("[{gateway6}]:18080"),
    ] {
        let answer = call_from(&node.netns.path(), &address);
        assert!(
            answer.starts_with("error"),
            "{address} still forwarded: {answer}"
        );
    }
}

/// bridge's `enabledad`: duplicate address detection stays on in the pod, and the ADD
/// returns only once the pod's IPv6 address has passed it (no longer tentative).
async fn bridge_with_enabledad_returns_once_ipv6_addresses_settle(plugins: Plugins) {
    let node = Node::new(plugins);
    let pod = Netns::new("sbt-pod");
    let host = node.host(Duration::from_secs(20));
    let network = node.network(vec![json!({
        "type": "bridge", "bridge": node.bridge, "isGateway": true, "enabledad": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": format!("{SUBNET6_PREFIX}/64") }]],
            "dataDir": node.ipam_dir(),
        },
    })]);
    let rt = pod_rt(&pod, &unique_name("dad"));
    let result = host.add(&network, &rt).await.expect("ADD");
    let address = address_of(&result, true);
    let addrs = pod.exec(&["ip", "-6", "-o", "addr", "show", "eth0"]);
    assert!(addrs.contains(&format!("{address}/64")), "{addrs}");
    assert!(
        !addrs.contains("tentative"),
        "ADD returned before DAD ended: {addrs}"
    );
    assert_eq!(
        pod.exec(&["cat", "/proc/sys/net/ipv6/conf/eth0/accept_dad"])
            .trim(),
        "1"
    );
    host.del(&network, &rt).await.expect("DEL");
    node.assert_clean();
}

/// The pod's MAC from the `mac` capability, and bridge's `macspoofchk`: frames from the
/// pod with any other source MAC are dropped before the bridge forwards them; DEL takes
/// the check away. The result's DNS is the config's.
async fn bridge_macspoofchk_drops_frames_from_any_other_mac(plugins: Plugins) {
    let node = Node::new(plugins);
    let (pod_a, pod_b) = (Netns::new("sbt-pod"), Netns::new("sbt-pod"));
    let host = node.host(Duration::from_secs(20));
    let mut bridge = node.bridge_plugin();
    bridge["macspoofchk"] = json!(true);
    bridge["capabilities"] = json!({ "mac": true });
    bridge["dns"] = json!({ "nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"] });
    let network = node.network(vec![bridge, json!({ "type": "loopback" })]);
    let (mut rt_a, mut rt_b) = (
        pod_rt(&pod_a, &unique_name("spoof")),
        pod_rt(&pod_b, &unique_name("spoof")),
    );
    const MAC: &str = "02:42:0a:f4:01:0a";
    rt_a.capability_args.insert("mac".into(), json!(MAC));
    rt_b.capability_args.remove("portMappings");
    rt_a.capability_args.remove("portMappings");
    let a = host.add(&network, &rt_a).await.expect("ADD a");
    let b = host.add(&network, &rt_b).await.expect("ADD b");
    assert_eq!(a.interfaces[2].mac, MAC, "{:?}", a.interfaces);
    assert_eq!(
        (a.dns.nameservers.as_slice(), a.dns.search.as_slice()),
        (
            &["10.96.0.10".to_string()][..],
            &["svc.cluster.local".to_string()][..]
        )
    );
    assert!(pod_a
        .exec(&["ip", "-o", "link", "show", "eth0"])
        .contains(MAC));
    let b4 = address_of(&b, false);
    assert!(answers_ping(&pod_a, &b4), "a with its own MAC reaches b");

    pod_a.exec(&["ip", "link", "set", "eth0", "address", "02:42:0a:f4:01:99"]);
    assert!(
        !answers_ping(&pod_a, &b4),
        "a posing as another MAC is dropped"
    );
    pod_a.exec(&["ip", "link", "set", "eth0", "address", MAC]);
    assert!(answers_ping(&pod_a, &b4), "a is back to its own MAC");
    host.check(&network, &rt_a).await.expect("CHECK");

    let host_veth = a.interfaces[1].name.clone();
    if plugins == Plugins::Own {
        let table = node
            .netns
            .exec(&["nft", "list", "table", "bridge", "sandboxd-macspoof"]);
        for line in [
            "iifname vmap @ports".to_string(),
            format!(
                "\"{host_veth}\" : jump spoof/pods/{}/eth0/{host_veth}",
                rt_a.container_id
            ),
            format!("ether saddr {MAC} return"),
            "drop".to_string(),
        ] {
            assert!(table.contains(&line), "no `{line}` in {table}");
        }
    }
    host.del(&network, &rt_a).await.expect("DEL a");
    host.del(&network, &rt_b).await.expect("DEL b");
    host.del(&network, &rt_a).await.expect("a second DEL");
    node.assert_clean_but(&[]);
    let ruleset = node.netns.exec(&["nft", "list", "ruleset"]);
    assert!(
        !ruleset.contains(&host_veth),
        "the check of {host_veth} is left: {ruleset}"
    );
}

/// ptp with two ranges: each family's gateway on the host end (/32 and /128), the pod's
/// routes of both through it, the node's /32 and /128 routes to the pod.
async fn ptp_routes_dual_stack_pods_through_the_node(plugins: Plugins) {
    let node = Node::new(plugins);
    let (pod_a, pod_b) = (Netns::new("sbt-pod"), Netns::new("sbt-pod"));
    let host = node.host(Duration::from_secs(20));
    let mut ipam = dual_stack_ipam(&node);
    ipam["routes"] = json!([{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }]);
    let network = node.network(vec![
        json!({ "type": "ptp", "ipam": ipam }),
        json!({ "type": "loopback" }),
    ]);
    let (rt_a, rt_b) = (
        pod_rt(&pod_a, &unique_name("ptp6")),
        pod_rt(&pod_b, &unique_name("ptp6")),
    );
    let a = host.add(&network, &rt_a).await.expect("ADD a");
    let b = host.add(&network, &rt_b).await.expect("ADD b");
    let (a6, b6) = (address_of(&a, true), address_of(&b, true));
    let gateway6 = format!("{SUBNET6_PREFIX}1");
    let host_veth = a.interfaces[0].name.clone();

    let routes6 = pod_a.exec(&["ip", "-6", "route"]);
    for expected in [
        format!("{gateway6} dev eth0"),
        format!("{SUBNET6_PREFIX}/64 via {gateway6} dev eth0"),
        format!("default via {gateway6} dev eth0"),
    ] {
        assert!(
            routes6.contains(&expected),
            "pod routes lack {expected:?}: {routes6}"
        );
    }
    let host_addr = node
        .netns
        .exec(&["ip", "-o", "addr", "show", "dev", &host_veth]);
    assert!(
        host_addr.contains(&format!("{gateway6}/128")),
        "{host_addr}"
    );
    assert!(
        host_addr.contains(&format!("{SUBNET_PREFIX}1/32")),
        "{host_addr}"
    );
    let node_routes6 = node.netns.exec(&["ip", "-6", "route"]);
    assert!(
        node_routes6.contains(&format!("{a6} dev {host_veth}")),
        "{node_routes6}"
    );

    assert!(
        answers_ping(&pod_a, &address_of(&b, false)),
        "IPv4 pod to pod"
    );
    assert!(
        answers_ping_within(&pod_a, &b6, Duration::from_secs(5)),
        "IPv6 pod a cannot reach pod b through the node"
    );
    assert!(answers_ping_within(
        &pod_b,
        &gateway6,
        Duration::from_secs(5)
    ));
    host.check(&network, &rt_a).await.expect("CHECK");

    host.del(&network, &rt_a).await.expect("DEL a");
    host.del(&network, &rt_b).await.expect("DEL b");
    node.assert_clean();
    let node_routes6 = node.netns.exec(&["ip", "-6", "route"]);
    assert!(!node_routes6.contains(SUBNET6_PREFIX), "{node_routes6}");
}

#[test]
fn the_cli_speaks_cnitools_interface() {
    let node = Node::new(Plugins::Upstream);
    let pod = Netns::new("sbt-pod");
    let conf_dir = node.dir.path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let doc = json!({ "cniVersion": "1.0.0", "name": "clinet", "plugins": [node.bridge_plugin(), { "type": "loopback" }] });
    std::fs::write(conf_dir.join("10-clinet.conflist"), doc.to_string()).unwrap();
    let cli = workspace_binary("cni-host");
    let cli = cli.to_str().unwrap();
    let netns = pod.path().display().to_string();
    let invoke = |verb: &str, net: &str| {
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", node.netns.path().display()))
            .args(["--", cli, verb, net, &netns])
            .env("NETCONFPATH", &conf_dir)
            .env("CNI_PATH", UPSTREAM_BIN_DIR)
            .env("CNI_CACHE_DIR", node.cache_dir())
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=cli",
            )
            .output()
            .unwrap()
    };

    let add = invoke("add", "clinet");
    assert!(
        add.status.success(),
        "add failed: {}",
        String::from_utf8_lossy(&add.stderr)
    );
    let result: Value = serde_json::from_slice(&add.stdout).expect("add prints the JSON result");
    assert_eq!(result["cniVersion"], "1.0.0");
    assert!(result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .starts_with(SUBNET_PREFIX));
    // The container id is cnitool's: "cnitool-" and 20 hex digits of the netns path's sha512.
    let cached = node.cache_files();
    let name = cached[0].file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("clinet-cnitool-")
            && name.ends_with("-eth0")
            && name.len() == "clinet-cnitool-".len() + 20 + 5,
        "{name}"
    );

    assert!(invoke("check", "clinet").status.success());
    assert!(invoke("del", "clinet").status.success());
    assert!(
        invoke("del", "clinet").status.success(),
        "a second del succeeds"
    );
    node.assert_clean();

    let missing = invoke("add", "nonet");
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("no CNI network named \"nonet\""),
        "{stderr}"
    );
}
