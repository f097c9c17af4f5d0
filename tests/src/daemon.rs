//! sandboxd as a separate process on a node of its own (a network namespace), with its
//! own socket, state, pins, OCI runtime root and copy of pause under one temp dir, and the
//! demo images in its store. Tests can kill -9 it and start it again. Dropping it removes
//! everything it left: containers, monitors, pause processes, mounts, whatever state the
//! test ended in.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::{require_root, workspace_binary, Netns};

/// Debian's CNI plugins.
pub const UPSTREAM_BIN_DIR: &str = "/usr/lib/cni";

pub struct SandboxdProcess {
    pub dir: tempfile::TempDir,
    pub node: Netns,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// Environment variables the daemon is started with (a fault point, say).
    env: Vec<(String, String)>,
    /// Whether a shared netns dir (such as /run/netns) was a mount point before the daemon
    /// made it one: if not, it is unmounted again once empty.
    netns_dir_was_mounted: bool,
}

impl SandboxdProcess {
    /// A node with the pod network 10.244.1.0/24 on cni0 (bridge in hairpin mode, as
    /// sandboxd's default network and kubelet's hairpin-veth have it, so a pod reaches
    /// itself through a service; portmap; loopback), the demo images imported, and
    /// sandboxd serving on it.
    pub fn start() -> SandboxdProcess {
        Self::start_with(&[])
    }

