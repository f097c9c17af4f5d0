//! cri-bench: RunPodSandbox latency of any CRI v1 runtime, as the kubelet would see it.
//!
//!   cri-bench --endpoint unix:///run/sandboxd/sandboxd.sock [--pods 100] [--parallel 10]
//!             [--label NAME]
//!
//! Runs `--pods` sandboxes one after another, then `--pods` more with `--parallel` in
//! flight at once; each is stopped and removed after it is measured, outside the timing.
//! Prints Markdown rows (p50, p90, p99 of RunPodSandbox) for BENCHMARKS.md. The same CRI
//! calls go to whichever runtime the endpoint names, so sandboxd and containerd are
//! measured alike (`scripts/bench-cri.sh` starts both on the same CNI chain).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

fn pod(run: &str, i: usize) -> cri::PodSandboxConfig {
    let name = format!("bench-{run}-{i}");
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            namespace: "bench".into(),
            uid: name.clone(),
            attempt: 0,
        }),
        hostname: name,
        log_directory: String::new(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

async fn one(
    mut client: RuntimeServiceClient<Channel>,
    config: cri::PodSandboxConfig,
) -> Result<Duration> {
    let start = Instant::now();
    let id = client
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    let took = start.elapsed();
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
    Ok(took)
}

fn row(label: &str, mode: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    let q =
        |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    format!(
        "| RunPodSandbox, {mode} | {label} | {} | {:.1} | {:.1} | {:.1} |",
        samples.len(),
        q(0.5),
        q(0.9),
        q(0.99)
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut endpoint = "unix:///run/sandboxd/sandboxd.sock".to_string();
    let mut pods = 100;
    let mut parallel = 10;
    let mut label = "sandboxd".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--endpoint" => endpoint = value()?,
            "--pods" => pods = value()?.parse()?,
            "--parallel" => parallel = value()?.parse()?,
            "--label" => label = value()?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    if pods == 0 || parallel == 0 {
        bail!("--pods and --parallel must be at least 1");
    }
    let client = sandboxd::client::connect(&endpoint).await?;
    // One warm-up pod: the first ADD creates the bridge, the first calls load plugins.
    one(client.clone(), pod("warmup", 0)).await?;

    let mut sequential = Vec::with_capacity(pods);
    for i in 0..pods {
        sequential.push(one(client.clone(), pod("seq", i)).await?);
    }

    let mut concurrent = Vec::with_capacity(pods);
    let mut next = 0;
    while next < pods {
        let batch: Vec<_> = (next..(next + parallel).min(pods))
            .map(|i| tokio::spawn(one(client.clone(), pod("par", i))))
            .collect();
        next += batch.len();
        for task in batch {
            concurrent.push(task.await??);
        }
    }
    println!("{}", row(&label, "sequential", sequential));
    println!(
        "{}",
        row(&label, &format!("{parallel} in parallel"), concurrent)
    );
    Ok(())
}
