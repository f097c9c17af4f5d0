//! Support for the integration tests: namespaces and dirs that are removed even when a test
//! fails (guards that clean up on drop), unique names, and counters for what could leak.
//!
//! Every test makes its own node netns (where bridges and host-side veths go) and pod netns,
//! so tests never touch the host's interfaces, routes or firewall, and can run in parallel.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

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

/// A network namespace pinned in a temporary dir, removed on drop with everything in it
/// (interfaces, routes, firewall rules): a test's node or pod. Not under /run/netns, so
/// tests leave no trace in `ip netns list`; enter it with `nsenter --net=<path>`.
pub struct Netns {
    pub name: String,
    dir: tempfile::TempDir,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        require_root();
        let name = unique_name(prefix);
        let dir = tempfile::Builder::new()
            .prefix("sbt-netns-")
            .tempdir()
            .expect("temp dir");
        sandboxd::netns::create(&dir.path().join(&name)).expect("create a netns");
        let ns = Netns { name, dir };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join(&self.name)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> String {
        let net = format!("--net={}", self.path().display());
        let mut all = vec![net.as_str(), "--"];
        all.extend_from_slice(args);
        run("nsenter", &all)
    }

    /// Interface names in the namespace, without `lo`.
    pub fn links(&self) -> Vec<String> {
        self.exec(&["ip", "-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n != "lo")
            .collect()
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
        if let Err(e) = sandboxd::netns::unpin(&self.path()) {
            eprintln!("cannot remove test netns {}: {e}", self.name);
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
