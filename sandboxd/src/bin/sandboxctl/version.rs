//! `version` and `info`.

use k8s_cri::v1 as cri;

use crate::output::{print_doc, Format};
use crate::Client;

#[derive(clap::Args)]
pub struct VersionArgs {
    /// json or yaml instead of crictl's lines.
    #[arg(long, short, value_enum)]
    output: Option<Format>,
}

pub async fn version(client: &mut Client, args: VersionArgs) -> anyhow::Result<()> {
    let v = client
        .version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await?
        .into_inner();
    if let Some(format) = args.output.filter(|f| *f != Format::Table) {
        return print_doc(&serde_json::json!(v), format);
    }
    println!("Version:  {}", v.version);
    println!("RuntimeName:  {}", v.runtime_name);
    println!("RuntimeVersion:  {}", v.runtime_version);
    println!("RuntimeApiVersion:  {}", v.runtime_api_version);
    Ok(())
}

#[derive(clap::Args)]
pub struct InfoArgs {
    /// Kept for older scripts: the runtime's configuration is always shown, as crictl
    /// shows it.
    #[arg(long = "verbose", short = 'v', hide = true)]
    _verbose: bool,
    #[arg(long, short, value_enum, default_value = "json")]
    output: Format,
}

pub async fn info(client: &mut Client, args: InfoArgs) -> anyhow::Result<()> {
    let status = client
        .status(cri::StatusRequest { verbose: true })
        .await?
        .into_inner();
    let mut doc = serde_json::json!({ "status": status.status });
    for (key, value) in &status.info {
        doc[key] = crate::output::info_value(value);
    }
    print_doc(&doc, args.output)
}
