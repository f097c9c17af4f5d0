//! The first half of a pod's life, done by hand with sandboxd's parts:
//! pause in new namespaces → its netns pinned → CNI ADD to the default network.
//!
//!   pod-network-demo            run it, show the pod, tear everything down
//!   pod-network-demo --keep     leave the pod up to look around; remove with --cleanup
//!   pod-network-demo --cleanup  remove what --keep left
//!
//! The node is a network namespace (`/run/sandboxd/nodes/demo`), as in the lab: the bridge cni0,
//! the host-side veth and portmap's rules live there, not on the machine's own network.
//! Needs root, iproute2 and Debian's containernetworking-plugins.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cni_host::{CniHost, NetworkConfigList, ProcessExec, RuntimeConf};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sandboxd::{netns, network, pause};
use sandboxd_examples::{create_node, new_id, node, remove_node, run};

const NODE: &str = "demo";
const STATE_DIR: &str = "/run/sandboxd/demo";
const POD_NAMESPACE: &str = "default";
const POD_NAME: &str = "pod-pause";

/// What the demo created, so --cleanup (or a failure half-way) can undo exactly that.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Created {
    id: String,
    pause_pid: Option<u32>,
    netns_pin: Option<PathBuf>,
    attached: bool,
    node: bool,
}

fn state_file() -> PathBuf {
    Path::new(STATE_DIR).join("state.json")
}

fn cni_host() -> CniHost<ProcessExec> {
    let bin_dirs = cni_host::DEFAULT_BIN_DIRS
        .iter()
        .map(PathBuf::from)
        .collect();
    CniHost::with_exec(
        bin_dirs,
        Path::new(STATE_DIR).join("cni-cache"),
        node(NODE).netns().plugin_exec(),
    )
}

/// The default network: the first valid config of sandboxd's conf dir, installed on first use.
fn default_network() -> Result<NetworkConfigList> {
    let dir = Path::new(network::DEFAULT_CONF_DIR);
    if cni_host::load_default_network(dir).is_err() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let ipam = Path::new(network::DEFAULT_CNI_STATE_DIR).join("ipam");
        let doc = network::default_conflist(1, &ipam.display().to_string());
        let file = dir.join(network::DEFAULT_CONFLIST_FILE);
        std::fs::write(&file, serde_json::to_string_pretty(&doc)?)?;
        println!("installed the default network config {}", file.display());
    }
    Ok(cni_host::load_default_network(dir)?)
}

fn rt(created: &Created) -> RuntimeConf {
    let pin = created
        .netns_pin
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    RuntimeConf::new(&created.id, pin, "eth0").with_pod(POD_NAMESPACE, POD_NAME, &created.id)
}

/// Undoes what was created, last step first; carries on past failures and reports them.
async fn tear_down(created: &Created, reap: bool) -> Result<()> {
    let mut failures = Vec::new();
    if created.attached {
        match default_network() {
            Ok(list) => {
                if let Err(e) = cni_host().del(&list, &rt(created)).await {
                    failures.push(format!("CNI DEL: {e}"));
                }
            }
            Err(e) => failures.push(format!("load the network for DEL: {e}")),
        }
    }
    if let Some(pid) = created.pause_pid {
        // pause exits 0 on SIGTERM; an already-gone pause is fine.
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        // Only the run that started pause is its parent and can reap it.
        if reap {
            let _ = pause::reap(pid).await;
        }
    }
    if let Some(pin) = &created.netns_pin {
        let unpinned = netns::unpin(pin)
            .and_then(|()| netns::release_dir(Path::new(netns::DEFAULT_NETNS_DIR)));
        if let Err(e) = unpinned {
            failures.push(e.to_string());
        }
    }
    if created.node {
        if let Err(e) = remove_node(NODE) {
            failures.push(e.to_string());
        }
    }
    let _ = std::fs::remove_dir_all(STATE_DIR);
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("teardown incomplete: {}", failures.join("; "))
    }
}

