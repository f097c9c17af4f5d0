//! sandboxd's CRI RuntimeService for pod sandboxes, end to end: a daemon on a socket of its
//! own, CNI plugins in a node netns of its own, real pause processes. Needs root.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use sandboxd::config::Config;
use sandboxd::runtime::Runtime;
use sandboxd_tests::daemon::mounts_under;
use sandboxd_tests::{files_under, ip_reservations, run, sandboxctl, Netns};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

const UPSTREAM_BIN_DIR: &str = "/usr/lib/cni";

/// A sandboxd serving on a temp socket, its node netns, its dirs, and its own copy of pause
/// (so this test's pause processes can be told from other tests').
struct Daemon {
    node: Netns,
    dir: tempfile::TempDir,
    config: Config,
    server: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
}

impl Daemon {
    async fn start() -> Daemon {
        Self::start_with_network(None).await
    }

    /// With `plugins` as the pod network's chain after bridge (default: portmap, loopback).
    async fn start_with_network(extra_plugins: Option<Vec<Value>>) -> Daemon {
        let node = Netns::new("sbt-node");
        let dir = tempfile::tempdir().expect("temp dir");
        let pause = dir.path().join("pause");
        std::fs::copy(pause::BUILT_BINARY, &pause).expect("copy pause");
        let config = Config {
            socket: dir.path().join("run/sandboxd.sock"),
            state_dir: dir.path().join("state"),
            netns_dir: dir.path().join("run/netns"),
            cni_conf_dir: dir.path().join("net.d"),
            cni_bin_dirs: vec![dir.path().join("bin"), PathBuf::from(UPSTREAM_BIN_DIR)],
            node: sandboxd::node::Node::new(
                sandboxd::config::machine_hostname(),
                node.node_netns(),
            ),
            pause_binary: Some(pause),
            cni_timeout: Duration::from_secs(20),
            stop_grace: Duration::from_secs(2),
            oci_runtime_root: dir.path().join("runtime"),
            ..Config::default()
        };
        std::fs::create_dir_all(&config.cni_conf_dir).unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        let mut plugins = vec![json!({
            "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
            "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.244.1.0/24" }]],
                      "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": dir.path().join("ipam") }
        })];
        plugins.extend(extra_plugins.unwrap_or_else(|| {
            vec![
                json!({ "type": "portmap", "capabilities": { "portMappings": true } }),
                json!({ "type": "loopback" }),
            ]
        }));
        let doc = json!({ "cniVersion": "1.0.0", "name": "pods", "plugins": plugins });
        std::fs::write(
            config.cni_conf_dir.join("10-pods.conflist"),
            doc.to_string(),
        )
        .unwrap();
        let mut daemon = Daemon {
            node,
            dir,
            config,
            server: None,
        };
        daemon.serve().await;
        daemon
    }

    async fn serve(&mut self) {
        let socket = sandboxd::server::bind(&self.config.socket).expect("bind the socket");
        let runtime: Arc<Runtime> = Runtime::start(self.config.clone())
            .await
            .expect("start the runtime");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(sandboxd::server::serve(runtime, None, socket, async {
            let _ = stopped.await;
        }));
        self.server = Some((stop, task));
    }

    /// Stops serving, as a daemon exit would; pods keep running.
    async fn shutdown(&mut self) {
        if let Some((stop, task)) = self.server.take() {
            let _ = stop.send(());
            task.await.expect("server task").expect("server");
        }
    }

    async fn client(&self) -> RuntimeServiceClient<Channel> {
        sandboxd::client::connect(&format!("unix://{}", self.config.socket.display()))
            .await
            .expect("connect")
    }

    fn install_fake(&self, name: &str, script: Value) {
        let bin = self.dir.path().join("bin");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cni-fake-plugin"), bin.join(name)).unwrap();
        std::fs::write(bin.join(format!("{name}.json")), script.to_string()).unwrap();
    }

    /// pause processes of this daemon (by their executable, this daemon's own copy).
    fn pause_processes(&self) -> Vec<u32> {
        let ours = self.config.pause_binary.clone().unwrap();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == ours)
            })
            .filter(|pid| {
                !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z ")
            })
            .collect()
    }

    /// Asserts the daemon holds nothing: no pause, pin, veth, lease, CNI cache entry or record.
    fn assert_clean(&self) {
        assert_eq!(
            self.pause_processes(),
            Vec::<u32>::new(),
            "pause processes left"
        );
        assert_eq!(
            files_under(&self.config.netns_dir),
            Vec::<PathBuf>::new(),
            "netns pins left"
        );
        assert_eq!(
            self.node.veths(),
            Vec::<String>::new(),
            "veths left on the node"
        );
        assert_eq!(
            ip_reservations(&self.dir.path().join("ipam")),
            Vec::<String>::new(),
            "IP leases left"
        );
        assert_eq!(
            files_under(&self.config.cni_cache_dir().join("results")),
            Vec::<PathBuf>::new(),
            "CNI cache entries left"
        );
        assert_eq!(
            files_under(&self.config.sandboxes_dir()),
            Vec::<PathBuf>::new(),
            "sandbox records left"
        );
        assert_eq!(
            mounts_under(self.dir.path()),
            vec![self.config.netns_dir.clone()],
            "mounts left besides the netns dir"
        );
    }
}

