//! ContainerStats and ListContainerStats, read from the kernel as cAdvisor and containerd
//! read them: CPU time and the memory working set (usage less inactive file pages) from the
//! cgroups of the container's first process, whichever runtime placed them (cgroup v1 here,
//! v2 where the machine has it), and the writable layer's size from its upper dir.

use std::path::Path;

use k8s_cri::v1 as cri;

use crate::container::cgroup::{count_lines, read_number, stat_field, CgroupMounts, Cgroups};
use crate::container::{ContainerFilter, ContainerRecord, ContainerState};
use crate::error::{Error, Result};
use crate::runtime::{now_ns, Runtime};

/// ListContainerStats' filter: ListContainers' without the state.
pub fn stats_filter(filter: Option<cri::ContainerStatsFilter>) -> ContainerFilter {
    let Some(filter) = filter else {
        return ContainerFilter::default();
    };
    ContainerFilter {
        id: Some(filter.id).filter(|id| !id.is_empty()),
        state: None,
        sandbox_id: Some(filter.pod_sandbox_id).filter(|id| !id.is_empty()),
        labels: filter.label_selector,
    }
}

impl Runtime {
    pub async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats> {
        let (_, entry) = self.lookup_container(id)?;
        let mut record = entry.lock().await;
        self.observe(&mut record)?;
        let record = record.clone();
        let object = record.describe();
        let upper = self.container_dir(&record.id).path().join("upper");
        tokio::task::spawn_blocking(move || {
            stats_of(&record, &upper, &usage_of(&record, &CgroupMounts::read()))
        })
        .await
        .map_err(|e| Error::step("read the stats", object, e))
    }

    pub async fn list_container_stats(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<cri::ContainerStats>> {
        Ok(self
            .container_usage(|record| filter.matches(record))
            .await?
            .into_iter()
            .map(|used| used.stats)
            .collect())
    }

    /// The stats of the containers `wanted` keeps (once observed), with what their cgroups
    /// counted; only those are read.
    pub(crate) async fn container_usage(
        &self,
        wanted: impl Fn(&ContainerRecord) -> bool,
    ) -> Result<Vec<ContainerUsage>> {
        let mut records = Vec::new();
        for entry in self.container_entries() {
            let mut record = entry.lock().await;
            self.observe(&mut record)?;
            if wanted(&record) {
                let upper = self.container_dir(&record.id).path().join("upper");
                records.push((record.clone(), upper));
            }
        }
        tokio::task::spawn_blocking(move || {
            let mounts = CgroupMounts::read();
            records
                .into_iter()
                .map(|(record, upper)| {
                    let usage = usage_of(&record, &mounts);
                    ContainerUsage {
                        stats: stats_of(&record, &upper, &usage),
                        usage,
                        sandbox_id: record.sandbox_id,
                    }
                })
                .collect()
        })
        .await
        .map_err(|e| Error::step("read the stats", "containers", e))
    }
}

/// One container's stats, what its cgroups counted, and its pod.
pub(crate) struct ContainerUsage {
    pub stats: cri::ContainerStats,
    pub usage: Usage,
    pub sandbox_id: String,
}

/// A container whose process is gone (exited) has no cgroup left to read, and shows none.
fn usage_of(record: &ContainerRecord, mounts: &CgroupMounts) -> Usage {
    record
        .process
        .as_ref()
        .filter(|_| record.state != ContainerState::Exited)
        .map(|p| Usage::of(p.pid, mounts))
        .unwrap_or_default()
}

/// One container's figures.
fn stats_of(record: &ContainerRecord, upper: &Path, usage: &Usage) -> cri::ContainerStats {
    let timestamp = now_ns();
    let (used_bytes, inodes_used) = disk_usage(upper);
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: record.id.clone(),
            metadata: Some(cri::ContainerMetadata {
                name: record.name.clone(),
                attempt: record.attempt,
            }),
            labels: record.labels.clone().into_iter().collect(),
            annotations: record.annotations.clone().into_iter().collect(),
        }),
        cpu: Some(cri::CpuUsage {
            timestamp,
            usage_core_nano_seconds: usage.cpu_ns.map(|v| cri::UInt64Value { value: v }),
            usage_nano_cores: None,
        }),
        memory: Some(cri::MemoryUsage {
            timestamp,
            working_set_bytes: usage.working_set.map(|v| cri::UInt64Value { value: v }),
            usage_bytes: usage.memory.map(|v| cri::UInt64Value { value: v }),
            ..Default::default()
        }),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: upper.display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: used_bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes_used }),
        }),
        ..Default::default()
    }
}

/// What a process's cgroups have counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// CPU time of every task in the cgroup, in nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Memory charged to the cgroup.
    pub memory: Option<u64>,
    /// `memory` less inactive file pages: what the kubelet evicts on.
    pub working_set: Option<u64>,
    /// Processes in the cgroup.
    pub processes: Option<u64>,
}

impl Usage {
    /// What the cgroups of process `pid` counted, in the hierarchies of `mounts`.
    pub fn of(pid: u32, mounts: &CgroupMounts) -> Usage {
        let Some(cgroups) = Cgroups::of(pid, mounts) else {
            return Usage::default();
        };
        let dir_of = |controller: Option<&str>| cgroups.dir(controller);
        let mut usage = Usage::default();
        // v1 first (where the controller is bound there, v2 has no files for it).
        if let Some(dir) = dir_of(Some("cpuacct")) {
            usage.cpu_ns = read_number(&dir.join("cpuacct.usage"));
        }
        if let Some(dir) = dir_of(Some("memory")) {
            usage.memory = read_number(&dir.join("memory.usage_in_bytes"));
            let inactive = stat_field(&dir.join("memory.stat"), "total_inactive_file");
            usage.working_set = usage
                .memory
                .map(|m| m.saturating_sub(inactive.unwrap_or(0)));
        }
        if let Some(dir) = dir_of(Some("pids")).or_else(|| dir_of(Some("cpuacct"))) {
            usage.processes = count_lines(&dir.join("cgroup.procs"));
        }
        if let Some(dir) = dir_of(None) {
            if usage.processes.is_none() {
                usage.processes = count_lines(&dir.join("cgroup.procs"));
            }
            if usage.cpu_ns.is_none() {
                usage.cpu_ns = stat_field(&dir.join("cpu.stat"), "usage_usec").map(|us| us * 1000);
            }
            if usage.memory.is_none() {
                usage.memory = read_number(&dir.join("memory.current"));
                let inactive = stat_field(&dir.join("memory.stat"), "inactive_file");
                usage.working_set = usage
                    .memory
                    .map(|m| m.saturating_sub(inactive.unwrap_or(0)));
            }
        }
        usage
    }
}

/// Bytes allocated and inodes under `dir` (as `du -s` and `du --inodes` count them), not
/// following symlinks and not crossing into other filesystems.
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let device = root.dev();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if metadata.dev() != device {
            continue;
        }
        bytes += metadata.blocks() * 512;
        inodes += 1;
        if metadata.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_and_memory_usage() {
        let usage = Usage::of(std::process::id(), &CgroupMounts::read());
        // (A process in a cgroup v2 root has no memory.current: only the CPU is certain.)
        assert!(usage.cpu_ns.is_some_and(|ns| ns > 0), "{usage:?}");
        assert!(usage.working_set <= usage.memory);
    }
}
