//! `apply -f FILE|-` and `delete -f FILE|-` of manifests, doing on this node what the API
//! server and the kubelet do together: each Pod becomes a pod sandbox with its init
//! containers run to completion in order, then its containers started; each Service goes
//! to sandboxd's Services API (created, or updated when it differs).
//!
//! Pods are immutable, as in Kubernetes: applying a pod that runs with the same manifest
//! says "unchanged"; with a different one it is refused (delete it first). A pod that
//! fails half-way is removed whole, so a failed apply leaves nothing behind.

use std::path::PathBuf;

use anyhow::bail;

use crate::{Client, ClusterClient, ServicesClient};
use sandboxd::kube::{self, Object};
use sandboxd::kubelet;

#[derive(clap::Args)]
pub struct ApplyArgs {
    /// The manifest: a file, or `-` for stdin.
    #[arg(long, short = 'f', required = true)]
    filename: PathBuf,
    /// In a cluster, return once the pods are stored, without waiting for them to run.
    #[arg(long)]
    no_wait: bool,
}

#[derive(clap::Args)]
pub struct DeleteArgs {
    /// The manifest: a file, or `-` for stdin.
    #[arg(long, short = 'f', required = true)]
    filename: PathBuf,
    /// Objects that are not there are not an error.
    #[arg(long)]
    ignore_not_found: bool,
    /// Seconds containers get between SIGTERM and SIGKILL.
    #[arg(long, default_value_t = 30)]
    grace_period: i64,
}

pub fn read(path: &std::path::Path) -> anyhow::Result<Vec<Object>> {
    let text = crate::output::read_file(path)?;
    let source = if path.as_os_str() == "-" {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    };
    kube::parse(&text, &source)
}

pub async fn apply(
    client: &mut Client,
    services: &mut ServicesClient,
    cluster: &mut ClusterClient,
    args: ApplyArgs,
) -> anyhow::Result<()> {
    let objects = read(&args.filename)?;
    let member = crate::cluster::is_member(cluster).await?;
    let mut placed = Vec::new();
    for object in &objects {
        let outcome = match object {
            Object::Pod(pod) if member => {
                let (outcome, _node) = crate::cluster::apply_pod(cluster, pod)
                    .await
                    .map_err(|e| e.context(pod.describe()))?;
                placed.push((pod.namespace().to_string(), pod.metadata.name.clone()));
                outcome
            }
            Object::Pod(pod) => kubelet::run_pod(client, pod).await?.to_string(),
            Object::Service(service) => {
                crate::services::apply(services, service).await?.to_string()
            }
        };
        println!("{} {outcome}", object.describe());
    }
    // As on a node alone, apply returns once its pods run (or says why one cannot).
    if !placed.is_empty() && !args.no_wait {
        crate::cluster::wait_running(cluster, &placed).await?;
    }
    Ok(())
}

pub async fn delete(
    client: &mut Client,
    services: &mut ServicesClient,
    cluster: &mut ClusterClient,
    args: DeleteArgs,
) -> anyhow::Result<()> {
    let member = crate::cluster::is_member(cluster).await?;
    let mut missing = Vec::new();
    for object in read(&args.filename)? {
        let pod = match object {
            Object::Pod(pod) => pod,
            Object::Service(service) => {
                if crate::services::delete(services, &service).await? {
                    println!("service \"{}\" deleted", service.spec.name);
                } else {
                    missing.push(service.describe());
                }
                continue;
            }
        };
        let existed = if member {
            crate::cluster::delete_pod(cluster, pod.namespace(), &pod.metadata.name).await?
        } else {
            kubelet::remove_pod(
                client,
                pod.namespace(),
                &pod.metadata.name,
                args.grace_period,
            )
            .await?
        };
        if !existed {
            missing.push(pod.describe());
            continue;
        }
        println!("pod \"{}\" deleted", pod.metadata.name);
    }
    if !missing.is_empty() && !args.ignore_not_found {
        bail!(
            "not found: {} (--ignore-not-found to accept that)",
            missing.join(", ")
        );
    }
    Ok(())
}
