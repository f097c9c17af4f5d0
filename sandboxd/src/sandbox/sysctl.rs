//! A pod's sysctls (`linux.sysctls` of its sandbox config): set once, in pause's IPC and
//! network namespaces, which every container of the pod joins. Only the sysctls those
//! namespaces scope are accepted (the kubelet's namespaced set: `kernel.shm*`,
//! `kernel.msg*`, `kernel.sem`, `fs.mqueue.*` by IPC; `net.*` by network); any other would
//! change the node for every pod on it.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsFd;

use crate::error::{Error, Result};

/// The namespace a sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Ipc,
    Net,
}

/// The namespace `name` (dotted, or slashed as in /proc/sys) is scoped by, if any.
pub fn scope(name: &str) -> Option<Scope> {
    let name = dotted(name);
    let ipc = ["kernel.shm", "kernel.msg"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        || name == "kernel.sem"
        || name.starts_with("fs.mqueue.");
    if ipc {
        Some(Scope::Ipc)
    } else if name.starts_with("net.") {
        Some(Scope::Net)
    } else {
        None
    }
}

/// `net/ipv4/ip_forward` → `net.ipv4.ip_forward`; a dotted name stays as it is (a dot
/// inside a slashed name, as in an interface name, is kept).
fn dotted(name: &str) -> String {
    if name.contains('/') {
        name.replace('/', ".")
    } else {
        name.to_string()
    }
}

/// Where the sysctl is in /proc/sys: dots are separators unless the name uses slashes.
fn proc_path(name: &str) -> String {
    let relative = if name.contains('/') {
        name.to_string()
    } else {
        name.replace('.', "/")
    };
    format!("/proc/sys/{relative}")
}

/// Checks the pod's sysctls; an error names the sysctl and why.
pub fn validate(
    object: &str,
    sysctls: &BTreeMap<String, String>,
    host_network: bool,
    host_ipc: bool,
) -> Result<()> {
    for (name, value) in sysctls {
        let field = format!("linux.sysctls[{name:?}]");
        let well_formed = !name.is_empty()
            && !name.starts_with(['.', '/'])
            && !name.ends_with(['.', '/'])
            && !name.contains("..")
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
        if !well_formed {
            return Err(Error::invalid(object, &field, "is not a sysctl name"));
        }
        if value.is_empty() || value.contains(['\n', '\0']) {
            return Err(Error::invalid(
                object,
                &field,
                format!("{value:?} is not a sysctl value"),
            ));
        }
        match scope(name) {
            None => {
                return Err(Error::invalid(
                    object,
                    &field,
                    "is not scoped by the pod's namespaces (allowed: kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, net.*); it would change the node",
                ))
            }
            Some(Scope::Net) if host_network => {
                return Err(Error::invalid(
                    object,
                    &field,
                    "is a network sysctl, and the pod uses the node's network",
                ))
            }
            Some(Scope::Ipc) if host_ipc => {
                return Err(Error::invalid(
                    object,
                    &field,
                    "is an IPC sysctl, and the pod uses the node's IPC namespace",
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Writes the sysctls in the namespaces of pause (`pid`), on a thread that enters them
/// (the daemon's own namespaces never change).
pub fn apply(pid: u32, sysctls: &BTreeMap<String, String>) -> io::Result<()> {
    if sysctls.is_empty() {
        return Ok(());
    }
    let ipc = std::fs::File::open(format!("/proc/{pid}/ns/ipc"))?;
    let net = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let sysctls = sysctls.clone();
    std::thread::spawn(move || -> io::Result<()> {
        use nix::sched::{setns, CloneFlags};
        setns(ipc.as_fd(), CloneFlags::CLONE_NEWIPC).map_err(io::Error::from)?;
        setns(net.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        for (name, value) in &sysctls {
            let path = proc_path(name);
            std::fs::write(&path, value)
                .map_err(|e| io::Error::new(e.kind(), format!("write {value:?} to {path}: {e}")))?;
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("the sysctl thread panicked")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_are_scoped_as_the_kubelet_scopes_them() {
        assert_eq!(scope("kernel.shm_rmid_forced"), Some(Scope::Ipc));
        assert_eq!(scope("kernel.msgmax"), Some(Scope::Ipc));
        assert_eq!(scope("kernel.sem"), Some(Scope::Ipc));
        assert_eq!(scope("fs.mqueue.msg_max"), Some(Scope::Ipc));
        assert_eq!(scope("net.ipv4.ip_local_port_range"), Some(Scope::Net));
        assert_eq!(scope("net/ipv4/conf/eth0.100/forwarding"), Some(Scope::Net));
        assert_eq!(scope("kernel.hostname"), None);
        assert_eq!(scope("vm.swappiness"), None);
        assert_eq!(
            proc_path("net.ipv4.ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert_eq!(
            proc_path("net/ipv4/conf/eth0.100/forwarding"),
            "/proc/sys/net/ipv4/conf/eth0.100/forwarding"
        );
    }

    #[test]
    fn a_bad_sysctl_is_refused_by_name() {
        let check = |name: &str, value: &str, host_network: bool| {
            let sysctls = BTreeMap::from([(name.to_string(), value.to_string())]);
            validate("pod sandbox x", &sysctls, host_network, false)
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(check("kernel.shm_rmid_forced", "1", false), None);
        let e = check("vm.swappiness", "10", false).unwrap();
        assert!(
            e.contains("linux.sysctls[\"vm.swappiness\"]") && e.contains("change the node"),
            "{e}"
        );
        let e = check("net.ipv4.ip_forward", "1", true).unwrap();
        assert!(e.contains("the node's network"), "{e}");
        assert!(check("../../etc/passwd", "x", false).is_some());
        assert!(check("kernel.msgmax", "1\n2", false).is_some());
    }
}
