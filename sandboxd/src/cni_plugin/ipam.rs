//! The IPAM step of bridge and ptp: host-local runs in-process; any other IPAM plugin is
//! run from `CNI_PATH` with this call's variables and config, as upstream delegates.

use std::path::{Path, PathBuf};

use cni_host::result::CniResult;
use serde_json::Value;

use crate::cni_plugin::host_local;
use crate::cni_plugin::invocation::{Command, Invocation, PluginError};

/// The config's `ipam` object: an interface plugin needs addresses.
pub fn config<'a>(invocation: &'a Invocation, plugin: &str) -> Result<&'a Value, PluginError> {
    invocation
        .config
        .get("ipam")
        .ok_or_else(|| PluginError::config(format!("ipam: missing ({plugin} needs addresses)")))
}

/// ADD: the addresses (and routes, DNS) the IPAM plugin hands out.
pub fn add(invocation: &Invocation, ipam: &Value) -> Result<CniResult, PluginError> {
    let result = match kind(ipam)? {
        "host-local" => {
            let config = host_local::Config::load(invocation)?;
            host_local::add(&config, &invocation.container_id, &invocation.ifname)?
        }
        other => {
            let out = delegate(invocation, other, Command::Add)?;
            CniResult::parse(&out)
                .map_err(|e| PluginError::internal(format!("ipam {other}: {e}")))?
        }
    };
    if result.ips.is_empty() {
        // Give back whatever it took before saying so.
        let _ = call(invocation, ipam, Command::Del);
        return Err(PluginError::internal(format!(
            "ipam {}: returned no IP config",
            kind(ipam)?
        )));
    }
    Ok(result)
}

/// DEL, CHECK, GC or STATUS through the IPAM plugin.
pub fn call(invocation: &Invocation, ipam: &Value, command: Command) -> Result<(), PluginError> {
    match kind(ipam)? {
        "host-local" => {
            let mut call = invocation.clone();
            call.command = command;
            host_local::run(&call).map(|_| ())
        }
        other => delegate(invocation, other, command).map(|_| ()),
    }
}

fn kind(ipam: &Value) -> Result<&str, PluginError> {
    ipam.get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| PluginError::config("ipam.type: missing"))
}

/// Runs another plugin with this call's variables and config, as upstream's delegation
/// does; its stdout.
fn delegate(
    invocation: &Invocation,
    plugin: &str,
    command: Command,
) -> Result<Vec<u8>, PluginError> {
    let binary: PathBuf = invocation
        .cni_path
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            PluginError::config(format!("ipam.type: plugin {plugin:?} is not in CNI_PATH"))
        })?;
    let args: Vec<String> = invocation
        .args
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut child = std::process::Command::new(&binary)
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &invocation.container_id)
        .env(
            "CNI_NETNS",
            invocation.netns.as_deref().unwrap_or(Path::new("")),
        )
        .env("CNI_IFNAME", &invocation.ifname)
        .env("CNI_ARGS", args.join(";"))
        .env(
            "CNI_PATH",
            std::env::join_paths(&invocation.cni_path).unwrap_or_default(),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| PluginError::internal(format!("run {}: {e}", binary.display())))?;
    let config = invocation.config.to_string();
    std::io::Write::write_all(&mut child.stdin.take().expect("piped"), config.as_bytes())
        .map_err(|e| PluginError::internal(format!("write to {}: {e}", binary.display())))?;
    let out = child
        .wait_with_output()
        .map_err(|e| PluginError::internal(format!("wait for {}: {e}", binary.display())))?;
    if !out.status.success() {
        let error: Option<cni_host::result::ErrorObject> = serde_json::from_slice(&out.stdout).ok();
        return Err(match error {
            Some(e) => PluginError::new(e.code, format!("ipam {plugin}: {}", e.msg)),
            None => PluginError::internal(format!("ipam {plugin} failed ({})", out.status)),
        });
    }
    Ok(out.stdout)
}
