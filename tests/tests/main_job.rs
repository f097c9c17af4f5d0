//! The seeds' walk-throughs on a node alone, `examples/pod-pause-demo.sh` and
//! `examples/service-demo.sh` (the main job, on a lab, is `tests/lab_demo.rs`).
//! Needs root; uses the fixed paths the demo documents (`/run/sandboxd/nodes/node1`,
//! `/run/sandboxd/demo.sock`) and removes everything it starts.

use std::path::Path;
use std::process::Command;

use sandboxd_tests::{require_root, workspace_binary};

/// Runs `examples/<script>` with the built binaries; it must succeed. Its output.
fn run_demo(script: &str) -> String {
    require_root();
    let bin_dir = workspace_binary("sandboxd").parent().unwrap().to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(script);
    let out = Command::new("bash")
        .arg(script)
        .env("SANDBOXD_BIN_DIR", &bin_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_pod_pause_demo_runs_and_cleans_up() {
    let stdout = run_demo("pod-pause-demo.sh");
    for expected in [
        "docker.io/kubetm/p8080",
        "RuntimeName:  sandboxd",
        "pod/pod-pause created",
        "2/2     Running",
        "\"networkMode\": \"container:",
        "eth0@",
        "pod-pause\n\n",
        "cannot listen on port 8080: address in use",
        "\"exit_code\": 1,",
        "pod \"pod-pause\" deleted",
    ] {
        assert!(
            stdout.contains(expected),
            "the demo's output lacks {expected:?}:\n{stdout}"
        );
    }
    assert!(
        !Path::new("/run/sandboxd/nodes/node1").exists(),
        "the demo left its node"
    );
    assert!(
        !Path::new("/run/sandboxd/demo.sock").exists(),
        "the demo left its daemon"
    );
    let pins: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !pins
            .iter()
            .any(|p| sandboxd::runtime::is_id(&p.to_string_lossy())),
        "the demo left pod pins in /run/netns: {pins:?}"
    );
}

#[test]
fn the_service_demo_runs_and_cleans_up() {
    let stdout = run_demo("service-demo.sh");
    for expected in [
        "service/svc-clusterip created",
        "svc-clusterip   ClusterIP   10.96.",
        // The line after the command (which ends in an escape resetting bold).
        "# pod-src → svc-clusterip\u{1b}[0m\npod-dest\n",
        "elements = { 10.96.",
        "meta l4proto tcp dnat to 10.244.1.",
        "8080:31080/TCP",
        "0.0.0.0:31080",
        "users:((\"sandboxd\"",
        "# master → node1's NodePort\u{1b}[0m\npod-dest\n",
        "svc-clusterip   <none>",
        "Connection refused",
        "service \"svc-clusterip\" deleted",
        "pod \"pod-src\" deleted",
    ] {
        assert!(
            stdout.contains(expected),
            "the demo's output lacks {expected:?}:\n{stdout}"
        );
    }
    for left in [
        "/run/sandboxd/nodes/svc-node1",
        "/run/sandboxd/nodes/svc-master",
        "/run/sandboxd/service-demo.sock",
    ] {
        assert!(!Path::new(left).exists(), "the demo left {left}");
    }
}
