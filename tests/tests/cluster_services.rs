//! Services across the lab's nodes: every node programs every Service with endpoints from
//! every node's pods. S3: pod-src (k8s-node2) → svc-clusterip → pod-dest (k8s-node1), the
//! address translated on k8s-node2 before the packet is wrapped (seen on its eth1 as VXLAN
//! 8472, VNI 1, inner destination the pod's IP). S4: k8s-master → k8s-node2:31080 → the pod
//! on k8s-node1, masqueraded so the reply returns through k8s-node2. Allocations made by
//! two nodes at once never collide, and Service traffic outlives an etcd outage.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use sandboxd::capture::{Capture, Packet};
use sandboxd::overlay::Backend;
use sandboxd_tests::fetch_in;
use sandboxd_tests::lab::TestLab;

const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

fn apply(lab: &TestLab, node: &str, manifest: &str) -> String {
    lab.ok(&[
        "--node",
        node,
        "apply",
        "-f",
        &format!("{MANIFESTS}/{manifest}"),
    ])
}

/// Column `column` (0-based) of the row of `name` in a `get … -o wide` table.
fn cell(table: &str, name: &str, column: usize) -> String {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(column))
        .unwrap_or_else(|| panic!("no {name} (column {column}) in:\n{table}"))
        .to_string()
}

/// Every frame `capture` holds now (it was opened before the traffic), decoded.
fn drain(capture: &mut Capture) -> Vec<Packet> {
    let mut packets = Vec::new();
    while let Some(frame) = capture.next(Duration::from_millis(200)).unwrap() {
        packets.extend(Packet::parse(&frame.data));
    }
    packets
}

/// Whether `node` listens on TCP `port` (the node port's socket).
fn holds_port(lab: &TestLab, node: &str, port: u16) -> bool {
    !lab.on_node(node, &["ss", "-ltnH", &format!("sport = :{port}")])
        .trim()
        .is_empty()
}

