//! A container's CPU and memory resources: given at CreateContainer (in the OCI spec, which
//! both runtimes apply when they make its cgroups) and changed by UpdateContainerResources
//! (written into those cgroups directly, v1 or v2, whichever runtime made them, as
//! `runc update` would), and reported by ContainerStatus.

use k8s_cri::v1 as cri;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxResources,
    LinuxResourcesBuilder,
};
use serde::{Deserialize, Serialize};

use crate::container::cgroup::{CgroupMounts, Cgroups};
use crate::error::{Error, Result};

/// What the CRI request asks; zero and empty mean "not specified", as in the CRI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_period: u64,
    pub cpu_quota: i64,
    pub cpu_shares: u64,
    pub memory_limit: i64,
    pub memory_swap_limit: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub oom_score_adj: i32,
    pub hugepage_limits: Vec<(String, u64)>,
    pub unified: std::collections::BTreeMap<String, String>,
}

impl Resources {
    /// The request's resources; `field` is where they are in the request (for errors).
    pub fn from_cri(
        object: &str,
        field: &str,
        resources: Option<&cri::LinuxContainerResources>,
    ) -> Result<Resources> {
        let Some(r) = resources else {
            return Ok(Resources::default());
        };
        let non_negative = |name: &str, value: i64| {
            u64::try_from(value).map_err(|_| {
                Error::invalid(
                    object,
                    format!("{field}.{name}"),
                    format!("{value} is negative"),
                )
            })
        };
        let memory_limit = non_negative("memory_limit_in_bytes", r.memory_limit_in_bytes)?;
        if memory_limit != 0 && memory_limit < 4 * 1024 * 1024 {
            return Err(Error::invalid(
                object,
                format!("{field}.memory_limit_in_bytes"),
                format!("{memory_limit} is below the kernel's minimum of 4 MiB (or 0, unlimited)"),
            ));
        }
        let oom_score_adj = i32::try_from(r.oom_score_adj)
            .ok()
            .filter(|v| (-1000..=1000).contains(v))
            .ok_or_else(|| {
                Error::invalid(
                    object,
                    format!("{field}.oom_score_adj"),
                    format!("{} is not within -1000..1000", r.oom_score_adj),
                )
            })?;
        Ok(Resources {
            cpu_period: non_negative("cpu_period", r.cpu_period)?,
            cpu_quota: r.cpu_quota,
            cpu_shares: non_negative("cpu_shares", r.cpu_shares)?,
            memory_limit: memory_limit as i64,
            memory_swap_limit: r.memory_swap_limit_in_bytes,
            cpuset_cpus: r.cpuset_cpus.clone(),
            cpuset_mems: r.cpuset_mems.clone(),
            oom_score_adj,
            hugepage_limits: r
                .hugepage_limits
                .iter()
                .map(|h| (h.page_size.clone(), h.limit))
                .collect(),
            unified: r.unified.clone().into_iter().collect(),
        })
    }

    pub fn to_cri(&self) -> cri::LinuxContainerResources {
        cri::LinuxContainerResources {
            cpu_period: self.cpu_period as i64,
            cpu_quota: self.cpu_quota,
            cpu_shares: self.cpu_shares as i64,
            memory_limit_in_bytes: self.memory_limit,
            oom_score_adj: self.oom_score_adj as i64,
            cpuset_cpus: self.cpuset_cpus.clone(),
            cpuset_mems: self.cpuset_mems.clone(),
            hugepage_limits: self
                .hugepage_limits
                .iter()
                .map(|(page_size, limit)| cri::HugepageLimit {
                    page_size: page_size.clone(),
                    limit: *limit,
                })
                .collect(),
            unified: self.unified.clone().into_iter().collect(),
            memory_swap_limit_in_bytes: self.memory_swap_limit,
        }
    }

