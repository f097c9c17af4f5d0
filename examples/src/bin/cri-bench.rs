//! cri-bench: latency of any CRI v1 runtime, as the kubelet would see it.
//!
//!   cri-bench --endpoint unix:///run/sandboxd/sandboxd.sock [--label NAME]
//!             [--pods 100] [--parallel 10]            RunPodSandbox
//!             [--containers 100 --image busybox]      CreateContainer + StartContainer
//!             [--hold 50 --rss-pid PID --rss-helper NAME]
//!                                                     memory with N pods running
//!             [--stats 100]                           with them, ListContainerStats
//!                                                     and ListPodSandboxStats
//!             [--execs 100 [--crictl PATH]]           ExecSync, and crictl exec
//!             [--log-dir DIR]                         the pods' log directory
//!
//! Pods: runs `--pods` sandboxes one after another, then `--pods` more with `--parallel` in
//! flight at once; each is then stopped and removed, timed apart (StopPodSandbox +
//! RemovePodSandbox).
//! Containers: in `--parallel` running pods, creates and starts `--containers` containers
//! (`sleep 3600` from `--image`), one after another and then `--parallel` at once (one per
//! pod); each is stopped and removed outside the timing. Hold: runs `--hold` pods with one
//! container each, then reports the resident memory of process `--rss-pid` (the runtime)
//! and of every process named `--rss-helper` (its per-pod or per-container helpers); with
//! `--stats`, times as many ListContainerStats and ListPodSandboxStats calls (all of
//! them, as the kubelet's stats provider lists them) while those pods run, and prints
//! their rows before the memory one.
//! Execs: in one running container, `--execs` ExecSync calls of `true`, and with `--crictl`
//! as many `crictl exec ID true` runs (the streaming server's round trip).
//! Prints Markdown rows for BENCHMARKS.md. The same CRI calls go to whichever runtime the
//! endpoint names, so sandboxd and containerd are measured alike (`scripts/bench-cri.sh`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

type Client = RuntimeServiceClient<Channel>;

/// The pods' log directory (`--log-dir`); containers log there, as under the kubelet.
static LOG_DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn pod(run: &str, i: usize) -> cri::PodSandboxConfig {
    let name = format!("bench-{run}-{i}");
    let log_directory = LOG_DIR
        .get()
        .map(|dir| format!("{dir}/{name}"))
        .unwrap_or_default();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            namespace: "bench".into(),
            uid: name.clone(),
            attempt: 0,
        }),
        hostname: name,
        log_directory,
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

fn container(image: &str, i: usize) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: format!("c{i}"),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        log_path: format!("c{i}.log"),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

async fn run_pod(client: &mut Client, config: cri::PodSandboxConfig) -> Result<String> {
    Ok(client
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id)
}

async fn remove_pod(client: &mut Client, id: String) -> Result<()> {
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .context("StopPodSandbox")?;
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .context("RemovePodSandbox")?;
    Ok(())
}

/// Runs a pod, then stops and removes it: how long each took.
async fn one_pod(
    mut client: Client,
    config: cri::PodSandboxConfig,
) -> Result<(Duration, Duration)> {
    let start = Instant::now();
    let id = run_pod(&mut client, config).await?;
    let ran = start.elapsed();
    let start = Instant::now();
    remove_pod(&mut client, id).await?;
    Ok((ran, start.elapsed()))
}

