//! `rmp ID...` / `rmp --all`: remove pod sandboxes (stopping them first).

use anyhow::bail;
use k8s_cri::v1 as cri;

use crate::Client;

#[derive(clap::Args)]
pub struct Args {
    /// Pod sandboxes: ids, unique id prefixes or names.
    ids: Vec<String>,
    /// Remove every pod sandbox.
    #[arg(long, short)]
    all: bool,
}

pub async fn run(client: &mut Client, args: Args) -> anyhow::Result<()> {
    let mut ids = args.ids;
    if args.all {
        let pods = client
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner();
        ids.extend(pods.items.into_iter().map(|p| p.id));
    }
    if ids.is_empty() {
        bail!("rmp needs pod sandbox ids, or --all");
    }
    for given in ids {
        let id = crate::lookup::pod_id(client, &given).await?;
        client
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
        println!("Removed sandbox {given}");
    }
    Ok(())
}