async fn bring_up(created: &mut Created) -> Result<cni_host::CniResult> {
    let pause_binary = pause::locate(None)?;
    let list = default_network()?;

    let started = Instant::now();
    create_node(NODE)?;
    created.node = true;

    let pid = pause::spawn(
        &pause_binary,
        POD_NAME,
        &pause::PodNamespaces {
            hostname: Some(POD_NAME.into()),
            ..Default::default()
        },
    )?;
    created.pause_pid = Some(pid);
    let netns_dir = Path::new(netns::DEFAULT_NETNS_DIR);
    netns::prepare_dir(netns_dir)?;
    created.netns_pin = Some(netns::pin(netns_dir, &created.id, pid)?);

    // Mark before ADD: a plugin may allocate and then fail, and DEL must clean that up too.
    created.attached = true;
    let result = cni_host().add(&list, &rt(created)).await?;
    println!(
        "pod sandbox {} up in {:.1} ms",
        &created.id[..12],
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(result)
}

#[tokio::main]
async fn main() -> Result<()> {
    let arg = std::env::args().nth(1);
    if arg.as_deref() == Some("--cleanup") {
        let text = std::fs::read_to_string(state_file())
            .context("nothing to clean up (no state from --keep)")?;
        let created: Created = serde_json::from_str(&text)?;
        tear_down(&created, false).await?;
        println!("removed pod sandbox {}", created.id);
        return Ok(());
    }
    let keep = match arg.as_deref() {
        None => false,
        Some("--keep") => true,
        Some(other) => {
            bail!("unknown argument {other:?}; usage: pod-network-demo [--keep|--cleanup]")
        }
    };
    if state_file().exists() {
        bail!("a kept demo pod is still up: run `pod-network-demo --cleanup` first");
    }

    let mut created = Created {
        id: new_id()?,
        ..Created::default()
    };
    let result = match bring_up(&mut created).await {
        Ok(up) => up,
        Err(e) => {
            let undo = tear_down(&created, true).await;
            return Err(match undo {
                Ok(()) => e,
                Err(undo) => e.context(undo.to_string()),
            });
        }
    };

    let pin = created.netns_pin.clone().expect("pinned");
    let node_net = format!("--net={}", node(NODE).path().display());
    let pid = created.pause_pid.unwrap_or_default().to_string();
    let ip = result
        .ips
        .first()
        .map(|ip| ip.address.addr.to_string())
        .unwrap_or_default();
    let show = |title: &str, out: Result<String>| {
        println!("\n$ {title}");
        match out {
            Ok(text) => print!("{text}"),
            Err(e) => println!("({e})"),
        }
    };
    println!("\nCNI ADD result (cniVersion {}):", result.cni_version);
    println!(
        "{}",
        serde_json::to_string_pretty(&result.to_version("1.0.0".parse()?)?)?
    );
    show(
        &format!("lsns -p {pid}   # net, ipc, uts are the pod's, owned by pause"),
        run("lsns", &["-p", &pid]),
    );
    show(
        &format!("nsenter --net={} ip -br addr", pin.display()),
        run(
            "nsenter",
            &[&format!("--net={}", pin.display()), "ip", "-br", "addr"],
        ),
    );
    show(
        &format!("nsenter --uts=/proc/{pid}/ns/uts hostname"),
        run(
            "nsenter",
            &[&format!("--uts=/proc/{pid}/ns/uts"), "hostname"],
        ),
    );
    show(&format!("nsenter {node_net} ip -br link show master cni0   # node {NODE}: the host-side veth on the bridge"), run("nsenter", &[&node_net, "ip", "-br", "link", "show", "master", "cni0"]));
    show(
        &format!("nsenter {node_net} ping -c 1 -W 1 {ip}   # the node reaches the pod"),
        run("nsenter", &[&node_net, "ping", "-c", "1", "-W", "1", &ip]),
    );

    if keep {
        std::fs::create_dir_all(STATE_DIR)?;
        std::fs::write(state_file(), serde_json::to_string(&created)?)?;
        println!(
            "\nkept: pod netns {}, pause pid {pid}, node netns {}",
            pin.display(),
            node(NODE).path().display()
        );
        println!("remove with: pod-network-demo --cleanup");
        return Ok(());
    }
    tear_down(&created, true).await?;
    println!("\ntorn down: CNI DEL, pause stopped, netns unpinned, node removed");
    Ok(())
}
