//! RunPodSandbox: validate, start pause in new namespaces, pin its netns, attach the pod
//! network, persist. Every step registers its undo first; a failure runs them in reverse.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::fault;
use crate::process::ProcessHandle;
use crate::rollback::Rollback;
use crate::runtime::{new_id, now_ns, Runtime};
use crate::sandbox::{
    describe, files, PodMetadata, PortMapping, RunIntent, SandboxRecord, SandboxState,
    RECORD_VERSION,
};

/// What a valid request asks for.
struct PodSpec {
    metadata: PodMetadata,
    hostname: String,
    log_directory: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    port_mappings: Vec<PortMapping>,
    host_network: bool,
    host_ipc: bool,
    pid_namespace: bool,
    dns: Option<cri::DnsConfig>,
    sysctls: BTreeMap<String, String>,
    cgroup_parent: String,
}

/// Names end up in paths, CNI_ARGS and messages: no separators, no `.`/`..`, no controls.
pub(crate) fn check_name(object: &str, field: &str, value: &str, max: usize) -> Result<()> {
    let forbidden = value
        .chars()
        .find(|c| matches!(c, '/' | ';' | '=' | ',') || c.is_whitespace() || c.is_control());
    let problem = if value.is_empty() {
        "is empty".to_string()
    } else if value.len() > max {
        format!("is {} bytes long, the limit is {max}", value.len())
    } else if value == "." || value == ".." {
        format!("{value:?} is not a name")
    } else if let Some(c) = forbidden {
        format!("{value:?} contains {c:?}")
    } else {
        return Ok(());
    };
    Err(Error::invalid(object, field, problem))
}

