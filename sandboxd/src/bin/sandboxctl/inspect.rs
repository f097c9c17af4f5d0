//! `inspect ID...`: a container's status and the runtime's details (pid, network mode
//! `container:<pause-id>`, bundle, monitor), as crictl inspect prints them.

use k8s_cri::v1 as cri;

use crate::output::{print_doc, Format};
use crate::Client;

#[derive(clap::Args)]
pub struct Args {
    /// Container ids or unique id prefixes.
    #[arg(required = true)]
    ids: Vec<String>,
    #[arg(long, short, value_enum, default_value = "json")]
    output: Format,
}

/// The container's status and info as one document, enums by name.
pub async fn document(client: &mut Client, id: &str) -> anyhow::Result<serde_json::Value> {
    let reply = client
        .container_status(cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: true,
        })
        .await?
        .into_inner();
    let state = reply.status.as_ref().map(|s| s.state).unwrap_or_default();
    let mut doc = serde_json::json!({ "status": reply.status });
    if let Ok(state) = cri::ContainerState::try_from(state) {
        doc["status"]["state"] = serde_json::json!(state.as_str_name());
    }
    if let Some(info) = reply.info.get("info") {
        doc["info"] = crate::output::info_value(info);
    }
    Ok(doc)
}

pub async fn run(client: &mut Client, args: Args) -> anyhow::Result<()> {
    for id in args.ids {
        print_doc(&document(client, &id).await?, args.output)?;
    }
    Ok(())
}
