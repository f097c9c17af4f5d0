//! The runtime's protocol logic against a recording fake: no processes, no root.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use cni_host::{
    CniHost, ExecError, GcAttachment, Invocation, NetworkConfigList, PluginExec, RuntimeConf,
};
use serde_json::{json, Value};

type Responder = Box<dyn Fn(&str, &str, &Value) -> Result<Value, ExecError> + Send + Sync>;

/// Answers each call through `respond(plugin type, CNI_COMMAND, stdin)` and records it.
struct FakeExec {
    bin_dir: tempfile::TempDir,
    calls: Mutex<Vec<Invocation>>,
    respond: Responder,
    /// What VERSION answers, per plugin; every version from 0.3.1 unless set.
    supported: HashMap<String, Vec<&'static str>>,
}

impl FakeExec {
    fn new(
        respond: impl Fn(&str, &str, &Value) -> Result<Value, ExecError> + Send + Sync + 'static,
    ) -> Self {
        FakeExec {
            bin_dir: tempfile::tempdir().unwrap(),
            calls: Mutex::new(Vec::new()),
            respond: Box::new(respond),
            supported: HashMap::new(),
        }
    }

    fn supporting(mut self, plugin: &str, versions: &[&'static str]) -> Self {
        self.supported.insert(plugin.to_string(), versions.to_vec());
        self
    }

    fn calls(&self) -> Vec<(String, String)> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    plugin_type(i),
                    i.var("CNI_COMMAND").unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    fn stdin_of(&self, plugin: &str, command: &str) -> Value {
        let calls = self.calls.lock().unwrap();
        let call = calls
            .iter()
            .find(|i| plugin_type(i) == plugin && i.var("CNI_COMMAND") == Some(command))
            .unwrap_or_else(|| panic!("no {command} call to {plugin}"));
        serde_json::from_slice(&call.stdin).unwrap()
    }
}

fn plugin_type(i: &Invocation) -> String {
    i.plugin.file_name().unwrap().to_string_lossy().into_owned()
}

impl PluginExec for FakeExec {
    async fn run(&self, invocation: Invocation) -> Result<Vec<u8>, ExecError> {
        self.calls.lock().unwrap().push(invocation.clone());
        let stdin: Value = serde_json::from_slice(&invocation.stdin).unwrap();
        let command = invocation.var("CNI_COMMAND").unwrap().to_string();
        if command == "VERSION" {
            let all = vec!["0.3.1", "0.4.0", "1.0.0", "1.1.0"];
            let supported = self
                .supported
                .get(&plugin_type(&invocation))
                .unwrap_or(&all);
            return Ok(
                serde_json::to_vec(&json!({"cniVersion": stdin["cniVersion"],
                "supportedVersions": supported}))
                .unwrap(),
            );
        }
        (self.respond)(&plugin_type(&invocation), &command, &stdin).map(|v| {
            if v.is_null() {
                Vec::new()
            } else {
                serde_json::to_vec(&v).unwrap()
            }
        })
    }

    fn find(&self, plugin_type: &str, _dirs: &[PathBuf]) -> Option<PathBuf> {
        if plugin_type == "missing" {
            return None;
        }
        let path = self.bin_dir.path().join(plugin_type);
        if !path.exists() {
            std::fs::write(&path, b"").unwrap();
        }
        Some(path)
    }
}

fn bridge_result() -> Value {
    json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/run/netns/p"}],
        "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0"}]})
}

/// Plugins pass their prevResult on, except `bridge` which makes the result.
fn well_behaved(plugin: &str, command: &str, stdin: &Value) -> Result<Value, ExecError> {
    match (plugin, command) {
        ("bridge", "ADD") => Ok(bridge_result()),
        (_, "ADD") => Ok(stdin["prevResult"].clone()),
        _ => Ok(Value::Null),
    }
}

fn list(version: &str) -> NetworkConfigList {
    let text = json!({"cniVersion": version, "name": "pods", "plugins": [
        {"type": "bridge", "bridge": "cni0"},
        {"type": "portmap", "capabilities": {"portMappings": true}}]});
    NetworkConfigList::from_bytes(text.to_string().as_bytes(), "<test>").unwrap()
}

