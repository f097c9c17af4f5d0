//! sandboxd's own CNI plugins (`sandboxd-cni`, run as a runtime runs a plugin: by the
//! name of a link to it, with CNI_* variables and the config on stdin) against Debian's
//! upstream plugins as the reference: host-local's leases are read and written
//! interchangeably with upstream's (one ADD by each, a DEL by the other, nothing left);
//! loopback brings a namespace's lo up and down; the default chain (bridge + host-local,
//! upstream's portmap, loopback) runs through cni-host as upstream's does, and a failure
//! mid-ADD leaves nothing. Needs root.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sandboxd_tests::{call_from, serve, workspace_binary, Netns};
use serde_json::{json, Value};

const UPSTREAM: &str = "/usr/lib/cni";

/// A directory of links to sandboxd-cni, one per plugin name, as an install makes.
fn own_plugins(dir: &Path) -> PathBuf {
    let bin = dir.join("own-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["bridge", "host-local", "loopback", "portmap", "ptp"] {
        let link = bin.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(workspace_binary("sandboxd-cni"), &link).unwrap();
        }
    }
    bin
}

/// Runs a plugin; (exit code, what it printed on stdout).
fn call(
    plugin: &Path,
    command: &str,
    container: &str,
    netns: &Path,
    config: &Value,
) -> (i32, Value) {
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let value = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{} {command}: not JSON ({e}): {}",
                plugin.display(),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    };
    (out.status.code().unwrap_or(-1), value)
}

fn host_local_network(data_dir: &Path, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "interop",
        "type": "host-local",
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": "10.77.0.0/24" }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dataDir": data_dir,
        }
    })
}

