//! A container's bundle and rootfs, run by runc: the container joins the pause process's
//! net and ipc namespaces and has its own mnt, uts (with the pod's hostname) and pid, as the
//! seeds' `lsns` shows for `container:<pause-id>`; its capabilities are containerd's default set. Needs root and
//! Debian's runc and busybox-static.

use sandboxd_tests::TestContainer;

/// containerd's default capability set as a CapEff mask.
const DEFAULT_CAP_MASK: &str = "00000000a80425fb";

fn ns_link(pid: u32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

#[tokio::test]
async fn a_container_joins_the_pause_net_and_ipc_and_owns_mnt_uts_and_pid() {
    let script = "hostname; for ns in net ipc uts mnt pid; do readlink /proc/self/ns/$ns; done; \
                  grep CapEff /proc/self/status; echo written > /tmp/by-container";
    let container = TestContainer::new(script, "pod-web");
    let bundle = container.path("bundle");
    let out = container.runc(&["run", "--bundle", bundle.to_str().unwrap(), &container.id]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "runc run failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let pause = container.pause;
    assert_eq!(
        lines[0], "pod-web",
        "the container does not have the pod's hostname"
    );
    assert_eq!(lines[1], ns_link(pause, "net"), "net is not pause's");
    assert_eq!(lines[2], ns_link(pause, "ipc"), "ipc is not pause's");
    assert_ne!(lines[3], ns_link(pause, "uts"), "uts is shared with pause");
    assert_ne!(lines[4], ns_link(pause, "mnt"), "mnt is shared with pause");
    assert_ne!(lines[5], ns_link(pause, "pid"), "pid is shared with pause");
    assert_eq!(
        lines[6].split_whitespace().last(),
        Some(DEFAULT_CAP_MASK),
        "{}",
        lines[6]
    );

    // Writes land in the container's upper dir, not in the shared image layer.
    let rootfs = container.rootfs.clone();
    assert_eq!(
        std::fs::read_to_string(rootfs.upper.join("tmp/by-container")).unwrap(),
        "written\n"
    );
    assert!(!rootfs
        .layers
        .iter()
        .any(|l| l.join("tmp/by-container").exists()));
    drop(container);
    assert!(!std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .contains(&rootfs.target.display().to_string()));
}
