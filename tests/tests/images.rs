//! The image store: imports of OCI layouts and docker archives, whiteouts that overlayfs
//! honours, digests checked, garbage collected; and the CRI ImageService and sandboxctl
//! over it. Needs root (device nodes, trusted xattrs, overlay mounts).

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use sandboxd::image::{build, import::import, ImageConfig, ImageStore};
use sandboxd_tests::{files_under, require_root, sandboxctl};

/// Writes files into a directory tree: `("etc/a", "text")`.
fn tree(root: &Path, files: &[(&str, &str)]) -> PathBuf {
    for (path, content) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    root.to_path_buf()
}

/// Two layers: a base, and an upper one that deletes `etc/a` and makes `data` opaque.
fn two_layer_layout(work: &Path, name: &str, gzip: bool) -> PathBuf {
    let base = tree(
        &work.join("base"),
        &[("etc/a", "a"), ("etc/b", "b"), ("data/old", "old")],
    );
    let upper = tree(
        &work.join("upper"),
        &[
            ("etc/.wh.a", ""),
            ("data/.wh..wh..opq", ""),
            ("data/new", "new"),
        ],
    );
    let layout = work.join("layout");
    let config = ImageConfig {
        env: vec!["PATH=/bin".into()],
        cmd: vec!["/bin/sh".into()],
        exposed_ports: vec!["8080/tcp".into()],
        ..Default::default()
    };
    build::write_layout(&layout, name, &[&base, &upper], &config, gzip).unwrap();
    layout
}

/// An overlay of lower dirs (top first), unmounted on drop.
struct Overlay(PathBuf);

