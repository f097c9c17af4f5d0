//! host-local's leases on disk, in upstream's format so that either plugin reads what the
//! other wrote: in `<dataDir>/<network>/`, one file per leased address named by the
//! address and holding `<container id>\r\n<ifname>` (older versions wrote the id alone),
//! `last_reserved_ip.<range set index>` holding the address last handed out from that set,
//! and `lock`, which every reader and writer holds (flock) while it looks and changes.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::lockfile::{lock, LockMode};

const LINE_BREAK: &str = "\r\n";
const LAST_RESERVED: &str = "last_reserved_ip.";

/// Upstream's default `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// One network's leases, locked for as long as the value lives.
pub struct Store {
    dir: PathBuf,
    _lock: std::fs::File,
}

/// A lease as its file says: the address and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: IpAddr,
    pub container_id: String,
    /// Empty for a lease an old version wrote.
    pub ifname: String,
}

impl Store {
    /// Opens (creating) the network's dir and takes its lock.
    pub fn open(data_dir: &Path, network: &str) -> std::io::Result<Store> {
        let dir = data_dir.join(network);
        std::fs::create_dir_all(&dir)?;
        let lock = lock(&dir.join("lock"), LockMode::Exclusive)?;
        Ok(Store { dir, _lock: lock })
    }

    /// Opens the network's dir only to read it, under the same lock (flock needs no write
    /// access): for a DEL when the dir cannot be written. None if nothing was ever leased
    /// there (no dir, or no lock).
    pub fn open_to_read(data_dir: &Path, network: &str) -> std::io::Result<Option<Store>> {
        let dir = data_dir.join(network);
        if !dir.is_dir() {
            return Ok(None);
        }
        let lock = match std::fs::File::open(dir.join("lock")) {
            Ok(lock) => lock,
            // Every writer takes the lock first: without it, nothing was ever leased here.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // SAFETY: flock(2) on a descriptor we own; the lock goes with it.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Some(Store { dir, _lock: lock }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes `ip` for the container if no one holds it; false if someone does.
    pub fn reserve(
        &self,
        container_id: &str,
        ifname: &str,
        ip: IpAddr,
        range_set: usize,
    ) -> std::io::Result<bool> {
        let path = self.dir.join(ip.to_string());
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        };
        // Not fsynced, as upstream does not: a power loss that loses the lease loses the
        // pod's namespace and veth with it.
        let written =
            file.write_all(format!("{}{LINE_BREAK}{ifname}", container_id.trim()).as_bytes());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        std::fs::write(
            self.dir.join(format!("{LAST_RESERVED}{range_set}")),
            ip.to_string(),
        )?;
        Ok(true)
    }

    /// The address last handed out from range set `range_set`.
    pub fn last_reserved(&self, range_set: usize) -> Option<IpAddr> {
        std::fs::read_to_string(self.dir.join(format!("{LAST_RESERVED}{range_set}")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Every lease in the dir.
    pub fn leases(&self) -> Vec<Lease> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut leases = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let text = text.trim();
            let (container_id, ifname) = match text.split_once(LINE_BREAK) {
                Some((id, ifname)) => (id.trim().to_string(), ifname.trim().to_string()),
                None => (text.to_string(), String::new()),
            };
            leases.push(Lease {
                ip,
                container_id,
                ifname,
            });
        }
        leases.sort_by_key(|l| super::range::number(l.ip));
        leases
    }

    /// The container's leases on `ifname`; the ones an old version wrote for the container
    /// (without an ifname) when it has none of those.
    pub fn leases_of(&self, container_id: &str, ifname: &str) -> Vec<Lease> {
        let id = container_id.trim();
        let all = self.leases();
        let exact: Vec<Lease> = all
            .iter()
            .filter(|l| l.container_id == id && l.ifname == ifname)
            .cloned()
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        all.into_iter()
            .filter(|l| l.container_id == id && l.ifname.is_empty())
            .collect()
    }

    /// Gives up the container's leases on `ifname`; none is not an error.
    pub fn release(&self, container_id: &str, ifname: &str) -> std::io::Result<Vec<IpAddr>> {
        let mut released = Vec::new();
        for lease in self.leases_of(container_id, ifname) {
            self.remove(lease.ip)?;
            released.push(lease.ip);
        }
        Ok(released)
    }

    /// Removes one lease's file.
    pub fn remove(&self, ip: IpAddr) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir.join(ip.to_string())) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_files_in_upstreams_format() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "net").unwrap();
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(store.reserve(" c1 ", "eth0", ip, 0).unwrap());
        assert!(!store.reserve("c2", "eth0", ip, 0).unwrap(), "taken");
        let net = dir.path().join("net");
        assert_eq!(
            std::fs::read_to_string(net.join("10.0.0.2")).unwrap(),
            "c1\r\neth0"
        );
        assert_eq!(
            std::fs::read_to_string(net.join("last_reserved_ip.0")).unwrap(),
            "10.0.0.2"
        );
        assert_eq!(store.last_reserved(0), Some(ip));
        assert!(net.join("lock").exists());
        // A lease an old version wrote: the id alone.
        std::fs::write(net.join("10.0.0.3"), "old\n").unwrap();
        assert_eq!(store.leases_of("old", "eth0")[0].ip.to_string(), "10.0.0.3");
        assert!(store.release("c1", "eth1").unwrap().is_empty());
        assert_eq!(store.release("c1", "eth0").unwrap(), vec![ip]);
        assert_eq!(store.leases().len(), 1);
    }
}
