//! loopback: brings the container's `lo` up on ADD, down on DEL (a namespace already gone
//! is not an error); CHECK finds it up. As upstream: in a chain, its result is the
//! previous plugin's, passed on; alone, it reports the interface with its addresses.

use cni_host::result::{CniResult, Interface, IpConfig, IpNetwork};
use serde_json::Value;

use crate::cni_plugin::invocation::{Command, Invocation, PluginError};
use crate::netlink::RouteSocket;

pub fn run(invocation: &Invocation) -> Result<Option<Value>, PluginError> {
    match invocation.command {
        Command::Add => {
            let netns = invocation.netns.as_deref().expect("ADD has a netns");
            set(invocation, true)?;
            if let Some(previous) = invocation.config.get("prevResult") {
                let previous = CniResult::from_value(previous.clone())
                    .map_err(|e| PluginError::config(format!("prevResult: {e}")))?;
                return invocation.render(&previous).map(Some);
            }
            // Always lo, whatever CNI_IFNAME says, as upstream.
            let interface = Interface {
                name: "lo".into(),
                mac: "00:00:00:00:00:00".into(),
                sandbox: netns.display().to_string(),
                ..Interface::default()
            };
            let ips = ["127.0.0.1/8", "::1/128"]
                .into_iter()
                .map(|a| IpConfig {
                    address: a.parse::<IpNetwork>().expect("an address"),
                    gateway: None,
                    interface: Some(0),
                })
                .collect();
            let result = CniResult {
                cni_version: "1.1.0".into(),
                interfaces: vec![interface],
                ips,
                ..CniResult::default()
            };
            invocation.render(&result).map(Some)
        }
        Command::Del => {
            if invocation.netns.as_deref().is_some_and(|n| n.exists()) {
                set(invocation, false)?;
            }
            Ok(None)
        }
        Command::Check => {
            let up = links(invocation)?
                .link("lo")
                .ok()
                .flatten()
                .is_some_and(|l| l.up);
            if !up {
                return Err(PluginError::internal("loopback interface is down"));
            }
            Ok(None)
        }
        Command::Gc | Command::Status => Ok(None),
        Command::Version => unreachable!("answered by the plugin"),
    }
}

fn links(invocation: &Invocation) -> Result<RouteSocket, PluginError> {
    RouteSocket::open_in(invocation.netns.as_deref()).map_err(|e| {
        PluginError::internal(format!(
            "enter the network namespace {}: {e}",
            invocation
                .netns
                .as_deref()
                .unwrap_or(std::path::Path::new("?"))
                .display()
        ))
    })
}

fn set(invocation: &Invocation, up: bool) -> Result<(), PluginError> {
    let mut socket = links(invocation)?;
    let kernel = |e: crate::netlink::KernelError| PluginError::internal(format!("lo: {e}"));
    let lo = socket
        .link("lo")
        .map_err(kernel)?
        .ok_or_else(|| PluginError::internal("the namespace has no lo"))?;
    if up {
        socket.set_up(lo.index).map_err(kernel)
    } else {
        socket.set_down(lo.index).map_err(kernel)
    }
}
