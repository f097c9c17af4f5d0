//! `ps`: list containers, filtered as crictl's flags filter them (running ones unless
//! `--all`).

use k8s_cri::v1 as cri;

use crate::output::{age, crictl_table, print_doc, short_id, Format};
use crate::Client;

#[derive(clap::Args)]
pub struct Args {
    /// Show containers in every state, not only running ones.
    #[arg(long, short)]
    all: bool,
    /// Only the container with this id (or id prefix).
    #[arg(long)]
    id: Option<String>,
    /// Only containers of this pod: id, id prefix or name.
    #[arg(long, short)]
    pod: Option<String>,
    /// Only containers whose name contains this.
    #[arg(long)]
    name: Option<String>,
    /// Only containers in this state: created, running or exited.
    #[arg(long)]
    state: Option<String>,
    /// Only containers with this label (key=value), repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Only the most recently created container.
    #[arg(long, short)]
    latest: bool,
    /// Print ids only.
    #[arg(long, short)]
    quiet: bool,
    /// Print full ids.
    #[arg(long)]
    no_trunc: bool,
    #[arg(long, short, value_enum, default_value = "table")]
    output: Format,
}

fn state_name(state: i32) -> &'static str {
    match cri::ContainerState::try_from(state) {
        Ok(cri::ContainerState::ContainerCreated) => "Created",
        Ok(cri::ContainerState::ContainerRunning) => "Running",
        Ok(cri::ContainerState::ContainerExited) => "Exited",
        _ => "Unknown",
    }
}

pub async fn run(client: &mut Client, args: Args) -> anyhow::Result<()> {
    let state = match args
        .state
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None if args.all || args.id.is_some() || args.latest => None,
        None | Some("running") => Some(cri::ContainerState::ContainerRunning),
        Some("created") => Some(cri::ContainerState::ContainerCreated),
        Some("exited") => Some(cri::ContainerState::ContainerExited),
        Some("all") => None,
        Some(other) => anyhow::bail!("--state {other:?}: expected created, running or exited"),
    };
    let label_selector = crate::output::labels("--label", &args.labels)?;
    let pod_sandbox_id = match &args.pod {
        Some(pod) => crate::lookup::pod_id(client, pod).await?,
        None => String::new(),
    };
    let filter = cri::ContainerFilter {
        id: args.id.clone().unwrap_or_default(),
        state: state.map(|s| cri::ContainerStateValue { state: s as i32 }),
        pod_sandbox_id,
        label_selector,
    };
    let mut items = client
        .list_containers(cri::ListContainersRequest {
            filter: Some(filter),
        })
        .await?
        .into_inner()
        .containers;
    // crictl's order: the newest first (so --latest is the first).
    items.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    items.retain(|c| {
        args.name.as_ref().is_none_or(|n| {
            c.metadata
                .as_ref()
                .is_some_and(|m| m.name.contains(n.as_str()))
        })
    });
    if args.latest {
        items.truncate(1);
    }

    if args.quiet {
        for c in &items {
            println!("{}", c.id);
        }
        return Ok(());
    }
    match args.output {
        Format::Json | Format::Yaml => {
            let mut doc = serde_json::json!({ "containers": items });
            for c in doc["containers"].as_array_mut().into_iter().flatten() {
                let state = c["state"].as_i64().unwrap_or_default() as i32;
                if let Ok(state) = cri::ContainerState::try_from(state) {
                    c["state"] = serde_json::json!(state.as_str_name());
                }
            }
            print_doc(&doc, args.output)?
        }
        Format::Table => {
            let pods = crate::lookup::pod_names(client).await?;
            let short = |id: &str| short_id(id, args.no_trunc);
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|c| {
                    let meta = c.metadata.clone().unwrap_or_default();
                    vec![
                        short(&c.id),
                        c.image
                            .as_ref()
                            .map(|i| i.image.clone())
                            .unwrap_or_default(),
                        age(c.created_at),
                        state_name(c.state).into(),
                        meta.name,
                        meta.attempt.to_string(),
                        short(&c.pod_sandbox_id),
                        pods.get(&c.pod_sandbox_id).cloned().unwrap_or_default(),
                    ]
                })
                .collect();
            crictl_table(
                &[
                    "CONTAINER",
                    "IMAGE",
                    "CREATED",
                    "STATE",
                    "NAME",
                    "ATTEMPT",
                    "POD ID",
                    "POD",
                ],
                &rows,
            );
        }
    }
    Ok(())
}
