//! The veth pair of an attachment, as bridge and ptp make it: the pair is created from
//! the node's side with its container end (`CNI_IFNAME`) put straight into the pod's
//! namespace, so there is one namespace switch (the socket's) and no window in which the
//! container's end sits on the node. The host end gets a random name, as upstream's do.

use std::os::fd::AsFd;
use std::path::Path;

use cni_host::result::CniResult;

use crate::cni_plugin::invocation::{Invocation, PluginError};
use crate::netlink::link::{format_mac, Link};
use crate::netlink::{KernelError, RouteSocket};

/// Turns a kernel error into the plugin's, naming the step.
pub fn kernel(step: &'static str) -> impl Fn(KernelError) -> PluginError {
    move |e| PluginError::internal(format!("{step}: {e}"))
}

/// A netlink socket in `netns` (None: the caller's namespace).
pub fn socket(netns: Option<&Path>) -> Result<RouteSocket, PluginError> {
    RouteSocket::open_in(netns).map_err(|e| {
        PluginError::internal(format!(
            "open a netlink socket in {}: {e}",
            netns.map_or("the node's namespace".into(), |n| n.display().to_string())
        ))
    })
}

/// A random host-side name, as upstream makes them (`veth` and 8 hex digits).
pub fn random_name() -> String {
    let mut bytes = [0u8; 4];
    if let Ok(mut random) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut random, &mut bytes);
    }
    format!("veth{:08x}", u32::from_ne_bytes(bytes))
}

/// The two ends of a pair just made.
pub struct Pair {
    pub host: Link,
    pub container: Link,
}

/// Makes the pair: `CNI_IFNAME` in the pod's namespace, a free random name on the node.
/// An interface already called `CNI_IFNAME` in the pod is an error, as upstream's is.
pub fn create(
    node: &mut RouteSocket,
    pod: &mut RouteSocket,
    invocation: &Invocation,
) -> Result<Pair, PluginError> {
    let netns = invocation.netns.as_deref().expect("ADD has a netns");
    if pod
        .link(&invocation.ifname)
        .map_err(kernel("look for the container's interface"))?
        .is_some()
    {
        return Err(PluginError::internal(format!(
            "container veth name provided ({}) already exists",
            invocation.ifname
        )));
    }
    let pod_fd = std::fs::File::open(netns).map_err(|e| {
        PluginError::new(
            PluginError::INVALID_ENVIRONMENT,
            format!("CNI_NETNS {}: {e}", netns.display()),
        )
    })?;
    let mut host_name = random_name();
    let mut attempts = 0;
    loop {
        match node.add_veth(&host_name, &invocation.ifname, Some(pod_fd.as_fd())) {
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && attempts < 8 => {
                attempts += 1;
                host_name = random_name();
            }
            Err(e) => return Err(kernel("create the veth pair")(e)),
        }
    }
    let found = (|| {
        let host = node
            .link(&host_name)
            .map_err(kernel("find the host veth"))?
            .ok_or_else(|| PluginError::internal(format!("{host_name} vanished")))?;
        let container = pod
            .link(&invocation.ifname)
            .map_err(kernel("find the container's interface"))?
            .ok_or_else(|| PluginError::internal(format!("{} vanished", invocation.ifname)))?;
        Ok(Pair { host, container })
    })();
    if found.is_err() {
        remove_host_end(node, &host_name);
    }
    found
}

/// Deletes the pair by its host end (undo of a failed ADD; errors are the ADD's to tell).
pub fn remove_host_end(node: &mut RouteSocket, host_name: &str) {
    if let Ok(Some(link)) = node.link(host_name) {
        let _ = node.delete_link(link.index);
    }
}

/// DEL: deletes the container's end (which takes the pair). A namespace or interface
/// already gone is not an error: DEL must succeed when repeated. When the namespace is
/// gone, the host end the previous result names is deleted from the node's side: the
/// kernel frees a dead namespace's veths only when its cleanup runs, and not at all
/// while a process still holds the namespace.
pub fn delete(invocation: &Invocation, host: Option<&Path>) -> Result<(), PluginError> {
    if let Some(netns) = invocation.netns.as_deref().filter(|n| n.exists()) {
        let mut pod = socket(Some(netns))?;
        if let Some(link) = pod
            .link(&invocation.ifname)
            .map_err(kernel("find the container's interface"))?
        {
            pod.delete_link(link.index)
                .map_err(kernel("delete the container's veth"))?;
        }
        return Ok(());
    }
    let Some(previous) = invocation
        .config
        .get("prevResult")
        .and_then(|p| CniResult::from_value(p.clone()).ok())
    else {
        return Ok(());
    };
    let mut node = socket(host)?;
    for recorded in previous.interfaces.iter().filter(|i| i.sandbox.is_empty()) {
        let Some(link) = node
            .link(&recorded.name)
            .map_err(kernel("find the host veth"))?
        else {
            continue;
        };
        // The same veth, not another pod's that took the name since.
        let same_mac = link
            .mac
            .is_some_and(|m| recorded.mac.eq_ignore_ascii_case(&format_mac(&m)));
        if link.kind.as_deref() == Some("veth") && same_mac {
            node.delete_link(link.index)
                .map_err(kernel("delete the host veth"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ends_are_named_as_upstream_names_them() {
        let (a, b) = (random_name(), random_name());
        assert!(a.starts_with("veth") && a.len() == 12, "{a}");
        assert_ne!(a, b);
    }
}