fn validate(config: Option<cri::PodSandboxConfig>) -> Result<PodSpec> {
    let config = config.ok_or_else(|| Error::invalid("pod sandbox", "config", "is missing"))?;
    let meta = config
        .metadata
        .ok_or_else(|| Error::invalid("pod sandbox", "config.metadata", "is missing"))?;
    let object = format!("pod sandbox {}/{}", meta.namespace, meta.name);
    check_name(&object, "metadata.name", &meta.name, 253)?;
    check_name(&object, "metadata.namespace", &meta.namespace, 253)?;
    check_name(&object, "metadata.uid", &meta.uid, 253)?;

    // Without a hostname the pod's name is used, cut to a hostname's 63 characters as the
    // kubelet does.
    let hostname = if config.hostname.is_empty() {
        meta.name
            .chars()
            .take(63)
            .collect::<String>()
            .trim_end_matches(['-', '.'])
            .to_string()
    } else {
        config.hostname.clone()
    };
    let valid_hostname = !hostname.is_empty()
        && hostname.len() <= 64
        && !hostname.starts_with(['-', '.'])
        && hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !valid_hostname {
        let field = if config.hostname.is_empty() {
            "metadata.name (as the hostname)"
        } else {
            "hostname"
        };
        return Err(Error::invalid(
            &object,
            field,
            format!("{hostname:?} is not a valid hostname (letters, digits, '-', '.')"),
        ));
    }

    // Containers' logs are written under it, by the daemon, as root: it must say where
    // without depending on the daemon's working directory or climbing out of itself.
    if !config.log_directory.is_empty()
        && (!config.log_directory.starts_with('/')
            || config
                .log_directory
                .split('/')
                .any(|segment| segment == "." || segment == ".."))
    {
        return Err(Error::invalid(
            &object,
            "log_directory",
            format!(
                "{:?} must be an absolute path without '.' or '..' (like /var/log/pods/<pod>)",
                config.log_directory
            ),
        ));
    }

    let mut port_mappings = Vec::new();
    for (i, p) in config.port_mappings.iter().enumerate() {
        let field = |f: &str| format!("port_mappings[{i}].{f}");
        let protocol = match cri::Protocol::try_from(p.protocol) {
            Ok(cri::Protocol::Tcp) => "tcp",
            Ok(cri::Protocol::Udp) => "udp",
            Ok(cri::Protocol::Sctp) => "sctp",
            Err(_) => {
                return Err(Error::invalid(
                    &object,
                    field("protocol"),
                    format!("{} is not TCP (0), UDP (1) or SCTP (2)", p.protocol),
                ))
            }
        };
        let container_port = u16::try_from(p.container_port)
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| {
                Error::invalid(
                    &object,
                    field("container_port"),
                    format!("{} is not a port (1-65535)", p.container_port),
                )
            })?;
        let host_port = u16::try_from(p.host_port).map_err(|_| {
            Error::invalid(
                &object,
                field("host_port"),
                format!("{} is not a port (0-65535)", p.host_port),
            )
        })?;
        if !p.host_ip.is_empty() && p.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(Error::invalid(
                &object,
                field("host_ip"),
                format!("{:?} is not an IP address", p.host_ip),
            ));
        }
        // A mapping without a host port only documents the container port.
        if host_port != 0 {
            port_mappings.push(PortMapping {
                protocol: protocol.to_string(),
                container_port,
                host_port,
                host_ip: p.host_ip.clone(),
            });
        }
    }
    for key in config.labels.keys().chain(config.annotations.keys()) {
        if key.is_empty() {
            return Err(Error::invalid(
                &object,
                "labels",
                "a label or annotation key is empty",
            ));
        }
    }

    let mut host_network = false;
    let mut host_ipc = false;
    let mut pid_namespace = false;
    if let Some(options) = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
    {
        host_network = options.network == cri::NamespaceMode::Node as i32;
        host_ipc = options.ipc == cri::NamespaceMode::Node as i32;
        pid_namespace = options.pid == cri::NamespaceMode::Pod as i32;
        if options.pid == cri::NamespaceMode::Target as i32 {
            return Err(Error::invalid(
                &object,
                "linux.security_context.namespace_options.pid",
                "TARGET is for containers, not pods; use POD, CONTAINER or NODE",
            ));
        }
        if options.network != cri::NamespaceMode::Pod as i32 && !host_network {
            return Err(Error::invalid(
                &object,
                "linux.security_context.namespace_options.network",
                "must be POD or NODE",
            ));
        }
    }

    let sysctls: BTreeMap<String, String> = config
        .linux
        .as_ref()
        .map(|l| l.sysctls.clone().into_iter().collect())
        .unwrap_or_default();
    super::sysctl::validate(&object, &sysctls, host_network, host_ipc)?;
    let cgroup_parent = config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .unwrap_or_default();
    check_cgroup_parent(&object, &cgroup_parent)?;

    Ok(PodSpec {
        metadata: PodMetadata {
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            attempt: meta.attempt,
        },
        hostname,
        log_directory: config.log_directory,
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        port_mappings,
        host_network,
        host_ipc,
        pid_namespace,
        dns: config.dns_config,
        sysctls,
        cgroup_parent,
    })
}

/// The kubelet's pod cgroup, under which the pod's containers are placed: a cgroupfs path
/// (the kubelet's `cgroupDriver: cgroupfs`), or none.
fn check_cgroup_parent(object: &str, parent: &str) -> Result<()> {
    const FIELD: &str = "linux.cgroup_parent";
    if parent.is_empty() {
        return Ok(());
    }
    let problem = if !parent.starts_with('/') {
        format!(
            "{parent:?} is not an absolute cgroup path (a systemd slice needs the kubelet's \
             cgroupDriver to be cgroupfs: sandboxd places containers with cgroupfs)"
        )
    } else if parent.len() > 4096 {
        format!("is {} bytes long, the limit is 4096", parent.len())
    } else if let Some(c) = parent.chars().find(|c| c.is_control()) {
        format!("{parent:?} contains {c:?}")
    } else if parent[1..]
        .split('/')
        .any(|part| matches!(part, "." | ".."))
    {
        format!("{parent:?} has a \".\" or \"..\" component")
    } else {
        return Ok(());
    };
    Err(Error::invalid(object, FIELD, problem))
}

