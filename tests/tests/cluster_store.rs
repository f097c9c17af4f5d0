//! The cluster store's contract, checked on both implementations (a real etcd, started in
//! a namespace of the test's own, and the local file store): compare-and-create and
//! compare-and-swap, prefix lists, watches from a revision; subnet leases that never
//! collide; node names a live node holds; and following a prefix across an etcd outage.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sandboxd::cidr::Ipv4Cidr;
use sandboxd::cluster::node::{self, NodeRecord};
use sandboxd::cluster::store::{self, ClusterStore, WatchEvent};
use sandboxd::overlay::Backend;
use sandboxd::process::ProcessHandle;
use sandboxd_tests::Netns;

/// etcd in a namespace of its own, on 127.0.0.1:2379 there; killed on drop.
struct Etcd {
    ns: Netns,
    dir: tempfile::TempDir,
    process: Option<ProcessHandle>,
}

impl Etcd {
    fn start() -> Etcd {
        let ns = Netns::new("sbt-etcd");
        let dir = tempfile::tempdir().unwrap();
        let mut etcd = Etcd {
            ns,
            dir,
            process: None,
        };
        etcd.restart();
        etcd
    }

    fn restart(&mut self) {
        let process = sandboxd::lab::etcd::start(
            &self.ns.path(),
            "test",
            Ipv4Addr::LOCALHOST,
            &self.dir.path().join("data"),
            &self.dir.path().join("etcd.log"),
        )
        .unwrap();
        self.process = Some(process);
    }

    fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
            while process.is_alive() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Runs `future` inside etcd's namespace, so the client's connections are made there.
    fn run<T: Send + 'static>(
        &self,
        future: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        sandboxd::netns::block_on_in(&self.ns.path(), future).unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

const URL: &str = "etcd://127.0.0.1:2379";

async fn contract(store: &dyn ClusterStore) {
    let p = "/sandboxd/test/";
    let first = store.create(&format!("{p}a"), "1").await.unwrap().unwrap();
    assert_eq!(
        store.create(&format!("{p}a"), "2").await.unwrap(),
        None,
        "created twice"
    );
    assert_eq!(
        store.get(&format!("{p}a")).await.unwrap().unwrap().value,
        "1"
    );
    assert_eq!(store.get(&format!("{p}zz")).await.unwrap(), None);

    // Compare-and-swap: the stale revision loses.
    let second = store
        .update(&format!("{p}a"), "2", first)
        .await
        .unwrap()
        .unwrap();
    assert!(second > first);
    assert_eq!(
        store.update(&format!("{p}a"), "3", first).await.unwrap(),
        None
    );

    store.create(&format!("{p}b"), "x").await.unwrap().unwrap();
    store.create("/sandboxd/other", "y").await.unwrap().unwrap();
    let listing = store.list(p).await.unwrap();
    let keys: Vec<&str> = listing.items.iter().map(|v| v.key.as_str()).collect();
    assert_eq!(keys, ["/sandboxd/test/a", "/sandboxd/test/b"]);
    assert!(listing.revision >= second);

    // A watch from the listing's next revision sees later changes only, in order; one
    // from an earlier revision sees the past too.
    let mut watch = store.watch(p, listing.revision + 1).await.unwrap();
    let mut from_start = store.watch(p, first).await.unwrap();
    assert!(
        !store.delete(&format!("{p}b"), Some(first)).await.unwrap(),
        "stale delete"
    );
    assert!(store.delete(&format!("{p}b"), None).await.unwrap());
    assert!(!store.delete(&format!("{p}b"), None).await.unwrap());
    store.create(&format!("{p}c"), "z").await.unwrap().unwrap();
    store
        .create("/sandboxd/elsewhere", "w")
        .await
        .unwrap()
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(5), watch.recv())
            .await
            .expect("watch events")
            .unwrap()
            .unwrap();
        seen.extend(batch);
    }
    assert!(matches!(&seen[0], WatchEvent::Delete { key, .. } if key == "/sandboxd/test/b"));
    assert!(
        matches!(&seen[1], WatchEvent::Put(v) if v.key == "/sandboxd/test/c" && v.value == "z")
    );
    let mut history = Vec::new();
    while history.len() < 5 {
        let batch = tokio::time::timeout(Duration::from_secs(5), from_start.recv())
            .await
            .expect("watch events")
            .unwrap()
            .unwrap();
        history.extend(batch);
    }
    let puts: Vec<String> = history
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Put(v) => Some(format!("{}={}", v.key.trim_start_matches(p), v.value)),
            WatchEvent::Delete { .. } => None,
        })
        .collect();
    assert_eq!(puts, ["a=1", "a=2", "b=x", "c=z"]);
}

