//! `exec [-it] ID CMD...`: run a command in a running container.
//!
//! Without `-i`/`-t` it is CRI ExecSync (any CRI runtime): the command's output is printed
//! and its exit code becomes sandboxctl's. With `-i`/`-t` it is interactive: sandboxctl
//! runs the container's OCI runtime (`<runtime> exec [--tty]`) itself, on the node
//! sandboxd runs on (it has no SPDY client for sandboxd's streaming server, which crictl
//! uses). The embedded runtime hands a terminal only to a console socket: `-t` needs
//! sandboxd's `--runtime runc`.

use std::io::Write;

use anyhow::{bail, Context};
use k8s_cri::v1 as cri;

use crate::Client;

#[derive(clap::Args)]
pub struct Args {
    /// Keep stdin open (interactive).
    #[arg(long, short)]
    interactive: bool,
    /// Allocate a terminal.
    #[arg(long, short)]
    tty: bool,
    /// Run through ExecSync, as crictl's --sync asks; a command without -i/-t always is.
    #[arg(long = "sync", short = 's')]
    _sync: bool,
    /// Seconds before the command is killed (0: no limit).
    #[arg(long, default_value_t = 0)]
    timeout: i64,
    /// The container: id or unique id prefix.
    id: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

impl Args {
    pub fn is_interactive(&self) -> bool {
        self.interactive || self.tty
    }
}

/// Runs the command; returns the exit code sandboxctl should end with.
pub async fn run(client: &mut Client, args: Args) -> anyhow::Result<i32> {
    if args.is_interactive() {
        return interactive(client, args).await;
    }
    let reply = client
        .exec_sync(cri::ExecSyncRequest {
            container_id: args.id,
            cmd: args.cmd,
            timeout: args.timeout,
        })
        .await?
        .into_inner();
    std::io::stdout().write_all(&reply.stdout)?;
    std::io::stderr().write_all(&reply.stderr)?;
    std::io::stdout().flush()?;
    Ok(reply.exit_code)
}

async fn interactive(client: &mut Client, args: Args) -> anyhow::Result<i32> {
    let doc = crate::inspect::document(client, &args.id).await?;
    let (Some(runtime), Some(root), Some(id)) = (
        doc["info"]["runtime"].as_str(),
        doc["info"]["runtimeRoot"].as_str(),
        doc["status"]["id"].as_str(),
    ) else {
        bail!("interactive exec needs sandboxd on this node (the runtime did not say which OCI runtime runs {}); run exec without -i/-t", args.id);
    };
    if doc["status"]["state"] != "CONTAINER_RUNNING" {
        bail!("container {} is not running", args.id);
    }
    let mut command = std::process::Command::new(runtime);
    command.arg("--root").arg(root).arg("exec");
    if args.tty {
        command.arg("--tty");
    }
    let status = command
        .arg(id)
        .args(&args.cmd)
        .status()
        .with_context(|| format!("run {runtime}"))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1))
}
