//! `stopp ID...`: stop pod sandboxes (idempotent).

use k8s_cri::v1 as cri;

use crate::Client;

#[derive(clap::Args)]
pub struct Args {
    /// Pod sandboxes: ids, unique id prefixes or names.
    #[arg(required = true)]
    ids: Vec<String>,
}

pub async fn run(client: &mut Client, args: Args) -> anyhow::Result<()> {
    for given in args.ids {
        let id = crate::lookup::pod_id(client, &given).await?;
        client
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
        println!("Stopped sandbox {given}");
    }
    Ok(())
}
