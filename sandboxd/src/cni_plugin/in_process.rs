//! sandboxd-cni's plugins run inside sandboxd: a [`PluginExec`] for cni-host that, when a
//! chain's plugin resolves to the sandboxd-cni binary (a link to it named `bridge`,
//! `host-local`, `loopback`), calls the same code on a blocking thread instead of
//! starting the process, with the node's namespace as the plugin's own; any other plugin
//! runs as a process, as before. The call goes through the same variables, config and
//! result bytes as the process would, so cni-host's cache, rollback and errors, and the
//! leases on disk, are the same either way: a pod attached by one path is detached by the
//! other.

use std::path::{Path, PathBuf};

use cni_host::exec::{ExecError, Invocation, PluginExec};
use cni_host::ProcessExec;

use crate::cni_plugin::invocation::respond_in;
use crate::cni_plugin::Plugin;

/// The binary's name, as the workspace builds it.
pub const BINARY_NAME: &str = "sandboxd-cni";

/// Links `dir/{bridge,host-local,loopback}` to the sandboxd-cni beside the running
/// executable (replacing stale ones); the binary's path.
pub fn install(dir: &Path) -> anyhow::Result<PathBuf> {
    let binary = crate::config::locate_beside_exe(BINARY_NAME, None).map_err(|searched| {
        anyhow::anyhow!(
            "{BINARY_NAME} not found (looked at {}); build it with `cargo build --release`",
            searched.join(", ")
        )
    })?;
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("create {}: {e}", dir.display()))?;
    for plugin in Plugin::ALL {
        let link = dir.join(plugin.name());
        if std::fs::read_link(&link).ok().as_deref() == Some(binary.as_path()) {
            continue;
        }
        let staging = dir.join(format!(".{}.new", plugin.name()));
        let _ = std::fs::remove_file(&staging);
        std::os::unix::fs::symlink(&binary, &staging)
            .and_then(|()| std::fs::rename(&staging, &link))
            .map_err(|e| anyhow::anyhow!("link {} to {}: {e}", link.display(), binary.display()))?;
    }
    Ok(binary)
}

pub struct InProcessExec {
    processes: ProcessExec,
    /// The sandboxd-cni binary (resolved), whose plugins run in-process; None runs every
    /// plugin as a process.
    own: Option<PathBuf>,
    /// The node's namespace: None, sandboxd's own.
    host_netns: Option<PathBuf>,
}

impl InProcessExec {
    pub fn new(processes: ProcessExec, own: Option<&Path>) -> InProcessExec {
        let host_netns = processes.host_netns().map(Path::to_path_buf);
        InProcessExec {
            processes,
            own: own.and_then(|p| p.canonicalize().ok()),
            host_netns,
        }
    }

    /// The plugin to run in-process for this binary, if it is sandboxd-cni under a
    /// plugin's name.
    fn own_plugin(&self, binary: &Path) -> Option<Plugin> {
        let own = self.own.as_ref()?;
        let plugin = Plugin::from_name(binary.file_name()?.to_str()?)?;
        (binary.canonicalize().ok()? == *own).then_some(plugin)
    }
}

impl PluginExec for InProcessExec {
    async fn run(&self, invocation: Invocation) -> Result<Vec<u8>, ExecError> {
        let Some(plugin) = self.own_plugin(&invocation.plugin) else {
            return self.processes.run(invocation).await;
        };
        let host = self.host_netns.clone();
        let timeout = invocation.timeout;
        let Invocation { env, stdin, .. } = invocation;
        let call = tokio::task::spawn_blocking(move || {
            let lookup = |name: &str| {
                env.iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.clone())
            };
            respond_in(plugin, lookup, &stdin, host.as_deref())
        });
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok((0, stdout))) => Ok(stdout),
            Ok(Ok((code, stdout))) => Err(ExecError::Failed {
                status: format!("status {code}"),
                stdout,
                stderr: String::new(),
            }),
            Ok(Err(panicked)) => Err(ExecError::Io(std::io::Error::other(format!(
                "the in-process {} plugin panicked: {panicked}",
                plugin.name()
            )))),
            // The call goes on on its thread; the chain's rollback DEL comes after it.
            Err(_) => Err(ExecError::TimedOut(timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_links_to_sandboxd_cni_under_a_plugins_name_run_in_process() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("sandboxd-cni");
        std::fs::write(&own, "").unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, "").unwrap();
        let links = dir.path().join("bin");
        std::fs::create_dir(&links).unwrap();
        for (name, target) in [("bridge", &own), ("tuning", &own), ("loopback", &other)] {
            std::os::unix::fs::symlink(target, links.join(name)).unwrap();
        }
        let exec = InProcessExec::new(ProcessExec::new(), Some(&own));
        assert_eq!(exec.own_plugin(&links.join("bridge")), Some(Plugin::Bridge));
        assert_eq!(
            exec.own_plugin(&links.join("portmap")),
            None,
            "not one of ours"
        );
        assert_eq!(
            exec.own_plugin(&links.join("loopback")),
            None,
            "another binary"
        );
        let upstream_only = InProcessExec::new(ProcessExec::new(), None);
        assert_eq!(upstream_only.own_plugin(&links.join("bridge")), None);
    }
}
