//! The cgroups of a process, wherever its runtime placed them: the one home for finding a
//! container's cgroup directories (v1 per controller, v2 unified) and reading or writing
//! their files. Stats read them; UpdateContainerResources writes them.

use std::path::{Path, PathBuf};

/// A process's cgroup membership and the mount table the hierarchies are found in.
pub struct Cgroups {
    membership: String,
    mountinfo: String,
}

impl Cgroups {
    /// Those of the live process `pid`.
    pub fn of(pid: u32) -> Option<Cgroups> {
        Some(Cgroups {
            membership: std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?,
            mountinfo: std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        })
    }

    /// The directory of its cgroup for a v1 `controller`, or the v2 one (None).
    pub fn dir(&self, controller: Option<&str>) -> Option<PathBuf> {
        cgroup_path(&self.membership, &self.mountinfo, controller).filter(|dir| dir.is_dir())
    }
}

/// The dir of the cgroup a process is in, for a v1 `controller` (None: the v2 one):
/// its path from `/proc/<pid>/cgroup` under the hierarchy's mount point from mountinfo.
pub(crate) fn cgroup_path(
    membership: &str,
    mountinfo: &str,
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
    let mount = mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mount_point = before.split(' ').nth(4)?;
        let mut after = after.split(' ');
        let (fstype, _source, options) = (after.next()?, after.next()?, after.next()?);
        let wanted = match controller {
            Some(c) => fstype == "cgroup" && options.split(',').any(|o| o == c),
            None => fstype == "cgroup2",
        };
        wanted.then_some(mount_point)
    })?;
    Some(Path::new(mount).join(path.trim_start_matches('/')))
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
        let resolve = |controller| {
            cgroup_path(membership, mountinfo, controller).map(|d| d.display().to_string())
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
