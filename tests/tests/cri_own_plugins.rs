//! sandboxd with `--cni-plugins own`: the default network's bridge, host-local, portmap
//! and loopback are sandboxd-cni's, run inside sandboxd. Pods get their address and reach
//! the gateway and each other; a pod attached by one path is detached by the other (the
//! leases, the cache and the kernel objects are the same either way). Needs root.

use k8s_cri::v1 as cri;
use sandboxd_tests::cri::{container_config, pod_config, Cri};
use sandboxd_tests::daemon::SandboxdProcess;

const OWN: &[&str] = &["--cni-plugins", "own"];
const UPSTREAM: &[&str] = &["--cni-plugins", "upstream"];

async fn pod_ip(cri: &mut Cri, pod: &str) -> String {
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
        .map(|n| n.ip)
        .unwrap_or_default()
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
