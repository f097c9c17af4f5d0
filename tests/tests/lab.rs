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

/// The overlay entries on `node` that point at `peer_ip` (routes, neighbours, FDB).
fn entries_towards(lab: &TestLab, node: &str, subnet_prefix: &str, peer_ip: &str) -> Vec<String> {
    let mut found: Vec<String> = lines(&lab.on_node(node, &["ip", "route"]))
        .into_iter()
        .filter(|l| l.starts_with(subnet_prefix))
        .collect();
    found.extend(
        lines(&lab.on_node(node, &["ip", "neigh", "show", "dev", "flannel.1"]))
            .into_iter()
            .filter(|l| l.starts_with(subnet_prefix)),
    );
    found.extend(
        lines(&lab.on_node(node, &["bridge", "fdb", "show", "dev", "flannel.1"]))
            .into_iter()
            .filter(|l| l.contains(&format!("dst {peer_ip} "))),
    );
    found
}

#[test]
fn a_node_killed_and_restarted_keeps_its_subnet_and_pods_and_a_removed_node_leaves_no_entries() {
    let lab = TestLab::up(3, Backend::Vxlan);
    pod_to_pod_across_nodes(&lab);
    let routes_before = lab.on_node("k8s-node1", &["ip", "route"]);
    let network = lab
        .lab
        .node_dir("k8s-node1")
        .join("net.d/10-sandboxd.conflist");
    let network_before = std::fs::read_to_string(&network).unwrap();

    // kill -9, then start again: the same subnet, the pod adopted, nothing duplicated.
    let dest = lab.pod_netns("k8s-node1");
    let ip = lab.ok(&["--node", "k8s-node1", "get", "pods", "-o", "wide"]);
    let dest_ip = ip
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(5)
        .unwrap()
        .to_string();
    let daemon = lab.lab.load().unwrap().unwrap().nodes[1].daemon.unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    while daemon.is_alive() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let src = lab.pod_netns("k8s-node2");
    assert!(
        fetch_in(&src, &format!("{dest_ip}:8080")).answered,
        "while node1's daemon is down"
    );
    lab.lab.restart_node("k8s-node1").unwrap();
    assert_eq!(std::fs::read_to_string(&network).unwrap(), network_before);
    assert_eq!(lab.on_node("k8s-node1", &["ip", "route"]), routes_before);
    assert_eq!(lab.pod_netns("k8s-node1"), dest);
    let pods = lab.ok(&["--node", "k8s-node1", "pods", "-q"]);
    assert_eq!(pods.lines().count(), 1, "{pods}");
    assert_eq!(fetch_in(&src, &format!("{dest_ip}:8080")).body, "pod-dest");

    // etcd away for 10 s: pods keep talking across nodes; the nodes follow the store
    // again when it returns (a node removed afterwards is seen by the others).
    lab.lab.stop_etcd().unwrap();
    let outage = std::time::Instant::now();
    while outage.elapsed() < std::time::Duration::from_secs(10) {
        let fetch = fetch_in(&src, &format!("{dest_ip}:8080"));
        assert!(fetch.answered, "during the etcd outage: {}", fetch.body);
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    lab.lab.start_etcd().unwrap();

    // Removing k8s-node2: k8s-node1 and k8s-master drop its entries within 2 s.
    assert!(!entries_towards(&lab, "k8s-node1", "10.244.2.", "192.168.102.12").is_empty());
    let removed = std::time::Instant::now();
    lab.ok(&["lab", "remove-node", "k8s-node2"]);
    let took_command = removed.elapsed();
    loop {
        let left: Vec<String> = ["k8s-master", "k8s-node1"]
            .iter()
            .flat_map(|n| entries_towards(&lab, n, "10.244.2.", "192.168.102.12"))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            removed.elapsed() < took_command + std::time::Duration::from_secs(2),
            "entries towards k8s-node2 still there 2 s after its removal: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!lab.lab.node_dir("k8s-node2").exists());
    let status = lab.ok(&["lab", "status"]);
    assert!(!status.contains("k8s-node2"), "{status}");
    lab.down_and_check();
}

/// The seeds' manifests, applied unchanged through k8s-master, land on the nodes their
/// nodeSelectors name (the kubelet's model: stored in etcd, run by their node); `get pods
/// -o wide` on any node lists the cluster; `delete -f` from another node removes them.
#[test]
fn pods_are_desired_state_placed_by_node_selector_and_run_by_their_node() {
    let lab = TestLab::up(3, Backend::Vxlan);
    let dest = format!("{MANIFESTS}/pod-dest.yaml");
    let src = format!("{MANIFESTS}/pod-src.yaml");
    assert_eq!(
        lab.ok(&["apply", "-f", &dest]).trim(),
        "pod/pod-dest created"
    );
    assert_eq!(lab.ok(&["apply", "-f", &src]).trim(), "pod/pod-src created");
    assert_eq!(
        lab.ok(&["apply", "-f", &src]).trim(),
        "pod/pod-src unchanged"
    );
    for node in ["k8s-master", "k8s-node1", "k8s-node2"] {
        let wide = lab.ok(&["--node", node, "get", "pods", "-o", "wide"]);
        let rows: Vec<Vec<&str>> = wide
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows.len(), 2, "{wide}");
        assert_eq!(rows[0][0], "pod-dest");
        assert_eq!(rows[0][2], "Running");
        assert_eq!(rows[0][6], "k8s-node1", "{wide}");
        assert!(rows[0][5].starts_with("10.244.1."), "{wide}");
        assert_eq!(rows[1][0], "pod-src");
        assert_eq!(rows[1][6], "k8s-node2", "{wide}");
    }
    // The crictl verbs stay node-local: node1 runs pod-dest only.
    let local = lab.ok(&["--node", "k8s-node1", "pods", "--name", "pod-src", "-q"]);
    assert_eq!(local.trim(), "");
    let dest_ip = lab
        .ok(&["get", "pods", "pod-dest", "-o", "wide"])
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(5)
        .unwrap()
        .to_string();
    let fetch = fetch_in(&lab.pod_netns("k8s-node2"), &format!("{dest_ip}:8080"));
    assert_eq!(fetch.body, "pod-dest");

    // A nodeSelector naming no node is refused, naming the field and the nodes.
    let bad = std::fs::read_to_string(&dest)
        .unwrap()
        .replace("k8s-node1", "k8s-node9")
        .replace("pod-dest", "pod-nowhere");
    let out = std::process::Command::new(sandboxd_tests::workspace_binary("sandboxctl"))
        .args(["apply", "-f", "-"])
        .env("SANDBOXD_LAB_DIR", lab.root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(bad.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("invalid spec.nodeSelector of pod/pod-nowhere: kubernetes.io/hostname=k8s-node9 names no node of the cluster (its nodes: k8s-master, k8s-node1, k8s-node2)"),
        "{err}"
    );

    // delete -f from another node: the pods' own nodes remove them.
    assert_eq!(
        lab.ok(&["--node", "k8s-node2", "delete", "-f", &dest])
            .trim(),
        "pod \"pod-dest\" deleted"
    );
    assert_eq!(
        lab.ok(&["--node", "k8s-node2", "pods", "-q"])
            .lines()
            .count(),
        1
    );
    assert_eq!(lab.ok(&["--node", "k8s-node1", "pods", "-q"]).trim(), "");
    let wide = lab.ok(&["get", "pods", "-o", "wide"]);
    assert!(
        !wide.contains("pod-dest") && wide.contains("pod-src"),
        "{wide}"
    );
    lab.down_and_check();
}
