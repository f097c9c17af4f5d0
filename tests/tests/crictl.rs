//! The real crictl (cri-tools v1.26.1, grpc-go 1.51: the kubelet's client code of its
//! time) drives sandboxd through every crictl verb the README lists, and what it shows of
//! each object is what sandboxctl shows of the same object. grpc-go sends the socket path
//! as `:authority`, which h2 alone would refuse: this is the test of `server::authority`
//! with the client that made it necessary.

use std::path::Path;
use std::process::Command;

use sandboxd_tests::daemon::SandboxdProcess;
use sandboxd_tests::shared_tool;
use serde_json::Value;

struct Clients<'a> {
    daemon: &'a SandboxdProcess,
}

impl Clients<'_> {
    /// `crictl <args>`: (exit code, stdout, stderr).
    fn crictl(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let endpoint = self.daemon.endpoint();
        let out = Command::new(shared_tool("crictl"))
            .args([
                "--runtime-endpoint",
                &endpoint,
                "--image-endpoint",
                &endpoint,
            ])
            .args(["--timeout", "60s"])
            .args(args)
            .output()
            .expect("run crictl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// stdout of crictl, which must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.crictl(args);
        assert_eq!(
            code,
            Some(0),
            "crictl {args:?} failed: {err}{}",
            self.daemon.log()
        );
        out
    }

    /// stdout of sandboxctl, which must succeed.
    fn sandboxctl(&self, args: &[&str]) -> String {
        let (code, out, err) = self.daemon.sandboxctl(args);
        assert_eq!(code, Some(0), "sandboxctl {args:?} failed: {err}");
        out
    }

    /// Both print the same thing.
    fn same(&self, args: &[&str]) -> String {
        let crictl = self.ok(args);
        assert_eq!(
            crictl,
            self.sandboxctl(args),
            "crictl and sandboxctl {args:?}"
        );
        crictl
    }

    /// Both print the same table, but for the CREATED column (time passes between the two
    /// calls) and those named in `skip`.
    fn same_table(&self, args: &[&str], skip: &[&str]) -> Vec<Vec<String>> {
        let crictl = table(&self.ok(args), skip);
        assert_eq!(
            crictl,
            table(&self.sandboxctl(args), skip),
            "crictl and sandboxctl {args:?}"
        );
        crictl
    }

    /// Both describe the same object alike: `fields` (paths into the document, keys in
    /// snake_case) are equal once crictl's camelCase keys and number strings are read as
    /// sandboxctl's.
    fn same_fields(&self, args: &[&str], fields: &[&str]) -> Value {
        let crictl = snake_keys(serde_json::from_str(&self.ok(args)).unwrap());
        let ours = snake_keys(serde_json::from_str(&self.sandboxctl(args)).unwrap());
        for field in fields {
            let pointer = format!("/{}", field.replace('.', "/"));
            let (a, b) = (crictl.pointer(&pointer), ours.pointer(&pointer));
            assert!(a.is_some(), "crictl {args:?} has no {field}: {crictl:#}");
            assert_eq!(
                a.map(number_text),
                b.map(number_text),
                "{field} of crictl and sandboxctl {args:?}"
            );
        }
        crictl
    }
}

