//! sandboxd-monitor with runc: it creates the container, holds its output in the CRI log
//! format, and records the exit code, including a kill's 128 + signal. Needs root, runc and
//! busybox-static.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandboxd::container::bundle::{self, ContainerProcess};
use sandboxd::container::rootfs::Rootfs;
use sandboxd::image::{build, import::import, ImageConfig, ImageStore};
use sandboxd_tests::{busybox_rootfs, require_root, unique_name, workspace_binary};
use serde_json::Value;

/// A pause, a busybox rootfs and a bundle running `script`; removed on drop.
struct Container {
    id: String,
    dir: tempfile::TempDir,
    rootfs: Rootfs,
    pause: u32,
}

impl Container {
    async fn new(script: &str) -> Container {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("images")).unwrap();
        let layout = dir.path().join("layout");
        build::write_layout(
            &layout,
            "busybox",
            &[&busybox_rootfs(dir.path())],
            &ImageConfig::default(),
            false,
        )
        .unwrap();
        let image = import(&store, &layout, None).unwrap().remove(0);
        let layers = image
            .layers
            .iter()
            .rev()
            .map(|l| store.layer_path(&l.diff_id).unwrap())
            .collect();
        let pause =
            sandboxd::pause::spawn(Path::new(pause::BUILT_BINARY), "mon", &Default::default())
                .unwrap();
        tokio::spawn(sandboxd::pause::reap(pause));
        let bundle_dir = dir.path().join("bundle");
        let rootfs = Rootfs::in_dir(layers, &dir.path().join("state"), &bundle_dir);
        let container = Container {
            id: unique_name("sbt-mon"),
            dir,
            rootfs,
            pause,
        };
        container.rootfs.mount().unwrap();
        let process = ContainerProcess {
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            pause_pid: pause,
            share_pod_pid: false,
        };
        bundle::write(&bundle_dir, &process).unwrap();
        container
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn runc(&self, args: &[&str]) -> std::process::Output {
        Command::new("runc")
            .arg("--root")
            .arg(self.path("runc"))
            .args(args)
            .output()
            .unwrap()
    }

    /// Starts the monitor and returns the container's pid once it is created.
    fn create(&self) -> u32 {
        let mut monitor = Command::new(workspace_binary("sandboxd-monitor"))
            .args(["--id", &self.id, "--runtime", "runc"])
            .arg("--bundle")
            .arg(self.path("bundle"))
            .arg("--runtime-root")
            .arg(self.path("runc"))
            .arg("--log")
            .arg(self.path("container.log"))
            .arg("--exit-file")
            .arg(self.path("exit.json"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(monitor.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Ok(pid) = line.trim().parse() else {
            let out = monitor.wait_with_output().unwrap();
            panic!(
                "the monitor printed no pid: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        // The monitor is reaped by a thread; it lives as long as the container.
        std::thread::spawn(move || monitor.wait());
        pid
    }

    fn exit_record(&self) -> Value {
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(self.path("exit.json")) {
                return serde_json::from_str(&text).unwrap();
            }
            assert!(start.elapsed() < Duration::from_secs(15), "no exit file");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.runc(&["delete", "--force", &self.id]);
        let _ = self.rootfs.unmount();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pause as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_goes_to_the_cri_log_and_the_exit_code_is_kept() {
    let container = Container::new("echo out; echo err >&2; printf partial; exit 3").await;
    let pid = container.create();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let started = container.runc(&["start", &container.id]);
    assert!(
        started.status.success(),
        "runc start: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let exit = container.exit_record();
    assert_eq!(exit["exit_code"], 3);
    assert!(exit["signal"].is_null());

    let log = std::fs::read_to_string(container.path("container.log")).unwrap();
    let lines: Vec<(String, String, String)> = log
        .lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let time = parts.next().unwrap().to_string();
            assert!(
                time.ends_with('Z') && time.len() == 30,
                "not an RFC 3339 time with nanoseconds: {time}"
            );
            let stream = parts.next().unwrap().to_string();
            let tag = parts.next().unwrap().to_string();
            (stream, tag, parts.next().unwrap_or("").to_string())
        })
        .collect();
    let has = |stream: &str, tag: &str, text: &str| {
        lines
            .iter()
            .any(|l| l == &(stream.to_string(), tag.to_string(), text.to_string()))
    };
    assert!(has("stdout", "F", "out"), "{log}");
    assert!(has("stderr", "F", "err"), "{log}");
    assert!(has("stdout", "P", "partial"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_records_128_plus_the_signal() {
    let container = Container::new("echo started; exec sleep 100").await;
    container.create();
    assert!(container.runc(&["start", &container.id]).status.success());
    let start = Instant::now();
    while !std::fs::read_to_string(container.path("container.log"))
        .unwrap_or_default()
        .contains("started")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the container did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = container.runc(&["kill", &container.id, "KILL"]);
    assert!(
        killed.status.success(),
        "runc kill: {}",
        String::from_utf8_lossy(&killed.stderr)
    );
    let exit = container.exit_record();
    assert_eq!(exit["exit_code"], 137);
    assert_eq!(exit["signal"], 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_is_reported_with_the_runtimes_message() {
    let container = Container::new("true").await;
    // A bundle whose rootfs is not there cannot be created.
    container.rootfs.unmount().unwrap();
    std::fs::remove_dir(&container.rootfs.target).unwrap();
    let out = Command::new(workspace_binary("sandboxd-monitor"))
        .args(["--id", &container.id, "--runtime", "runc"])
        .arg("--bundle")
        .arg(container.path("bundle"))
        .arg("--runtime-root")
        .arg(container.path("runc"))
        .arg("--log")
        .arg(container.path("container.log"))
        .arg("--exit-file")
        .arg(container.path("exit.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("runc create {} failed", container.id)),
        "{stderr}"
    );
    assert!(!container.path("exit.json").exists());
}