/// Creates and starts a container; returns its id and how long both calls took.
async fn start_container(
    client: &mut Client,
    pod_id: &str,
    pod_config: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> Result<(String, Duration)> {
    let start = Instant::now();
    let id = client
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    client
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .context("StartContainer")?;
    Ok((id, start.elapsed()))
}

async fn remove_container(client: &mut Client, id: String) -> Result<()> {
    client
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .context("StopContainer")?;
    client
        .remove_container(cri::RemoveContainerRequest { container_id: id })
        .await
        .context("RemoveContainer")?;
    Ok(())
}

async fn one_container(
    mut client: Client,
    pod_id: String,
    pod_config: cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> Result<Duration> {
    let (id, took) = start_container(&mut client, &pod_id, &pod_config, config).await?;
    remove_container(&mut client, id).await?;
    Ok(took)
}

fn row(what: &str, label: &str, mode: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    let q =
        |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    format!(
        "| {what}, {mode} | {label} | {} | {:.1} | {:.1} | {:.1} |",
        samples.len(),
        q(0.5),
        q(0.9),
        q(0.99)
    )
}

async fn bench_pods(client: &Client, label: &str, pods: usize, parallel: usize) -> Result<()> {
    // One warm-up pod: the first ADD creates the bridge, the first calls load plugins.
    one_pod(client.clone(), pod("warmup", 0)).await?;
    let (mut sequential, mut sequential_teardown) = (Vec::new(), Vec::new());
    for i in 0..pods {
        let (ran, removed) = one_pod(client.clone(), pod("seq", i)).await?;
        sequential.push(ran);
        sequential_teardown.push(removed);
    }
    let (mut concurrent, mut concurrent_teardown) = (Vec::new(), Vec::new());
    let mut next = 0;
    while next < pods {
        let batch: Vec<_> = (next..(next + parallel).min(pods))
            .map(|i| tokio::spawn(one_pod(client.clone(), pod("par", i))))
            .collect();
        next += batch.len();
        for task in batch {
            let (ran, removed) = task.await??;
            concurrent.push(ran);
            concurrent_teardown.push(removed);
        }
    }
    let in_parallel = format!("{parallel} in parallel");
    for (what, sequential, concurrent) in [
        ("RunPodSandbox", sequential, concurrent),
        (
            "StopPodSandbox+RemovePodSandbox",
            sequential_teardown,
            concurrent_teardown,
        ),
    ] {
        println!("{}", row(what, label, "sequential", sequential));
        println!("{}", row(what, label, &in_parallel, concurrent));
    }
    Ok(())
}

async fn bench_containers(
    client: &Client,
    label: &str,
    count: usize,
    parallel: usize,
    image: &str,
) -> Result<()> {
    let mut pods = Vec::new();
    for i in 0..parallel {
        let config = pod("ctr", i);
        let id = run_pod(&mut client.clone(), config.clone()).await?;
        pods.push((id, config));
    }
    let outcome = async {
        // Warm-up: the first container of an image prepares its snapshot or layers.
        let (id0, config0) = &pods[0];
        one_container(
            client.clone(),
            id0.clone(),
            config0.clone(),
            container(image, 0),
        )
        .await?;
        let mut sequential = Vec::with_capacity(count);
        for i in 0..count {
            let (id, config) = &pods[i % pods.len()];
            sequential.push(
                one_container(
                    client.clone(),
                    id.clone(),
                    config.clone(),
                    container(image, 1 + i),
                )
                .await?,
            );
        }
        let mut concurrent = Vec::with_capacity(count);
        let mut next = 0;
        while next < count {
            let batch: Vec<_> = (next..(next + parallel).min(count))
                .enumerate()
                .map(|(lane, i)| {
                    let (id, config) = pods[lane].clone();
                    tokio::spawn(one_container(
                        client.clone(),
                        id,
                        config,
                        container(image, 1 + count + i),
                    ))
                })
                .collect();
            next += batch.len();
            for task in batch {
                concurrent.push(task.await??);
            }
        }
        let what = "CreateContainer+StartContainer";
        println!("{}", row(what, label, "sequential", sequential));
        println!(
            "{}",
            row(what, label, &format!("{parallel} in parallel"), concurrent)
        );
        anyhow::Ok(())
    }
    .await;
    for (id, _) in pods {
        remove_pod(&mut client.clone(), id).await?;
    }
    outcome
}

/// ExecSync of `true` in a running container, `count` times; with `crictl`, also the
/// streamed exec round trip as a kubelet-era client makes it (`crictl exec ID true`: the
/// Exec call, the SPDY upgrade to the streaming server, the command, its status; crictl's
/// own start included, the same for every runtime). Run it in the node's network
/// namespace, where the runtime's streaming server listens.
async fn bench_execs(
    client: &Client,
    endpoint: &str,
    label: &str,
    count: usize,
    image: &str,
    crictl: Option<&str>,
) -> Result<()> {
    let config = pod("exec", 0);
    let pod_id = run_pod(&mut client.clone(), config.clone()).await?;
    let outcome = async {
        let (id, _) =
            start_container(&mut client.clone(), &pod_id, &config, container(image, 0)).await?;
        let exec_once = || {
            let mut client = client.clone();
            let id = id.clone();
            async move {
                let start = Instant::now();
                let out = client
                    .exec_sync(cri::ExecSyncRequest {
                        container_id: id,
                        cmd: vec!["true".into()],
                        timeout: 10,
                    })
                    .await
                    .context("ExecSync")?
                    .into_inner();
                if out.exit_code != 0 {
                    bail!("ExecSync true exited {}", out.exit_code);
                }
                anyhow::Ok(start.elapsed())
            }
        };
        exec_once().await?;
        let mut samples = Vec::with_capacity(count);
        for _ in 0..count {
            samples.push(exec_once().await?);
        }
        println!("{}", row("ExecSync `true`", label, "sequential", samples));
        if let Some(crictl) = crictl {
            let mut samples = Vec::with_capacity(count);
            for i in 0..=count {
                let start = Instant::now();
                let status = std::process::Command::new(crictl)
                    .args(["--runtime-endpoint", endpoint, "exec", &id, "true"])
                    .stdout(std::process::Stdio::null())
                    .status()
                    .context("run crictl")?;
                if !status.success() {
                    bail!("crictl exec {id} true: {status}");
                }
                if i > 0 {
                    samples.push(start.elapsed());
                }
            }
            println!(
                "{}",
                row(
                    "streamed exec `true` (crictl exec, whole command)",
                    label,
                    "sequential",
                    samples
                )
            );
        }
        anyhow::Ok(())
    }
    .await;
    remove_pod(&mut client.clone(), pod_id).await?;
    outcome
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Pids of the processes whose name (comm, which the kernel cuts to 15 bytes) is `name`.
fn processes_named(name: &str) -> Vec<u32> {
    let name = &name[..name.len().min(15)];
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
        .collect()
}

/// `calls` ListContainerStats, then as many ListPodSandboxStats, each listing everything
/// (`pods` pods with a container each).
async fn bench_stats(client: &Client, label: &str, pods: usize, calls: usize) -> Result<()> {
    let containers = time_listing(calls, pods, || {
        let mut client = client.clone();
        async move {
            let request = cri::ListContainerStatsRequest { filter: None };
            let listed = client.list_container_stats(request).await?;
            Ok(listed.into_inner().stats.len())
        }
    })
    .await
    .context("ListContainerStats")?;
    let mode = format!("{pods} containers");
    println!("{}", row("ListContainerStats", label, &mode, containers));
    let pod_samples = time_listing(calls, pods, || {
        let mut client = client.clone();
        async move {
            let request = cri::ListPodSandboxStatsRequest { filter: None };
            let listed = client.list_pod_sandbox_stats(request).await?;
            Ok(listed.into_inner().stats.len())
        }
    })
    .await
    .context("ListPodSandboxStats")?;
    let mode = format!("{pods} pods");
    println!("{}", row("ListPodSandboxStats", label, &mode, pod_samples));
    Ok(())
}

/// Times `calls` calls of `list`, each of which must list `expected` items.
async fn time_listing<Listing>(
    calls: usize,
    expected: usize,
    list: impl Fn() -> Listing,
) -> Result<Vec<Duration>>
where
    Listing: std::future::Future<Output = Result<usize, tonic::Status>>,
{
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let listed = list().await?;
        samples.push(started.elapsed());
        if listed != expected {
            bail!("listed {listed}, not {expected}");
        }
    }
    Ok(samples)
}

async fn hold(
    client: &Client,
    label: &str,
    count: usize,
    image: &str,
    rss_pid: Option<u32>,
    helper: Option<&str>,
    stats: usize,
) -> Result<()> {
    let mut pods = Vec::new();
    let outcome = async {
        for i in 0..count {
            let mut config = pod("hold", i);
            // As the kubelet places pods (containerd cannot report a pod's stats without).
            config.linux = Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("/{}/pod{i}", held_cgroup()),
                ..Default::default()
            });
            let id = run_pod(&mut client.clone(), config.clone()).await?;
            pods.push(id.clone());
            start_container(&mut client.clone(), &id, &config, container(image, i)).await?;
        }
        // Let start-up allocations settle before reading.
        tokio::time::sleep(Duration::from_secs(2)).await;
        if stats > 0 {
            bench_stats(client, label, count, stats).await?;
        }
        let runtime = rss_pid.and_then(rss_kib).unwrap_or(0);
        let helpers: Vec<u64> = helper
            .map(processes_named)
            .unwrap_or_default()
            .into_iter()
            .filter_map(rss_kib)
            .collect();
        println!(
            "| {label} | {count} | {:.1} | {} × {} | {:.1} | {:.1} |",
            runtime as f64 / 1024.0,
            helpers.len(),
            helper.unwrap_or("-"),
            helpers.iter().sum::<u64>() as f64 / 1024.0,
            (runtime + helpers.iter().sum::<u64>()) as f64 / 1024.0
        );
        anyhow::Ok(())
    }
    .await;
    for id in pods {
        remove_pod(&mut client.clone(), id).await?;
    }
    remove_held_cgroups();
    outcome
}

