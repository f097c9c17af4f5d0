//! `stopp ID...`: stop pod sandboxes (idempotent).

use k8s_cri::v1 as cri;

use crate::Client;

#[derive(clap::Args)]
pub struct Args {
    /// Pod sandbox ids or unique id prefixes.
    #[arg(required = true)]
    ids: Vec<String>,
}

pub async fn run(client: &mut Client, args: Args) -> anyhow::Result<()> {
    for id in args.ids {
        client
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
        println!("Stopped sandbox {id}");
    }
    Ok(())
}
