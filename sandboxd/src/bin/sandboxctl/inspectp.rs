//! `inspectp ID`: a pod sandbox's status and the runtime's details (netns path, pause pid,
//! CNI result), as crictl inspectp prints them.

use k8s_cri::v1 as cri;

use crate::output::{print_doc, Format};
use crate::Client;

#[derive(clap::Args)]
pub struct Args {
    /// Pod sandboxes: ids, unique id prefixes or names.
    #[arg(required = true)]
    ids: Vec<String>,
    #[arg(long, short, value_enum, default_value = "json")]
    output: Format,
}

pub async fn run(client: &mut Client, args: Args) -> anyhow::Result<()> {
    for given in args.ids {
        let id = crate::lookup::pod_id(client, &given).await?;
        let reply = client
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: true,
            })
            .await?
            .into_inner();
        let state = reply.status.as_ref().map(|s| s.state).unwrap_or_default();
        let mut doc = serde_json::json!({ "status": reply.status });
        // Enum values by name, as crictl prints them.
        if let Ok(state) = cri::PodSandboxState::try_from(state) {
            doc["status"]["state"] = serde_json::json!(state.as_str_name());
        }
        let options = &mut doc["status"]["linux"]["namespaces"]["options"];
        for key in ["network", "pid", "ipc"] {
            let mode = options[key]
                .as_i64()
                .and_then(|m| cri::NamespaceMode::try_from(m as i32).ok());
            if let Some(mode) = mode {
                options[key] = serde_json::json!(mode.as_str_name());
            }
        }
        if let Some(info) = reply.info.get("info") {
            doc["info"] = crate::output::info_value(info);
        }
        print_doc(&doc, args.output)?;
    }
    Ok(())
}
