//! sandboxd with `--cni-plugins own`: the default network's bridge, host-local, portmap
//! and loopback are sandboxd-cni's, run inside sandboxd. Pods get their address and reach
//! the gateway and each other; a pod attached by one path is detached by the other (the
//! leases, the cache and the kernel objects are the same either way). Needs root.

use k8s_cri::v1 as cri;
use sandboxd_tests::cri::{container_config, pod_config, Cri};
use sandboxd_tests::daemon::SandboxdProcess;

const OWN: &[&str] = &["--cni-plugins", "own"];
const UPSTREAM: &[&str] = &["--cni-plugins", "upstream"];

/// The pod's network status (its addresses) as PodSandboxStatus reports it.
async fn pod_network(cri: &mut Cri, pod: &str) -> cri::PodSandboxNetworkStatus {
    cri.client
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .and_then(|s| s.network)
        .unwrap_or_default()
}

async fn pod_ip(cri: &mut Cri, pod: &str) -> String {
    pod_network(cri, pod).await.ip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_on_the_own_plugins_and_either_path_detaches_the_other() {
    let mut daemon = SandboxdProcess::start_with(OWN);
    let mut cri = Cri {
        client: daemon.client().await,
    };
    let link = std::fs::read_link(daemon.path("state/cni-bin/bridge")).expect("the bridge link");
    assert!(link.ends_with("sandboxd-cni"), "{}", link.display());

    let first = pod_config("own-a", None);
    let pod_a = cri.run_pod(first.clone()).await;
    let second = pod_config("own-b", None);
    let pod_b = cri.run_pod(second.clone()).await;
    let (ip_a, ip_b) = (
        pod_ip(&mut cri, &pod_a).await,
        pod_ip(&mut cri, &pod_b).await,
    );
    assert!(
        ip_a.starts_with("10.244.1.") && ip_b.starts_with("10.244.1."),
        "{ip_a} {ip_b}"
    );
    assert_ne!(ip_a, ip_b);
    let bridge = daemon.node.exec(&["ip", "-o", "addr", "show", "cni0"]);
    assert!(bridge.contains("10.244.1.1/24"), "{bridge}");
    // A container of pod a reaches the gateway and pod b through the bridge.
    let shell = cri
        .run(
            &pod_a,
            &first,
            container_config("shell", "busybox", &["sleep", "1000"]),
        )
        .await;
    for target in ["10.244.1.1", ip_b.as_str()] {
        let ping = cri
            .exec(&shell, &["ping", "-c", "1", "-W", "2", target])
            .await;
        assert_eq!(ping.exit_code, 0, "ping {target}: {ping:?}");
    }

    // Attached in-process, detached by Debian's plugins.
    daemon.respawn_with(UPSTREAM);
    cri.client = daemon.client().await;
    cri.remove_pod(&pod_a).await;
    cri.remove_pod(&pod_b).await;
    assert_eq!(
        daemon.leftovers(),
        Vec::<String>::new(),
        "after upstream's DEL"
    );

    // Attached by Debian's plugins, detached in-process.
    let pod_c = cri.run_pod(pod_config("up-c", None)).await;
    assert!(pod_ip(&mut cri, &pod_c).await.starts_with("10.244.1."));
    daemon.respawn_with(OWN);
    cri.client = daemon.client().await;
    cri.remove_pod(&pod_c).await;
    assert_eq!(
        daemon.leftovers(),
        Vec::<String>::new(),
        "after the own DEL"
    );
}

/// A dual-stack network in sandboxd (in-process): a pod's status reports its IPv4 address
/// and its IPv6 one among `additional_ips`, as the kubelet reads them; a container reaches
/// the IPv6 gateway and the other pod over IPv6; removing the pods leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_pods_report_and_use_both_families() {
    let mut daemon = SandboxdProcess::start_with(OWN);
    let conflist = daemon.path("net.d/10-pods.conflist");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
    doc["plugins"][0]["ipam"]["ranges"] = serde_json::json!([
        [{ "subnet": "10.244.1.0/24" }],
        [{ "subnet": "fd00:10:244:1::/64" }],
    ]);
    doc["plugins"][0]["ipam"]["routes"] =
        serde_json::json!([{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }]);
    std::fs::write(&conflist, doc.to_string()).unwrap();
    daemon.respawn_with(OWN);
    let mut cri = Cri {
        client: daemon.client().await,
    };

    let config = pod_config("dual-a", None);
    let pod_a = cri.run_pod(config.clone()).await;
    let pod_b = cri.run_pod(pod_config("dual-b", None)).await;
    let (a, b) = (
        pod_network(&mut cri, &pod_a).await,
        pod_network(&mut cri, &pod_b).await,
    );
    assert!(a.ip.starts_with("10.244.1."), "{a:?}");
    let a6: Vec<&str> = a.additional_ips.iter().map(|ip| ip.ip.as_str()).collect();
    assert_eq!(a6.len(), 1, "{a:?}");
    assert!(a6[0].starts_with("fd00:10:244:1::"), "{a:?}");
    let b6 = b
        .additional_ips
        .first()
        .expect("b's IPv6 address")
        .ip
        .clone();

    let shell = cri
        .run(
            &pod_a,
            &config,
            container_config("shell", "busybox", &["sleep", "1000"]),
        )
        .await;
    for target in ["fd00:10:244:1::1", b6.as_str()] {
        let ping = cri
            .exec(&shell, &["ping", "-c", "1", "-W", "2", target])
            .await;
        assert_eq!(ping.exit_code, 0, "ping {target}: {ping:?}");
    }

    cri.remove_pod(&pod_a).await;
    cri.remove_pod(&pod_b).await;
    assert_eq!(daemon.leftovers(), Vec::<String>::new());
}
