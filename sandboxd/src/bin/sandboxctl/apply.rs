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

use crate::{Client, ServicesClient};
use sandboxd::kube::{self, Object};
use sandboxd::kubelet;

#[derive(clap::Args)]
pub struct ApplyArgs {
    /// The manifest: a file, or `-` for stdin.
    #[arg(long, short = 'f', required = true)]
    filename: PathBuf,
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
    args: ApplyArgs,
) -> anyhow::Result<()> {
    for object in read(&args.filename)? {
        let outcome = match &object {
            Object::Pod(pod) => kubelet::run_pod(client, pod).await?,
            Object::Service(service) => crate::services::apply(services, service).await?,
        };
        println!("{} {outcome}", object.describe());
    }
    Ok(())
}

pub async fn delete(
    client: &mut Client,
    services: &mut ServicesClient,
    args: DeleteArgs,
) -> anyhow::Result<()> {
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
        if !kubelet::remove_pod(
            client,
            pod.namespace(),
            &pod.metadata.name,
            args.grace_period,
        )
        .await?
        {
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
