//! A CRI client over a unix socket (`unix:///run/sandboxd/sandboxd.sock` or a plain path).

use std::path::PathBuf;

use anyhow::Context;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The socket path of an endpoint as crictl writes them: `unix:///path` or `/path`.
pub fn socket_path(endpoint: &str) -> anyhow::Result<PathBuf> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !path.starts_with('/') {
        anyhow::bail!("runtime endpoint {endpoint:?} is not a unix socket (unix:///path/to.sock)");
    }
    Ok(PathBuf::from(path))
}

pub async fn connect(endpoint: &str) -> anyhow::Result<RuntimeServiceClient<Channel>> {
    Ok(RuntimeServiceClient::new(channel(endpoint).await?))
}

/// A channel to the endpoint, for either CRI service.
pub async fn channel(endpoint: &str) -> anyhow::Result<Channel> {
    let path = socket_path(endpoint)?;
    // The URI is not used to connect; Go clients send ":authority localhost" the same way.
    let channel = Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("connect to {endpoint} (is sandboxd running?)"))?;
    Ok(channel)
}
