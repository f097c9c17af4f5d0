//! Support for the integration tests: namespaces and dirs that are removed even when a test
//! fails (guards that clean up on drop), unique names, and counters for what could leak.
//!
//! Every test makes its own node netns (where bridges and host-side veths go) and pod netns,
//! so tests never touch the host's interfaces, routes or firewall, and can run in parallel.

pub mod cri;

/// Defines each named test (an `async fn(runtime_args: &[&str])`) twice: with sandboxd's
/// embedded OCI runtime (youki's libcontainer, the default) and with runc.
#[macro_export]
macro_rules! with_both_runtimes {
    ($($test:ident),* $(,)?) => {
        mod embedded_runtime {
            $(#[tokio::test]
            async fn $test() {
                super::$test(&[]).await
            })*
        }
        mod runc {
            $(#[tokio::test]
            async fn $test() {
                super::$test(&["--runtime", "runc"]).await
            })*
        }
    };
}
pub mod daemon;
pub mod lab;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use sandboxd::lab::machine::Machine;

/// A name no other test of this run or of a concurrent run uses: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command and returns its stdout; panics with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A virtualenv at `venv` with `packages` from PyPI (current clients, not Debian's), made
/// once (under a lock, for tests running at once) and kept; its python.
pub fn pypi_venv(venv: &Path, import: &str, packages: &[&str]) -> PathBuf {
    let python = venv.join("bin/python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", &format!("import {import}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let _lock = sandboxd::lockfile::lock(
        &venv.with_extension("lock"),
        sandboxd::lockfile::LockMode::Exclusive,
    )
    .expect("lock the virtualenv");
    if !ready(&python) {
        run(
            "/usr/bin/python3",
            &["-m", "venv", "--clear", venv.to_str().unwrap()],
        );
        let mut args = vec!["install", "--quiet"];
        args.extend_from_slice(packages);
        run(venv.join("bin/pip").to_str().unwrap(), &args);
    }
    python
}

pub fn require_root() {
    assert!(
        nix_is_root(),
        "integration tests need root: they create network namespaces (run them as root, as CI does)"
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// A test's machine (a node, a pod, a client): a [`Machine`] of the lab pinned in a
/// temporary dir, removed on drop with everything in it (interfaces, routes, firewall
/// rules), pass or fail. Not under /run/netns, so tests leave no trace in
/// `ip netns list`; enter it with `nsenter --net=<path>`.
pub struct Netns {
    pub name: String,
    machine: Machine,
    _dir: tempfile::TempDir,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        require_root();
        let name = unique_name(prefix);
        let dir = tempfile::Builder::new()
            .prefix("sbt-netns-")
            .tempdir()
            .expect("temp dir");
        let machine = Machine::create(dir.path().join(&name)).expect("create a netns");
        Netns {
            name,
            machine,
            _dir: dir,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.machine.path().to_path_buf()
    }

    /// As sandboxd's node network (`--node-netns`).
    pub fn node_netns(&self) -> sandboxd::node::NodeNetns {
        self.machine.netns()
    }

    /// Runs a command inside the namespace; panics with its stderr if it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        self.machine.exec(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Interface names in the namespace, without `lo`.
    pub fn links(&self) -> Vec<String> {
        self.machine.links().expect("list the links")
    }

    /// A default route out of a veth of its own ("uplink", 192.0.2.1/24, via .254), as a
    /// real node has: a ClusterIP without rules must be routed, so that it reaches the
    /// filter hooks, rather than fail the route lookup.
    pub fn add_default_route(&self) {
        for args in [
            &[
                "link",
                "add",
                "uplink",
                "type",
                "veth",
                "peer",
                "name",
                "uplink-peer",
            ][..],
            &["addr", "add", "192.0.2.1/24", "dev", "uplink"],
            &["link", "set", "uplink-peer", "up"],
            &["link", "set", "uplink", "up"],
            &["route", "add", "default", "via", "192.0.2.254"],
        ] {
            self.exec(&[&["ip"][..], args].concat());
        }
    }

    /// veth interfaces in the namespace.
    pub fn veths(&self) -> Vec<String> {
        self.exec(&["ip", "-o", "link", "show", "type", "veth"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = self.machine.clone().remove() {
            eprintln!("cannot remove test netns {}: {e:#}", self.name);
        }
    }
}

/// Files in a dir (recursively), sorted; an absent dir has none.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// host-local's reservations: files named after an IP in `<data dir>/<network>/`.
pub fn ip_reservations(ipam_dir: &Path) -> Vec<String> {
    files_under(ipam_dir)
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

/// Path of a binary of the workspace built beside the test executable (target/<profile>/).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (cargo build, or cargo test --workspace)",
        path.display()
    );
    path
}

/// A client we did not write, from cri-tools v1.26.1 (`crictl`, `critest`): `$CRICTL` /
/// `$CRITEST` if set, else the copy in `../shared/tools` beside the repository.
pub fn shared_tool(name: &str) -> PathBuf {
    let var = name.to_ascii_uppercase();
    let path = std::env::var_os(&var)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/tools")
                .join(name)
        });
    assert!(
        path.is_file(),
        "{name} is missing at {}: set ${var} to the cri-tools v1.26.1 binary",
        path.display()
    );
    path
}

/// Runs the workspace's sandboxctl against `endpoint`: (exit code, stdout, stderr).
pub fn sandboxctl(endpoint: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(workspace_binary("sandboxctl"))
        .arg("--runtime-endpoint")
        .arg(endpoint)
        .args(args)
        .output()
        .expect("run sandboxctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A minimal busybox root filesystem under `dir` (Debian's busybox-static and a few applets),
/// for images the container tests build.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("busybox-rootfs");
    for sub in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    for applet in [
        "sh", "hostname", "readlink", "cat", "grep", "echo", "printf", "sleep",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    root
}

/// A container of a pod, ready for an OCI runtime: a pause process (with `hostname`), a
/// busybox image imported into a store of its own, the image's overlayfs rootfs, and a bundle
/// running `sh -c <script>` joined to pause. Removed on drop (runc state, mount, pause).
/// Needs a tokio runtime (pause is reaped by a task).
pub struct TestContainer {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub rootfs: sandboxd::container::rootfs::Rootfs,
    pub pause: u32,
}

impl TestContainer {
    pub fn new(script: &str, hostname: &str) -> TestContainer {
        use sandboxd::image::{build, import::import, ImageConfig, ImageStore};
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("images")).unwrap();
        let layout = dir.path().join("layout");
        build::write_layout(
            &layout,
            "busybox",
            &[&busybox_rootfs(dir.path())],
            &ImageConfig::default(),
            true,
        )
        .unwrap();
        let image = import(&store, &layout, None).unwrap().remove(0);
        let layers = image
            .layers
            .iter()
            .rev()
            .map(|l| store.layer_path(&l.diff_id).unwrap())
            .collect();
        let namespaces = sandboxd::pause::PodNamespaces {
            hostname: Some(hostname.into()),
            ..Default::default()
        };
        let pause =
            sandboxd::pause::spawn(Path::new(pause::BUILT_BINARY), hostname, &namespaces).unwrap();
        tokio::spawn(sandboxd::pause::reap(pause));
        let bundle_dir = dir.path().join("bundle");
        let rootfs = sandboxd::container::rootfs::Rootfs::in_dir(
            layers,
            &dir.path().join("state"),
            &bundle_dir,
        );
        let container = TestContainer {
            id: unique_name("sbt-ctr"),
            dir,
            rootfs,
            pause,
        };
        container.rootfs.mount().unwrap();
        let process = sandboxd::container::bundle::ContainerProcess {
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            identity: Default::default(),
            hostname: hostname.into(),
            pause_pid: pause,
            pid: sandboxd::container::bundle::PidNamespace::Own,
            binds: Vec::new(),
            security: sandboxd::container::bundle::Security {
                no_new_privileges: true,
                ..Default::default()
            },
            resources: Default::default(),
            terminal: false,
            cgroups_path: None,
        };
        sandboxd::container::bundle::write(&bundle_dir, &process).unwrap();
        container
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `runc --root <own dir> <args>`.
    pub fn runc(&self, args: &[&str]) -> std::process::Output {
        Command::new("runc")
            .arg("--root")
            .arg(self.path("runc"))
            .args(args)
            .output()
            .unwrap()
    }

    /// The workspace's sandboxd-monitor for this container, with runc, logging to
    /// `container.log`, recording the exit in `exit.json`, serving attaches on
    /// `attach.sock`.
    pub fn monitor(&self) -> Command {
        let mut command = Command::new(workspace_binary("sandboxd-monitor"));
        command
            .args(["--id", &self.id, "--runtime", "runc"])
            .arg("--bundle")
            .arg(self.path("bundle"))
            .arg("--runtime-root")
            .arg(self.path("runc"))
            .arg("--log")
            .arg(self.path("container.log"))
            .arg("--exit-file")
            .arg(self.path("exit.json"))
            .arg("--attach-socket")
            .arg(self.path("attach.sock"));
        command
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = self.runc(&["delete", "--force", &self.id]);
        let _ = self.rootfs.unmount();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pause as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Answers every TCP connection to `port` in `netns`, over IPv4 and IPv6 (one socket on
/// `::`), with "pong from <name>".
pub fn serve(netns: &Path, port: u16, name: &'static str) {
    use std::io::Write;
    let listener = sandboxd::netns::run_in(Some(netns), move || {
        std::net::TcpListener::bind(("::", port))
    })
    .expect("listen in the namespace");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(format!("pong from {name}\n").as_bytes());
        }
    });
}

/// What a TCP connection from `netns` to `address` (`IP:PORT`, `[IPv6]:PORT`) reads, or
/// the error.
pub fn call_from(netns: &Path, address: &str) -> String {
    let address: std::net::SocketAddr = address.parse().expect("a socket address");
    sandboxd::netns::run_in(Some(netns), move || {
        let timeout = std::time::Duration::from_secs(2);
        let mut tcp = std::net::TcpStream::connect_timeout(&address, timeout)?;
        tcp.set_read_timeout(Some(timeout))?;
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut tcp, &mut answer)?;
        Ok(answer)
    })
    .unwrap_or_else(|e| format!("error: {e}"))
}

/// What one HTTP request from inside a namespace came to.
#[derive(Debug, Clone)]
pub struct Fetch {
    pub answered: bool,
    /// The response body, or the error.
    pub body: String,
    pub took: std::time::Duration,
}

/// `GET /hostname` to `addr` from inside the namespace at `netns`, by a thread that joins
/// it (busybox wget's -T crashes on Debian 12). The thread runs on CPU 0, so that with
/// [`process_packets_elsewhere`] the node handles its packets on another CPU.
pub fn fetch_in(netns: &Path, addr: &str) -> Fetch {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let path = netns.to_path_buf();
    let addr: std::net::SocketAddr = addr.parse().expect("a socket address");
    std::thread::spawn(move || {
        let netns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut cpu0 = nix::sched::CpuSet::new();
        if cpu0.set(0).is_ok() {
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu0);
        }
        let start = Instant::now();
        let attempt = || -> std::io::Result<String> {
            let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            stream.write_all(b"GET /hostname HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.trim().to_string())
                .unwrap_or(response))
        };
        match attempt() {
            Ok(body) => Fetch {
                answered: true,
                body,
                took: start.elapsed(),
            },
            Err(e) => Fetch {
                answered: false,
                body: e.to_string(),
                took: start.elapsed(),
            },
        }
    })
    .join()
    .unwrap()
}

/// Has the namespace process the packets its interfaces receive on CPU 1 (RPS), as a
/// machine with a real NIC would: with everything on one CPU, a veth's packet is handled
/// while its sender is still inside connect(), and Linux holds back an ICMP error that
/// arrives then (the socket is busy) until the first SYN retransmission, one second
/// later. False on a single-CPU machine, where that second stays.
pub fn process_packets_elsewhere(ns: &Netns) -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return false;
    }
    let script = "mount -t sysfs sysfs /sys && for q in /sys/class/net/*/queues/rx-*; do \
                  case $q in */lo/*) ;; *) echo 2 > $q/rps_cpus ;; esac; done";
    let net = format!("--net={}", ns.path().display());
    run("nsenter", &[&net, "unshare", "--mount", "sh", "-c", script]);
    true
}