fn rt() -> RuntimeConf {
    let mut rt = RuntimeConf::new("c1", "/run/netns/p", "eth0").with_pod("default", "web", "c1");
    rt.capability_args.insert(
        "portMappings".into(),
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );
    rt.capability_args
        .insert("bandwidth".into(), json!({"ingressRate": 1}));
    rt
}

fn host(exec: FakeExec) -> (CniHost<FakeExec>, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let host = CniHost::with_exec(
        vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
        cache.path(),
        exec,
    )
    .plugin_timeout(Duration::from_secs(5));
    (host, cache)
}

#[tokio::test]
async fn add_chains_prev_result_and_passes_declared_capabilities_only() {
    let (host, _cache) = host(FakeExec::new(well_behaved));
    let result = host.add(&list("1.0.0"), &rt()).await.unwrap();
    assert_eq!(result.ips[0].address.to_string(), "10.244.1.5/24");

    let exec = host.exec();
    assert_eq!(
        exec.calls(),
        [
            ("bridge", "VERSION"),
            ("portmap", "VERSION"),
            ("bridge", "ADD"),
            ("portmap", "ADD")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let bridge_in = exec.stdin_of("bridge", "ADD");
    assert_eq!(bridge_in["name"], "pods");
    assert_eq!(bridge_in["cniVersion"], "1.0.0");
    assert!(bridge_in.get("runtimeConfig").is_none() && bridge_in.get("prevResult").is_none());
    let portmap_in = exec.stdin_of("portmap", "ADD");
    assert!(
        portmap_in.get("capabilities").is_none(),
        "capabilities is the runtime's; the plugin gets runtimeConfig: {portmap_in}"
    );
    assert_eq!(
        portmap_in["runtimeConfig"],
        json!({"portMappings": rt().capability_args["portMappings"]})
    );
    assert_eq!(
        portmap_in["prevResult"]["ips"][0]["address"],
        "10.244.1.5/24"
    );

    let calls = exec.calls.lock().unwrap();
    let add = calls
        .iter()
        .find(|i| i.var("CNI_COMMAND") == Some("ADD"))
        .unwrap();
    assert_eq!(add.var("CNI_CONTAINERID"), Some("c1"));
    assert_eq!(add.var("CNI_NETNS"), Some("/run/netns/p"));
    assert_eq!(add.var("CNI_IFNAME"), Some("eth0"));
    assert_eq!(add.var("CNI_PATH"), Some("/opt/cni/bin:/usr/lib/cni"));
    assert_eq!(
        add.var("CNI_ARGS"),
        Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c1")
    );
    drop(calls);
    assert!(host.cache().load("pods", "c1", "eth0").unwrap().is_some());
}

/// SPEC 1.1: a `cniVersions` config is spoken in the highest version every plugin knows.
#[tokio::test]
async fn cni_versions_pick_the_highest_version_the_whole_chain_speaks() {
    let conf = |versions: Value| {
        let text = json!({"cniVersions": versions, "name": "pods", "plugins": [
            {"type": "bridge"}, {"type": "portmap", "capabilities": {"portMappings": true}}]});
        NetworkConfigList::from_bytes(text.to_string().as_bytes(), "<test>").unwrap()
    };
    let exec = FakeExec::new(well_behaved).supporting("portmap", &["0.4.0", "1.0.0"]);
    let (chain, _cache) = host(exec);
    let result = chain
        .add(&conf(json!(["0.4.0", "1.0.0", "1.1.0"])), &rt())
        .await
        .unwrap();
    assert_eq!(result.cni_version, "1.0.0", "1.1.0 is not portmap's");
    assert_eq!(
        chain.exec().stdin_of("bridge", "ADD")["cniVersion"],
        "1.0.0"
    );
    assert_eq!(
        chain.exec().stdin_of("portmap", "ADD")["cniVersion"],
        "1.0.0"
    );
    let cached = chain.cache().load("pods", "c1", "eth0").unwrap().unwrap();
    let cached_conf: Value = serde_json::from_slice(&cached.config).unwrap();
    assert_eq!(cached_conf["cniVersion"], "1.0.0");
    assert_eq!(cached.result.unwrap()["cniVersion"], "1.0.0");

    chain
        .del(&conf(json!(["0.4.0", "1.0.0", "1.1.0"])), &rt())
        .await
        .unwrap();
    assert_eq!(
        chain.exec().stdin_of("bridge", "DEL")["cniVersion"],
        "1.0.0"
    );

    // No version common to the chain: refused before any side effect, naming the plugin.
    let exec = FakeExec::new(well_behaved)
        .supporting("bridge", &["1.1.0"])
        .supporting("portmap", &["1.0.0"]);
    let (disagreeing, _cache) = host(exec);
    let err = disagreeing
        .add(&conf(json!(["1.0.0", "1.1.0"])), &rt())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "plugin portmap failed (VERSION) for container c1: does not support CNI version 1.1.0 or 1.0.0 (it supports 1.0.0)"
    );
    assert!(disagreeing
        .exec()
        .calls()
        .iter()
        .all(|(_, c)| c == "VERSION"));
}

#[tokio::test]
async fn plugin_versions_are_asked_once_per_binary() {
    let (host, _cache) = host(FakeExec::new(well_behaved));
    let mut second = rt();
    second.container_id = "c2".into();
    host.add(&list("1.0.0"), &rt()).await.unwrap();
    host.add(&list("1.0.0"), &second).await.unwrap();
    let versions = host
        .exec()
        .calls()
        .iter()
        .filter(|(_, c)| c == "VERSION")
        .count();
    assert_eq!(versions, 2, "one VERSION per plugin binary, not per ADD");
}

#[tokio::test]
async fn a_failure_mid_chain_is_rolled_back_in_reverse() {
    let (host, _cache) = host(FakeExec::new(|plugin, command, stdin| {
        match (plugin, command) {
            ("portmap", "ADD") => Err(ExecError::Failed {
                status: "status 1".into(),
                stdout: br#"{"cniVersion":"1.0.0","code":11,"msg":"iptables lock busy"}"#.to_vec(),
                stderr: String::new(),
            }),
            _ => well_behaved(plugin, command, stdin),
        }
    }));
    let err = host.add(&list("1.0.0"), &rt()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugin portmap failed (ADD) for container c1: iptables lock busy (code 11)"
    );
    assert_eq!(err.cni_error().map(|e| e.code), Some(11));
    let commands: Vec<_> = host.exec().calls().into_iter().skip(2).collect();
    assert_eq!(
        commands,
        [
            ("bridge", "ADD"),
            ("portmap", "ADD"),
            ("portmap", "DEL"),
            ("bridge", "DEL")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // The cleanup DEL tells the plugins what the chain had made so far.
    assert_eq!(
        host.exec().stdin_of("bridge", "DEL")["prevResult"]["ips"][0]["address"],
        "10.244.1.5/24"
    );
    assert!(host.cache().load("pods", "c1", "eth0").unwrap().is_none());
}

#[tokio::test]
async fn a_failed_cleanup_is_reported_with_the_failure() {
    let (host, _cache) = host(FakeExec::new(|plugin, command, stdin| {
        match (plugin, command) {
            ("portmap", _) => Err(ExecError::TimedOut(Duration::from_secs(5))),
            _ => well_behaved(plugin, command, stdin),
        }
    }));
    let err = host
        .add(&list("1.0.0"), &rt())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("plugin portmap failed (ADD) for container c1: did not finish within 5s"),
        "{err}"
    );
    assert!(
        err.contains("the cleanup DEL also failed") && err.contains("plugin portmap failed (DEL)"),
        "{err}"
    );
    // The bridge DEL still ran although portmap's DEL failed before it.
    assert!(host
        .exec()
        .calls()
        .contains(&("bridge".to_string(), "DEL".to_string())));
}

#[tokio::test]
async fn incompatible_plugins_fail_before_any_side_effect() {
    let (host, _cache) = host(FakeExec::new(well_behaved));
    let err = host
        .add(&list("0.2.0"), &rt())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(err, "plugin bridge failed (VERSION) for container c1: does not support CNI version 0.2.0 (it supports 0.3.1, 0.4.0, 1.0.0, 1.1.0)");
    assert!(host.exec().calls().iter().all(|(_, c)| c == "VERSION"));
}

#[tokio::test]
async fn a_missing_plugin_is_named_with_the_dirs_searched() {
    let text = r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"missing"}]}"#;
    let list = NetworkConfigList::from_bytes(text.as_bytes(), "<test>").unwrap();
    let (host, _cache) = host(FakeExec::new(well_behaved));
    let err = host.add(&list, &rt()).await.unwrap_err().to_string();
    assert_eq!(err, "plugin missing failed (ADD) for container c1: binary not found in /opt/cni/bin:/usr/lib/cni");
    let status = host.status(&list).await.unwrap_err().to_string();
    assert!(
        status.starts_with("plugin missing failed (STATUS) for network pods"),
        "{status}"
    );
}