/// The cgroup the held pods' cgroups go under, this run's own.
fn held_cgroup() -> String {
    format!("cri-bench-{}", std::process::id())
}

/// Removes what a runtime left of the held pods' cgroups (runtimes remove a container's
/// cgroup, not its pod's parents).
fn remove_held_cgroups() {
    let mounts = sandboxd::container::cgroup::CgroupMounts::read();
    for (dir, e) in mounts.remove_tree(std::path::Path::new(&held_cgroup())) {
        eprintln!("cri-bench: remove cgroup {}: {e}", dir.display());
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut endpoint = "unix:///run/sandboxd/sandboxd.sock".to_string();
    let mut pods = 0;
    let mut containers = 0;
    let mut held = 0;
    let mut parallel = 10;
    let mut label = "sandboxd".to_string();
    let mut image = "busybox".to_string();
    let mut rss_pid = None;
    let mut helper = None;
    let mut execs = 0;
    let mut crictl = None;
    let mut stats = 0;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--endpoint" => endpoint = value()?,
            "--pods" => pods = value()?.parse()?,
            "--containers" => containers = value()?.parse()?,
            "--hold" => held = value()?.parse()?,
            "--parallel" => parallel = value()?.parse()?,
            "--label" => label = value()?,
            "--image" => image = value()?,
            "--rss-pid" => rss_pid = Some(value()?.parse()?),
            "--rss-helper" => helper = Some(value()?),
            "--execs" => execs = value()?.parse()?,
            "--crictl" => crictl = Some(value()?),
            "--stats" => stats = value()?.parse()?,
            "--log-dir" => {
                let _ = LOG_DIR.set(value()?);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    if stats > 0 && held == 0 {
        bail!("--stats lists the pods of --hold: give --hold too");
    }
    if pods == 0 && containers == 0 && held == 0 && execs == 0 {
        bail!("nothing to measure: give --pods, --containers, --execs or --hold");
    }
    if parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let client = sandboxd::client::connect(&endpoint).await?;
    if pods > 0 {
        bench_pods(&client, &label, pods, parallel).await?;
    }
    if containers > 0 {
        bench_containers(&client, &label, containers, parallel, &image).await?;
    }
    if execs > 0 {
        bench_execs(&client, &endpoint, &label, execs, &image, crictl.as_deref()).await?;
    }
    if held > 0 {
        hold(
            &client,
            &label,
            held,
            &image,
            rss_pid,
            helper.as_deref(),
            stats,
        )
        .await?;
    }
    Ok(())
}