impl Runtime {
    /// Runs a pod sandbox and returns its id. On failure nothing of it is left behind.
    pub async fn run_pod_sandbox(
        self: &Arc<Self>,
        config: Option<cri::PodSandboxConfig>,
    ) -> Result<String> {
        let spec = validate(config)?;
        let id = new_id();
        let object = describe(&id, &spec.metadata);
        let mut rollback = Rollback::new();

        // 1. Take the pod's name.
        {
            let mut names = self.names.lock().expect("names lock");
            if let Some(existing) = names.get(&spec.metadata) {
                return Err(Error::AlreadyExists(format!(
                    "pod sandbox {}/{} (uid {}, attempt {}) already exists as {existing}",
                    spec.metadata.namespace,
                    spec.metadata.name,
                    spec.metadata.uid,
                    spec.metadata.attempt
                )));
            }
            names.insert(spec.metadata.clone(), id.clone());
        }
        let runtime = self.clone();
        let metadata = spec.metadata.clone();
        rollback.push("take the pod name", async move {
            runtime.names.lock().expect("names lock").remove(&metadata);
            Ok(())
        });

        let outcome = self.bring_up(&id, spec, &mut rollback).await;
        match outcome {
            Ok(record) => {
                self.pods
                    .write()
                    .expect("pods lock")
                    .insert(id.clone(), Arc::new(tokio::sync::Mutex::new(record)));
                rollback.commit();
                Ok(id)
            }
            Err(failure) => {
                let undo = rollback.run().await;
                if undo.is_empty() {
                    Err(failure)
                } else {
                    Err(Error::RollbackFailed {
                        failure: Box::new(failure),
                        undo,
                    })
                }
            }
        }
        .map_err(|e| {
            // Bad requests are the client's to see; failures of the node are logged here too.
            if matches!(e, Error::Step { .. } | Error::RollbackFailed { .. }) {
                eprintln!("sandboxd: run {object}: {e}");
            }
            e
        })
    }

