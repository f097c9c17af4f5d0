//! What a cluster node runs, as command lines: etcd on the control plane, sandboxd joined
//! through it on every node. One place for both paths a node comes up by: the lab starts
//! these commands in a node's namespace; a machine (a Vagrant VM) gets them as systemd
//! units from `sandboxctl join`. So the lab's tests exercise the VM's join too.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::cidr::Ipv4Cidr;
use crate::overlay::Backend;

/// etcd's port for clients.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's port for peers; a one-member cluster keeps it on loopback.
const ETCD_PEER_PORT: u16 = 2380;

/// The one-member etcd of the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSetup {
    /// The member's name: the control plane's.
    pub name: String,
    /// Clients reach it here (and on 127.0.0.1).
    pub ip: Ipv4Addr,
    pub data_dir: PathBuf,
}

impl EtcdSetup {
    /// etcd's flags: clients on the node's address and loopback, the peer URL on loopback
    /// (nothing else joins), logs to stderr (a log file in the lab, the journal on a VM).
    pub fn args(&self) -> Vec<OsString> {
        let (ip, name) = (self.ip, &self.name);
        let peer = format!("http://127.0.0.1:{ETCD_PEER_PORT}");
        let mut args: Vec<OsString> = vec!["--name".into(), name.into(), "--data-dir".into()];
        args.push(self.data_dir.clone().into());
        for arg in [
            "--listen-client-urls".to_string(),
            format!("http://{ip}:{ETCD_CLIENT_PORT},http://127.0.0.1:{ETCD_CLIENT_PORT}"),
            "--advertise-client-urls".into(),
            format!("http://{ip}:{ETCD_CLIENT_PORT}"),
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            format!("{name}={peer}"),
            "--logger=zap".into(),
            "--log-outputs=stderr".into(),
        ] {
            args.push(arg.into());
        }
        args
    }

    /// The store URL nodes are given.
    pub fn store_url(&self) -> String {
        store_url(self.ip)
    }
}

/// `etcd://IP:2379`: the store of a cluster whose etcd runs at `ip`.
pub fn store_url(ip: Ipv4Addr) -> String {
    format!("etcd://{ip}:{ETCD_CLIENT_PORT}")
}

/// Where one node's sandboxd keeps things. A machine uses sandboxd's defaults; each lab
/// node has a dir of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonPaths {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub netns_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub runtime_root: PathBuf,
}

impl DaemonPaths {
    /// sandboxd's defaults (a machine's: /run/sandboxd, /var/lib/sandboxd, /etc/cni/net.d).
    pub fn machine() -> DaemonPaths {
        let config = crate::config::Config::default();
        DaemonPaths {
            socket: config.socket,
            state_dir: config.state_dir,
            netns_dir: config.netns_dir,
            cni_conf_dir: config.cni_conf_dir,
            runtime_root: config.oci_runtime_root,
        }
    }

    /// Everything under `dir` (a lab node's dir).
    pub fn under(dir: &Path) -> DaemonPaths {
        DaemonPaths {
            socket: dir.join("sandboxd.sock"),
            state_dir: dir.join("state"),
            netns_dir: dir.join("pods"),
            cni_conf_dir: dir.join("net.d"),
            runtime_root: dir.join("runtime"),
        }
    }

    /// The pod network the node writes once it holds its subnet: its presence says the
    /// node has joined.
    pub fn pod_network(&self) -> PathBuf {
        self.cni_conf_dir
            .join(crate::network::DEFAULT_CONFLIST_FILE)
    }

    fn args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        for (flag, path) in [
            ("--socket", &self.socket),
            ("--state-dir", &self.state_dir),
            ("--netns-dir", &self.netns_dir),
            ("--cni-conf-dir", &self.cni_conf_dir),
            ("--runtime-root", &self.runtime_root),
        ] {
            args.push(flag.into());
            args.push(path.clone().into());
        }
        args
    }
}

/// A node of the cluster, as it joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSetup {
    pub name: String,
    /// Its address on the underlay (the private network's, never a NAT interface's).
    pub ip: Ipv4Addr,
    /// `etcd://…`
    pub store: String,
    pub backend: Backend,
    pub cluster_cidr: Ipv4Cidr,
    /// Pods run here only when placed by name.
    pub control_plane: bool,
}

