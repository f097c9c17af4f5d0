//! The cluster store of the lab (and of the Vagrant cluster's control plane): Debian's
//! etcd, one member, started in a node's namespace and listening on the node's underlay
//! address and its loopback.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cluster::setup::EtcdSetup;
use crate::process::ProcessHandle;

pub use crate::cluster::setup::ETCD_CLIENT_PORT as CLIENT_PORT;

/// Starts etcd in the namespace `netns` for clients on `ip` and 127.0.0.1, its data in
/// `data_dir`, its output in `log`; returns once it accepts connections.
pub fn start(
    netns: &Path,
    name: &str,
    ip: Ipv4Addr,
    data_dir: &Path,
    log: &Path,
) -> anyhow::Result<ProcessHandle> {
    let Some(etcd) = crate::config::find_in_path(Path::new("etcd")) else {
        bail!("etcd is not installed (Debian: apt-get install etcd-server; scripts/install-deps.sh does)");
    };
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let setup = EtcdSetup {
        name: name.to_string(),
        ip,
        data_dir: data_dir.to_path_buf(),
    };
    let mut command = Command::new(etcd);
    command.args(setup.args());
    let handle = super::spawn::detached(command, netns, log)?;
    if let Err(e) = wait_listening(
        netns,
        SocketAddr::from((ip, CLIENT_PORT)),
        Duration::from_secs(20),
        &handle,
    ) {
        let _ = handle.signal(nix::sys::signal::Signal::SIGKILL);
        return Err(e.context(format!("etcd did not come up (see {})", log.display())));
    }
    Ok(handle)
}

/// Waits until something accepts TCP connections at `address` in `netns`.
pub fn wait_listening(
    netns: &Path,
    address: SocketAddr,
    timeout: Duration,
    process: &ProcessHandle,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let connected = crate::netns::run_in(Some(netns), move || {
            Ok(TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok())
        })?;
        if connected {
            return Ok(());
        }
        if !process.is_alive() {
            bail!("it exited");
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {address} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