/// Waits up to `timeout` for `check`.
fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn s3_s4_services_reach_pods_on_other_nodes_and_outlive_an_etcd_outage() {
    let lab = TestLab::up(3, Backend::Vxlan);
    // The seeds' manifests, through k8s-master as the seeds apply them.
    for manifest in [
        "pod-dest.yaml",
        "pod-src.yaml",
        "svc-clusterip.yaml",
        "svc-nodeport.yaml",
    ] {
        apply(&lab, "k8s-master", manifest);
    }
    let pods = lab.ok(&["get", "pods", "-o", "wide"]);
    assert_eq!(cell(&pods, "pod-dest", 6), "k8s-node1", "{pods}");
    assert_eq!(cell(&pods, "pod-src", 6), "k8s-node2", "{pods}");
    let dest_ip: Ipv4Addr = cell(&pods, "pod-dest", 5).parse().unwrap();
    // Any node shows the services and their endpoint on k8s-node1.
    let services = lab.ok(&["--node", "k8s-node2", "get", "svc", "-o", "wide"]);
    let cluster_ip: Ipv4Addr = cell(&services, "svc-clusterip", 2).parse().unwrap();
    let endpoints = lab.ok(&["--node", "k8s-node1", "get", "endpoints"]);
    assert_eq!(
        cell(&endpoints, "svc-clusterip", 1),
        format!("{dest_ip}:8080")
    );
    let src = lab.pod_netns("k8s-node2");
    let node_netns = |n: &str| lab.lab.node_netns(n);

    // S3: translated on k8s-node2, then wrapped: its eth1 carries the pod's address inside
    // VXLAN, never the ClusterIP.
    let mut eth1 = Capture::open(Some(&node_netns("k8s-node2")), "eth1").unwrap();
    let fetch = fetch_in(&src, &format!("{cluster_ip}:8080"));
    assert_eq!(fetch.body, "pod-dest", "pod-src → svc-clusterip");
    let seen = drain(&mut eth1);
    let to_pod: Vec<&Packet> = seen
        .iter()
        .filter(|p| p.vxlan.is_some_and(|(_, inner)| inner.dst == dest_ip))
        .collect();
    assert!(
        !to_pod.is_empty(),
        "no VXLAN to {dest_ip} on eth1: {seen:?}"
    );
    for packet in &to_pod {
        let (vni, inner) = packet.vxlan.unwrap();
        assert_eq!(vni, 1);
        assert_eq!(packet.outer.dst_port, Some(8472));
        assert_eq!(packet.outer.src, Ipv4Addr::new(192, 168, 102, 12));
        assert_eq!(packet.outer.dst, Ipv4Addr::new(192, 168, 102, 11));
        assert_eq!(inner.dst_port, Some(8080));
        assert_eq!(inner.src.octets()[..3], [10, 244, 2], "from pod-src");
    }
    assert!(
        !seen
            .iter()
            .any(|p| p.outer.dst == cluster_ip || p.vxlan.is_some_and(|(_, i)| i.dst == cluster_ip)),
        "the ClusterIP left k8s-node2: {seen:?}"
    );

    // S4: k8s-master → k8s-node2:31080 → pod-dest on k8s-node1, masqueraded to
    // k8s-node2's flannel.1 address so the reply goes back through k8s-node2.
    for node in ["k8s-master", "k8s-node1", "k8s-node2"] {
        assert!(holds_port(&lab, node, 31080), "{node} holds 31080");
    }
    let mut node1_eth1 = Capture::open(Some(&node_netns("k8s-node1")), "eth1").unwrap();
    let master = node_netns("k8s-master");
    let fetch = fetch_in(&master, "192.168.102.12:31080");
    assert_eq!(fetch.body, "pod-dest", "k8s-master → k8s-node2:31080");
    let seen = drain(&mut node1_eth1);
    assert!(
        seen.iter()
            .any(|p| p.vxlan.is_some_and(|(vni, inner)| vni == 1
                && inner.src == Ipv4Addr::new(10, 244, 2, 0)
                && inner.dst == dest_ip
                && inner.dst_port == Some(8080))),
        "no masqueraded VXLAN from k8s-node2 to {dest_ip}:8080 on k8s-node1's eth1: {seen:?}"
    );
    for node_ip in ["192.168.102.10", "192.168.102.11"] {
        let fetch = fetch_in(&master, &format!("{node_ip}:31080"));
        assert_eq!(fetch.body, "pod-dest", "k8s-master → {node_ip}:31080");
    }

    // etcd away: the data plane stays; the API says the store is unreachable.
    lab.lab.stop_etcd().unwrap();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(10) {
        assert_eq!(
            fetch_in(&src, &format!("{cluster_ip}:8080")).body,
            "pod-dest"
        );
        assert_eq!(fetch_in(&master, "192.168.102.12:31080").body, "pod-dest");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, _, err) = lab.sandboxctl(&["get", "svc"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("unreachable"), "{err}");
    lab.lab.start_etcd().unwrap();

    // Back: a service created through k8s-node1 is programmed on k8s-node2.
    let manifest = std::fs::read_to_string(format!("{MANIFESTS}/svc-clusterip.yaml"))
        .unwrap()
        .replace("svc-clusterip", "svc-after");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), manifest).unwrap();
    let path = file.path().to_str().unwrap();
    let mut created = false;
    eventually(Duration::from_secs(15), "apply after the outage", || {
        created = created
            || lab
                .sandboxctl(&["--node", "k8s-node1", "apply", "-f", path])
                .0
                == Some(0);
        created
    });
    let after: Ipv4Addr = cell(&lab.ok(&["get", "svc", "-o", "wide"]), "svc-after", 2)
        .parse()
        .unwrap();
    eventually(Duration::from_secs(5), "svc-after on k8s-node2", || {
        fetch_in(&src, &format!("{after}:8080")).body == "pod-dest"
    });

    // Deleted through k8s-node2: every node closes 31080 and stops forwarding it.
    lab.ok(&[
        "--node",
        "k8s-node2",
        "delete",
        "-f",
        &format!("{MANIFESTS}/svc-nodeport.yaml"),
    ]);
    eventually(Duration::from_secs(3), "31080 closed on every node", || {
        ["k8s-master", "k8s-node1", "k8s-node2"]
            .iter()
            .all(|n| !holds_port(&lab, n, 31080))
    });
    assert!(!fetch_in(&master, "192.168.102.12:31080").answered);
    lab.down_and_check();
}