impl Overlay {
    fn mount(lowers: &[PathBuf], at: &Path) -> Overlay {
        std::fs::create_dir_all(at).unwrap();
        let lowerdir: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
        nix::mount::mount(
            Some("overlay"),
            at,
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(format!("lowerdir={}", lowerdir.join(":")).as_str()),
        )
        .expect("mount overlay");
        Overlay(at.to_path_buf())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn an_oci_layout_imports_and_its_whiteouts_work_in_overlayfs() {
    require_root();
    for gzip in [false, true] {
        let work = tempfile::tempdir().unwrap();
        let store = ImageStore::open(work.path().join("store")).unwrap();
        let layout = two_layer_layout(work.path(), "kubetm/app:v1", gzip);
        let imported = import(&store, &layout, None).unwrap();
        assert_eq!(imported.len(), 1);
        let image = &imported[0];
        assert_eq!(image.repo_tags, vec!["docker.io/kubetm/app:v1"]);
        assert_eq!(image.repo_digests.len(), 1);
        assert_eq!(image.config.cmd, vec!["/bin/sh"]);
        assert_eq!(image.config.exposed_ports, vec!["8080/tcp"]);
        assert_eq!(
            store.resolve("kubetm/app:v1").unwrap().unwrap().id,
            image.id
        );
        assert_eq!(
            store.resolve(&image.id[7..19]).unwrap().unwrap().id,
            image.id,
            "by id prefix"
        );
        assert!(store.resolve("kubetm/app:v2").unwrap().is_none());

        // The upper layer holds overlayfs' whiteout and opaque marks, not OCI's files.
        let upper = store.layer_path(&image.layers[1].diff_id).unwrap();
        let whiteout = std::fs::symlink_metadata(upper.join("etc/a")).unwrap();
        assert!(
            whiteout.file_type().is_char_device(),
            "etc/a is not a whiteout device"
        );
        assert!(!upper.join("etc/.wh.a").exists() && !upper.join("data/.wh..wh..opq").exists());
        // Stacked as a container's rootfs would be, deletions show.
        let lowers: Vec<PathBuf> = image
            .layers
            .iter()
            .rev()
            .map(|l| store.layer_path(&l.diff_id).unwrap())
            .collect();
        let rootfs = work.path().join("rootfs");
        let _overlay = Overlay::mount(&lowers, &rootfs);
        assert!(
            !rootfs.join("etc/a").exists(),
            "the whiteout did not hide etc/a (gzip {gzip})"
        );
        assert_eq!(std::fs::read_to_string(rootfs.join("etc/b")).unwrap(), "b");
        assert!(
            !rootfs.join("data/old").exists(),
            "the opaque dir did not hide data/old"
        );
        assert_eq!(
            std::fs::read_to_string(rootfs.join("data/new")).unwrap(),
            "new"
        );
    }
}

#[test]
fn a_docker_save_archive_imports() {
    require_root();
    let work = tempfile::tempdir().unwrap();
    let root = tree(&work.path().join("rootfs"), &[("bin/hello", "hi")]);
    let layer = build::tar_dir(&root).unwrap();
    let diff_id = {
        use sha2::Digest;
        let hex: String = sha2::Sha256::digest(&layer)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256:{hex}")
    };
    let saved = work.path().join("saved");
    std::fs::create_dir_all(saved.join("abc")).unwrap();
    std::fs::write(saved.join("abc/layer.tar"), &layer).unwrap();
    let config = serde_json::json!({ "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["/bin/hello"], "User": "1000" }, "rootfs": { "type": "layers", "diff_ids": [diff_id] } });
    std::fs::write(saved.join("config.json"), config.to_string()).unwrap();
    let manifest = serde_json::json!([{ "Config": "config.json", "RepoTags": ["kubetm/init:latest"], "Layers": ["abc/layer.tar"] }]);
    std::fs::write(saved.join("manifest.json"), manifest.to_string()).unwrap();
    // As `docker save` writes it: a tar of that directory.
    let archive = work.path().join("init.tar");
    std::fs::write(&archive, build::tar_dir(&saved).unwrap()).unwrap();

    let store = ImageStore::open(work.path().join("store")).unwrap();
    let imported = import(&store, &archive, None).unwrap();
    assert_eq!(imported[0].repo_tags, vec!["docker.io/kubetm/init:latest"]);
    assert_eq!(imported[0].config.user, "1000");
    let layer_dir = store.layer_path(&diff_id).unwrap();
    assert_eq!(
        std::fs::read_to_string(layer_dir.join("bin/hello")).unwrap(),
        "hi"
    );
    assert!(
        files_under(&store.root().join("tmp")).is_empty(),
        "temp files left"
    );
}

#[test]
fn a_corrupt_or_hostile_archive_is_refused_and_leaves_nothing() {
    require_root();
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(work.path().join("store")).unwrap();

    // A blob whose bytes no longer match its digest.
    let layout = two_layer_layout(work.path(), "kubetm/app", false);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_hex = &index["manifests"][0]["digest"].as_str().unwrap()[7..];
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.join("blobs/sha256").join(manifest_hex)).unwrap(),
    )
    .unwrap();
    let layer_hex = &manifest["layers"][1]["digest"].as_str().unwrap()[7..];
    let blob = layout.join("blobs/sha256").join(layer_hex);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[600] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let err = format!("{:#}", import(&store, &layout, None).unwrap_err());
    assert!(err.contains("is corrupt"), "{err}");

    // A layer that writes outside itself.
    let evil = work.path().join("evil");
    std::fs::create_dir_all(&evil).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..7].copy_from_slice(b"../evil");
    header.set_size(4);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    tar.append(&header, &b"evil"[..]).unwrap();
    let evil_tar = tar.into_inner().unwrap();
    let evil_layout = work.path().join("evil-layout");
    let evil_root = tree(&work.path().join("evil-root"), &[("x", "x")]);
    build::write_layout(
        &evil_layout,
        "kubetm/evil",
        &[&evil_root],
        &ImageConfig::default(),
        false,
    )
    .unwrap();
    // Swap the layer for the hostile tar, keeping digests consistent so only the path is wrong.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(evil_layout.join("index.json")).unwrap()).unwrap();
    let manifest_path = evil_layout
        .join("blobs/sha256")
        .join(&index["manifests"][0]["digest"].as_str().unwrap()[7..]);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let config_path = evil_layout
        .join("blobs/sha256")
        .join(&manifest["config"]["digest"].as_str().unwrap()[7..]);
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    use sha2::Digest;
    let digest = |b: &[u8]| {
        format!(
            "sha256:{}",
            sha2::Sha256::digest(b)
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        )
    };
    let evil_digest = digest(&evil_tar);
    std::fs::write(
        evil_layout.join("blobs/sha256").join(&evil_digest[7..]),
        &evil_tar,
    )
    .unwrap();
    config["rootfs"]["diff_ids"] = serde_json::json!([evil_digest]);
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = digest(&config_bytes);
    std::fs::write(
        evil_layout.join("blobs/sha256").join(&config_digest[7..]),
        &config_bytes,
    )
    .unwrap();
    manifest["config"]["digest"] = serde_json::json!(config_digest);
    manifest["layers"][0]["digest"] = serde_json::json!(evil_digest);
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = digest(&manifest_bytes);
    std::fs::write(
        evil_layout.join("blobs/sha256").join(&manifest_digest[7..]),
        &manifest_bytes,
    )
    .unwrap();
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest }] });
    std::fs::write(evil_layout.join("index.json"), index.to_string()).unwrap();
    let err = format!(
        "{:#}",
        import(&store, &evil_layout, Some("kubetm/evil")).unwrap_err()
    );
    assert!(err.contains("leaves the layer"), "{err}");
    assert!(!work.path().join("store/evil").exists() && !work.path().join("evil/evil").exists());

    // Neither left anything in the store.
    assert!(store.list().unwrap().is_empty());
    for dir in ["blobs/sha256", "layers/sha256", "tmp"] {
        assert_eq!(
            files_under(&store.root().join(dir)),
            Vec::<PathBuf>::new(),
            "{dir} not empty"
        );
        assert_eq!(
            std::fs::read_dir(store.root().join(dir)).unwrap().count(),
            0,
            "{dir} not empty"
        );
    }
}

