//! The demo images: `examples/build-images.sh` builds them offline and imports them, and the
//! result runs: hostname-server from kubetm/p8080, on the image's overlayfs rootfs, answers
//! `GET /hostname` with the hostname of its uts namespace. Needs root and busybox-static.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sandboxd::image::ImageStore;
use sandboxd_tests::{require_root, workspace_binary, Netns};

struct Overlay(PathBuf);

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/build-images.sh")
}

#[test]
fn the_demo_images_build_offline_and_serve_their_hostname() {
    require_root();
    let work = tempfile::tempdir().unwrap();
    let store_dir = work.path().join("images");
    let bin_dir = workspace_binary("sandboxctl")
        .parent()
        .unwrap()
        .to_path_buf();
    // Twice: an unchanged build must give the same images, not a second, dangling set.
    for _ in 0..2 {
        let out = Command::new("bash")
            .arg(script())
            .args(["--store", store_dir.to_str().unwrap(), "--no-build"])
            .env("SANDBOXD_BIN_DIR", &bin_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "build-images.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let store = ImageStore::open(&store_dir).unwrap();
    assert_eq!(
        store.list().unwrap().len(),
        5,
        "a rebuild left dangling images"
    );
    let mut tags: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .flat_map(|i| i.repo_tags)
        .collect();
    tags.sort();
    assert_eq!(
        tags,
        [
            "docker.io/kubetm/app:latest",
            "docker.io/kubetm/init:latest",
            "docker.io/kubetm/p8000:latest",
            "docker.io/kubetm/p8080:latest",
            "docker.io/library/busybox:latest"
        ]
    );
    assert_eq!(
        std::fs::read_dir(store_dir.join("layers/sha256"))
            .unwrap()
            .count(),
        2,
        "the busybox layer is shared"
    );
    let p8000 = store.resolve("kubetm/p8000").unwrap().unwrap();
    assert_eq!(p8000.config.cmd, ["/app/hostname-server", "--port", "8000"]);
    assert_eq!(p8000.config.exposed_ports, ["8000/tcp"]);

    // Run kubetm/p8080 by hand, as a container would: its layers as an overlayfs rootfs,
    // new uts and mount namespaces, /proc mounted, in a network namespace of the test's.
    let image = store.resolve("kubetm/p8080").unwrap().unwrap();
    let lowers: Vec<String> = image
        .layers
        .iter()
        .rev()
        .map(|l| store.layer_path(&l.diff_id).unwrap().display().to_string())
        .collect();
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    nix::mount::mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(format!("lowerdir={}", lowers.join(":")).as_str()),
    )
    .expect("mount the image's layers");
    let _overlay = Overlay(rootfs.clone());
    let netns = Netns::new("sbt-img");
    let net = format!("--net={}", netns.path().display());
    let root = rootfs.display().to_string();
    let server = Command::new("nsenter")
        .args([&net, "--", "unshare", "--uts", "--mount", "--fork", "--kill-child", "sh", "-c"])
        .arg(format!("hostname demo-pod && mount -t proc proc {root}/proc && exec chroot {root} /app/hostname-server --port 8080"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _server = KillOnDrop(server);

    let start = Instant::now();
    let answer = loop {
        let out = Command::new("nsenter")
            .args([
                &net,
                "chroot",
                &root,
                "wget",
                "-qO-",
                "http://127.0.0.1:8080/hostname",
            ])
            .output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no answer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(answer.trim(), "demo-pod");
}
