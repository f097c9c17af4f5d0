//! PodSandboxStats and ListPodSandboxStats: the pod's CPU, memory and process count (the
//! sums over its running containers' cgroups, and pause), its network interfaces'
//! counters as its network namespace has them (`/proc/<pause>/net/dev`), and each running
//! container's stats.

use std::collections::{HashMap, HashSet};

use k8s_cri::v1 as cri;

use crate::container::{ContainerState, ContainerUsage};
use crate::error::{Error, Result};
use crate::runtime::{now_ns, Runtime};
use crate::sandbox::status::ListFilter;
use crate::sandbox::SandboxRecord;

/// The interface a pod's network is attached through, which the kubelet reports.
const DEFAULT_INTERFACE: &str = "eth0";

impl Runtime {
    pub async fn pod_sandbox_stats(&self, id: &str) -> Result<cri::PodSandboxStats> {
        let (_, entry) = self.lookup(id)?;
        let record = entry.lock().await.clone();
        let mut stats = self.stats_of_pods(vec![record]).await?;
        Ok(stats.pop().expect("stats for each pod asked"))
    }

    /// ListPodSandboxStats' filter is ListPodSandbox's without the state.
    pub async fn list_pod_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>> {
        let filter = filter.map_or_else(ListFilter::default, |f| ListFilter {
            id: Some(f.id).filter(|id| !id.is_empty()),
            state: None,
            labels: f.label_selector,
        });
        let mut records = Vec::new();
        for entry in self.entries() {
            let record = entry.lock().await.clone();
            if filter.matches(&record) {
                records.push(record);
            }
        }
        self.stats_of_pods(records).await
    }

    /// The stats of `pods`, in their order, from one pass over the running containers
    /// (only theirs are read).
    async fn stats_of_pods(&self, pods: Vec<SandboxRecord>) -> Result<Vec<cri::PodSandboxStats>> {
        let ids: HashSet<&str> = pods.iter().map(|pod| pod.id.as_str()).collect();
        let mut by_pod: HashMap<String, Vec<ContainerUsage>> = HashMap::new();
        for used in self
            .container_usage(|record| {
                record.state == ContainerState::Running && ids.contains(record.sandbox_id.as_str())
            })
            .await?
        {
            by_pod
                .entry(used.sandbox_id.clone())
                .or_default()
                .push(used);
        }
        tokio::task::spawn_blocking(move || {
            pods.iter()
                .map(|pod| pod_stats(pod, by_pod.remove(&pod.id).unwrap_or_default()))
                .collect()
        })
        .await
        .map_err(|e| Error::step("read the stats", "pods", e))
    }
}

fn sum(values: impl Iterator<Item = Option<u64>>) -> Option<cri::UInt64Value> {
    let mut total = None;
    for value in values.flatten() {
        total = Some(total.unwrap_or(0) + value);
    }
    total.map(|value| cri::UInt64Value { value })
}

fn pod_stats(record: &SandboxRecord, containers: Vec<ContainerUsage>) -> cri::PodSandboxStats {
    let timestamp = now_ns();
    let pause = record.pause.filter(|p| p.is_alive());
    let usages = || containers.iter().map(|used| &used.usage);
    let network = pause.and_then(|p| {
        let text = std::fs::read_to_string(format!("/proc/{}/net/dev", p.pid)).ok()?;
        Some(network_usage(&text, timestamp))
    });
    // pause is a process of the pod too, outside its containers' cgroups.
    let processes = sum(usages()
        .map(|u| u.processes)
        .chain(std::iter::once(pause.map(|_| 1))));
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: record.id.clone(),
            metadata: Some(cri::PodSandboxMetadata {
                name: record.metadata.name.clone(),
                uid: record.metadata.uid.clone(),
                namespace: record.metadata.namespace.clone(),
                attempt: record.metadata.attempt,
            }),
            labels: record.labels.clone().into_iter().collect(),
            annotations: record.annotations.clone().into_iter().collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cri::CpuUsage {
                timestamp,
                usage_core_nano_seconds: sum(usages().map(|u| u.cpu_ns)),
                usage_nano_cores: None,
            }),
            memory: Some(cri::MemoryUsage {
                timestamp,
                working_set_bytes: sum(usages().map(|u| u.working_set)),
                usage_bytes: sum(usages().map(|u| u.memory)),
                ..Default::default()
            }),
            network,
            process: Some(cri::ProcessUsage {
                timestamp,
                process_count: processes,
            }),
            containers: containers.into_iter().map(|used| used.stats).collect(),
        }),
        windows: None,
    }
}

/// The counters of `/proc/net/dev` (loopback left out): eth0 as the default interface,
/// every other one listed.
fn network_usage(net_dev: &str, timestamp: i64) -> cri::NetworkUsage {
    let mut usage = cri::NetworkUsage {
        timestamp,
        ..Default::default()
    };
    // Two header lines, then `name: rx_bytes packets errs drop fifo frame compressed
    // multicast tx_bytes packets errs …`.
    for line in net_dev.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let counters: Vec<u64> = counters
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .collect();
        if name == "lo" || counters.len() < 11 {
            continue;
        }
        let interface = cri::NetworkInterfaceUsage {
            name: name.to_string(),
            rx_bytes: Some(cri::UInt64Value { value: counters[0] }),
            rx_errors: Some(cri::UInt64Value { value: counters[2] }),
            tx_bytes: Some(cri::UInt64Value { value: counters[8] }),
            tx_errors: Some(cri::UInt64Value {
                value: counters[10],
            }),
        };
        if name == DEFAULT_INTERFACE {
            usage.default_interface = Some(interface);
        } else {
            usage.interfaces.push(interface);
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_counters_are_read_per_interface() {
        let text = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0:    5092      41    3    0    0     0          0         0     1386      15    7    0    0     0       0          0
  net1:       1       2    0    0    0     0          0         0        4       5    0    0    0     0       0          0
";
        let usage = network_usage(text, 7);
        let eth0 = usage.default_interface.unwrap();
        assert_eq!(eth0.name, "eth0");
        assert_eq!(
            (eth0.rx_bytes.unwrap().value, eth0.rx_errors.unwrap().value),
            (5092, 3)
        );
        assert_eq!(
            (eth0.tx_bytes.unwrap().value, eth0.tx_errors.unwrap().value),
            (1386, 7)
        );
        assert_eq!(usage.interfaces.len(), 1);
        assert_eq!(usage.interfaces[0].name, "net1");
    }

    #[test]
    fn sums_skip_what_was_not_counted() {
        assert_eq!(sum([None, None].into_iter()), None);
        assert_eq!(sum([Some(2), None, Some(3)].into_iter()).unwrap().value, 5);
    }
}