#[test]
fn removing_an_image_keeps_layers_another_image_shares() {
    require_root();
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(work.path().join("store")).unwrap();
    let base = tree(&work.path().join("base"), &[("bin/sh", "sh")]);
    let app = tree(&work.path().join("app"), &[("app/server", "srv")]);
    build::write_layout(
        &work.path().join("one"),
        "kubetm/p8000",
        &[&base, &app],
        &ImageConfig::default(),
        true,
    )
    .unwrap();
    build::write_layout(
        &work.path().join("two"),
        "busybox",
        &[&base],
        &ImageConfig::default(),
        true,
    )
    .unwrap();
    let one = import(&store, &work.path().join("one"), None)
        .unwrap()
        .remove(0);
    import(&store, &work.path().join("two"), None).unwrap();
    let shared = store.layer_path(&one.layers[0].diff_id).unwrap();
    let own = store.layer_path(&one.layers[1].diff_id).unwrap();

    assert!(store.remove("kubetm/p8000").unwrap());
    assert!(shared.exists(), "busybox's layer was removed with p8000");
    assert!(!own.exists(), "p8000's own layer stayed");
    assert!(
        !store.remove("kubetm/p8000").unwrap(),
        "a second removal finds nothing"
    );
    assert!(store.remove("busybox").unwrap());
    assert_eq!(
        std::fs::read_dir(store.root().join("layers/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cri_image_service_and_sandboxctl_serve_the_store() {
    require_root();
    let work = tempfile::tempdir().unwrap();
    let config = sandboxd::config::Config {
        socket: work.path().join("sandboxd.sock"),
        state_dir: work.path().join("state"),
        netns_dir: work.path().join("netns"),
        cni_conf_dir: work.path().join("net.d"),
        pause_binary: Some(PathBuf::from(pause::BUILT_BINARY)),
        // It runs in the machine's own network namespace: no service rules there.
        proxy_mode: None,
        ..Default::default()
    };
    let socket = sandboxd::server::bind(&config.socket).unwrap();
    let runtime = sandboxd::runtime::Runtime::start(config.clone())
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sandboxd::server::serve(runtime, None, socket, async {
        let _ = stopped.await;
    }));
    let endpoint = format!("unix://{}", config.socket.display());
    let sandboxctl = |args: &[&str]| sandboxctl(&endpoint, args);

    let layout = two_layer_layout(work.path(), "kubetm/app", true);
    let store_dir = config.images_dir();
    let (code, out, err) = sandboxctl(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--store",
        store_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("docker.io/kubetm/app:latest"), "{out}");
    let (code, out, _) = sandboxctl(&["images"]);
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with("IMAGE") && out.contains("docker.io/kubetm/app") && out.contains("latest"),
        "{out}"
    );
    let (code, out, _) = sandboxctl(&["pull", "kubetm/app"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("sha256:"), "{out}");

    let channel = sandboxd::client::channel(&endpoint).await.unwrap();
    let mut images = cri::image_service_client::ImageServiceClient::new(channel);
    let spec = |name: &str| {
        Some(cri::ImageSpec {
            image: name.into(),
            ..Default::default()
        })
    };
    let missing = images
        .pull_image(cri::PullImageRequest {
            image: spec("kubetm/nope"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert!(
        missing.message().contains("sandboxctl image import"),
        "{}",
        missing.message()
    );
    let status = images
        .image_status(cri::ImageStatusRequest {
            image: spec("kubetm/nope"),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        status.image.is_none(),
        "an unknown image is no image, not an error"
    );
    let status = images
        .image_status(cri::ImageStatusRequest {
            image: spec("docker.io/kubetm/app:latest"),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.image.unwrap().repo_tags,
        vec!["docker.io/kubetm/app:latest"]
    );
    assert!(
        status.info["info"].contains("\"cmd\":[\"/bin/sh\"]"),
        "{:?}",
        status.info
    );
    let fs = images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 0);
    let empty = images
        .pull_image(cri::PullImageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);

    let (code, out, _) = sandboxctl(&["rmi", "kubetm/app"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("Deleted: docker.io/kubetm/app:latest"),
        "{out}"
    );
    images
        .remove_image(cri::RemoveImageRequest {
            image: spec("kubetm/app"),
        })
        .await
        .expect("removing an absent image succeeds");
    let (code, _, err) = sandboxctl(&["rmi", "kubetm/app"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not found"), "{err}");
    assert_eq!(
        std::fs::read_dir(store_dir.join("layers/sha256"))
            .unwrap()
            .count(),
        0
    );

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let _ = sandboxd::netns::release_dir(&config.netns_dir);
}
