//! `pods`: list pod sandboxes, filtered as crictl's flags filter them.

use k8s_cri::v1 as cri;

use crate::output::{age, crictl_table, print_doc, short_id, Format};
use crate::Client;

#[derive(clap::Args)]
pub struct Args {
    /// Only the pod with this id (or id prefix).
    #[arg(long)]
    id: Option<String>,
    /// Only pods whose name contains this.
    #[arg(long)]
    name: Option<String>,
    /// Only pods in this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Only pods in this state: ready or notready.
    #[arg(long)]
    state: Option<String>,
    /// Only pods with this label (key=value), repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Print ids only.
    #[arg(long, short)]
    quiet: bool,
    /// Print full ids.
    #[arg(long)]
    no_trunc: bool,
    #[arg(long, short, value_enum, default_value = "table")]
    output: Format,
}

pub async fn run(client: &mut Client, args: Args) -> anyhow::Result<()> {
    let state = match args
        .state
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None => None,
        Some("ready") | Some("sandbox_ready") => Some(cri::PodSandboxState::SandboxReady),
        Some("notready") | Some("sandbox_notready") => Some(cri::PodSandboxState::SandboxNotready),
        Some(other) => anyhow::bail!("--state {other:?}: expected ready or notready"),
    };
    let label_selector = crate::output::labels("--label", &args.labels)?;
    let filter = cri::PodSandboxFilter {
        id: args.id.unwrap_or_default(),
        state: state.map(|s| cri::PodSandboxStateValue { state: s as i32 }),
        label_selector,
    };
    let mut items = client
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await?
        .into_inner()
        .items;
    // crictl's order: the newest first.
    items.sort_by_key(|p| std::cmp::Reverse(p.created_at));
    items.retain(|p| {
        let meta = p.metadata.clone().unwrap_or_default();
        args.name
            .as_ref()
            .is_none_or(|n| meta.name.contains(n.as_str()))
            && args
                .namespace
                .as_ref()
                .is_none_or(|ns| meta.namespace == *ns)
    });

    if args.quiet {
        for pod in &items {
            println!("{}", pod.id);
        }
        return Ok(());
    }
    match args.output {
        Format::Json | Format::Yaml => {
            print_doc(&serde_json::json!({ "items": items }), args.output)?
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|p| {
                    let meta = p.metadata.clone().unwrap_or_default();
                    let id = short_id(&p.id, args.no_trunc);
                    let state = if p.state == cri::PodSandboxState::SandboxReady as i32 {
                        "Ready"
                    } else {
                        "NotReady"
                    };
                    vec![
                        id,
                        age(p.created_at),
                        state.into(),
                        meta.name,
                        meta.namespace,
                        meta.attempt.to_string(),
                        "(default)".into(),
                    ]
                })
                .collect();
            crictl_table(
                &[
                    "POD ID",
                    "CREATED",
                    "STATE",
                    "NAME",
                    "NAMESPACE",
                    "ATTEMPT",
                    "RUNTIME",
                ],
                &rows,
            );
        }
    }
    Ok(())
}