#[tokio::test]
async fn bad_runtime_arguments_are_rejected_with_the_field() {
    let (host, _cache) = host(FakeExec::new(well_behaved));
    let mut bad = rt();
    bad.ifname = "a-very-long-interface-name".into();
    let err = host
        .add(&list("1.0.0"), &bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("invalid interface name \"a-very-long-interface-name\" for container c1"),
        "{err}"
    );
    bad = rt();
    bad.container_id = "../etc".into();
    assert!(host
        .add(&list("1.0.0"), &bad)
        .await
        .unwrap_err()
        .to_string()
        .starts_with("invalid container id"));
    assert!(host.exec().calls().is_empty());
}

#[tokio::test]
async fn del_uses_the_cache_and_is_idempotent() {
    let (host, _cache) = host(FakeExec::new(well_behaved));
    host.add(&list("1.0.0"), &rt()).await.unwrap();
    host.del(&list("1.0.0"), &rt()).await.unwrap();
    assert_eq!(
        host.exec().stdin_of("portmap", "DEL")["prevResult"]["ips"][0]["address"],
        "10.244.1.5/24"
    );
    assert!(host.cache().load("pods", "c1", "eth0").unwrap().is_none());
    // Again, now without a cache entry and without a netns.
    let mut gone = rt();
    gone.netns.clear();
    host.del(&list("1.0.0"), &gone).await.unwrap();
}

