//! The files a pod's containers share, kept in the sandbox's dir: `hostname`, `hosts` and
//! `resolv.conf` (bind-mounted into every container, as the kubelet and containerd do) and
//! `shm/`, a tmpfs that is every container's `/dev/shm`, so the pod's containers share POSIX
//! shared memory as they share the ipc namespace.

use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_cri::v1 as cri;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

pub const HOSTNAME_FILE: &str = "hostname";
pub const HOSTS_FILE: &str = "hosts";
pub const RESOLV_FILE: &str = "resolv.conf";
pub const SHM_DIR: &str = "shm";
/// The size of a pod's /dev/shm, as Docker and containerd default it.
const SHM_SIZE: &str = "64m";

/// `/etc/hosts` of a pod on the pod network: localhost, and the pod's IP as its hostname.
pub fn hosts(hostname: &str, ip: &str) -> String {
    let mut text = String::from(
        "# Pod hosts file, written by sandboxd.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    if !ip.is_empty() {
        text.push_str(&format!("{ip}\t{hostname}\n"));
    }
    text
}

/// `/etc/resolv.conf` from the pod's DNS config, or the node's own when it gives none.
pub fn resolv_conf(dns: Option<&cri::DnsConfig>) -> anyhow::Result<String> {
    let Some(dns) = dns.filter(|d| !(d.servers.is_empty() && d.searches.is_empty())) else {
        return match std::fs::read_to_string("/etc/resolv.conf") {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e).context("read the node's /etc/resolv.conf"),
        };
    };
    let mut text = String::new();
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(text)
}

/// Writes the pod's files into `dir` and mounts its /dev/shm; returns the shm path.
pub fn prepare(
    dir: &Path,
    hostname: &str,
    hosts: &str,
    resolv_conf: &str,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    for (name, text) in [
        (HOSTNAME_FILE, format!("{hostname}\n")),
        (HOSTS_FILE, hosts.to_string()),
        (RESOLV_FILE, resolv_conf.to_string()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    let shm = dir.join(SHM_DIR);
    std::fs::create_dir_all(&shm).with_context(|| format!("create {}", shm.display()))?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,size={SHM_SIZE}").as_str()),
    )
    .with_context(|| format!("mount the pod's shm at {}", shm.display()))?;
    Ok(shm)
}

/// Unmounts the pod's /dev/shm; one not mounted is not an error.
pub fn unmount_shm(shm: &Path) -> anyhow::Result<()> {
    match umount2(shm, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("unmount {}", shm.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_names_the_pod_ip() {
        let text = hosts("web", "10.244.1.5");
        assert!(text.contains("127.0.0.1\tlocalhost\n"));
        assert!(text.ends_with("10.244.1.5\tweb\n"));
        assert!(!hosts("web", "").contains("web"));
    }

    #[test]
    fn resolv_conf_follows_the_pod_dns_config() {
        let dns = cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns)).unwrap(),
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
    }
}