impl Drop for Daemon {
    /// Whatever the test did, kill this daemon's pause processes and remove its pins; the
    /// node netns (with bridge and veths) and the temp dir go with their own guards.
    fn drop(&mut self) {
        for pid in self.pause_processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for pin in files_under(&self.config.netns_dir) {
            let _ = sandboxd::netns::unpin(&pin);
        }
        let _ = sandboxd::netns::release_dir(&self.config.netns_dir);
        // The pods' shm mounts, and anything else left mounted under the temp dir.
        for mount in mounts_under(self.dir.path()) {
            let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A hostPort of the pod's own, from its name: sandboxd-cni's portmap refuses a hostPort
/// another pod of the node holds (as the scheduler would never place them together).
fn host_port_of(name: &str) -> i32 {
    18000 + name.bytes().map(i32::from).sum::<i32>() % 1000
}

fn pod_config(name: &str, uid: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: uid.into(),
            attempt: 0,
        }),
        labels: [("app".to_string(), name.to_string())].into(),
        port_mappings: vec![cri::PortMapping {
            protocol: 0,
            container_port: 8080,
            host_port: host_port_of(name),
            host_ip: String::new(),
        }],
        ..Default::default()
    }
}

async fn run_pod(
    client: &mut RuntimeServiceClient<Channel>,
    config: cri::PodSandboxConfig,
) -> Result<String, tonic::Status> {
    client
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

async fn status(
    client: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<(cri::PodSandboxStatus, Value), tonic::Status> {
    let reply = client
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await?
        .into_inner();
    let info =
        serde_json::from_str(reply.info.get("info").map(String::as_str).unwrap_or("null")).unwrap();
    Ok((reply.status.unwrap(), info))
}

async fn list(
    client: &mut RuntimeServiceClient<Channel>,
    filter: cri::PodSandboxFilter,
) -> Vec<String> {
    client
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect()
}

fn ready() -> Option<cri::PodSandboxStateValue> {
    Some(cri::PodSandboxStateValue {
        state: cri::PodSandboxState::SandboxReady as i32,
    })
}

#[tokio::test]
async fn a_pod_sandbox_runs_lists_stops_and_is_removed_over_cri() {
    let daemon = Daemon::start().await;
    let mut client = daemon.client().await;

    let version = client
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            version.runtime_name.as_str(),
            version.runtime_api_version.as_str()
        ),
        ("sandboxd", "v1")
    );
    let conditions = client
        .status(cri::StatusRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .conditions;
    assert!(
        conditions.iter().all(|c| c.status),
        "not ready: {conditions:?}"
    );

    let id = run_pod(&mut client, pod_config("web", "uid-web"))
        .await
        .expect("RunPodSandbox");
    let (st, info) = status(&mut client, &id).await.unwrap();
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    let ip = st.network.unwrap().ip;
    assert!(ip.starts_with("10.244.1."), "IP {ip:?}");
    assert_eq!(st.metadata.unwrap().name, "web");

    // The pod's netns is pinned where status says, with eth0 holding the IP.
    let netns = info["netnsPath"].as_str().expect("netnsPath").to_string();
    let addrs = run(
        "nsenter",
        &[
            &format!("--net={netns}"),
            "ip",
            "-o",
            "addr",
            "show",
            "eth0",
        ],
    );
    assert!(addrs.contains(&format!("{ip}/24")), "{addrs}");
    assert_eq!(
        daemon.pause_processes(),
        vec![info["pid"].as_u64().unwrap() as u32]
    );
    let hostname = run(
        "nsenter",
        &[&format!("--uts=/proc/{}/ns/uts", info["pid"]), "hostname"],
    );
    assert_eq!(hostname.trim(), "web");
    // portmap (sandboxd-cni's, in-process: the default) got the pod's port mapping.
    assert!(daemon
        .node
        .exec(&["nft", "list", "table", "ip", "sandboxd-hostports"])
        .contains(&format!("/tcp/{}", host_port_of("web"))));

    // Filters: id prefix, state, labels.
    let other = run_pod(&mut client, pod_config("db", "uid-db"))
        .await
        .unwrap();
    assert_eq!(
        list(
            &mut client,
            cri::PodSandboxFilter {
                id: id[..10].into(),
                ..Default::default()
            }
        )
        .await,
        vec![id.clone()]
    );
    let by_label = cri::PodSandboxFilter {
        label_selector: [("app".into(), "db".into())].into(),
        ..Default::default()
    };
    assert_eq!(list(&mut client, by_label).await, vec![other.clone()]);
    assert_eq!(
        list(
            &mut client,
            cri::PodSandboxFilter {
                state: ready(),
                ..Default::default()
            }
        )
        .await
        .len(),
        2
    );

    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .expect("stop");
    let (st, _) = status(&mut client, &id).await.unwrap();
    assert_eq!(st.state, cri::PodSandboxState::SandboxNotready as i32);
    assert_eq!(
        list(
            &mut client,
            cri::PodSandboxFilter {
                state: ready(),
                ..Default::default()
            }
        )
        .await,
        vec![other.clone()]
    );
    assert!(!Path::new(&netns).exists(), "the netns pin outlived stop");
    assert_eq!(
        daemon.node.veths().len(),
        1,
        "only the other pod's veth stays"
    );
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .expect("a second stop succeeds");

    for pod in [&id, &other] {
        client
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            })
            .await
            .expect("remove");
    }
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .expect("a second remove succeeds");
    assert_eq!(
        status(&mut client, &id).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(list(&mut client, cri::PodSandboxFilter::default())
        .await
        .is_empty());
    daemon.assert_clean();
}