#[tokio::test]
async fn a_failed_del_keeps_the_cache_entry_for_a_retry() {
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failing = fail.clone();
    let (host, _cache) = host(FakeExec::new(move |plugin, command, stdin| {
        if command == "DEL"
            && plugin == "portmap"
            && failing.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(ExecError::Failed {
                status: "status 1".into(),
                stdout: Vec::new(),
                stderr: "boom".into(),
            });
        }
        well_behaved(plugin, command, stdin)
    }));
    host.add(&list("1.0.0"), &rt()).await.unwrap();
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = host
        .del(&list("1.0.0"), &rt())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(err, "plugin portmap failed (DEL) for container c1: exited with status 1 without a CNI error object; stderr: \"boom\"");
    assert!(host.cache().load("pods", "c1", "eth0").unwrap().is_some());
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    host.del(&list("1.0.0"), &rt()).await.unwrap();
    assert!(host.cache().load("pods", "c1", "eth0").unwrap().is_none());
}

#[tokio::test]
async fn check_needs_a_cached_add() {
    let (host, _cache) = host(FakeExec::new(well_behaved));
    let err = host
        .check(&list("1.0.0"), &rt())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing cached from an ADD"), "{err}");
    host.add(&list("1.0.0"), &rt()).await.unwrap();
    host.check(&list("1.0.0"), &rt()).await.unwrap();
    assert_eq!(
        host.exec().stdin_of("bridge", "CHECK")["prevResult"]["ips"][0]["address"],
        "10.244.1.5/24"
    );
    let old = host
        .check(&list("0.3.1"), &rt())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        old,
        "network pods has cniVersion 0.3.1; CHECK needs 0.4.0 or later"
    );
}

