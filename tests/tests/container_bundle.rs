//! A container's bundle and rootfs, run by runc: the container joins the pause process's
//! net, ipc and uts namespaces and has its own mnt and pid, as the seeds' `lsns` shows for
//! `container:<pause-id>`; its capabilities are containerd's default set. Needs root and
//! Debian's runc and busybox-static.

use std::path::{Path, PathBuf};
use std::process::Command;

use sandboxd::container::bundle::{self, ContainerProcess};
use sandboxd::container::rootfs::Rootfs;
use sandboxd::image::{build, import::import, ImageConfig, ImageStore};
use sandboxd_tests::{busybox_rootfs, require_root, unique_name};

/// containerd's default capability set as a CapEff mask.
const DEFAULT_CAP_MASK: &str = "00000000a80425fb";

struct Cleanup {
    rootfs: Rootfs,
    pause: u32,
    runc_root: PathBuf,
    id: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&self.runc_root)
            .args(["delete", "--force", &self.id])
            .output();
        let _ = self.rootfs.unmount();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pause as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn ns_link(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

#[tokio::test]
async fn a_container_joins_the_pause_namespaces_and_owns_mnt_and_pid() {
    require_root();
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(work.path().join("images")).unwrap();
    let layout = work.path().join("layout");
    build::write_layout(
        &layout,
        "busybox",
        &[&busybox_rootfs(work.path())],
        &ImageConfig::default(),
        true,
    )
    .unwrap();
    let image = import(&store, &layout, None).unwrap().remove(0);
    let layers: Vec<PathBuf> = image
        .layers
        .iter()
        .rev()
        .map(|l| store.layer_path(&l.diff_id).unwrap())
        .collect();

    let namespaces = sandboxd::pause::PodNamespaces {
        hostname: Some("pod-web".into()),
        ..Default::default()
    };
    let pause =
        sandboxd::pause::spawn(Path::new(pause::BUILT_BINARY), "pod-web", &namespaces).unwrap();
    tokio::spawn(sandboxd::pause::reap(pause));

    let bundle_dir = work.path().join("bundle");
    let rootfs = Rootfs::in_dir(layers, &work.path().join("state"), &bundle_dir);
    let id = unique_name("sbt-ctr");
    let cleanup = Cleanup {
        rootfs: rootfs.clone(),
        pause,
        runc_root: work.path().join("runc"),
        id: id.clone(),
    };
    rootfs.mount().unwrap();
    let script = "hostname; for ns in net ipc uts mnt pid; do readlink /proc/self/ns/$ns; done; \
                  grep CapEff /proc/self/status; echo written > /tmp/by-container";
    bundle::write(
        &bundle_dir,
        &ContainerProcess {
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            pause_pid: pause,
            share_pod_pid: false,
        },
    )
    .unwrap();

    let out = Command::new("runc")
        .arg("--root")
        .arg(&cleanup.runc_root)
        .args(["run", "--bundle"])
        .arg(&bundle_dir)
        .arg(&id)
        .output()
        .expect("run runc");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "runc run failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let pause_pid = pause.to_string();
    assert_eq!(
        lines[0], "pod-web",
        "the container does not have the pod's hostname"
    );
    assert_eq!(lines[1], ns_link(&pause_pid, "net"), "net is not pause's");
    assert_eq!(lines[2], ns_link(&pause_pid, "ipc"), "ipc is not pause's");
    assert_eq!(lines[3], ns_link(&pause_pid, "uts"), "uts is not pause's");
    assert_ne!(
        lines[4],
        ns_link(&pause_pid, "mnt"),
        "mnt is shared with pause"
    );
    assert_ne!(
        lines[5],
        ns_link(&pause_pid, "pid"),
        "pid is shared with pause"
    );
    assert_eq!(
        lines[6].split_whitespace().last(),
        Some(DEFAULT_CAP_MASK),
        "{}",
        lines[6]
    );

    // Writes land in the container's upper dir, not in the shared image layer.
    assert_eq!(
        std::fs::read_to_string(rootfs.upper.join("tmp/by-container")).unwrap(),
        "written\n"
    );
    assert!(!rootfs
        .layers
        .iter()
        .any(|l| l.join("tmp/by-container").exists()));
    drop(cleanup);
    assert!(!std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .contains(&rootfs.target.display().to_string()));
}
