//! sandboxctl: the CLI, shaped like crictl (and kubectl where crictl has no verb).
//! Each command is a module; they all speak CRI v1 to `--runtime-endpoint`, so the crictl
//! verbs work against any CRI runtime, containerd included.

mod images;
mod inspectp;
mod output;
mod pods;
mod rmp;
mod runp;
mod stopp;
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
    /// The CRI endpoint, as crictl takes it.
    #[arg(
        long,
        short = 'r',
        global = true,
        env = "CONTAINER_RUNTIME_ENDPOINT",
        default_value = "unix:///run/sandboxd/sandboxd.sock"
    )]
    runtime_endpoint: String,
    /// Seconds to wait for each call.
    #[arg(long, global = true, default_value_t = 60)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runtime name and versions.
    Version,
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
}

pub type Client = RuntimeServiceClient<Channel>;
pub type ImageClient = ImageServiceClient<Channel>;

#[tokio::main]
async fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`sandboxctl pods | head`), instead of panicking on a broken pipe.
    // SAFETY: signal(2) only sets how this process takes SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let timeout = std::time::Duration::from_secs(cli.timeout);
    let outcome = async {
        // Import writes the node's store directly; everything else speaks CRI.
        if let Command::Image(command) = cli.command {
            return images::image_command(command);
        }
        let channel = sandboxd::client::channel(&cli.runtime_endpoint).await?;
        let mut client = RuntimeServiceClient::new(channel.clone());
        let mut images = ImageServiceClient::new(channel);
        match cli.command {
            Command::Version => version::version(&mut client).await,
            Command::Info(args) => version::info(&mut client, args).await,
            Command::Runp(args) => runp::run(&mut client, args).await,
            Command::Stopp(args) => stopp::run(&mut client, args).await,
            Command::Rmp(args) => rmp::run(&mut client, args).await,
            Command::Pods(args) => pods::run(&mut client, args).await,
            Command::Inspectp(args) => inspectp::run(&mut client, args).await,
            Command::Images(args) => images::list(&mut images, args).await,
            Command::Inspecti(args) => images::inspect(&mut images, args).await,
            Command::Pull(args) => images::pull(&mut images, args).await,
            Command::Rmi(args) => images::remove(&mut images, args).await,
            Command::Image(_) => unreachable!("handled above"),
        }
    };
    match tokio::time::timeout(timeout, outcome).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("sandboxctl: {}", output::describe_error(&e));
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("sandboxctl: no answer within {}s", cli.timeout);
            ExitCode::FAILURE
        }
    }
}
