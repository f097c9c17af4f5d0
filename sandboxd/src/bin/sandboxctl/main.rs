//! sandboxctl: the CLI, shaped like crictl (and kubectl where crictl has no verb).
//! Each command is a module; they all speak CRI v1 to `--runtime-endpoint`, so the crictl
//! verbs work against any CRI runtime, containerd included.

mod apply;
mod cluster;
mod containers;
mod exec;
mod get;
mod images;
mod inspect;
mod inspectp;
mod join;
mod lab;
mod logs;
mod lookup;
mod output;
mod pods;
mod ps;
mod rmp;
mod runp;
mod services;
mod stopp;
mod trace;
mod version;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    name = "sandboxctl",
    version,
    about = "Drive sandboxd (or any CRI v1 runtime)"
)]
struct Cli {
    /// The CRI endpoint, as crictl takes it. Default: the lab's k8s-master when a lab is
    /// up, else unix:///run/sandboxd/sandboxd.sock.
    #[arg(long, short = 'r', global = true, env = "CONTAINER_RUNTIME_ENDPOINT")]
    runtime_endpoint: Option<String>,
    /// Talk to this lab node's sandboxd (k8s-master, k8s-node1, …).
    #[arg(long, global = true, conflicts_with = "runtime_endpoint")]
    node: Option<String>,
    /// Seconds to wait for the command's calls (not for `logs -f` and `exec -it`, which
    /// last as long as they are meant to). Verbs have their own --timeout, as in crictl.
    #[arg(long, global = true, default_value_t = 60)]
    call_timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runtime name and versions.
    Version(version::VersionArgs),
    /// Runtime status and conditions (RuntimeReady, NetworkReady).
    Info(version::InfoArgs),
    /// Run a pod sandbox from a pod config file (JSON, as crictl runp takes).
    Runp(runp::Args),
    /// Stop pod sandboxes.
    Stopp(stopp::Args),
    /// Remove pod sandboxes.
    Rmp(rmp::Args),
    /// List pod sandboxes.
    Pods(pods::Args),
    /// Show a pod sandbox's status.
    Inspectp(inspectp::Args),
    /// Create a container in a pod from a container config file (as crictl create takes).
    Create(containers::CreateArgs),
    /// Start created containers.
    Start(containers::StartArgs),
    /// Stop running containers (SIGTERM, then SIGKILL after --timeout).
    Stop(containers::StopArgs),
    /// Remove containers.
    Rm(containers::RemoveArgs),
    /// List containers (running ones unless --all).
    Ps(ps::Args),
    /// Show a container's status, pid and network mode.
    Inspect(inspect::Args),
    /// Run a command in a running container.
    Exec(exec::Args),
    /// Print a container's output.
    Logs(logs::Args),
    /// Create the Pods and Services of a Kubernetes manifest (YAML or JSON, multi-document),
    /// as kubectl apply.
    Apply(apply::ApplyArgs),
    /// Delete the Pods and Services of a manifest, as kubectl delete -f.
    Delete(apply::DeleteArgs),
    /// List pods, services or endpoints as kubectl get does (-o wide|json|yaml).
    Get(get::Args),
    /// List images.
    Images(images::ListArgs),
    /// Show an image's status and config.
    Inspecti(images::InspectArgs),
    /// Resolve an image in the node's store (sandboxd pulls from no registry).
    Pull(images::PullArgs),
    /// Remove images.
    Rmi(images::RemoveArgs),
    /// Image store commands: import archives into the node's store.
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// The seeds' cluster on this machine: nodes as network namespaces.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Make this machine a cluster node (as kubeadm join): systemd units for sandboxd (and
    /// etcd on the control plane) with the lab's command lines, started.
    Join(join::Args),
    /// Send one request and show it at every interface on its path (the seeds' tcpdump
    /// walk): where it was translated, encapsulated, and the way back.
    Trace(trace::Args),
}

/// The endpoint to talk to: the one given, a lab node's, the lab's control plane when a
/// lab is up, else sandboxd's default socket.
fn endpoint(cli_endpoint: Option<String>, node: Option<String>) -> anyhow::Result<String> {
    if let Some(endpoint) = cli_endpoint {
        return Ok(endpoint);
    }
    let lab = sandboxd::lab::Lab::default_lab();
    let state = lab.load()?;
    match (node, state) {
        (Some(node), Some(state)) => {
            if !state.nodes.iter().any(|n| n.name == node) {
                let names: Vec<&str> = state.nodes.iter().map(|n| n.name.as_str()).collect();
                anyhow::bail!(
                    "invalid --node {node:?}: the lab has no such node (it has {})",
                    names.join(", ")
                );
            }
            Ok(lab.endpoint(&node))
        }
        (Some(node), None) => anyhow::bail!(
            "invalid --node {node:?}: no lab is up (sandboxctl lab up), and --node names lab nodes"
        ),
        (None, Some(_)) => Ok(lab.endpoint(sandboxd::lab::CONTROL_PLANE)),
        (None, None) => Ok("unix:///run/sandboxd/sandboxd.sock".into()),
    }
}