/// Twenty services created at once through two nodes get twenty ClusterIPs and node
/// ports; two services asking for the same node port at once: one gets it, the other an
/// error naming the field and the holder.
#[test]
fn services_created_at_once_through_two_nodes_never_share_an_address_or_a_port() {
    let lab = TestLab::up(3, Backend::Vxlan);
    let dir = tempfile::tempdir().unwrap();
    let service = |name: &str, node_port: Option<u16>| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: NodePort\n  selector:\n    app: {name}\n  ports:\n  - port: 80\n{}",
            node_port.map_or(String::new(), |p| format!("    nodePort: {p}\n"))
        )
    };
    let mut batches = Vec::new();
    for (node, prefix) in [("k8s-node1", "a"), ("k8s-node2", "b")] {
        let text: Vec<String> = (0..10)
            .map(|i| service(&format!("svc-{prefix}{i}"), None))
            .collect();
        let path = dir.path().join(format!("{prefix}.yaml"));
        std::fs::write(&path, text.join("---\n")).unwrap();
        batches.push((node, path));
        let race = dir.path().join(format!("race-{prefix}.yaml"));
        std::fs::write(&race, service(&format!("race-{prefix}"), Some(31555))).unwrap();
        batches.push((node, race));
    }
    let outcomes: Vec<(Option<i32>, String, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = batches
            .iter()
            .map(|(node, path)| {
                let lab = &lab;
                scope.spawn(move || {
                    lab.sandboxctl(&["--node", node, "apply", "-f", path.to_str().unwrap()])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The batches of ten succeed; of the two races, one.
    for i in [0, 2] {
        assert_eq!(outcomes[i].0, Some(0), "{:?}", outcomes[i]);
    }
    let (won, lost) = match (outcomes[1].0, outcomes[3].0) {
        (Some(0), Some(1)) => ("race-a", &outcomes[3]),
        (Some(1), Some(0)) => ("race-b", &outcomes[1]),
        other => panic!("one race must win: {other:?} {outcomes:?}"),
    };
    let loser = if won == "race-a" { "race-b" } else { "race-a" };
    assert!(
        lost.2.contains(&format!(
            "invalid spec.ports[0].nodePort of service default/{loser}: node port 31555 is already allocated to service default/{won}"
        )),
        "{lost:?}"
    );

    let list: serde_json::Value =
        serde_json::from_str(&lab.ok(&["get", "svc", "-o", "json"])).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 21, "{list}");
    let mut ips: Vec<&str> = items
        .iter()
        .map(|s| s["spec"]["clusterIP"].as_str().unwrap())
        .collect();
    let mut ports: Vec<i64> = items
        .iter()
        .map(|s| s["spec"]["ports"][0]["nodePort"].as_i64().unwrap())
        .collect();
    ips.sort();
    ips.dedup();
    ports.sort();
    ports.dedup();
    assert_eq!((ips.len(), ports.len()), (21, 21), "{list}");
    // The loser left nothing: no allocation of its own survives.
    let (code, _, _) = lab.sandboxctl(&["get", "svc", loser]);
    assert_ne!(code, Some(0));

    // Every node programs all 21 (without endpoints: rejected at once, as kube-proxy does).
    for node in ["k8s-master", "k8s-node1", "k8s-node2"] {
        eventually(
            Duration::from_secs(5),
            &format!("21 services on {node}"),
            || {
                let map = lab.on_node(
                    node,
                    &[
                        "nft",
                        "-j",
                        "list",
                        "map",
                        "ip",
                        "sandboxd",
                        "no-endpoint-services",
                    ],
                );
                let json: serde_json::Value = serde_json::from_str(&map).unwrap();
                json["nftables"][1]["map"]["elem"]
                    .as_array()
                    .is_some_and(|e| e.len() == 21)
            },
        );
        assert!(holds_port(&lab, node, 31555), "{node} holds 31555");
    }
    lab.down_and_check();
}