async fn leases(store: Arc<dyn ClusterStore>) {
    let cluster: Ipv4Cidr = "10.244.0.0/16".parse().unwrap();
    // Twelve nodes joining at once: twelve different subnets.
    let joins: Vec<_> = (0..12)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                node::lease_subnet(store.as_ref(), cluster, &format!("node{n}"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut subnets = Vec::new();
    for join in joins {
        subnets.push(join.await.unwrap());
    }
    let mut distinct = subnets.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 12, "{subnets:?}");
    assert!(distinct.iter().all(|s| s.prefix == 24 && cluster.covers(s)));
    // A node joining again keeps its subnet.
    assert_eq!(
        node::lease_subnet(store.as_ref(), cluster, "node3")
            .await
            .unwrap(),
        subnets[3]
    );
    // A cluster CIDR with no free /24 left is an error naming the node and the CIDR.
    let small: Ipv4Cidr = "10.245.0.0/23".parse().unwrap();
    node::lease_subnet(store.as_ref(), small, "a")
        .await
        .unwrap();
    node::lease_subnet(store.as_ref(), small, "b")
        .await
        .unwrap();
    let error = node::lease_subnet(store.as_ref(), small, "c")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("10.245.0.0/23 has no free /24 for node c"),
        "{error}"
    );
    // A node leaving gives its subnet back.
    node::remove(store.as_ref(), "b").await.unwrap();
    node::lease_subnet(store.as_ref(), small, "c")
        .await
        .unwrap();

    // A name held by a live node at another address is refused; the same node again is not.
    let record = NodeRecord {
        name: "k8s-node1".into(),
        ip: Ipv4Addr::new(192, 168, 102, 11),
        subnet: subnets[0],
        vtep_mac: None,
        backend: Backend::Vxlan,
        schedulable: true,
        heartbeat_ms: node::now_ms(),
    };
    node::register(store.as_ref(), &record).await.unwrap();
    node::register(store.as_ref(), &record).await.unwrap();
    let impostor = NodeRecord {
        ip: Ipv4Addr::new(192, 168, 102, 99),
        ..record.clone()
    };
    let error = node::register(store.as_ref(), &impostor)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("invalid --node-name \"k8s-node1\""),
        "{error}"
    );
    assert!(error.contains("is alive"), "{error}");
}

#[test]
fn etcd_keeps_the_contract_and_leases_never_collide() {
    let etcd = Etcd::start();
    etcd.run(async {
        let store = store::open(Some(URL), Path::new("/nonexistent"))
            .await
            .unwrap();
        contract(store.as_ref()).await;
        leases(store).await;
    });
}

#[test]
fn the_local_store_keeps_the_same_contract_and_its_contents_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = store::open(None, dir.path()).await.unwrap();
        contract(store.as_ref()).await;
        leases(store).await;
        let reopened = store::open(None, dir.path()).await.unwrap();
        assert_eq!(
            reopened
                .get("/sandboxd/test/c")
                .await
                .unwrap()
                .unwrap()
                .value,
            "z"
        );
        assert_eq!(
            node::lease_subnet(reopened.as_ref(), "10.244.0.0/16".parse().unwrap(), "node3")
                .await
                .unwrap(),
            node::lease_subnet(reopened.as_ref(), "10.244.0.0/16".parse().unwrap(), "node3")
                .await
                .unwrap()
        );
    });
}

#[test]
fn a_store_nobody_answers_at_is_a_clear_error() {
    let ns = Netns::new("sbt-nostore");
    let error = sandboxd::netns::block_on_in(&ns.path(), async {
        let started = std::time::Instant::now();
        let e = store::open(Some(URL), Path::new("/nonexistent"))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(10));
        e
    })
    .unwrap();
    assert!(error.contains("etcd://127.0.0.1:2379"), "{error}");
    for url in ["etcd://", "consul://x:1"] {
        let e = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(store::open(Some(url), Path::new("/nonexistent")))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("invalid --store"), "{e}");
    }
}

#[test]
fn following_a_prefix_survives_an_etcd_outage_and_resumes() {
    let mut etcd = Etcd::start();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<String>>();
    let seen = |rx: &std::sync::mpsc::Receiver<Vec<String>>, want: &[&str]| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let keys = rx
                .recv_timeout(deadline - std::time::Instant::now())
                .expect("the follower reports the keys");
            if keys == want {
                return;
            }
        }
    };
    let ns_path = etcd.ns.path();
    let follower = std::thread::spawn(move || {
        sandboxd::netns::block_on_in(&ns_path, async move {
            let store = store::open(Some(URL), Path::new("/nonexistent"))
                .await
                .unwrap();
            let task = sandboxd::cluster::follow(store, "/sandboxd/f/", move |copy| {
                let _ = tx.send(copy.keys().cloned().collect());
            });
            // Runs until the test ends (the thread is left behind with the runtime).
            let _ = task.await;
        })
    });
    let put = |etcd: &Etcd, key: &'static str| {
        etcd.run(async move {
            let store = store::open(Some(URL), Path::new("/nonexistent"))
                .await
                .unwrap();
            store.create(key, "v").await.unwrap();
        })
    };
    seen(&rx, &[]);
    put(&etcd, "/sandboxd/f/one");
    seen(&rx, &["/sandboxd/f/one"]);
    etcd.stop();
    std::thread::sleep(Duration::from_secs(2));
    etcd.restart();
    put(&etcd, "/sandboxd/f/two");
    seen(&rx, &["/sandboxd/f/one", "/sandboxd/f/two"]);
    assert!(!follower.is_finished());
}