pub type Client = RuntimeServiceClient<Channel>;
pub type ServicesClient = sandboxd::services_api::v1::services_client::ServicesClient<Channel>;
pub type ImageClient = ImageServiceClient<Channel>;
pub type ClusterClient = sandboxd::cluster_api::v1::cluster_client::ClusterClient<Channel>;

#[tokio::main]
async fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`sandboxctl pods | head`), instead of panicking on a broken pipe.
    // SAFETY: signal(2) only sets how this process takes SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let timeout = match &cli.command {
        // Bringing a lab up or down has its own deadlines at each step.
        Command::Lab(_) | Command::Join(_) | Command::Trace(_) => std::time::Duration::MAX,
        Command::Logs(args) if args.follow => std::time::Duration::MAX,
        Command::Exec(args) if args.is_interactive() => std::time::Duration::MAX,
        _ => std::time::Duration::from_secs(cli.call_timeout),
    };
    let outcome = async {
        // Import writes the node's store directly; everything else speaks CRI.
        let command = match cli.command {
            Command::Image(command) => return images::image_command(command),
            Command::Lab(command) => {
                return tokio::task::spawn_blocking(move || lab::run(command)).await?
            }
            Command::Join(args) => {
                return tokio::task::spawn_blocking(move || join::run(args)).await?
            }
            Command::Trace(args) => return trace::run(cli.runtime_endpoint, args).await,
            other => other,
        };
        let endpoint = endpoint(cli.runtime_endpoint, cli.node)?;
        let channel = sandboxd::client::channel(&endpoint).await?;
        let mut client = RuntimeServiceClient::new(channel.clone());
        let mut images = ImageServiceClient::new(channel.clone());
        let mut services = ServicesClient::new(channel.clone());
        let mut cluster = ClusterClient::new(channel);
        match command {
            Command::Version(args) => version::version(&mut client, args).await,
            Command::Info(args) => version::info(&mut client, args).await,
            Command::Runp(args) => runp::run(&mut client, args).await,
            Command::Stopp(args) => stopp::run(&mut client, args).await,
            Command::Rmp(args) => rmp::run(&mut client, args).await,
            Command::Pods(args) => pods::run(&mut client, args).await,
            Command::Inspectp(args) => inspectp::run(&mut client, args).await,
            Command::Create(args) => containers::create(&mut client, args).await,
            Command::Start(args) => containers::start(&mut client, args).await,
            Command::Stop(args) => containers::stop(&mut client, args).await,
            Command::Rm(args) => containers::remove(&mut client, args).await,
            Command::Ps(args) => ps::run(&mut client, args).await,
            Command::Inspect(args) => inspect::run(&mut client, args).await,
            Command::Exec(args) => {
                let code = exec::run(&mut client, args).await?;
                if code != 0 {
                    // The command's exit code is ours, as with crictl exec.
                    std::process::exit(code);
                }
                Ok(())
            }
            Command::Logs(args) => logs::run(&mut client, args).await,
            Command::Apply(args) => {
                apply::apply(&mut client, &mut services, &mut cluster, args).await
            }
            Command::Delete(args) => {
                apply::delete(&mut client, &mut services, &mut cluster, args).await
            }
            Command::Get(args) => get::run(&mut client, &mut services, &mut cluster, args).await,
            Command::Images(args) => images::list(&mut images, args).await,
            Command::Inspecti(args) => images::inspect(&mut images, args).await,
            Command::Pull(args) => images::pull(&mut images, args).await,
            Command::Rmi(args) => images::remove(&mut images, args).await,
            Command::Image(_) | Command::Lab(_) | Command::Join(_) | Command::Trace(_) => {
                unreachable!("handled above")
            }
        }
    };
    match tokio::time::timeout(timeout, outcome).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("sandboxctl: {}", output::describe_error(&e));
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!(
                "sandboxctl: no answer within {}s (see --call-timeout)",
                cli.call_timeout
            );
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        // Catches flags that clash between the global and a verb's (clap panics at parse
        // time in that case, and only on the path that reads them).
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
