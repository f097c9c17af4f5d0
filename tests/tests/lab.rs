//! The lab end to end: `lab up` builds the seeds' three nodes, each running sandboxd
//! joined through etcd; pod-src on k8s-node2 reaches pod-dest on k8s-node1 across the
//! overlay (S2) under vxlan and host-gw; each node holds exactly flannel's objects; and
//! `lab down` leaves nothing.

use sandboxd::overlay::Backend;
use sandboxd_tests::fetch_in;
use sandboxd_tests::lab::TestLab;

const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

/// Applies pod-dest on k8s-node1 and pod-src on k8s-node2, and calls pod-dest from
/// pod-src's namespace.
fn pod_to_pod_across_nodes(lab: &TestLab) {
    lab.ok(&[
        "--node",
        "k8s-node1",
        "apply",
        "-f",
        &format!("{MANIFESTS}/pod-dest.yaml"),
    ]);
    lab.ok(&[
        "--node",
        "k8s-node2",
        "apply",
        "-f",
        &format!("{MANIFESTS}/pod-src.yaml"),
    ]);
    let wide = lab.ok(&["--node", "k8s-node1", "get", "pods", "-o", "wide"]);
    let dest_ip = wide
        .lines()
        .find(|l| l.starts_with("pod-dest"))
        .and_then(|l| l.split_whitespace().nth(5))
        .unwrap_or_else(|| panic!("no pod-dest IP in:\n{wide}"))
        .to_string();
    assert!(
        dest_ip.starts_with("10.244.1."),
        "pod-dest on k8s-node1's subnet: {wide}"
    );
    let fetch = fetch_in(&lab.pod_netns("k8s-node2"), &format!("{dest_ip}:8080"));
    assert!(fetch.answered, "pod-src → pod-dest: {}", fetch.body);
    assert_eq!(fetch.body, "pod-dest");
}

/// Lines of `out` with trailing spaces removed.
fn lines(out: &str) -> Vec<String> {
    out.lines().map(|l| l.trim_end().to_string()).collect()
}

#[test]
fn s2_pod_src_reaches_pod_dest_over_vxlan_and_each_node_holds_flannels_objects() {
    let lab = TestLab::up(3, Backend::Vxlan);
    let subnets: Vec<String> = (0..3).map(|n| format!("10.244.{n}.0/24")).collect();
    let status = lab.ok(&["lab", "status"]);
    for (node, subnet) in ["k8s-master", "k8s-node1", "k8s-node2"]
        .iter()
        .zip(&subnets)
    {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(node) && l.contains(subnet.as_str())),
            "{node} holds {subnet}:\n{status}"
        );
    }
    assert!(status.contains("etcd: healthy"), "{status}");

    pod_to_pod_across_nodes(&lab);

    // Each node: a route via flannel.1 to each other node's subnet, its neighbour and FDB
    // entry, and no other entries of ours.
    let names = ["k8s-master", "k8s-node1", "k8s-node2"];
    let macs: Vec<String> = names
        .iter()
        .map(|n| {
            let link = lab.on_node(n, &["ip", "-o", "link", "show", "flannel.1"]);
            link.split("link/ether ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    for (i, node) in names.iter().enumerate() {
        let details = lab.on_node(node, &["ip", "-d", "link", "show", "flannel.1"]);
        let ip = format!("192.168.102.1{i}");
        assert!(details.contains("mtu 1450"), "{details}");
        assert!(
            details.contains(&format!("vxlan id 1 local {ip} dev eth1")),
            "{details}"
        );
        assert!(
            details.contains("dstport 8472") && details.contains("nolearning"),
            "{details}"
        );
        let mut want_routes = Vec::new();
        let mut want_neigh = Vec::new();
        let mut want_fdb = Vec::new();
        for (j, _) in names.iter().enumerate().filter(|(j, _)| *j != i) {
            want_routes.push(format!(
                "10.244.{j}.0/24 via 10.244.{j}.0 dev flannel.1 onlink"
            ));
            want_neigh.push(format!("10.244.{j}.0 lladdr {} PERMANENT", macs[j]));
            want_fdb.push(format!("{} dst 192.168.102.1{j} self permanent", macs[j]));
        }
        let routes: Vec<String> = lines(&lab.on_node(node, &["ip", "route"]))
            .into_iter()
            .filter(|l| l.contains("flannel.1") || l.contains(" via "))
            .collect();
        assert_eq!(routes, want_routes, "{node}");
        let mut neigh = lines(&lab.on_node(node, &["ip", "neigh", "show", "dev", "flannel.1"]));
        neigh.sort();
        assert_eq!(neigh, want_neigh, "{node}");
        let mut fdb: Vec<String> =
            lines(&lab.on_node(node, &["bridge", "fdb", "show", "dev", "flannel.1"]))
                .into_iter()
                .filter(|l| l.contains(" dst "))
                .collect();
        fdb.sort();
        want_fdb.sort();
        assert_eq!(fdb, want_fdb, "{node}");
    }

    // A second `lab up` says the lab is up and changes nothing.
    let again = lab.ok(&["lab", "up"]);
    assert!(again.contains("already up"), "{again}");
    // --node naming no node is an error naming the nodes there are.
    let (code, _, err) = lab.sandboxctl(&["--node", "k8s-node9", "pods"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("invalid --node \"k8s-node9\"") && err.contains("k8s-node1"),
        "{err}"
    );

    lab.down_and_check();
}

#[test]
fn s2_pod_src_reaches_pod_dest_over_host_gw() {
    let lab = TestLab::up(3, Backend::HostGw);
    pod_to_pod_across_nodes(&lab);
    let routes = lines(&lab.on_node("k8s-node2", &["ip", "route"]));
    assert!(
        routes.contains(&"10.244.1.0/24 via 192.168.102.11 dev eth1".to_string()),
        "{routes:?}"
    );
    assert!(!lab
        .on_node("k8s-node2", &["ip", "link"])
        .contains("flannel.1"));
    lab.down_and_check();
}