    /// As [`start`](Self::start), with more sandboxd flags.
    pub fn start_with(extra_args: &[&str]) -> SandboxdProcess {
        require_root();
        let node = Netns::new("sbt-node");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy(pause::BUILT_BINARY, dir.path().join("pause")).expect("copy pause");
        std::fs::create_dir_all(dir.path().join("net.d")).unwrap();
        let doc = json!({ "cniVersion": "1.0.0", "name": "pods", "plugins": [
            { "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
              "hairpinMode": true,
              "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.244.1.0/24" }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": dir.path().join("ipam") } },
            { "type": "portmap", "capabilities": { "portMappings": true } },
            { "type": "loopback" }
        ]});
        std::fs::write(dir.path().join("net.d/10-pods.conflist"), doc.to_string()).unwrap();
        let images = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/build-images.sh"))
            .arg("--store")
            .arg(dir.path().join("state/images"))
            .arg("--no-build")
            .env(
                "SANDBOXD_BIN_DIR",
                workspace_binary("sandboxctl").parent().unwrap(),
            )
            .output()
            .expect("run build-images.sh");
        assert!(
            images.status.success(),
            "build-images.sh: {}",
            String::from_utf8_lossy(&images.stderr)
        );
        let mut daemon = SandboxdProcess {
            dir,
            node,
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            netns_dir_was_mounted: false,
        };
        let netns_dir = daemon.netns_dir();
        daemon.netns_dir_was_mounted = mounts_under(&netns_dir).contains(&netns_dir);
        daemon.spawn();
        daemon
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("run/sandboxd.sock")
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Starts sandboxd and waits until it serves.
    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("sandboxd.log"))
            .unwrap();
        let child = Command::new(workspace_binary("sandboxd"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--netns-dir")
            .arg(self.netns_dir())
            .arg("--cni-conf-dir")
            .arg(self.path("net.d"))
            .arg("--cni-bin-dir")
            .arg(UPSTREAM_BIN_DIR)
            .arg("--node-netns")
            .arg(self.node.path())
            .arg("--pause")
            .arg(self.path("pause"))
            .arg("--runtime-root")
            .arg(self.path("runtime"))
            .args(["--default-network", "0"])
            .args(self.other_args())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start sandboxd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket().exists() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sandboxd exited ({status}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "sandboxd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The socket is bound before recovery and the service proxy's sync: an answer
        // means both are done.
        let (code, _, err) = self.sandboxctl(&["version"]);
        assert_eq!(
            code,
            Some(0),
            "sandboxd does not answer: {err}\n{}",
            self.log()
        );
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("sandboxd runs").id()
    }

    /// Stops sandboxd (kill -9) and starts it again with other extra flags.
    pub fn respawn_with(&mut self, extra_args: &[&str]) {
        self.kill9();
        self.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
        self.spawn();
    }

    /// Stops sandboxd (kill -9) and starts it again with these environment variables
    /// (and the same flags).
    pub fn respawn_with_env(&mut self, env: &[(&str, &str)]) {
        self.kill9();
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.spawn();
    }

    /// Waits until sandboxd has died of SIGKILL (a fault point it was told to stop at).
    pub fn wait_killed(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        let mut child = self.child.take().expect("sandboxd runs");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert_eq!(
                    status.signal(),
                    Some(9),
                    "sandboxd ended otherwise ({status}): {}",
                    self.log()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sandboxd did not reach its fault point: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything of this daemon's that could leak, one line each: processes (pause,
    /// monitors, containers), veths on the node, IP leases, CNI cache entries, netns pins,
    /// mounts but the netns dir, sandbox and container dirs, the OCI runtime's state.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found: Vec<String> = self
            .processes()
            .into_iter()
            .map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                format!(
                    "process {pid}: {}",
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                )
            })
            .collect();
        found.extend(self.node.veths().into_iter().map(|v| format!("veth {v}")));
        found.extend(
            crate::ip_reservations(&self.path("ipam"))
                .into_iter()
                .map(|ip| format!("IP lease {ip}")),
        );
        let entries = |dir: PathBuf| -> Vec<String> {
            std::fs::read_dir(&dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path().display().to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        found.extend(
            crate::files_under(&self.path("state/cni/results"))
                .into_iter()
                .map(|p| format!("CNI cache entry {}", p.display())),
        );
        for (what, dir) in [
            ("netns pin", self.netns_dir()),
            ("sandbox dir", self.path("state/sandboxes")),
            ("container dir", self.path("state/containers")),
            ("runtime state", self.path("runtime")),
        ] {
            found.extend(entries(dir).into_iter().map(|p| format!("{what} {p}")));
        }
        found.extend(
            self.mounts()
                .into_iter()
                .filter(|m| *m != self.netns_dir())
                .map(|m| format!("mount {}", m.display())),
        );
        found
    }

    /// What sandboxd printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("sandboxd.log")).unwrap_or_default()
    }

    /// kill -9, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn client(&self) -> RuntimeServiceClient<Channel> {
        sandboxd::client::connect(&self.endpoint())
            .await
            .expect("connect")
    }

    /// `sandboxctl --runtime-endpoint <this> <args>`: (exit code, stdout, stderr).
    pub fn sandboxctl(&self, args: &[&str]) -> (Option<i32>, String, String) {
        crate::sandboxctl(&self.endpoint(), args)
    }

    /// Processes started for this daemon: pause (its own copy), monitors and containers
    /// (by their paths under the temp dir).
    pub fn processes(&self) -> Vec<u32> {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let pause = self.path("pause");
        let me = std::process::id();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != me && Some(*pid) != self.child.as_ref().map(|c| c.id()))
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == pause)
                    || String::from_utf8_lossy(&cmdline).contains(&dir)
            })
            .filter(|pid| {
                !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z ")
            })
            .collect()
    }

    /// Where this daemon pins pod netns: its own dir, unless `--netns-dir` was passed.
    pub fn netns_dir(&self) -> PathBuf {
        self.flag("--netns-dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.path("run/netns"))
    }

    /// The OCI runtime containers run with: `--runtime`, else the embedded one.
    pub fn oci_runtime(&self) -> PathBuf {
        self.flag("--runtime")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_binary("sandboxd-runtime"))
    }

    fn flag(&self, name: &str) -> Option<&String> {
        self.extra_args
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.extra_args.get(i + 1))
    }

    /// The extra flags but `--netns-dir`, which [`netns_dir`](Self::netns_dir) gives.
    fn other_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut given = self.extra_args.iter();
        while let Some(arg) = given.next() {
            if arg == "--netns-dir" {
                given.next();
            } else {
                args.push(arg.clone());
            }
        }
        args
    }

    /// Mount points under the temp dir.
    pub fn mounts(&self) -> Vec<PathBuf> {
        mounts_under(self.dir.path())
    }
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

impl Drop for SandboxdProcess {
    fn drop(&mut self) {
        self.kill9();
        let runtime_root = self.path("runtime");
        if let Ok(entries) = std::fs::read_dir(&runtime_root) {
            for entry in entries.flatten() {
                let _ = Command::new(self.oci_runtime())
                    .arg("--root")
                    .arg(&runtime_root)
                    .args(["delete", "--force"])
                    .arg(entry.file_name())
                    .output();
            }
        }
        for pid in self.processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Pins of this daemon's pods in a shared netns dir (such as /run/netns).
        if let Ok(records) = std::fs::read_dir(self.path("state/sandboxes")) {
            for record in records.flatten() {
                let pin = self.netns_dir().join(record.file_name());
                let _ = nix::mount::umount2(&pin, nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_file(&pin);
            }
        }
        for mount in self.mounts() {
            let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
        }
        if !self.netns_dir_was_mounted {
            let _ = sandboxd::netns::release_dir(&self.netns_dir());
        }
    }
}