#[tokio::test]
async fn gc_removes_attachments_outside_the_valid_list() {
    let (host, _cache) = host(FakeExec::new(well_behaved));
    for id in ["keep", "stale1", "stale2"] {
        let mut rt = rt();
        rt.container_id = id.into();
        host.add(&list("1.1.0"), &rt).await.unwrap();
    }
    let keep = GcAttachment {
        container_id: "keep".into(),
        ifname: "eth0".into(),
    };
    let report = host
        .gc(&list("1.1.0"), std::slice::from_ref(&keep))
        .await
        .unwrap();
    let removed: Vec<_> = report
        .removed
        .iter()
        .map(|a| a.container_id.as_str())
        .collect();
    assert_eq!(removed, ["stale1", "stale2"]);
    assert!(host.cache().load("pods", "keep", "eth0").unwrap().is_some());
    assert!(host
        .cache()
        .load("pods", "stale1", "eth0")
        .unwrap()
        .is_none());
    // 1.1.0 plugins get their own GC with the attachments to keep.
    let gc_in = host.exec().stdin_of("bridge", "GC");
    assert_eq!(
        gc_in["cni.dev/valid-attachments"],
        json!([{"containerID": "keep", "ifname": "eth0"}])
    );
    let calls = host.exec().calls.lock().unwrap();
    let gc_call = calls
        .iter()
        .find(|i| i.var("CNI_COMMAND") == Some("GC"))
        .unwrap();
    assert_eq!(
        gc_call.var("CNI_CONTAINERID"),
        None,
        "GC is not about one container"
    );
}

#[tokio::test]
async fn status_asks_plugins_only_from_1_1_0() {
    let (host, _cache) = host(FakeExec::new(|plugin, command, stdin| {
        match (plugin, command) {
            ("portmap", "STATUS") => Err(ExecError::Failed {
                status: "status 1".into(),
                stdout: br#"{"code":50,"msg":"iptables not ready"}"#.to_vec(),
                stderr: String::new(),
            }),
            _ => well_behaved(plugin, command, stdin),
        }
    }));
    host.status(&list("1.0.0")).await.unwrap();
    assert!(
        host.exec().calls().iter().all(|(_, c)| c == "VERSION"),
        "a 1.0.0 network is ready when its plugins are there and speak 1.0.0"
    );
    let err = host.status(&list("1.1.0")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugin portmap failed (STATUS) for network pods: iptables not ready (code 50)"
    );
}

#[tokio::test]
async fn garbage_results_are_errors_and_rolled_back() {
    let (host, _cache) = host(FakeExec::new(|plugin, command, stdin| {
        match (plugin, command) {
            ("portmap", "ADD") => Ok(json!("not a result")),
            _ => well_behaved(plugin, command, stdin),
        }
    }));
    let err = host
        .add(&list("1.0.0"), &rt())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("plugin portmap failed (ADD) for container c1: printed something that is not a CNI result"), "{err}");
    assert!(host
        .exec()
        .calls()
        .contains(&("bridge".to_string(), "DEL".to_string())));
}

#[tokio::test]
async fn an_add_that_prints_nothing_is_an_error_and_rolled_back() {
    let (host, _cache) = host(FakeExec::new(|plugin, command, stdin| {
        match (plugin, command) {
            ("portmap", "ADD") => Ok(Value::Null),
            _ => well_behaved(plugin, command, stdin),
        }
    }));
    let err = host
        .add(&list("1.0.0"), &rt())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "plugin portmap failed (ADD) for container c1: succeeded but printed no result"
    );
    assert!(host
        .exec()
        .calls()
        .contains(&("bridge".to_string(), "DEL".to_string())));
    assert!(host.cache().load("pods", "c1", "eth0").unwrap().is_none());
}