fn lease_files(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("interop"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn host_local_leases_are_shared_with_upstreams() {
    let pod = Netns::new("sbt-pod");
    let dir = tempfile::tempdir().unwrap();
    let ours = own_plugins(dir.path()).join("host-local");
    let upstream = Path::new(UPSTREAM).join("host-local");
    let data = dir.path().join("ipam");
    let network = host_local_network(&data, "1.0.0");

    let (code, first) = call(&upstream, "ADD", "upstream-1", &pod.path(), &network);
    assert_eq!(code, 0, "{first}");
    assert_eq!(first["ips"][0]["address"], "10.77.0.2/24");
    // Ours continues from upstream's last address, and writes the same kind of file.
    let (code, second) = call(&ours, "ADD", "ours-1", &pod.path(), &network);
    assert_eq!(code, 0, "{second}");
    assert_eq!(second["ips"][0]["address"], "10.77.0.3/24");
    assert_eq!(second["ips"][0]["gateway"], "10.77.0.1");
    assert_eq!(second["routes"], json!([{ "dst": "0.0.0.0/0" }]));
    assert_eq!(
        std::fs::read_to_string(data.join("interop/10.77.0.3")).unwrap(),
        std::fs::read_to_string(data.join("interop/10.77.0.2"))
            .unwrap()
            .replace("upstream-1", "ours-1"),
        "the same lease format"
    );
    // Upstream continues from ours.
    let (code, third) = call(&upstream, "ADD", "upstream-2", &pod.path(), &network);
    assert_eq!(code, 0, "{third}");
    assert_eq!(third["ips"][0]["address"], "10.77.0.4/24");
    // Each sees the other's lease: CHECK, and no second lease for the same container.
    assert_eq!(
        call(&ours, "CHECK", "upstream-1", &pod.path(), &network).0,
        0
    );
    assert_eq!(
        call(&upstream, "CHECK", "ours-1", &pod.path(), &network).0,
        0
    );
    let (code, duplicate) = call(&ours, "ADD", "upstream-2", &pod.path(), &network);
    assert_ne!(code, 0);
    assert!(
        duplicate["msg"]
            .as_str()
            .unwrap()
            .contains("duplicate allocation"),
        "{duplicate}"
    );

    // Each releases the other's; a DEL of nothing is no error.
    assert_eq!(call(&ours, "DEL", "upstream-1", &pod.path(), &network).0, 0);
    assert_eq!(call(&upstream, "DEL", "ours-1", &pod.path(), &network).0, 0);
    assert_eq!(call(&ours, "DEL", "upstream-2", &pod.path(), &network).0, 0);
    assert_eq!(call(&ours, "DEL", "upstream-2", &pod.path(), &network).0, 0);
    assert_eq!(lease_files(&data), ["last_reserved_ip.0", "lock"]);
}

/// The same with a dual-stack range set: IPv6 leases are files named as Go prints the
/// address, and each plugin continues from the other's last one, per range.
#[test]
fn host_local_ipv6_leases_are_shared_with_upstreams() {
    let pod = Netns::new("sbt-pod");
    let dir = tempfile::tempdir().unwrap();
    let ours = own_plugins(dir.path()).join("host-local");
    let upstream = Path::new(UPSTREAM).join("host-local");
    let data = dir.path().join("ipam");
    let mut network = host_local_network(&data, "1.0.0");
    network["ipam"]["ranges"] = json!([
        [{ "subnet": "10.77.0.0/24" }],
        [{ "subnet": "fd00:77::/64", "rangeStart": "fd00:77::a" }],
    ]);
    let addresses = |result: &Value| -> Vec<String> {
        result["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ip| ip["address"].as_str().unwrap().to_string())
            .collect()
    };

    let (code, first) = call(&upstream, "ADD", "upstream-1", &pod.path(), &network);
    assert_eq!(code, 0, "{first}");
    assert_eq!(addresses(&first), ["10.77.0.2/24", "fd00:77::a/64"]);
    let (code, second) = call(&ours, "ADD", "ours-1", &pod.path(), &network);
    assert_eq!(code, 0, "{second}");
    assert_eq!(addresses(&second), ["10.77.0.3/24", "fd00:77::b/64"]);
    assert_eq!(second["ips"][1]["gateway"], "fd00:77::1");
    let (code, third) = call(&upstream, "ADD", "upstream-2", &pod.path(), &network);
    assert_eq!(code, 0, "{third}");
    assert_eq!(addresses(&third), ["10.77.0.4/24", "fd00:77::c/64"]);
    assert_eq!(
        std::fs::read_to_string(data.join("interop/last_reserved_ip.1")).unwrap(),
        "fd00:77::c"
    );

    assert_eq!(call(&ours, "DEL", "upstream-1", &pod.path(), &network).0, 0);
    assert_eq!(call(&upstream, "DEL", "ours-1", &pod.path(), &network).0, 0);
    assert_eq!(call(&ours, "DEL", "upstream-2", &pod.path(), &network).0, 0);
    assert_eq!(
        lease_files(&data),
        ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]
    );
}

#[test]
fn host_local_speaks_each_version_and_refuses_bad_input_by_field() {
    let pod = Netns::new("sbt-pod");
    let dir = tempfile::tempdir().unwrap();
    let ours = own_plugins(dir.path()).join("host-local");
    let data = dir.path().join("ipam");

    let (code, v04) = call(
        &ours,
        "ADD",
        "c1",
        &pod.path(),
        &host_local_network(&data, "0.4.0"),
    );
    assert_eq!(code, 0, "{v04}");
    assert_eq!(v04["cniVersion"], "0.4.0");
    assert_eq!(
        v04["ips"][0]["version"], "4",
        "0.4.0 results tag the family"
    );

    let (code, version) = call(
        &ours,
        "VERSION",
        "",
        &pod.path(),
        &json!({"cniVersion": "1.1.0"}),
    );
    assert_eq!(code, 0);
    assert_eq!(
        version["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );

    let mut bad = host_local_network(&data, "1.0.0");
    bad["ipam"]["ranges"][0][0]["subnet"] = json!("10.77.0.0/33");
    let (code, error) = call(&ours, "ADD", "c2", &pod.path(), &bad);
    assert_eq!(code, 1);
    assert_eq!(error["code"], 7);
    assert!(
        error["msg"]
            .as_str()
            .unwrap()
            .contains("ranges[0][0].subnet"),
        "{error}"
    );

    // GC (CNI 1.1) keeps the valid attachments' leases and frees the rest.
    let network = host_local_network(&data, "1.1.0");
    assert_eq!(call(&ours, "ADD", "c3", &pod.path(), &network).0, 0);
    let mut gc = network.clone();
    gc["cni.dev/valid-attachments"] = json!([{ "containerID": "c3", "ifname": "eth0" }]);
    let (code, out) = call(&ours, "GC", "", &pod.path(), &gc);
    assert_eq!(code, 0, "{out}");
    assert_eq!(call(&ours, "CHECK", "c3", &pod.path(), &network).0, 0);
    assert_ne!(call(&ours, "CHECK", "c1", &pod.path(), &network).0, 0);
    let (code, out) = call(&ours, "STATUS", "", &pod.path(), &network);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn loopback_brings_lo_up_and_down() {
    let pod = Netns::new("sbt-pod");
    let dir = tempfile::tempdir().unwrap();
    let ours = own_plugins(dir.path()).join("loopback");
    let network = json!({ "cniVersion": "1.0.0", "name": "lo", "type": "loopback" });
    let lo_up = || {
        pod.exec(&["ip", "-o", "link", "show", "lo"])
            .contains(",UP")
    };
    // The test's namespaces come with lo up, as a node's has it.
    pod.exec(&["ip", "link", "set", "lo", "down"]);
    assert!(!lo_up());
    let (code, result) = call(&ours, "ADD", "c1", &pod.path(), &network);
    assert_eq!(code, 0, "{result}");
    assert!(lo_up());
    assert_eq!(
        result["interfaces"][0]["name"], "lo",
        "lo whatever CNI_IFNAME says"
    );
    assert_eq!(result["ips"][0]["address"], "127.0.0.1/8");
    assert_eq!(call(&ours, "CHECK", "c1", &pod.path(), &network).0, 0);
    assert_eq!(call(&ours, "DEL", "c1", &pod.path(), &network).0, 0);
    assert!(!lo_up());
    assert_ne!(call(&ours, "CHECK", "c1", &pod.path(), &network).0, 0);
    // A DEL after the namespace is gone succeeds.
    let gone = dir.path().join("no-such-netns");
    assert_eq!(call(&ours, "DEL", "c1", &gone, &network).0, 0);
}

/// The default chain with sandboxd-cni's bridge, host-local and loopback, and upstream's
/// portmap, through cni-host in a node namespace of the test's own: the pod gets its
/// address and default route, the host veth is a hairpin port of the bridge, the bridge
/// holds the gateway; CHECK passes; DEL leaves no veth, lease or cache entry.
#[tokio::test]
async fn the_default_chain_runs_with_the_own_bridge() {
    use cni_host::{CniHost, NetworkConfigList, ProcessExec, RuntimeConf};
    use sandboxd_tests::{files_under, ip_reservations};
    let node = Netns::new("sbt-node");
    let pod = Netns::new("sbt-pod");
    let dir = tempfile::tempdir().unwrap();
    let bin = own_plugins(dir.path());
    let ipam = dir.path().join("ipam");
    let cache = dir.path().join("cache");
    let bridge = format!("sbt{}", std::process::id() % 100_000);
    let chain = |bridge_extra: Value| {
        let mut bridge_plugin = json!({
            "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": "10.78.0.0/24" }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": ipam,
            }
        });
        for (k, v) in bridge_extra.as_object().unwrap() {
            bridge_plugin[k] = v.clone();
        }
        let doc = json!({
            "cniVersion": "1.0.0", "name": "pods",
            "plugins": [
                bridge_plugin,
                { "type": "portmap", "capabilities": { "portMappings": true } },
                { "type": "loopback" }
            ]
        });
        NetworkConfigList::from_bytes(doc.to_string().as_bytes(), "<test>").unwrap()
    };
    // Debian's portmap in this chain; sandboxd-cni's is tested on its own below.
    let mixed = dir.path().join("mixed-bin");
    std::fs::create_dir_all(&mixed).unwrap();
    for name in ["bridge", "host-local", "loopback"] {
        std::os::unix::fs::symlink(bin.join(name), mixed.join(name)).unwrap();
    }
    let host = CniHost::with_exec(
        vec![mixed, PathBuf::from(UPSTREAM)],
        cache.clone(),
        ProcessExec::in_netns(node.path()),
    );
    let network = chain(json!({}));
    let rt = RuntimeConf::new("own-1", pod.path().display().to_string(), "eth0")
        .with_pod("default", "own-1", "own-1");

    let result = host.add(&network, &rt).await.expect("ADD");
    let ip = result.ips[0].address;
    assert_eq!(ip.to_string(), "10.78.0.2/24");
    assert_eq!(result.ips[0].interface, Some(2));
    let names: Vec<&str> = result.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names[0], bridge);
    assert!(names[1].starts_with("veth"), "{names:?}");
    assert_eq!(
        result.interfaces[2].sandbox,
        pod.path().display().to_string()
    );
    let addrs = pod.exec(&["ip", "-o", "addr", "show", "eth0"]);
    assert!(addrs.contains("10.78.0.2/24"), "{addrs}");
    let routes = pod.exec(&["ip", "route"]);
    assert!(
        routes.contains("default via 10.78.0.1 dev eth0"),
        "{routes}"
    );
    let port = node.exec(&["ip", "-d", "-o", "link", "show", names[1]]);
    assert!(port.contains(&format!("master {bridge}")), "{port}");
    assert!(port.contains("hairpin on"), "{port}");
    let gateway = node.exec(&["ip", "-o", "addr", "show", &bridge]);
    assert!(gateway.contains("10.78.0.1/24"), "{gateway}");
    assert_eq!(
        node.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
        "1"
    );
    // The pod reaches the bridge's address through its veth.
    pod.exec(&["ping", "-c", "1", "-W", "2", "10.78.0.1"]);
    let mut without_portmap = network.clone();
    without_portmap
        .plugins
        .retain(|p| p.plugin_type != "portmap");
    host.check(&without_portmap, &rt).await.expect("CHECK");

    host.del(&network, &rt).await.expect("DEL");
    assert_eq!(node.veths(), Vec::<String>::new(), "veths left");
    assert_eq!(ip_reservations(&ipam), Vec::<String>::new(), "leases left");
    assert_eq!(files_under(&cache), Vec::<PathBuf>::new(), "cache left");
    host.del(&network, &rt).await.expect("a second DEL");

    // A failure after the veth and the lease (an address of the subnet already on the
    // bridge, without forceAddress) undoes both.
    node.exec(&["ip", "addr", "flush", "dev", &bridge]);
    node.exec(&["ip", "addr", "add", "10.78.0.9/24", "dev", &bridge]);
    let err = host
        .add(
            &network,
            &RuntimeConf::new("own-2", pod.path().display().to_string(), "eth0"),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("forceAddress"), "{err}");
    assert_eq!(
        node.veths(),
        Vec::<String>::new(),
        "veths left after a failed ADD"
    );
    assert_eq!(
        ip_reservations(&ipam),
        Vec::<String>::new(),
        "leases left after a failed ADD"
    );
    assert_eq!(pod.links(), Vec::<String>::new(), "eth0 left in the pod");
    // forceAddress replaces it.
    let forced = chain(json!({ "forceAddress": true }));
    let rt2 = RuntimeConf::new("own-3", pod.path().display().to_string(), "eth0");
    host.add(&forced, &rt2)
        .await
        .expect("ADD with forceAddress");
    let gateway = node.exec(&["ip", "-o", "addr", "show", &bridge]);
    assert!(
        gateway.contains("10.78.0.1/24") && !gateway.contains("10.78.0.9"),
        "{gateway}"
    );
    host.del(&forced, &rt2).await.expect("DEL");
    assert_eq!(ip_reservations(&ipam), Vec::<String>::new());
}

/// sandboxd-cni's portmap (nftables, in the table `ip sandboxd-hostports`): a hostPort
/// answers on the node's address and on its loopback, and from the pod itself (hairpin);
/// a second pod asking for the same hostPort is refused and leaves nothing; DEL removes
/// the forward without a cache; GC removes a forward whose container is gone.
#[tokio::test]
async fn the_own_portmap_forwards_host_ports_in_nftables() {
    use cni_host::{CniHost, NetworkConfigList, ProcessExec, RuntimeConf};
    use sandboxd_tests::ip_reservations;
    let node = Netns::new("sbt-node");
    let pod_a = Netns::new("sbt-pod");
    let pod_b = Netns::new("sbt-pod");
    let dir = tempfile::tempdir().unwrap();
    let bin = own_plugins(dir.path());
    let ipam = dir.path().join("ipam");
    let bridge = format!("sbp{}", std::process::id() % 100_000);
    let doc = json!({
        "cniVersion": "1.1.0", "name": "pods",
        "plugins": [
            { "type": "bridge", "bridge": bridge, "isGateway": true, "hairpinMode": true,
              "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.79.0.0/24" }]],
                        "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": ipam } },
            { "type": "portmap", "capabilities": { "portMappings": true } },
            { "type": "loopback" }
        ]
    });
    let network = NetworkConfigList::from_bytes(doc.to_string().as_bytes(), "<test>").unwrap();
    let host = CniHost::with_exec(
        vec![bin.clone()],
        dir.path().join("cache"),
        ProcessExec::in_netns(node.path()),
    );
    let runtime = |id: &str, pod: &Netns| {
        let mut rt = RuntimeConf::new(id, pod.path().display().to_string(), "eth0");
        rt.capability_args.insert(
            "portMappings".into(),
            json!([{ "hostPort": 18080, "containerPort": 8080, "protocol": "tcp" }]),
        );
        rt
    };
    let rt_a = runtime("pm-a", &pod_a);
    host.add(&network, &rt_a).await.expect("ADD a");
    serve(&pod_a.path(), 8080, "a");
    assert_eq!(call_from(&node.path(), "10.79.0.1:18080"), "pong from a\n");
    assert_eq!(
        call_from(&node.path(), "127.0.0.1:18080"),
        "pong from a\n",
        "via loopback"
    );
    assert_eq!(
        call_from(&pod_a.path(), "10.79.0.1:18080"),
        "pong from a\n",
        "hairpin"
    );
    let table = node.exec(&["nft", "list", "table", "ip", "sandboxd-hostports"]);
    assert!(table.contains("chain hp/pm-a/tcp/18080"), "{table}");
    assert!(table.contains("dnat to 10.79.0.2:8080"), "{table}");
    host.check(&network, &rt_a).await.expect("CHECK");

    let err = host
        .add(&network, &runtime("pm-b", &pod_b))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("held by another pod"), "{err}");
    assert_eq!(
        pod_b.links(),
        Vec::<String>::new(),
        "b's ADD was rolled back"
    );
    assert_eq!(ip_reservations(&ipam).len(), 1, "only a's lease");
    assert_eq!(call_from(&node.path(), "10.79.0.1:18080"), "pong from a\n");

    // Attached through the binary, detached in-process (sandboxd's path): the same.
    let in_process = CniHost::with_exec(
        vec![bin.clone()],
        dir.path().join("cache"),
        sandboxd::cni_plugin::in_process::InProcessExec::new(
            ProcessExec::in_netns(node.path()),
            Some(&workspace_binary("sandboxd-cni")),
        ),
    );
    in_process
        .check(&network, &rt_a)
        .await
        .expect("CHECK in-process");
    in_process
        .del(&network, &rt_a)
        .await
        .expect("DEL a in-process");
    let table = node.exec(&["nft", "list", "table", "ip", "sandboxd-hostports"]);
    assert!(!table.contains("hp/pm-a"), "{table}");
    assert!(call_from(&node.path(), "10.79.0.1:18080").starts_with("error"));
    assert_eq!(ip_reservations(&ipam), Vec::<String>::new());
    assert_eq!(node.veths(), Vec::<String>::new());
    // And the other way: attached in-process, detached through the binary.
    in_process
        .add(&network, &rt_a)
        .await
        .expect("ADD a in-process");
    assert_eq!(call_from(&node.path(), "10.79.0.1:18080"), "pong from a\n");
    host.del(&network, &rt_a)
        .await
        .expect("DEL a through the binary");
    assert_eq!(ip_reservations(&ipam), Vec::<String>::new());
    assert_eq!(node.veths(), Vec::<String>::new());

    // GC: a forward whose container is not among the valid attachments goes.
    host.add(&network, &rt_a).await.expect("ADD a again");
    let portmap = bin.join("portmap");
    let mut gc = doc["plugins"][1].clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["name"] = json!("pods");
    gc["cni.dev/valid-attachments"] = json!([]);
    let out = sandboxd::netns::run_in(Some(&node.path()), move || {
        let mut child = Command::new(&portmap)
            .env("CNI_COMMAND", "GC")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(gc.to_string().as_bytes())?;
        child.wait_with_output()
    })
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let table = node.exec(&["nft", "list", "table", "ip", "sandboxd-hostports"]);
    assert!(!table.contains("hp/pm-a"), "{table}");
    host.del(&network, &rt_a).await.expect("DEL a");
}