impl NodeSetup {
    /// sandboxd's flags to join as this node.
    pub fn sandboxd_args(&self, paths: &DaemonPaths) -> Vec<OsString> {
        let mut args = paths.args();
        for arg in [
            "--node-name".to_string(),
            self.name.clone(),
            "--node-ip".into(),
            self.ip.to_string(),
            "--store".into(),
            self.store.clone(),
            "--backend".into(),
            self.backend.name().into(),
            "--cluster-cidr".into(),
            self.cluster_cidr.to_string(),
        ] {
            args.push(arg.into());
        }
        if self.control_plane {
            args.push("--control-plane".into());
        }
        args
    }
}

/// sandboxd's flags to run on a node's state without joining: how a crashed lab node's
/// pods are removed when etcd may be gone.
pub fn standalone_args(name: &str, paths: &DaemonPaths) -> Vec<OsString> {
    let mut args = paths.args();
    for arg in [
        "--node-name",
        name,
        "--default-network",
        "0",
        "--proxy-mode",
        "none",
    ] {
        args.push(arg.into());
    }
    args
}

/// A systemd service running `program args…`, restarted when it fails, started after
/// the units in `after` (and the network). Arguments are quoted as systemd reads them.
pub fn systemd_unit(
    description: &str,
    program: &Path,
    args: &[OsString],
    after: &[&str],
) -> String {
    let mut command = quote(program.as_os_str());
    for arg in args {
        command.push(' ');
        command.push_str(&quote(arg));
    }
    let mut after_units = vec!["network-online.target"];
    after_units.extend_from_slice(after);
    format!(
        "# Written by `sandboxctl join`; run it again to rewrite.\n\
         [Unit]\n\
         Description={description}\n\
         Wants=network-online.target\n\
         After={after}\n\
         \n\
         [Service]\n\
         ExecStart={command}\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         # Pods outlive their daemon: a restart adopts them. Only the daemon is stopped.\n\
         KillMode=process\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        after = after_units.join(" "),
    )
}

/// An argument as systemd's ExecStart reads it: bare when it holds nothing special,
/// else double-quoted with `\` and `"` escaped, and `%` (a specifier) and `$` (a
/// variable) doubled.
fn quote(arg: &std::ffi::OsStr) -> String {
    let text = arg.to_string_lossy();
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c));
    if plain {
        return text.into_owned();
    }
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            '%' => quoted.push_str("%%"),
            '$' => quoted.push_str("$$"),
            _ => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker() -> NodeSetup {
        NodeSetup {
            name: "k8s-node1".into(),
            ip: Ipv4Addr::new(192, 168, 102, 11),
            store: store_url(Ipv4Addr::new(192, 168, 102, 10)),
            backend: Backend::Vxlan,
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            control_plane: false,
        }
    }

    #[test]
    fn a_worker_joins_with_its_address_and_the_control_planes_store() {
        let args = worker().sandboxd_args(&DaemonPaths::machine());
        let text: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        let flag = |name: &str| {
            let i = text.iter().position(|a| *a == name).unwrap();
            text[i + 1]
        };
        assert_eq!(flag("--node-name"), "k8s-node1");
        assert_eq!(flag("--node-ip"), "192.168.102.11");
        assert_eq!(flag("--store"), "etcd://192.168.102.10:2379");
        assert_eq!(flag("--backend"), "vxlan");
        assert_eq!(flag("--state-dir"), "/var/lib/sandboxd");
        assert!(!text.contains(&"--control-plane"));
    }

    #[test]
    fn a_unit_quotes_what_systemd_would_split_or_expand() {
        let unit = systemd_unit(
            "test",
            Path::new("/usr/local/bin/sandboxd"),
            &[
                "--state-dir".into(),
                "/var/lib/my dir".into(),
                "100%$x".into(),
            ],
            &["sandboxd-etcd.service"],
        );
        assert!(unit.contains(
            "ExecStart=/usr/local/bin/sandboxd --state-dir \"/var/lib/my dir\" \"100%%$$x\"\n"
        ));
        assert!(unit.contains("After=network-online.target sandboxd-etcd.service\n"));
        assert!(unit.contains("KillMode=process\n"));
    }

    #[test]
    fn etcd_serves_clients_on_the_node_and_loopback() {
        let etcd = EtcdSetup {
            name: "k8s-master".into(),
            ip: Ipv4Addr::new(192, 168, 102, 10),
            data_dir: "/var/lib/sandboxd-etcd".into(),
        };
        let args: Vec<_> = etcd
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert!(args.contains(&"http://192.168.102.10:2379,http://127.0.0.1:2379".to_string()));
        assert!(args.contains(&"k8s-master=http://127.0.0.1:2380".to_string()));
        assert_eq!(etcd.store_url(), "etcd://192.168.102.10:2379");
    }
}