#[tokio::test]
async fn bad_input_gets_the_right_code_and_a_message_naming_the_field() {
    let daemon = Daemon::start().await;
    let mut client = daemon.client().await;
    let cases = [
        (pod_config("", "u"), Code::InvalidArgument, "metadata.name"),
        (
            pod_config("a/b", "u"),
            Code::InvalidArgument,
            "metadata.name of pod sandbox default/a/b: \"a/b\" contains '/'",
        ),
        (
            pod_config("..", "u"),
            Code::InvalidArgument,
            "\"..\" is not a name",
        ),
        (pod_config("web", ""), Code::InvalidArgument, "metadata.uid"),
    ];
    // Log directories that depend on the daemon's working dir or climb out of themselves.
    let log_dirs = ["../../etc", "logs/pod", "/tmp/x/../../elsewhere"].map(|dir| {
        let mut config = pod_config("logs", "u-logs");
        config.log_directory = dir.into();
        (
            config,
            Code::InvalidArgument,
            "invalid log_directory of pod sandbox default/logs",
        )
    });
    let cases = cases.into_iter().chain(log_dirs);
    for (config, code, fragment) in cases {
        let err = run_pod(&mut client, config).await.expect_err("must fail");
        assert_eq!(err.code(), code, "{}", err.message());
        assert!(
            err.message().contains(fragment),
            "{:?} lacks {fragment:?}",
            err.message()
        );
    }
    let err = run_pod(&mut client, cri::PodSandboxConfig::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("config.metadata"),
        "{}",
        err.message()
    );

    let id = run_pod(&mut client, pod_config("web", "u1")).await.unwrap();
    let duplicate = run_pod(&mut client, pod_config("web", "u1"))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    assert!(duplicate.message().contains(&id), "{}", duplicate.message());

    let unknown = client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: "0123456789".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown
        .message()
        .contains("pod sandbox 0123456789 not found"));
    let unimplemented = client
        .checkpoint_container(cri::CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(unimplemented.code(), Code::Unimplemented);
    let empty_id = client
        .exec_sync(cri::ExecSyncRequest::default())
        .await
        .unwrap_err();
    assert_eq!(empty_id.code(), Code::InvalidArgument);
    assert!(empty_id.message().contains("container_id"), "{empty_id:?}");

    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    daemon.assert_clean();
}