/// A read-only bind mount of a dir of the test's own, removed on drop, pass or fail.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn mount(dir: &Path) -> ReadOnly {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.to_str().unwrap();
        sandboxd_tests::run("mount", &["--bind", path, path]);
        let guard = ReadOnly(dir.to_path_buf());
        sandboxd_tests::run("mount", &["-o", "remount,bind,ro", path]);
        guard
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Each failure the issue names leaves nothing (no veth, lease, nft rule or cache entry)
/// and says what went wrong: the bridge plugin process killed mid-ADD (it is held in
/// host-local's lock, after it made the veth), the pod's netns gone before DEL, and a
/// lease dir that cannot be written.
#[tokio::test]
async fn failures_leave_nothing_behind() {
    use cni_host::{CniHost, NetworkConfigList, ProcessExec, RuntimeConf};
    use sandboxd_tests::{files_under, ip_reservations};
    let node = Netns::new("sbt-node");
    let dir = tempfile::tempdir().unwrap();
    let bin = own_plugins(dir.path());
    let bridge = format!("sbf{}", std::process::id() % 100_000);
    let network = |ipam: &Path| {
        let doc = json!({
            "cniVersion": "1.1.0", "name": "pods",
            "plugins": [
                { "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
                  "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.81.0.0/24" }]],
                            "dataDir": ipam } },
                { "type": "portmap", "capabilities": { "portMappings": true } },
                { "type": "loopback" }
            ]
        });
        NetworkConfigList::from_bytes(doc.to_string().as_bytes(), "<test>").unwrap()
    };
    let cache = dir.path().join("cache");
    let host = CniHost::with_exec(
        vec![bin.clone()],
        cache.clone(),
        ProcessExec::in_netns(node.path()),
    );
    let runtime = |id: &str, pod: &Netns| {
        let mut rt = RuntimeConf::new(id, pod.path().display().to_string(), "eth0");
        rt.capability_args.insert(
            "portMappings".into(),
            json!([{ "hostPort": 18090, "containerPort": 80, "protocol": "tcp" }]),
        );
        rt
    };
    let ipam = dir.path().join("ipam");
    let assert_nothing_of = |id: &str, ipam: &Path| {
        assert_eq!(node.veths(), Vec::<String>::new(), "{id}: veths left");
        assert_eq!(
            ip_reservations(ipam),
            Vec::<String>::new(),
            "{id}: leases left"
        );
        assert_eq!(
            files_under(&cache),
            Vec::<PathBuf>::new(),
            "{id}: cache left"
        );
        let rules = node.exec(&["nft", "list", "ruleset"]);
        assert!(!rules.contains(id), "{id}: rules left: {rules}");
    };

    // 1. The plugin killed mid-ADD: held in host-local's lock, after it made the veth.
    let pod = Netns::new("sbt-pod");
    std::fs::create_dir_all(ipam.join("pods")).unwrap();
    let held = sandboxd::lockfile::lock(
        &ipam.join("pods/lock"),
        sandboxd::lockfile::LockMode::Exclusive,
    )
    .unwrap();
    let killed_network = network(&ipam);
    let killed_rt = runtime("killed", &pod);
    let add = host.add(&killed_network, &killed_rt);
    let kill = async {
        let plugin = bin.join("bridge").display().to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the bridge never got stuck"
            );
            let pids = Command::new("pgrep")
                .args(["-f", &plugin])
                .output()
                .unwrap();
            let pids = String::from_utf8_lossy(&pids.stdout).into_owned();
            if !pids.trim().is_empty() && !node.veths().is_empty() {
                for pid in pids.lines() {
                    Command::new("kill").args(["-9", pid]).status().unwrap();
                }
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(held);
    };
    let (outcome, ()) = tokio::join!(add, kill);
    let err = outcome
        .expect_err("a killed plugin fails the ADD")
        .to_string();
    assert!(
        err.contains("plugin bridge failed (ADD) for container killed")
            && err.contains("without a CNI error object"),
        "{err}"
    );
    assert!(!err.contains("cleanup DEL also failed"), "{err}");
    assert_eq!(pod.links(), Vec::<String>::new(), "eth0 left in the pod");
    assert_nothing_of("killed", &ipam);

    // 2. The pod's netns gone before DEL: DEL still frees the lease, the hostPort, the
    // masquerade and the cache entry.
    let gone_rt = {
        let pod = Netns::new("sbt-pod");
        let rt = runtime("gone", &pod);
        host.add(&network(&ipam), &rt).await.expect("ADD");
        let rules = node.exec(&["nft", "list", "ruleset"]);
        assert!(rules.contains("hp/gone/tcp/18090") && rules.contains("masq/pods/gone/"));
        rt
    };
    assert!(!Path::new(&gone_rt.netns).exists());
    host.del(&network(&ipam), &gone_rt)
        .await
        .expect("DEL without the netns");
    assert_nothing_of("gone", &ipam);

    // 3. A lease dir that cannot be written: ADD fails naming it, and nothing is made.
    let read_only = dir.path().join("ro-ipam");
    let _mounted = ReadOnly::mount(&read_only);
    let pod = Netns::new("sbt-pod");
    let err = host
        .add(&network(&read_only), &runtime("readonly", &pod))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("open the lease dir {}/pods", read_only.display()))
            && err.contains("Read-only file system")
            && err.contains("(code 5)")
            && !err.contains("cleanup DEL also failed"),
        "{err}"
    );
    assert_eq!(pod.links(), Vec::<String>::new(), "eth0 left in the pod");
    assert_nothing_of("readonly", &read_only);
    let status = host
        .status(&network(&read_only))
        .await
        .unwrap_err()
        .to_string();
    assert!(status.contains("(code 50)"), "{status}");
}