    async fn bring_up(
        self: &Arc<Self>,
        id: &str,
        spec: PodSpec,
        rollback: &mut Rollback,
    ) -> Result<SandboxRecord> {
        let object = describe(id, &spec.metadata);
        let dns = spec.dns.clone();
        let network = if spec.host_network {
            None
        } else {
            Some(self.pod_network()?)
        };

        let mut record = SandboxRecord {
            version: RECORD_VERSION,
            id: id.to_string(),
            metadata: spec.metadata,
            hostname: spec.hostname,
            log_directory: spec.log_directory,
            labels: spec.labels,
            annotations: spec.annotations,
            port_mappings: spec.port_mappings,
            host_network: spec.host_network,
            host_ipc: spec.host_ipc,
            pid_namespace: spec.pid_namespace,
            created_at_ns: now_ns(),
            state: SandboxState::Ready,
            pause: None,
            netns_path: None,
            network: None,
            ip: String::new(),
            additional_ips: Vec::new(),
            cni_result: None,
            shm: None,
            sysctls: spec.sysctls,
            cgroup_parent: spec.cgroup_parent,
        };

        // 2. The intent: what the next steps will make, before they make it.
        let mut planned = record.clone();
        if let Some(network) = &network {
            planned.netns_path = Some(self.config.netns_dir.join(id));
            planned.network = Some(network.name.clone());
        }
        let intent = RunIntent {
            version: RECORD_VERSION,
            record: planned,
            network_config: network.as_ref().map(|n| n.to_json()),
        };
        let (runtime, intent_id) = (self.clone(), id.to_string());
        rollback.push("write the intent", async move {
            runtime
                .sandboxes
                .remove(&intent_id)
                .map_err(|e| e.to_string())
        });
        self.run_intents
            .save(id, &intent)
            .map_err(|e| Error::step("write the intent", &object, e))?;
        fault::point("run-pod-sandbox/intent-written");

        // 3. pause, in new namespaces.
        let namespaces = crate::pause::PodNamespaces {
            hostname: Some(record.hostname.clone()),
            host_network: record.host_network,
            host_ipc: record.host_ipc,
            node_netns: self.config.node.netns.clone(),
            pid_namespace: record.pid_namespace,
            sandbox_id: id.to_string(),
        };
        let pid = crate::pause::spawn(&self.pause_binary, &object, &namespaces)
            .map_err(|e| Error::step("start pause", &object, e))?;
        // Reap it whenever it exits, so it never lingers as a zombie.
        tokio::spawn(crate::pause::reap(pid));
        let pause = ProcessHandle::of(pid).ok_or_else(|| {
            Error::step("start pause", &object, anyhow::anyhow!("exited at once"))
        })?;
        let grace = self.config.stop_grace;
        rollback.push("start pause", async move {
            pause
                .terminate(Signal::SIGKILL, grace)
                .await
                .map_err(|e| e.to_string())
        });
        record.pause = Some(pause);
        fault::point("run-pod-sandbox/pause-started");

        // The pod's sysctls, in the namespaces its containers will join (they go with them).
        super::sysctl::apply(pid, &record.sysctls)
            .map_err(|e| Error::step("apply the pod's sysctls", &object, e))?;

        if let Some(network) = network {
            // 4. Pin the netns.
            let path = crate::netns::pin(&self.config.netns_dir, id, pid)
                .map_err(|e| Error::step("pin the netns", &object, e))?;
            let pinned = path.clone();
            rollback.push("pin the netns", async move {
                crate::netns::unpin(&pinned).map_err(|e| e.to_string())
            });
            record.netns_path = Some(path);
            fault::point("run-pod-sandbox/netns-pinned");

            // 5. Attach the network. The DEL is registered first, for an ADD cancelled
            // half-way; an ADD that fails has had its chain DELeted by cni-host already (SPEC:
            // one DEL after a failed ADD), so only a failed cleanup leaves ours to retry.
            let rt = Runtime::cni_runtime_conf(&record);
            let runtime = self.clone();
            let (del_list, del_rt) = (network.clone(), rt.clone());
            rollback.push("attach the pod network", async move {
                runtime
                    .cni
                    .del(&del_list, &del_rt)
                    .await
                    .map_err(|e| e.to_string())
            });
            let result = match self.cni.add(&network, &rt).await {
                Ok(result) => result,
                Err(failure) => {
                    if !matches!(failure, cni_host::Error::AddAndCleanup { .. }) {
                        rollback.settled("attach the pod network");
                    }
                    return Err(Error::step("attach the pod network", &object, failure));
                }
            };
            let mut ips = result.ips.iter().map(|ip| ip.address.addr.to_string());
            record.ip = ips.next().unwrap_or_default();
            record.additional_ips = ips.collect();
            record.network = Some(network.name.clone());
            record.cni_result = result.to_value().ok();
            fault::point("run-pod-sandbox/network-attached");
        }

        // 6. The files the pod's containers share: hostname, hosts, resolv.conf, /dev/shm.
        let dir = self.sandboxes.dir_of(id);
        let hosts = if record.host_network {
            std::fs::read_to_string("/etc/hosts").unwrap_or_default()
        } else {
            files::hosts(&record.hostname, &record.ip)
        };
        let resolv_conf = files::resolv_conf(dns.as_ref())
            .map_err(|e| Error::step("write the pod files", &object, e))?;
        let (runtime, shm, files_id) = (self.clone(), dir.join(files::SHM_DIR), id.to_string());
        rollback.push("write the pod files", async move {
            files::unmount_shm(&shm).map_err(|e| e.to_string())?;
            runtime
                .sandboxes
                .remove(&files_id)
                .map_err(|e| e.to_string())
        });
        record.shm = Some(
            files::prepare(&dir, &record.hostname, &hosts, &resolv_conf)
                .map_err(|e| Error::step("write the pod files", &object, e))?,
        );

        fault::point("run-pod-sandbox/files-written");

        // 7. Persist; the record takes over from the intent.
        self.save(&record)?;
        let runtime = self.clone();
        let saved = id.to_string();
        rollback.push("persist the record", async move {
            runtime.sandboxes.remove(&saved).map_err(|e| e.to_string())
        });
        fault::point("run-pod-sandbox/record-saved");
        if let Err(e) = self.run_intents.discard(id) {
            // Harmless: a start-up finds the record beside it and discards it then.
            eprintln!("sandboxd: {object}: remove the intent: {e:#}");
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, namespace: &str, uid: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                namespace: namespace.into(),
                uid: uid.into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    fn message(config: cri::PodSandboxConfig) -> String {
        validate(Some(config))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_cgroup_parent_is_a_cgroupfs_path_or_none() {
        let with_parent = |parent: &str| {
            let mut config = config("web", "default", "u");
            config.linux = Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: parent.into(),
                ..Default::default()
            });
            config
        };
        for fine in ["", "/kubepods/besteffort/pod1234", "/a"] {
            assert_eq!(
                validate(Some(with_parent(fine))).unwrap().cgroup_parent,
                fine
            );
        }
        let slice = message(with_parent("kubepods-besteffort-pod1234.slice"));
        assert!(
            slice.starts_with("invalid linux.cgroup_parent of pod sandbox default/web:")
                && slice.contains("not an absolute cgroup path")
                && slice.contains("cgroupDriver"),
            "{slice}"
        );
        for escaping in ["/kubepods/../etc", "/kubepods/./pod", "/.."] {
            assert!(
                message(with_parent(escaping)).contains("component"),
                "{escaping}"
            );
        }
        assert!(message(with_parent("/pod\n1")).contains("contains '\\n'"));
    }

    #[test]
    fn names_must_be_usable_in_paths_and_messages() {
        assert_eq!(
            message(config("", "default", "u")),
            "invalid metadata.name of pod sandbox default/: is empty"
        );
        assert!(message(config("a/b", "default", "u"))
            .contains("metadata.name of pod sandbox default/a/b: \"a/b\" contains '/'"));
        assert!(message(config("..", "default", "u")).contains("\"..\" is not a name"));
        assert!(message(config("web", "", "u")).contains("metadata.namespace"));
        assert!(message(config("web", "default", "")).contains("metadata.uid"));
        assert!(validate(Some(config("web", "default", "u1"))).is_ok());
        assert!(validate(None).is_err());
    }

    #[test]
    fn log_directories_must_be_absolute_and_clean() {
        for bad in [
            "../../etc",
            "logs/pod",
            "/tmp/x/../../elsewhere",
            "/var/log/./pods",
        ] {
            let mut pod = config("web", "default", "u");
            pod.log_directory = bad.into();
            assert!(
                message(pod).starts_with("invalid log_directory of pod sandbox default/web"),
                "{bad}"
            );
        }
        for good in ["", "/var/log/pods/default_web_u", "/tmp/logs/"] {
            let mut pod = config("web", "default", "u");
            pod.log_directory = good.into();
            assert!(validate(Some(pod)).is_ok(), "{good}");
        }
    }

    #[test]
    fn ports_and_hostnames_are_checked() {
        let mut bad_port = config("web", "default", "u");
        bad_port.port_mappings.push(cri::PortMapping {
            protocol: 0,
            container_port: 70000,
            host_port: 8080,
            host_ip: String::new(),
        });
        assert!(message(bad_port).contains("invalid port_mappings[0].container_port of pod sandbox default/web: 70000 is not a port"));
        let mut bad_protocol = config("web", "default", "u");
        bad_protocol.port_mappings.push(cri::PortMapping {
            protocol: 9,
            container_port: 80,
            host_port: 8080,
            host_ip: String::new(),
        });
        assert!(message(bad_protocol).contains("port_mappings[0].protocol"));
        let mut bad_hostname = config("web", "default", "u");
        bad_hostname.hostname = "bad_host".into();
        assert!(message(bad_hostname).contains("hostname"));
        let long = "a".repeat(100);
        assert_eq!(
            validate(Some(config(&long, "default", "u")))
                .unwrap()
                .hostname
                .len(),
            63
        );
    }
}