/// A pod whose network config and CNI cache entry are both gone can no longer be DELeted
/// by any plugin; it must still stop and be removed (the lease is what may stay).
#[tokio::test]
async fn a_pod_whose_network_is_forgotten_still_stops_and_is_removed() {
    let daemon = Daemon::start().await;
    let mut client = daemon.client().await;
    let id = run_pod(&mut client, pod_config("forgotten", "uid-forgotten"))
        .await
        .unwrap();
    std::fs::remove_file(daemon.config.cni_conf_dir.join("10-pods.conflist")).unwrap();
    std::fs::remove_dir_all(daemon.config.cni_cache_dir()).unwrap();
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .expect("stop without a network to DEL");
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    assert_eq!(daemon.pause_processes(), Vec::<u32>::new());
    assert_eq!(files_under(&daemon.config.netns_dir), Vec::<PathBuf>::new());
    // The netns went with pause, and the veth pair with it (the kernel cleans up a dead
    // netns in the background, so give it a moment).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !daemon.node.veths().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(daemon.node.veths(), Vec::<String>::new());
    assert_eq!(
        files_under(&daemon.config.sandboxes_dir()),
        Vec::<PathBuf>::new()
    );
}

#[tokio::test]
async fn a_network_that_fails_rolls_the_whole_sandbox_back() {
    let daemon = Daemon::start_with_network(Some(vec![json!({ "type": "fake" })])).await;
    daemon.install_fake(
        "fake",
        json!({ "ADD": { "action": "error", "code": 11, "msg": "no capacity" } }),
    );
    let mut client = daemon.client().await;

    let err = run_pod(&mut client, pod_config("web", "u1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    for fragment in [
        "attach the pod network for pod sandbox",
        "(default/web)",
        "plugin fake failed (ADD)",
        "no capacity (code 11)",
    ] {
        assert!(
            err.message().contains(fragment),
            "{:?} lacks {fragment:?}",
            err.message()
        );
    }
    daemon.assert_clean();
    assert!(list(&mut client, cri::PodSandboxFilter::default())
        .await
        .is_empty());
    // SPEC: the failed ADD is cleaned by one DEL of the chain, not one per layer.
    let calls = std::fs::read_to_string(daemon.dir.path().join("bin/fake.log")).unwrap();
    let commands: Vec<String> = calls
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["command"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .filter(|c| c != "VERSION")
        .collect();
    assert_eq!(commands, ["ADD", "DEL"], "{calls}");

    // The name was given back: the same pod runs once the network works.
    daemon.install_fake("ok", json!({}));
    std::fs::remove_file(daemon.dir.path().join("bin/fake")).unwrap();
    std::os::unix::fs::symlink(
        daemon.dir.path().join("bin/ok"),
        daemon.dir.path().join("bin/fake"),
    )
    .unwrap();
    std::fs::write(daemon.dir.path().join("bin/fake.json"), "{}").unwrap();
    let id = run_pod(&mut client, pod_config("web", "u1"))
        .await
        .expect("run after the network recovered");
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    daemon.assert_clean();
}

#[tokio::test]
async fn a_restart_adopts_live_sandboxes_marks_dead_ones_and_cleans_orphans() {
    let mut daemon = Daemon::start().await;
    let mut client = daemon.client().await;
    let alive = run_pod(&mut client, pod_config("alive", "u1"))
        .await
        .unwrap();
    let dead = run_pod(&mut client, pod_config("dead", "u2"))
        .await
        .unwrap();
    let (alive_status, _) = status(&mut client, &alive).await.unwrap();
    let (_, dead_info) = status(&mut client, &dead).await.unwrap();
    drop(client);
    daemon.shutdown().await;

    // While the daemon is down: one pod's pause dies, and orphans appear.
    let dead_pid = dead_info["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dead_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let orphan_pin = daemon.config.netns_dir.join(sandboxd::runtime::new_id());
    sandboxd::netns::create(&orphan_pin).unwrap();
    // A name sandboxd never gives is someone else's (the dir may be /run/netns).
    let foreign_pin = daemon.config.netns_dir.join("someone-elses");
    sandboxd::netns::create(&foreign_pin).unwrap();
    let orphan_ns = Netns::new("sbt-orphan");
    let host = cni_host::CniHost::with_exec(
        daemon.config.cni_bin_dirs.clone(),
        daemon.config.cni_cache_dir(),
        cni_host::ProcessExec::in_netns(daemon.node.path()),
    );
    let network = cni_host::load_network(&daemon.config.cni_conf_dir, "pods").unwrap();
    let orphan_rt = cni_host::RuntimeConf::new(
        "orphan-attachment",
        orphan_ns.path().display().to_string(),
        "eth0",
    );
    let orphan_ip = host.add(&network, &orphan_rt).await.unwrap().ips[0]
        .address
        .addr
        .to_string();
    tokio::time::sleep(Duration::from_millis(100)).await;

    daemon.serve().await;
    let mut client = daemon.client().await;
    let (st, _) = status(&mut client, &alive).await.unwrap();
    assert_eq!(
        st.state,
        cri::PodSandboxState::SandboxReady as i32,
        "the live pod was not adopted"
    );
    assert_eq!(st.network.unwrap().ip, alive_status.network.unwrap().ip);
    let (st, _) = status(&mut client, &dead).await.unwrap();
    assert_eq!(
        st.state,
        cri::PodSandboxState::SandboxNotready as i32,
        "the dead pod is still READY"
    );
    assert!(
        !orphan_pin.exists(),
        "the orphaned pin survived the restart"
    );
    assert!(
        sandboxd::netns::is_pinned(&foreign_pin),
        "a pin sandboxd did not make was removed"
    );
    sandboxd::netns::unpin(&foreign_pin).unwrap();
    assert!(
        !ip_reservations(&daemon.dir.path().join("ipam")).contains(&orphan_ip),
        "the orphaned lease survived"
    );

    for id in [alive, dead] {
        client
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .expect("remove");
    }
    daemon.assert_clean();
}

#[tokio::test]
async fn a_second_daemon_on_the_same_socket_is_refused() {
    let daemon = Daemon::start().await;
    let err = sandboxd::server::bind(&daemon.config.socket)
        .err()
        .expect("a second bind must fail");
    assert!(
        err.to_string().contains("another sandboxd is serving"),
        "{err}"
    );
    // The first one still answers.
    daemon
        .client()
        .await
        .version(cri::VersionRequest::default())
        .await
        .expect("version");
}

#[tokio::test]
async fn a_hundred_run_remove_cycles_leak_nothing() {
    let daemon = Daemon::start().await;
    let mut client = daemon.client().await;
    for cycle in 0..100 {
        let id = run_pod(
            &mut client,
            pod_config(&format!("pod-{cycle}"), &format!("uid-{cycle}")),
        )
        .await
        .unwrap_or_else(|e| panic!("run {cycle}: {e}"));
        client
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .unwrap_or_else(|e| panic!("remove {cycle}: {e}"));
    }
    daemon.assert_clean();
}

// sandboxctl runs as a blocking child process; the daemon needs a thread of its own meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxctl_drives_the_daemon_like_crictl() {
    let daemon = Daemon::start().await;
    let endpoint = format!("unix://{}", daemon.config.socket.display());
    let sandboxctl = |args: &[&str]| sandboxctl(&endpoint, args);
    let pod_file = daemon.dir.path().join("pod.json");
    std::fs::write(
        &pod_file,
        json!({ "metadata": { "name": "pod-pause", "namespace": "default", "uid": "u-1" },
                "labels": { "app": "pause" },
                "port_mappings": [{ "protocol": "TCP", "container_port": 8080, "host_port": 18080 }] })
        .to_string(),
    )
    .unwrap();

    let (code, out, err) = sandboxctl(&["runp", pod_file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "runp: {err}");
    let id = out.trim().to_string();
    assert_eq!(id.len(), 64);
    let (_, out, _) = sandboxctl(&["pods", "--name", "pod-pause", "-q"]);
    assert_eq!(out.trim(), id);
    let (_, out, _) = sandboxctl(&["pods"]);
    assert!(
        out.starts_with("POD ID")
            && out.contains(&id[..12])
            && out.contains("Ready")
            && out.contains("pod-pause"),
        "{out}"
    );
    let (_, out, _) = sandboxctl(&["inspectp", &id[..8]]);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["status"]["state"], "SANDBOX_READY");
    assert!(doc["info"]["netnsPath"].as_str().unwrap().ends_with(&id));
    let (code, _, _) = sandboxctl(&["stopp", &id]);
    assert_eq!(code, Some(0));
    let (_, out, _) = sandboxctl(&["pods", "--state", "notready", "-q"]);
    assert_eq!(out.trim(), id);
    let (code, _, _) = sandboxctl(&["rmp", &id]);
    assert_eq!(code, Some(0));
    let (code, _, err) = sandboxctl(&["inspectp", &id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no pod sandbox has the id or name"), "{err}");
    let (code, _, err) = sandboxctl(&["runp", "/nonexistent.json"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent.json"), "{err}");
    daemon.assert_clean();
}

/// The official api.proto, as the k8s-cri crate ships it in Cargo's registry.
fn official_api_proto() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cargo"));
    let registry = cargo_home.join("registry/src");
    std::fs::read_dir(&registry)
        .expect("read Cargo's registry sources")
        .flatten()
        .flat_map(|index| {
            std::fs::read_dir(index.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|krate| krate.path().join("proto/v1.proto"))
        .find(|p| {
            p.parent()
                .and_then(|d| d.parent())
                .and_then(|d| d.file_name())
                .is_some_and(|n| n.to_string_lossy().starts_with("k8s-cri-"))
                && p.is_file()
        })
        .unwrap_or_else(|| {
            panic!(
                "k8s-cri's proto/v1.proto not found under {}",
                registry.display()
            )
        })
}

/// Message classes for Python from the official api.proto, compiled by `protoc`.
fn python_stubs(protoc: &[&str], dir: &Path) -> PathBuf {
    let stubs = dir.join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    let proto = official_api_proto();
    let out = std::process::Command::new(protoc[0])
        .args(&protoc[1..])
        .arg(format!("-I{}", proto.parent().unwrap().display()))
        .arg(format!("--python_out={}", stubs.display()))
        .arg(&proto)
        .output()
        .unwrap_or_else(|e| panic!("run {protoc:?}: {e}"));
    assert!(
        out.status.success(),
        "protoc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stubs
}

/// Runs tests/python/cri_client.py (the pod lifecycle) with `python` against the daemon,
/// sending `authority` as `:authority` if given, and checks what it printed.
fn python_client_drives_the_pod_lifecycle(
    daemon: &Daemon,
    python: &Path,
    stubs: &Path,
    authority: Option<&str>,
) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/cri_client.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(stubs)
        .arg(&daemon.config.socket)
        .args(authority)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client ({authority:?}) failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "version sandboxd");
    assert_eq!(lines[1], "run 64");
    assert!(
        lines[2].starts_with("status SANDBOX_READY 10.244.1."),
        "{}",
        lines[2]
    );
    assert_eq!(lines[3..], ["list 1", "removed", "attach NOT_FOUND"]);
}

// Python's grpcio is a client of another kind at the HTTP/2 layer (its :authority is the
// socket path); the Python runs as a child process while the daemon serves on a thread.
// Debian's grpcio 1.51 sends the path as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debians_grpcio_client_drives_the_pod_lifecycle() {
    let daemon = Daemon::start().await;
    let stubs = python_stubs(&["protoc"], daemon.dir.path());
    python_client_drives_the_pod_lifecycle(&daemon, Path::new("/usr/bin/python3"), &stubs, None);
    daemon.assert_clean();
}

/// A virtualenv with a current grpcio from PyPI, made once per target dir.
fn current_grpcio() -> PathBuf {
    sandboxd_tests::pypi_venv(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpcio-venv"),
        "grpc, grpc_tools",
        &["grpcio>=1.85", "grpcio-tools>=1.85"],
    )
}

// grpcio since 1.57 sends the %-encoded socket path (`tmp%2F…%2Fsandboxd.sock`) as
// :authority; a client may also send the raw path (grpc-java does), or a host name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_current_grpcio_client_is_served_whatever_authority_it_sends() {
    let daemon = Daemon::start().await;
    let python = current_grpcio();
    let protoc = python.to_str().unwrap();
    let stubs = python_stubs(&[protoc, "-m", "grpc_tools.protoc"], daemon.dir.path());
    let raw_path = daemon.config.socket.to_str().unwrap();
    for authority in [None, Some(raw_path), Some("localhost")] {
        python_client_drives_the_pod_lifecycle(&daemon, &python, &stubs, authority);
    }
    daemon.assert_clean();
}

// A request with no :authority at all (RFC 9113 lets a client leave it out): h2's client
// sends none for a URI that is only a path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_authority_is_served() {
    use prost::Message;
    let daemon = Daemon::start().await;
    let stream = tokio::net::UnixStream::connect(&daemon.config.socket)
        .await
        .unwrap();
    let (mut h2, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("/runtime.v1.RuntimeService/Version")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    assert!(request.uri().authority().is_none());
    let (response, mut body) = h2.send_request(request, false).unwrap();
    let message = cri::VersionRequest {
        version: "v1".into(),
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend(message);
    body.send_data(frame.into(), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    assert_eq!(trailers.get("grpc-status").unwrap(), "0", "{trailers:?}");
    let reply = cri::VersionResponse::decode(&bytes[5..]).unwrap();
    assert_eq!(reply.runtime_name, "sandboxd");
    daemon.assert_clean();
}

fn with_namespaces(
    mut config: cri::PodSandboxConfig,
    network: cri::NamespaceMode,
    pid: cri::NamespaceMode,
) -> cri::PodSandboxConfig {
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: network as i32,
                pid: pid as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// The namespace a `/proc/<pid>/ns/*` link or a pin refers to (its nsfs inode).
fn namespace_inode(path: impl AsRef<Path>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path.as_ref()).unwrap().ino()
}

#[tokio::test]
async fn a_pod_can_have_its_own_pid_namespace_or_the_nodes_network() {
    let daemon = Daemon::start().await;
    let mut client = daemon.client().await;

    // pid: POD makes pause PID 1 of a pid namespace of the pod's own.
    let config = with_namespaces(
        pod_config("shared-pid", "u1"),
        cri::NamespaceMode::Pod,
        cri::NamespaceMode::Pod,
    );
    let id = run_pod(&mut client, config)
        .await
        .expect("run with pid POD");
    let (st, info) = status(&mut client, &id).await.unwrap();
    let pid = info["pid"].as_u64().unwrap();
    let nspid = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = nspid
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap()
        .to_string();
    assert_eq!(
        nspid.split_whitespace().last(),
        Some("1"),
        "pause is not PID 1 of its namespace: {nspid}"
    );
    assert_ne!(
        namespace_inode(format!("/proc/{pid}/ns/pid")),
        namespace_inode("/proc/self/ns/pid")
    );
    let options = st.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(options.pid, cri::NamespaceMode::Pod as i32);
    assert!(st.network.unwrap().ip.starts_with("10.244.1."));

    // network: NODE puts pause in the node's network namespace, with no CNI attachment.
    let config = with_namespaces(
        pod_config("host-net", "u2"),
        cri::NamespaceMode::Node,
        cri::NamespaceMode::Container,
    );
    let host = run_pod(&mut client, config)
        .await
        .expect("run with network NODE");
    let (st, info) = status(&mut client, &host).await.unwrap();
    let host_pid = info["pid"].as_u64().unwrap();
    assert_eq!(
        namespace_inode(format!("/proc/{host_pid}/ns/net")),
        namespace_inode(daemon.node.path())
    );
    assert_eq!(
        namespace_inode(format!("/proc/{host_pid}/ns/pid")),
        namespace_inode("/proc/self/ns/pid")
    );
    assert_eq!(
        st.network.unwrap().ip,
        "",
        "a hostNetwork pod gets no pod IP"
    );
    assert!(info["netnsPath"].is_null());
    assert_eq!(
        daemon.node.veths().len(),
        1,
        "only the first pod has a veth"
    );

    let target = with_namespaces(
        pod_config("target", "u3"),
        cri::NamespaceMode::Pod,
        cri::NamespaceMode::Target,
    );
    let err = run_pod(&mut client, target).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("namespace_options.pid"),
        "{}",
        err.message()
    );

    for pod in [id, host] {
        client
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await
            .unwrap();
    }
    daemon.assert_clean();
}

/// Reads a sysctl inside the IPC and network namespaces of a process.
fn sysctl_of(pid: u64, path: &str) -> String {
    sandboxd_tests::run(
        "nsenter",
        &[
            &format!("--ipc=/proc/{pid}/ns/ipc"),
            &format!("--net=/proc/{pid}/ns/net"),
            "cat",
            path,
        ],
    )
    .split_whitespace()
    .collect::<Vec<_>>()
    .join(" ")
}

#[tokio::test]
async fn a_pods_sysctls_are_set_in_its_namespaces_and_a_node_wide_one_is_refused() {
    let daemon = Daemon::start().await;
    let mut client = daemon.client().await;
    let host_shm = std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").unwrap();
    let mut config = pod_config("tuned", "u-sysctl");
    config.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: [
            ("kernel.shm_rmid_forced", "1"),
            ("fs.mqueue.msg_max", "100"),
            ("net.ipv4.ip_local_port_range", "20000 30000"),
            ("net/ipv4/ip_unprivileged_port_start", "80"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..Default::default()
    });
    let id = run_pod(&mut client, config)
        .await
        .expect("run with sysctls");
    let (_, info) = status(&mut client, &id).await.unwrap();
    let pid = info["pid"].as_u64().unwrap();
    assert_eq!(sysctl_of(pid, "/proc/sys/kernel/shm_rmid_forced"), "1");
    assert_eq!(sysctl_of(pid, "/proc/sys/fs/mqueue/msg_max"), "100");
    assert_eq!(
        sysctl_of(pid, "/proc/sys/net/ipv4/ip_local_port_range"),
        "20000 30000"
    );
    assert_eq!(
        sysctl_of(pid, "/proc/sys/net/ipv4/ip_unprivileged_port_start"),
        "80"
    );
    // The node's own are untouched.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").unwrap(),
        host_shm
    );

    // A sysctl no pod namespace scopes, and a network one on the node's network: refused
    // by name, nothing made.
    for (sysctls, network, expected) in [
        (
            [("vm.swappiness", "10")],
            cri::NamespaceMode::Pod,
            "linux.sysctls[\"vm.swappiness\"]",
        ),
        (
            [("net.ipv4.ip_forward", "1")],
            cri::NamespaceMode::Node,
            "the pod uses the node's network",
        ),
    ] {
        let mut config = with_namespaces(
            pod_config("untuned", "u-sysctl-2"),
            network,
            cri::NamespaceMode::Container,
        );
        config.linux.as_mut().unwrap().sysctls = sysctls
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let error = run_pod(&mut client, config).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error:?}");
        assert!(error.message().contains(expected), "{}", error.message());
    }
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    daemon.assert_clean();
}

#[tokio::test]
async fn a_host_ipc_pod_shares_the_nodes_ipc_namespace_and_takes_no_ipc_sysctl() {
    let daemon = Daemon::start().await;
    let mut client = daemon.client().await;
    let mut config = pod_config("host-ipc", "u-host-ipc");
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                ipc: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let host_ipc = run_pod(&mut client, config.clone()).await.unwrap();
    let own_ipc = run_pod(&mut client, pod_config("own-ipc", "u-own-ipc"))
        .await
        .unwrap();
    let pid_of = |info: &Value| info["pid"].as_u64().unwrap();
    let (_, host_info) = status(&mut client, &host_ipc).await.unwrap();
    let (_, own_info) = status(&mut client, &own_ipc).await.unwrap();
    let node = namespace_inode("/proc/self/ns/ipc");
    assert_eq!(
        namespace_inode(format!("/proc/{}/ns/ipc", pid_of(&host_info))),
        node
    );
    assert_ne!(
        namespace_inode(format!("/proc/{}/ns/ipc", pid_of(&own_info))),
        node
    );
    // An IPC sysctl would change the node's IPC namespace: refused by name.
    let mut tuned = config;
    tuned.metadata.as_mut().unwrap().uid = "u-host-ipc-2".into();
    tuned.linux.as_mut().unwrap().sysctls =
        [("kernel.shm_rmid_forced".to_string(), "1".to_string())].into();
    let error = run_pod(&mut client, tuned).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(
        error.message().contains("the node's IPC namespace"),
        "{}",
        error.message()
    );
    for id in [host_ipc, own_ipc] {
        client
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .unwrap();
        client
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .unwrap();
    }
    daemon.assert_clean();
}
