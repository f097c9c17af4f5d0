//! `sandboxctl join`, the Vagrant cluster's way onto a node: the units it writes are what
//! systemd accepts and run the lab's command lines; bad input is refused before anything
//! is written. (Starting the units needs systemd as PID 1, which this machine's tests do
//! not have; the lab tests run the same command lines.)

use std::path::Path;
use std::process::Command;

use sandboxd_tests::{require_root, workspace_binary};

fn join(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(workspace_binary("sandboxctl"))
        .arg("join")
        .args(args)
        .output()
        .expect("run sandboxctl join");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The printed units, by file name.
fn units(printed: &str) -> Vec<(String, String)> {
    let mut units: Vec<(String, String)> = Vec::new();
    for line in printed.lines() {
        if let Some(name) = line.strip_prefix("# ").filter(|n| n.ends_with(".service")) {
            units.push((name.to_string(), String::new()));
        } else if let Some((_, text)) = units.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    units
}

fn exec_start(unit: &str) -> Vec<String> {
    unit.lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line")
        .split(' ')
        .map(str::to_string)
        .collect()
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1).map(String::as_str)
}

#[test]
fn the_control_plane_gets_etcd_and_a_sandboxd_after_it_that_systemd_accepts() {
    require_root();
    let (ok, out, err) = join(&[
        "--print",
        "--name",
        "k8s-master",
        "--ip",
        "192.168.102.10",
        "--control-plane",
    ]);
    assert!(ok, "{err}");
    let units = units(&out);
    let names: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["sandboxd-etcd.service", "sandboxd.service"]);
    let etcd = exec_start(&units[0].1);
    assert_eq!(
        flag(&etcd, "--listen-client-urls"),
        Some("http://192.168.102.10:2379,http://127.0.0.1:2379")
    );
    let sandboxd = exec_start(&units[1].1);
    assert_eq!(Path::new(&sandboxd[0]), workspace_binary("sandboxd"));
    assert_eq!(flag(&sandboxd, "--node-name"), Some("k8s-master"));
    assert_eq!(flag(&sandboxd, "--node-ip"), Some("192.168.102.10"));
    assert_eq!(
        flag(&sandboxd, "--store"),
        Some("etcd://192.168.102.10:2379")
    );
    assert!(sandboxd.iter().any(|a| a == "--control-plane"));
    assert!(units[1]
        .1
        .contains("After=network-online.target sandboxd-etcd.service"));

    // systemd's own reading of them: no warning, no error.
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (name, text) in &units {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("run systemd-analyze (Debian: systemd)");
    let complaints = String::from_utf8_lossy(&verified.stderr);
    // A machine without systemd running says so; that is not about the units.
    let complaints: Vec<&str> = complaints
        .lines()
        .filter(|l| l.contains(&*dir.path().to_string_lossy()))
        .collect();
    assert!(
        verified.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {complaints:?}"
    );
}

#[test]
fn a_worker_joins_the_master_store_with_the_backend_asked_for() {
    require_root();
    let (ok, out, err) = join(&[
        "--print",
        "--name",
        "k8s-node2",
        "--ip",
        "192.168.102.12",
        "--master-ip",
        "192.168.102.10",
        "--backend",
        "host-gw",
    ]);
    assert!(ok, "{err}");
    let units = units(&out);
    assert_eq!(units.len(), 1, "a worker runs no etcd: {out}");
    let sandboxd = exec_start(&units[0].1);
    assert_eq!(
        flag(&sandboxd, "--store"),
        Some("etcd://192.168.102.10:2379")
    );
    assert_eq!(flag(&sandboxd, "--backend"), Some("host-gw"));
    assert!(!sandboxd.iter().any(|a| a == "--control-plane"));
}

#[test]
fn bad_input_is_refused_naming_the_field_and_writes_no_unit() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let unit_dir = dir.path().join("units");
    let unit_dir = unit_dir.to_str().unwrap();
    // An address no interface has (a typo, another VM's NAT address).
    let (ok, _, err) = join(&[
        "--name",
        "k8s-node1",
        "--ip",
        "203.0.113.77",
        "--master-ip",
        "192.168.102.10",
        "--unit-dir",
        unit_dir,
    ]);
    assert!(!ok);
    assert!(err.contains("invalid --ip 203.0.113.77"), "{err}");
    // A worker that is not told where the store is.
    let (ok, _, err) = join(&[
        "--name",
        "k8s-node1",
        "--ip",
        "192.168.102.11",
        "--unit-dir",
        unit_dir,
    ]);
    assert!(!ok);
    assert!(err.contains("--master-ip"), "{err}");
    let (ok, _, err) = join(&[
        "--ip",
        "192.168.102.11",
        "--master-ip",
        "192.168.102.10",
        "--backend",
        "ipip",
    ]);
    assert!(!ok);
    assert!(err.contains("--backend"), "{err}");
    assert!(!Path::new(unit_dir).exists(), "nothing may be written");
}
