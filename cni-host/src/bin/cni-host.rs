//! cni-host: cnitool's interface over the cni-host library.
//!
//!   cni-host add|check|del|status|gc|version <net> [<netns>]
//!
//! Environment, as cnitool reads it: NETCONFPATH (conf dir, default /etc/cni/net.d),
//! CNI_PATH (plugin dirs, default /opt/cni/bin:/usr/lib/cni), CNI_IFNAME (default eth0),
//! CNI_ARGS ("K=V;K=V"), CAP_ARGS (a JSON object of capability arguments). Also:
//! CNI_CONTAINERID (default: cnitool's hash of the netns path), CNI_CACHE_DIR (default
//! /var/lib/cni) and CNI_TIMEOUT (seconds per plugin call, default 30).
//! `gc` keeps the attachments given as `--keep <container id>[/<ifname>]`; like cnitool,
//! without any it removes every cached attachment of the network.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use cni_host::{CniHost, GcAttachment, RuntimeConf};
use sha2::{Digest, Sha512};

const USAGE: &str = "usage:
  cni-host add     <net> <netns>   attach the netns to the network, print the result
  cni-host check   <net> <netns>   check the attachment
  cni-host del     <net> <netns>   detach it (safe to repeat)
  cni-host status  <net>           is the network ready for ADDs?
  cni-host gc      <net> [<netns>] [--keep <container id>[/<ifname>]]...
  cni-host version <net>           the CNI versions each plugin of the network supports
environment: NETCONFPATH, CNI_PATH, CNI_IFNAME, CNI_ARGS, CAP_ARGS, CNI_CONTAINERID,
             CNI_CACHE_DIR, CNI_TIMEOUT";

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`sandboxctl pods | head`), instead of panicking on a broken pipe.
    // SAFETY: signal(2) only sets how this process takes SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(&args)) {
        Ok(output) => {
            if !output.is_empty() {
                println!("{output}");
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("cni-host: {message}");
            ExitCode::FAILURE
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

async fn run(args: &[String]) -> Result<String, String> {
    let (verb, net) = match args {
        [verb, net, ..] => (verb.as_str(), net.as_str()),
        _ => return Err(USAGE.to_string()),
    };
    let conf_dir = env("NETCONFPATH").unwrap_or_else(|| "/etc/cni/net.d".into());
    let list = cni_host::load_network(Path::new(&conf_dir), net).map_err(|e| e.to_string())?;
    let bin_dirs: Vec<PathBuf> = match env("CNI_PATH") {
        Some(path) => std::env::split_paths(&path).collect(),
        None => cni_host::DEFAULT_BIN_DIRS
            .iter()
            .map(PathBuf::from)
            .collect(),
    };
    let cache_dir =
        env("CNI_CACHE_DIR").unwrap_or_else(|| cni_host::cache::DEFAULT_CACHE_DIR.into());
    let mut host = CniHost::new(bin_dirs, cache_dir);
    if let Some(secs) = env("CNI_TIMEOUT") {
        let secs: f64 = secs
            .parse()
            .ok()
            .filter(|s: &f64| *s > 0.0)
            .ok_or_else(|| format!("CNI_TIMEOUT={secs:?} is not a positive number of seconds"))?;
        host = host.plugin_timeout(Duration::from_secs_f64(secs));
    }

    match verb {
        "add" | "check" | "del" => {
            let netns = args
                .get(2)
                .ok_or_else(|| format!("{verb} needs <netns>\n{USAGE}"))?;
            let rt = runtime_conf(netns)?;
            match verb {
                "add" => {
                    let result = host.add(&list, &rt).await.map_err(|e| e.to_string())?;
                    let value = result.to_value().map_err(|e| e.to_string())?;
                    Ok(serde_json::to_string_pretty(&value).expect("json"))
                }
                "check" => host
                    .check(&list, &rt)
                    .await
                    .map(|_| String::new())
                    .map_err(|e| e.to_string()),
                _ => host
                    .del(&list, &rt)
                    .await
                    .map(|_| String::new())
                    .map_err(|e| e.to_string()),
            }
        }
        "status" => host
            .status(&list)
            .await
            .map(|_| String::new())
            .map_err(|e| e.to_string()),
        "gc" => {
            let ifname = env("CNI_IFNAME").unwrap_or_else(|| "eth0".into());
            let mut keep = Vec::new();
            let mut rest = args[2..].iter();
            while let Some(arg) = rest.next() {
                match arg.as_str() {
                    "--keep" => {
                        let value = rest
                            .next()
                            .ok_or("--keep needs <container id>[/<ifname>]")?;
                        let (id, ifname) = value.split_once('/').unwrap_or((value, &ifname));
                        keep.push(GcAttachment {
                            container_id: id.to_string(),
                            ifname: ifname.to_string(),
                        });
                    }
                    // cnitool takes a netns here and ignores it.
                    _ if !arg.starts_with("--") => {}
                    other => return Err(format!("gc: unknown flag {other}\n{USAGE}")),
                }
            }
            let report = host.gc(&list, &keep).await.map_err(|e| e.to_string())?;
            let removed: Vec<String> = report
                .removed
                .iter()
                .map(|a| format!("{}/{}", a.container_id, a.ifname))
                .collect();
            Ok(
                serde_json::to_string_pretty(&serde_json::json!({ "removed": removed }))
                    .expect("json"),
            )
        }
        "version" => {
            let mut out = serde_json::Map::new();
            for plugin in &list.plugins {
                let versions = host
                    .plugin_versions(&list, plugin)
                    .await
                    .map_err(|e| e.to_string())?;
                let supported = versions.supports(list.cni_version);
                out.insert(
                    plugin.plugin_type.clone(),
                    serde_json::json!({
                        "cniVersion": versions.cni_version,
                        "supportedVersions": versions.supported_versions,
                        "supportsNetworkVersion": supported,
                    }),
                );
            }
            let doc = serde_json::json!({ "network": list.name, "cniVersion": list.cni_version.to_string(), "plugins": out });
            Ok(serde_json::to_string_pretty(&doc).expect("json"))
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

fn runtime_conf(netns: &str) -> Result<RuntimeConf, String> {
    let netns = std::path::absolute(netns).map_err(|e| format!("netns {netns:?}: {e}"))?;
    let netns = netns.display().to_string();
    // cnitool names the container after the netns: "cnitool-" + 10 bytes of sha512(path).
    let container_id = env("CNI_CONTAINERID").unwrap_or_else(|| {
        let digest = Sha512::digest(netns.as_bytes());
        let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
        format!("cnitool-{hex}")
    });
    let ifname = env("CNI_IFNAME").unwrap_or_else(|| "eth0".into());
    let mut rt = RuntimeConf::new(container_id, netns, ifname);
    if let Some(args) = env("CNI_ARGS") {
        for pair in args.split(';') {
            match pair.split_once('=') {
                Some((k, v)) if !k.is_empty() && !v.is_empty() => {
                    rt.args.push((k.into(), v.into()))
                }
                _ => {
                    return Err(format!(
                        "invalid CNI_ARGS pair {pair:?} (expected KEY=VALUE)"
                    ))
                }
            }
        }
    }
    if let Some(caps) = env("CAP_ARGS") {
        let value: serde_json::Value =
            serde_json::from_str(&caps).map_err(|e| format!("CAP_ARGS is not JSON: {e}"))?;
        match value {
            serde_json::Value::Object(map) => rt.capability_args = map,
            _ => return Err("CAP_ARGS must be a JSON object".into()),
        }
    }
    Ok(rt)
}
