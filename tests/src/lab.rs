//! A lab of the test's own: rooted in a temp dir (so its nodes are not named in
//! /run/netns and labs of concurrent tests never meet), with the demo images in every
//! node, brought down on drop, pass or fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sandboxd::lab::{Lab, LabState, UpSpec};
use sandboxd::overlay::Backend;

use crate::{require_root, workspace_binary};

/// The demo images, built once per test process, in the target dir beside the workspace's
/// binaries (one dir per test binary, replaced by its next run): a static is never
/// dropped, so a temp dir would be left behind by every run.
fn demo_images() -> &'static Path {
    static IMAGES: OnceLock<PathBuf> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let bin_dir = workspace_binary("sandboxctl")
            .parent()
            .unwrap()
            .to_path_buf();
        let test = std::env::current_exe().expect("current exe");
        let dir = bin_dir
            .join("lab-images")
            .join(test.file_name().expect("a test binary"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let built = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/build-images.sh"))
            .arg("--store")
            .arg(dir.join("images"))
            .arg("--no-build")
            .env("SANDBOXD_BIN_DIR", &bin_dir)
            .output()
            .expect("run build-images.sh");
        assert!(
            built.status.success(),
            "build-images.sh: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        dir
    })
}

pub struct TestLab {
    pub lab: Lab,
    pub state: LabState,
    _dir: tempfile::TempDir,
}

impl TestLab {
    pub fn up(nodes: u32, backend: Backend) -> TestLab {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("sbt-lab-")
            .tempdir()
            .unwrap();
        let lab = Lab::at(&dir.path().join("lab"));
        let spec = UpSpec {
            nodes,
            backend,
            images: Some(demo_images().join("images")),
        };
        let state = lab.up(&spec, &mut |_| {}).expect("lab up");
        TestLab {
            lab,
            state,
            _dir: dir,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.lab.root().to_path_buf()
    }

    /// `sandboxctl ARGS` against this lab (its root in SANDBOXD_LAB_DIR).
    pub fn sandboxctl(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(workspace_binary("sandboxctl"))
            .args(args)
            .env("SANDBOXD_LAB_DIR", self.root())
            .env_remove("CONTAINER_RUNTIME_ENDPOINT")
            .output()
            .expect("run sandboxctl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Applies the seeds' cross-node manifests unchanged: pod-dest (k8s-node1), pod-src
    /// (k8s-node2), svc-clusterip and svc-nodeport.
    pub fn apply_seeds_cross_node_manifests(&self) {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for manifest in [
            "pod-dest.yaml",
            "pod-src.yaml",
            "svc-clusterip.yaml",
            "svc-nodeport.yaml",
        ] {
            self.ok(&["apply", "-f", examples.join(manifest).to_str().unwrap()]);
        }
    }

    /// `sandboxctl ARGS` that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.sandboxctl(args);
        if code != Some(0) {
            for node in &self.state.nodes {
                let log = self.lab.node_dir(&node.name).join("sandboxd.log");
                eprintln!(
                    "--- sandboxd on {}:\n{}",
                    node.name,
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
        assert_eq!(code, Some(0), "sandboxctl {args:?}: {err}{out}");
        out
    }

    /// A command in node `node`'s namespace; its stdout.
    pub fn on_node(&self, node: &str, args: &[&str]) -> String {
        self.lab
            .machine(node)
            .exec(args)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The pinned network namespace of the only pod on `node`.
    pub fn pod_netns(&self, node: &str) -> PathBuf {
        let pods: Vec<PathBuf> = std::fs::read_dir(self.lab.node_dir(node).join("pods"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(pods.len(), 1, "pods on {node}: {pods:?}");
        pods[0].clone()
    }

    /// Brings the lab down now and checks nothing of it is left.
    pub fn down_and_check(&self) {
        self.lab.down(&mut |_| {}).expect("lab down");
        let root = self.root();
        assert!(!root.exists(), "{} is left", root.display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&root.display().to_string()),
            "mounts under {} are left",
            root.display()
        );
        for node in &self.state.nodes {
            if let Some(daemon) = node.daemon {
                assert!(!daemon.is_alive(), "sandboxd of {} still runs", node.name);
            }
        }
        if let Some(etcd) = self.state.etcd {
            assert!(!etcd.is_alive(), "etcd still runs");
        }
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Err(e) = self.lab.down(&mut |_| {}) {
            eprintln!("lab down at {}: {e:#}", self.root().display());
        }
    }
}
