//! The nf_tables socket of portmap and `ipMasq`: one per node namespace, kept open for the
//! life of the process. Closing an nf_tables socket makes the kernel finish the previous
//! transactions' deferred destruction first (`nft_rcv_nl_event` flushes the destroy work,
//! which waits for an RCU grace period): ~10 ms on every DEL that removed a chain, paid at
//! the close. Kept open, that work runs in the background. A plugin process pays it at
//! exit as upstream's do; sandboxd, running the plugins in-process, does not.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use crate::cni_plugin::invocation::PluginError;
use crate::netlink::nftables::{NftSocket, TableFamily};
use crate::service::plan::Plan;

/// A namespace by its nsfs inode (a path may later name another namespace).
type NamespaceKey = (u64, u64);

static SOCKETS: Mutex<Vec<(NamespaceKey, NftSocket)>> = Mutex::new(Vec::new());

fn key_of(host: Option<&Path>) -> std::io::Result<NamespaceKey> {
    let meta = std::fs::metadata(host.unwrap_or(Path::new("/proc/thread-self/ns/net")))?;
    Ok((meta.dev(), meta.ino()))
}

/// The node namespace's socket, held (other callers wait) until dropped. A socket whose
/// request failed is closed then, so no reply of a broken exchange is read by the next.
pub struct Held {
    sockets: MutexGuard<'static, Vec<(NamespaceKey, NftSocket)>>,
    at: usize,
    failed: bool,
}

pub fn socket(host: Option<&Path>) -> Result<Held, PluginError> {
    let key = key_of(host).map_err(|e| {
        PluginError::internal(format!(
            "find the node's network namespace {}: {e}",
            host.map_or("(own)".into(), |h| h.display().to_string())
        ))
    })?;
    let mut sockets = SOCKETS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let at = match sockets.iter().position(|(k, _)| *k == key) {
        Some(at) => at,
        None => {
            let socket = NftSocket::open_in(host)
                .map_err(|e| PluginError::internal(format!("open an nf_tables socket: {e}")))?;
            sockets.push((key, socket));
            sockets.len() - 1
        }
    };
    Ok(Held {
        sockets,
        at,
        failed: false,
    })
}

impl Held {
    fn socket(&mut self) -> &mut NftSocket {
        &mut self.sockets[self.at].1
    }

    /// The names of the chains of the table `<family> <table>` (none if there is none).
    pub fn chains(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
    ) -> anyhow::Result<Vec<String>> {
        let outcome = self.socket().chains(family, table);
        self.failed |= outcome.is_err();
        outcome
    }

    /// Applies `plan` to the table `<family> <table>` in one transaction.
    pub fn apply_to(
        &mut self,
        family: impl Into<TableFamily>,
        table: &'static str,
        plan: &Plan,
    ) -> anyhow::Result<()> {
        let outcome = self.socket().apply_to(family, table, plan);
        self.failed |= outcome.is_err();
        outcome
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.failed {
            self.sockets.swap_remove(self.at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_known_by_its_inode_not_its_path() {
        let own = key_of(None).unwrap();
        let by_proc = key_of(Some(Path::new("/proc/self/ns/net"))).unwrap();
        assert_eq!(own, by_proc);
    }
}