/// Cells of a crictl-style table (columns at least three spaces apart), without the
/// CREATED column and the others named.
fn table(text: &str, skip: &[&str]) -> Vec<Vec<String>> {
    let rows: Vec<Vec<String>> = text
        .lines()
        .map(|line| {
            line.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect();
    let Some(headers) = rows.first().cloned() else {
        return rows;
    };
    let keep: Vec<bool> = headers
        .iter()
        .map(|h| h != "CREATED" && !skip.contains(&h.as_str()))
        .collect();
    rows.into_iter()
        .map(|row| {
            row.into_iter()
                .zip(&keep)
                .filter(|(_, keep)| **keep)
                .map(|(cell, _)| cell)
                .collect()
        })
        .collect()
}

fn snake(key: &str) -> String {
    let mut out = String::new();
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Message keys in snake_case (protojson's camelCase and serde's snake_case both read the
/// same); label and annotation keys are data and stay.
fn snake_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = if k == "labels" || k == "annotations" {
                        v
                    } else {
                        snake_keys(v)
                    };
                    (snake(&k), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(snake_keys).collect()),
        other => other,
    }
}

/// protojson writes 64-bit integers as strings.
fn number_text(value: &Value) -> Value {
    match value {
        Value::Number(n) => Value::String(n.to_string()),
        other => other.clone(),
    }
}

fn write(path: &Path, doc: Value) {
    std::fs::write(path, doc.to_string()).unwrap();
}

#[test]
fn crictl_drives_every_verb_and_sees_what_sandboxctl_sees() {
    let daemon = SandboxdProcess::start();
    let clients = Clients { daemon: &daemon };

    clients.same(&["version"]);
    clients.same_fields(&["info"], &["status.conditions", "config"]);

    let pod_config = daemon.path("pod.json");
    write(
        &pod_config,
        serde_json::json!({
            "metadata": { "name": "crictl-pod", "namespace": "default", "uid": "u-crictl" },
            "labels": { "app": "walk" },
            "log_directory": daemon.path("logs"),
        }),
    );
    let pod = clients.ok(&["runp", pod_config.to_str().unwrap()]);
    let pod = pod.trim();
    assert_eq!(pod.len(), 64, "runp prints the pod id: {pod:?}");
    assert_eq!(clients.same(&["pods", "-q"]).trim(), pod);
    let pods = clients.same_table(&["pods"], &[]);
    assert_eq!(
        pods[1],
        [
            &pod[..13],
            "Ready",
            "crictl-pod",
            "default",
            "0",
            "(default)"
        ]
    );
    clients.same_table(&["pods", "--label", "app=walk", "--no-trunc"], &[]);
    let inspectp = clients.same_fields(
        &["inspectp", pod],
        &[
            "status.id",
            "status.metadata",
            "status.state",
            "status.network.ip",
            "status.labels",
            "status.linux.namespaces.options",
            "info.pid",
            "info.netns_path",
        ],
    );
    assert_eq!(inspectp["status"]["state"], "SANDBOX_READY");

    let container_config = daemon.path("container.json");
    write(
        &container_config,
        serde_json::json!({
            "metadata": { "name": "web" },
            "image": { "image": "docker.io/library/busybox:latest" },
            "command": ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exec sleep 1000"],
            "log_path": "web.log",
            "labels": { "tier": "front" },
        }),
    );
    let container = clients.ok(&[
        "create",
        pod,
        container_config.to_str().unwrap(),
        pod_config.to_str().unwrap(),
    ]);
    let container = container.trim();
    assert_eq!(container.len(), 64, "create prints the id: {container:?}");
    clients.ok(&["start", container]);
    assert_eq!(clients.same(&["ps", "-q"]).trim(), container);
    // POD: crictl takes the pod's name from kubelet labels, which a hand-made container
    // lacks ("unknown"); sandboxctl asks the runtime.
    let ps = clients.same_table(&["ps", "-a"], &["POD"]);
    assert_eq!(
        ps[1],
        [
            &container[..13],
            "docker.io/library/busybox:latest",
            "Running",
            "web",
            "0",
            &pod[..13]
        ]
    );
    clients.same_fields(
        &["inspect", container],
        &[
            "status.id",
            "status.metadata",
            "status.state",
            "status.image.image",
            "status.image_ref",
            "status.labels",
            "status.log_path",
            "info.sandbox_i_d",
            "info.pid",
            "info.network_mode",
        ],
    );

    // crictl ends the output with a newline of its own after stdout and after stderr.
    let exec = ["exec", "-s", container, "echo", "hi"];
    assert_eq!(clients.ok(&exec), "hi\n\n\n");
    assert_eq!(clients.sandboxctl(&exec), "hi\n");
    let mut logs = (String::new(), String::new());
    for _ in 0..50 {
        let (_, out, err) = clients.crictl(&["logs", container]);
        logs = (out, err);
        if logs.1.contains("to-stderr") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(logs, ("to-stdout\n".into(), "to-stderr\n".into()));
    let (_, out, err) = daemon.sandboxctl(&["logs", container]);
    assert_eq!((out, err), logs, "crictl and sandboxctl logs");

    clients.ok(&["stop", container]);
    let ps = clients.same_table(&["ps", "-a"], &["POD"]);
    assert_eq!(ps[1][2], "Exited");
    clients.ok(&["rm", container]);
    assert_eq!(clients.same(&["ps", "-aq"]), "");

    clients.ok(&["stopp", pod]);
    let pods = clients.same_table(&["pods"], &[]);
    assert_eq!(pods[1][1], "NotReady");
    clients.ok(&["rmp", pod]);
    assert_eq!(clients.same(&["pods", "-q"]), "");

    // Images: no time column, so the whole table is the same.
    let images = clients.same(&["images"]);
    assert!(images.contains("docker.io/library/busybox"), "{images}");
    clients.same(&["images", "-q"]);
    clients.same_fields(
        &["inspecti", "busybox"],
        &[
            "status.id",
            "status.repo_tags",
            "status.repo_digests",
            "status.size",
            "info.config",
            "info.layers",
        ],
    );
    clients.ok(&["rmi", "docker.io/kubetm/app:latest"]);
    let images = clients.same(&["images"]);
    assert!(!images.contains("kubetm/app"), "{images}");
    assert!(images.contains("kubetm/p8080"), "{images}");

    assert!(
        daemon.processes().is_empty(),
        "left running: {:?}",
        daemon.processes()
    );
    assert_eq!(daemon.node.veths(), Vec::<String>::new());
}

/// A container config's security context means the same from crictl and from sandboxctl:
/// capabilities added and dropped, a read-only rootfs, no_new_privs; a field sandboxctl
/// does not know is refused, not dropped.
#[test]
fn a_security_context_reads_the_same_from_crictl_and_sandboxctl() {
    let daemon = SandboxdProcess::start();
    let clients = Clients { daemon: &daemon };
    let pod_config = daemon.path("pod.json");
    write(
        &pod_config,
        serde_json::json!({
            "metadata": { "name": "secure", "namespace": "default", "uid": "u-secure" },
        }),
    );
    let pod = clients.ok(&["runp", pod_config.to_str().unwrap()]);
    let pod = pod.trim();
    let config = |name: &str| {
        let path = daemon.path(&format!("{name}.json"));
        write(
            &path,
            serde_json::json!({
                "metadata": { "name": name },
                "image": { "image": "busybox" },
                "command": ["sleep", "1000"],
                "linux": { "security_context": {
                    "capabilities": {
                        "add_capabilities": ["NET_ADMIN"],
                        "drop_capabilities": ["CHOWN"]
                    },
                    "readonly_rootfs": true,
                    "no_new_privs": true
                }},
            }),
        );
        path
    };
    let by_crictl = clients.ok(&[
        "create",
        pod,
        config("by-crictl").to_str().unwrap(),
        pod_config.to_str().unwrap(),
    ]);
    let by_sandboxctl =
        clients.sandboxctl(&["create", pod, config("by-sandboxctl").to_str().unwrap()]);
    for id in [by_crictl.trim(), by_sandboxctl.trim()] {
        clients.ok(&["start", id]);
        let status = clients.sandboxctl(&["exec", id, "cat", "/proc/self/status"]);
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .map(|hex| u64::from_str_radix(hex, 16).unwrap())
                .unwrap()
        };
        let effective = field("CapEff:");
        assert_ne!(effective & (1 << 12), 0, "CAP_NET_ADMIN added ({id})");
        assert_eq!(effective & 1, 0, "CAP_CHOWN dropped ({id})");
        assert_eq!(field("NoNewPrivs:"), 1, "no_new_privs ({id})");
        let (code, _, _) = daemon.sandboxctl(&["exec", id, "touch", "/written"]);
        assert_ne!(code, Some(0), "the rootfs is read-only ({id})");
    }

    let unknown = daemon.path("unknown.json");
    write(
        &unknown,
        serde_json::json!({
            "metadata": { "name": "odd" },
            "image": { "image": "busybox" },
            "linux": { "security_context": { "apparmor_profile": "x" } },
        }),
    );
    let (code, _, err) = daemon.sandboxctl(&["create", pod, unknown.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("apparmor_profile"), "{err}");
    clients.ok(&["stopp", pod]);
    clients.ok(&["rmp", pod]);
    assert!(daemon.processes().is_empty(), "{:?}", daemon.processes());
}
