//! A sandboxd that cannot join gets a clear error and leaves nothing: no `flannel.1`, no
//! subnet lease, no pod network file. Each case starts sandboxd in a node namespace of
//! the test's own, beside an etcd of its own.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sandboxd::cidr::Ipv4Cidr;
use sandboxd::cluster::node::{self, NodeRecord};
use sandboxd::cluster::store;
use sandboxd::overlay::Backend;
use sandboxd::process::ProcessHandle;
use sandboxd_tests::{workspace_binary, Netns};

const STORE: &str = "etcd://127.0.0.1:2379";
const NODE_IP: &str = "192.168.102.50";

struct Node {
    ns: Netns,
    dir: tempfile::TempDir,
    etcd: ProcessHandle,
}

impl Node {
    /// A namespace with etcd on its loopback and `eth1` (one end of a veth pair; this
    /// kernel has no dummy links) holding NODE_IP.
    fn new() -> Node {
        let ns = Netns::new("sbt-join");
        ns.exec(&[
            "ip",
            "link",
            "add",
            "eth1",
            "type",
            "veth",
            "peer",
            "name",
            "eth1-peer",
        ]);
        ns.exec(&["ip", "link", "set", "eth1-peer", "up"]);
        ns.exec(&["ip", "addr", "add", &format!("{NODE_IP}/24"), "dev", "eth1"]);
        ns.exec(&["ip", "link", "set", "eth1", "up"]);
        let dir = tempfile::tempdir().unwrap();
        let etcd = sandboxd::lab::etcd::start(
            &ns.path(),
            "join",
            Ipv4Addr::LOCALHOST,
            &dir.path().join("etcd"),
            &dir.path().join("etcd.log"),
        )
        .unwrap();
        Node { ns, dir, etcd }
    }

    /// Runs sandboxd in the namespace until it exits (it must: every case fails).
    fn sandboxd(&self, args: &[&str]) -> (Option<i32>, String) {
        let d = self.dir.path();
        let net = format!("--net={}", self.ns.path().display());
        let out = Command::new("timeout")
            .args(["20", "nsenter", &net, "--"])
            .arg(workspace_binary("sandboxd"))
            .arg("--socket")
            .arg(d.join("run/sandboxd.sock"))
            .arg("--state-dir")
            .arg(d.join("state"))
            .arg("--netns-dir")
            .arg(d.join("netns"))
            .arg("--cni-conf-dir")
            .arg(d.join("net.d"))
            .arg("--runtime-root")
            .arg(d.join("runtime"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `future` inside the namespace, where the store is reachable.
    fn run<T: Send + 'static>(
        &self,
        future: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        sandboxd::netns::block_on_in(&self.ns.path(), future).unwrap()
    }

    /// Nothing of a join is left: no flannel.1, no lease of `name`, no network file.
    fn assert_nothing_left(&self, name: &'static str) {
        assert!(!self.ns.exec(&["ip", "link"]).contains("flannel.1"));
        let held = self.run(async move {
            let store = store::open(Some(STORE), Path::new("/")).await.unwrap();
            node::held_subnet(store.as_ref(), name).await.unwrap()
        });
        assert_eq!(held, None, "{name} still holds a subnet");
        assert!(!self.dir.path().join("net.d/10-sandboxd.conflist").exists());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.etcd.signal(nix::sys::signal::Signal::SIGKILL);
    }
}

#[test]
fn a_name_taken_by_a_live_node_is_refused_and_nothing_is_taken() {
    let node = Node::new();
    node.run(async {
        let store = store::open(Some(STORE), Path::new("/")).await.unwrap();
        let other = NodeRecord {
            name: "k8s-node1".into(),
            ip: Ipv4Addr::new(192, 168, 102, 11),
            subnet: "10.244.1.0/24".parse().unwrap(),
            vtep_mac: None,
            backend: Backend::Vxlan,
            schedulable: true,
            heartbeat_ms: node::now_ms(),
        };
        node::register(store.as_ref(), &other).await.unwrap();
    });
    let (code, err) = node.sandboxd(&[
        "--node-name",
        "k8s-node1",
        "--node-ip",
        NODE_IP,
        "--store",
        STORE,
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("invalid --node-name \"k8s-node1\""), "{err}");
    assert!(err.contains("192.168.102.11 is alive"), "{err}");
    node.assert_nothing_left("k8s-node1");
}

#[test]
fn a_cluster_cidr_with_no_free_subnet_is_an_error_and_nothing_is_made() {
    let node = Node::new();
    node.run(async {
        let store = store::open(Some(STORE), Path::new("/")).await.unwrap();
        let cidr: Ipv4Cidr = "10.250.0.0/24".parse().unwrap();
        node::lease_subnet(store.as_ref(), cidr, "first")
            .await
            .unwrap();
    });
    let (code, err) = node.sandboxd(&[
        "--node-name",
        "second",
        "--node-ip",
        NODE_IP,
        "--store",
        STORE,
        "--cluster-cidr",
        "10.250.0.0/24",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("10.250.0.0/24 has no free /24 for node second"),
        "{err}"
    );
    node.assert_nothing_left("second");
}

#[test]
fn a_node_ip_the_node_does_not_have_is_an_error_and_the_lease_is_given_back() {
    let node = Node::new();
    let (code, err) = node.sandboxd(&[
        "--node-name",
        "lost",
        "--node-ip",
        "10.9.9.9",
        "--store",
        STORE,
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no interface of this node has the node IP 10.9.9.9"),
        "{err}"
    );
    node.assert_nothing_left("lost");
}

#[test]
fn a_store_nobody_answers_at_is_an_error_within_seconds() {
    let node = Node::new();
    let started = std::time::Instant::now();
    let (code, err) = node.sandboxd(&[
        "--node-name",
        "n",
        "--node-ip",
        NODE_IP,
        "--store",
        "etcd://127.0.0.1:1",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("etcd://127.0.0.1:1"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!node.ns.exec(&["ip", "link"]).contains("flannel.1"));
    let (code, err) = node.sandboxd(&[
        "--node-name",
        "n",
        "--node-ip",
        NODE_IP,
        "--store",
        "redis://x",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("invalid --store \"redis://x\""), "{err}");
}
