//! The cgroups of a process, wherever its runtime placed them: the one home for finding a
//! container's cgroup directories (v1 per controller, v2 unified) and reading or writing
//! their files. Stats read them; UpdateContainerResources writes them.

use std::path::{Path, PathBuf};

/// Where the cgroup hierarchies are mounted, read once from the mount table: reading
/// `/proc/self/mountinfo` costs the kernel a line per mount (each overlay rootfs prints its
/// layers), so a batch of stats shares one read.
#[derive(Debug, Default)]
pub struct CgroupMounts {
    /// v1 hierarchies: the controllers bound to each, and its mount point.
    v1: Vec<(Vec<String>, PathBuf)>,
    /// The v2 hierarchy's mount point.
    v2: Option<PathBuf>,
}

impl CgroupMounts {
    /// Those of this process's mount namespace; none where it cannot be read.
    pub fn read() -> CgroupMounts {
        CgroupMounts::parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
    }

    fn parse(mountinfo: &str) -> CgroupMounts {
        let mut mounts = CgroupMounts::default();
        for line in mountinfo.lines() {
            let Some((before, after)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = before.split(' ').nth(4) else {
                continue;
            };
            let mut after = after.split(' ');
            let (Some(fstype), Some(_source), Some(options)) =
                (after.next(), after.next(), after.next())
            else {
                continue;
            };
            match fstype {
                "cgroup" => mounts.v1.push((
                    options.split(',').map(str::to_string).collect(),
                    PathBuf::from(mount_point),
                )),
                "cgroup2" if mounts.v2.is_none() => mounts.v2 = Some(PathBuf::from(mount_point)),
                _ => {}
            }
        }
        mounts
    }

    /// Removes the cgroup `path` (as a cgroupsPath: from each hierarchy's root) and every
    /// cgroup under it, deepest first, in every hierarchy: what a kubelet-like owner of
    /// pod cgroups does once their processes are gone. What could not be removed (a cgroup
    /// with processes left), with why; one that is not there is no error.
    pub fn remove_tree(&self, path: &Path) -> Vec<(PathBuf, std::io::Error)> {
        let relative = path.strip_prefix("/").unwrap_or(path);
        let hierarchies = self.v1.iter().map(|(_, point)| point).chain(&self.v2);
        let mut failed = Vec::new();
        for hierarchy in hierarchies {
            let mut dirs = vec![hierarchy.join(relative)];
            let mut i = 0;
            while i < dirs.len() {
                if let Ok(entries) = std::fs::read_dir(&dirs[i]) {
                    dirs.extend(
                        entries
                            .flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path()),
                    );
                }
                i += 1;
            }
            for dir in dirs.into_iter().rev() {
                match std::fs::remove_dir(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => failed.push((dir, e)),
                    _ => {}
                }
            }
        }
        failed
    }

    /// The mount point of the v1 hierarchy `controller` is bound to, or the v2 one (None).
    fn mount_point(&self, controller: Option<&str>) -> Option<&Path> {
        match controller {
            Some(c) => self
                .v1
                .iter()
                .find(|(options, _)| options.iter().any(|o| o == c))
                .map(|(_, point)| point.as_path()),
            None => self.v2.as_deref(),
        }
    }
}

/// A process's cgroup membership, found in the hierarchies of `mounts`.
pub struct Cgroups<'m> {
    membership: String,
    mounts: &'m CgroupMounts,
}

impl<'m> Cgroups<'m> {
    /// Those of the live process `pid`.
    pub fn of(pid: u32, mounts: &'m CgroupMounts) -> Option<Cgroups<'m>> {
        Some(Cgroups {
            membership: std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?,
            mounts,
        })
    }

    /// The directory of its cgroup for a v1 `controller`, or the v2 one (None).
    pub fn dir(&self, controller: Option<&str>) -> Option<PathBuf> {
        cgroup_path(&self.membership, self.mounts, controller).filter(|dir| dir.is_dir())
    }
}

/// The dir of the cgroup a process is in, for a v1 `controller` (None: the v2 one):
/// its path from `/proc/<pid>/cgroup` under the hierarchy's mount point.
fn cgroup_path(
    membership: &str,
    mounts: &CgroupMounts,
    controller: Option<&str>,
) -> Option<PathBuf> {
    let path = membership.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let wanted = match controller {
            Some(c) => controllers.split(',').any(|x| x == c),
            None => controllers.is_empty(),
        };
        wanted.then_some(path)
    })?;
    Some(
        mounts
            .mount_point(controller)?
            .join(path.trim_start_matches('/')),
    )
}

pub fn count_lines(path: &Path) -> Option<u64> {
    Some(std::fs::read_to_string(path).ok()?.lines().count() as u64)
}

pub fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `name N` from a flat keyed file (memory.stat, cpu.stat).
pub fn stat_field(path: &Path, name: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok()).flatten()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_cgroup_dir_is_found_through_mountinfo() {
        let membership = "12:memory:/sandboxd/abc\n4:cpu,cpuacct:/sandboxd/abc\n0::/user.slice\n";
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n\
31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n\
32 25 0:28 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        let mounts = CgroupMounts::parse(mountinfo);
        let resolve = |controller| {
            cgroup_path(membership, &mounts, controller).map(|d| d.display().to_string())
        };
        assert_eq!(
            resolve(Some("memory")).as_deref(),
            Some("/sys/fs/cgroup/memory/sandboxd/abc")
        );
        assert_eq!(
            resolve(Some("cpuacct")).as_deref(),
            Some("/sys/fs/cgroup/cpu,cpuacct/sandboxd/abc")
        );
        assert_eq!(
            resolve(None).as_deref(),
            Some("/sys/fs/cgroup/unified/user.slice")
        );
        assert_eq!(resolve(Some("pids")), None);
    }
}