    /// The OCI spec's `linux.resources` (the device rules are the caller's).
    pub fn oci(&self) -> anyhow::Result<LinuxResources> {
        let mut cpu = LinuxCpuBuilder::default();
        if self.cpu_shares != 0 {
            cpu = cpu.shares(self.cpu_shares);
        }
        if self.cpu_quota != 0 {
            cpu = cpu.quota(self.cpu_quota);
        }
        if self.cpu_period != 0 {
            cpu = cpu.period(self.cpu_period);
        }
        if !self.cpuset_cpus.is_empty() {
            cpu = cpu.cpus(self.cpuset_cpus.clone());
        }
        if !self.cpuset_mems.is_empty() {
            cpu = cpu.mems(self.cpuset_mems.clone());
        }
        let mut memory = LinuxMemoryBuilder::default();
        if self.memory_limit != 0 {
            memory = memory.limit(self.memory_limit);
        }
        if self.memory_swap_limit != 0 {
            memory = memory.swap(self.memory_swap_limit);
        }
        let hugepages = self
            .hugepage_limits
            .iter()
            .map(|(page_size, limit)| {
                LinuxHugepageLimitBuilder::default()
                    .page_size(page_size.clone())
                    .limit(*limit as i64)
                    .build()
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut resources = LinuxResourcesBuilder::default()
            .cpu(cpu.build()?)
            .memory(memory.build()?);
        if !hugepages.is_empty() {
            resources = resources.hugepage_limits(hugepages);
        }
        if !self.unified.is_empty() {
            let unified: std::collections::HashMap<String, String> =
                self.unified.clone().into_iter().collect();
            resources = resources.unified(unified);
        }
        Ok(resources.build()?)
    }

    /// Writes the resources into the cgroups of the running process `pid` (its first
    /// process: the container's cgroups are its). oom_score_adj is the process's own.
    pub fn write_to_cgroups(&self, pid: u32) -> anyhow::Result<()> {
        let mounts = CgroupMounts::read();
        let cgroups =
            Cgroups::of(pid, &mounts).ok_or_else(|| anyhow::anyhow!("process {pid} is gone"))?;
        let mut writes: Vec<(std::path::PathBuf, String)> = Vec::new();
        if let Some(cpu) = cgroups.dir(Some("cpu")) {
            if self.cpu_shares != 0 {
                writes.push((cpu.join("cpu.shares"), self.cpu_shares.to_string()));
            }
            // The period first: a quota is checked against the period in force.
            if self.cpu_period != 0 {
                writes.push((cpu.join("cpu.cfs_period_us"), self.cpu_period.to_string()));
            }
            if self.cpu_quota != 0 {
                writes.push((cpu.join("cpu.cfs_quota_us"), self.cpu_quota.to_string()));
            }
        } else if let Some(unified) = cgroups.dir(None) {
            if self.cpu_shares != 0 {
                writes.push((
                    unified.join("cpu.weight"),
                    weight_of(self.cpu_shares).to_string(),
                ));
            }
            if self.cpu_quota != 0 || self.cpu_period != 0 {
                let quota = if self.cpu_quota > 0 {
                    self.cpu_quota.to_string()
                } else {
                    "max".to_string()
                };
                let period = if self.cpu_period != 0 {
                    self.cpu_period
                } else {
                    100_000
                };
                writes.push((unified.join("cpu.max"), format!("{quota} {period}")));
            }
        }
        if self.memory_limit != 0 {
            if let Some(memory) = cgroups.dir(Some("memory")) {
                writes.push((
                    memory.join("memory.limit_in_bytes"),
                    self.memory_limit.to_string(),
                ));
            } else if let Some(unified) = cgroups.dir(None) {
                writes.push((unified.join("memory.max"), self.memory_limit.to_string()));
            }
        }
        if let Some(cpuset) = cgroups.dir(Some("cpuset")).or_else(|| cgroups.dir(None)) {
            if !self.cpuset_cpus.is_empty() {
                writes.push((cpuset.join("cpuset.cpus"), self.cpuset_cpus.clone()));
            }
            if !self.cpuset_mems.is_empty() {
                writes.push((cpuset.join("cpuset.mems"), self.cpuset_mems.clone()));
            }
        }
        if let Some(unified) = cgroups.dir(None) {
            for (key, value) in &self.unified {
                if key.contains('/') || key.starts_with('.') {
                    anyhow::bail!("unified key {key:?} is not a cgroup file name");
                }
                writes.push((unified.join(key), value.clone()));
            }
        }
        // All or nothing: a value the kernel refuses (a memory limit under what is in use)
        // puts back the ones already written.
        let mut written: Vec<(std::path::PathBuf, String)> = Vec::new();
        for (path, value) in writes {
            let before = std::fs::read_to_string(&path).map(|v| v.trim().to_string());
            if let Err(e) = std::fs::write(&path, &value) {
                for (path, old) in written.iter().rev() {
                    let _ = std::fs::write(path, old);
                }
                anyhow::bail!("write {value} to {}: {e}", path.display());
            }
            if let Ok(before) = before {
                written.push((path, before));
            }
        }
        if self.oom_score_adj != 0 {
            let path = format!("/proc/{pid}/oom_score_adj");
            std::fs::write(&path, self.oom_score_adj.to_string())
                .map_err(|e| anyhow::anyhow!("write {path}: {e}"))?;
        }
        Ok(())
    }
}

/// cgroup v2's cpu.weight for v1 cpu.shares, as runc converts it.
fn weight_of(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_by_field() {
        let check = |r: cri::LinuxContainerResources| {
            Resources::from_cri("container c", "linux.resources", Some(&r))
                .map_err(|e| e.to_string())
        };
        let err = check(cri::LinuxContainerResources {
            memory_limit_in_bytes: 1024,
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            err.contains("linux.resources.memory_limit_in_bytes"),
            "{err}"
        );
        let err = check(cri::LinuxContainerResources {
            cpu_shares: -2,
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("linux.resources.cpu_shares"), "{err}");
        let err = check(cri::LinuxContainerResources {
            oom_score_adj: 1001,
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("oom_score_adj"), "{err}");
        let fine = check(cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(fine.to_cri().cpu_quota, 50_000);
        let oci = fine.oci().unwrap();
        assert_eq!(oci.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(oci.cpu().as_ref().unwrap().shares(), Some(512));
    }

    #[test]
    fn shares_map_to_weights_as_runc_maps_them() {
        assert_eq!(weight_of(2), 1);
        assert_eq!(weight_of(1024), 39);
        assert_eq!(weight_of(262_144), 10_000);
    }
}
