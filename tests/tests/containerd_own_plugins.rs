//! A runtime we did not write runs pods on sandboxd-cni: Debian's containerd 1.6 (its CRI
//! plugin, go-cni and libcni, driven by the real crictl), with only sandboxd-cni's plugins
//! in its CNI bin dir, in a node network namespace of the test's own. Each pod gets an
//! address from host-local, answers a ping from the node, has its hostPort forwarded in
//! nftables, and leaves nothing once removed. Needs root and containerd
//! (`install-deps.sh --checks`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sandboxd_tests::{ip_reservations, shared_tool, workspace_binary, Netns};
use serde_json::{json, Value};

/// containerd with its own root, state and socket under a temp dir, in `node`.
struct Containerd {
    node: Netns,
    dir: tempfile::TempDir,
    daemon: std::process::Child,
}

impl Containerd {
    fn start(conflist: &Value) -> Containerd {
        assert!(
            Path::new("/usr/bin/containerd").is_file(),
            "containerd is missing: scripts/install-deps.sh --checks installs it"
        );
        let node = Netns::new("sbt-node");
        node.exec(&["ip", "link", "set", "lo", "up"]);
        let dir = tempfile::Builder::new()
            .prefix("sbt-containerd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let bin = d.join("cni-bin");
        std::fs::create_dir_all(&bin).unwrap();
        for plugin in ["bridge", "host-local", "loopback", "portmap", "ptp"] {
            std::os::unix::fs::symlink(workspace_binary("sandboxd-cni"), bin.join(plugin)).unwrap();
        }
        std::fs::create_dir_all(d.join("net.d")).unwrap();
        std::fs::write(d.join("net.d/10-pods.conflist"), conflist.to_string()).unwrap();
        std::fs::write(
            d.join("config.toml"),
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "sandboxd.local/pause:test"
  # pause gets oom_score_adj -998 otherwise, which root without CAP_SYS_RESOURCE (in a
  # container, as CI may be) cannot set.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/net.d"
"#,
                d = d.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let daemon = Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .args(["containerd", "--config"])
            .arg(d.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let containerd = Containerd { node, dir, daemon };
        let socket = containerd.socket();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        containerd.import_pause_image();
        containerd
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// This repository's pause, packed as an OCI image and imported as the sandbox image.
    fn import_pause_image(&self) {
        let d = self.dir.path();
        std::fs::create_dir_all(d.join("pause-rootfs")).unwrap();
        std::fs::copy(pause::BUILT_BINARY, d.join("pause-rootfs/pause")).unwrap();
        let packed = Command::new(workspace_binary("oci-pack"))
            .arg("--out")
            .arg(d.join("pause-layout"))
            .args(["--name", "sandboxd.local/pause:test", "--layer"])
            .arg(d.join("pause-rootfs"))
            .args(["--entrypoint", "/pause"])
            .output()
            .unwrap();
        assert!(packed.status.success(), "{packed:?}");
        let tar = d.join("pause.tar");
        sandboxd_tests::run(
            "tar",
            &[
                "-C",
                d.join("pause-layout").to_str().unwrap(),
                "-cf",
                tar.to_str().unwrap(),
                ".",
            ],
        );
        let ctr = |args: &[&str]| {
            let socket = self.socket();
            let mut all = vec!["--address", socket.to_str().unwrap(), "-n", "k8s.io"];
            all.extend_from_slice(args);
            sandboxd_tests::run("ctr", &all)
        };
        ctr(&[
            "images",
            "import",
            "--base-name",
            "sandboxd.local/pause",
            "--digests",
            tar.to_str().unwrap(),
        ]);
        let digest = ctr(&["images", "ls", "-q"])
            .lines()
            .find(|l| l.starts_with("sandboxd.local/pause@"))
            .expect("the imported pause image")
            .to_string();
        ctr(&[
            "images",
            "tag",
            "--force",
            &digest,
            "sandboxd.local/pause:test",
        ]);
    }

    /// `crictl <args>` against this containerd: stdout, which must succeed.
    fn crictl(&self, args: &[&str]) -> String {
        let endpoint = format!("unix://{}", self.socket().display());
        let out = Command::new(shared_tool("crictl"))
            .args(["--runtime-endpoint", &endpoint, "--timeout", "60s"])
            .args(args)
            .output()
            .expect("run crictl");
        assert!(
            out.status.success(),
            "crictl {args:?} failed: {}\ncontainerd's log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn run_pod(&self, name: &str, host_port: u16) -> String {
        let config = self.dir.path().join(format!("{name}.json"));
        std::fs::write(
            &config,
            json!({
                "metadata": { "name": name, "namespace": "default", "uid": name },
                "port_mappings": [{ "protocol": 0, "container_port": 80, "host_port": host_port }],
                "linux": {}
            })
            .to_string(),
        )
        .unwrap();
        self.crictl(&["runp", config.to_str().unwrap()])
    }

    fn pod_ip(&self, id: &str) -> String {
        let status: Value = serde_json::from_str(&self.crictl(&["inspectp", id])).unwrap();
        status["status"]["network"]["ip"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A failed test still removes its pods (their netns, veths, leases, shims).
        let endpoint = format!("unix://{}", self.socket().display());
        for verb in ["stopp", "rmp"] {
            let _ = Command::new(shared_tool("crictl"))
                .args([
                    "--runtime-endpoint",
                    &endpoint,
                    "--timeout",
                    "30s",
                    verb,
                    "-a",
                ])
                .output();
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let ours = self.dir.path().display().to_string();
        let shims = Command::new("pgrep")
            .args(["-f", "containerd-shim"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in shims.lines() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&ours) {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&ours))
            .collect();
        under.sort_by(|a, b| b.cmp(a));
        for mount in under {
            let _ = Command::new("umount").args(["-l", mount]).status();
        }
    }
}

#[test]
fn containerd_runs_pods_on_sandboxd_cni() {
    let ipam = tempfile::tempdir().unwrap();
    let conflist = json!({
        "cniVersion": "1.0.0", "name": "pods",
        "plugins": [
            { "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
              "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.88.7.0/24" }]],
                        "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": ipam.path() } },
            { "type": "portmap", "capabilities": { "portMappings": true } },
            { "type": "loopback" }
        ]
    });
    let containerd = Containerd::start(&conflist);
    let node = &containerd.node;

    let first = containerd.run_pod("web-1", 18081);
    let second = containerd.run_pod("web-2", 18082);
    let (ip1, ip2) = (containerd.pod_ip(&first), containerd.pod_ip(&second));
    assert!(
        ip1.starts_with("10.88.7.") && ip2.starts_with("10.88.7.") && ip1 != ip2,
        "pod IPs {ip1:?} and {ip2:?}"
    );
    let mut leased = ip_reservations(ipam.path());
    leased.sort();
    let mut expected = vec![ip1.clone(), ip2.clone()];
    expected.sort();
    assert_eq!(leased, expected, "host-local's lease files");
    // The pods answer on the node's bridge, where sandboxd-cni's bridge put them.
    for ip in [&ip1, &ip2] {
        node.exec(&["ping", "-c", "1", "-W", "2", ip]);
    }
    let ruleset = node.exec(&["nft", "list", "ruleset"]);
    for (id, port) in [(&first, 18081), (&second, 18082)] {
        assert!(
            ruleset.contains(&format!("hp/{id}/tcp/{port}")),
            "no hostPort chain for {id}: {ruleset}"
        );
        assert!(
            ruleset.contains(&format!("masq/pods/{id}/eth0/")),
            "no masquerade chain for {id}"
        );
    }

    for id in [&first, &second] {
        containerd.crictl(&["stopp", id]);
        containerd.crictl(&["rmp", id]);
    }
    assert_eq!(node.veths(), Vec::<String>::new(), "veths left on the node");
    assert_eq!(
        ip_reservations(ipam.path()),
        Vec::<String>::new(),
        "leases left"
    );
    let ruleset = node.exec(&["nft", "list", "ruleset"]);
    assert!(
        !ruleset.contains(&first) && !ruleset.contains(&second),
        "rules left: {ruleset}"
    );
}
