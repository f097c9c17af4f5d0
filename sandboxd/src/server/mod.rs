//! Serving the CRI API on a unix socket.
//!
//! The socket is created mode 0660 next to a lock file; a second sandboxd finds the lock
//! held and refuses to start instead of stealing the socket from the first. Every
//! connection is read through [`authority::AuthorityRewrite`], so gRPC clients whose
//! `:authority` h2 would refuse (crictl, the kubelet, current grpcio) are served too.

pub mod authority;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;

use crate::cluster_api::v1::cluster_server::ClusterServer;
use crate::cluster_api::ClusterApi;
use crate::cri::CriService;
use crate::cri_image::CriImageService;
use crate::runtime::Runtime;
use crate::services_api::v1::services_server::ServicesServer;
use crate::services_api::ServicesApi;

/// The bound socket and the lock that makes it ours.
pub struct Socket {
    listener: UnixListener,
    path: PathBuf,
    lock: std::fs::File,
}

/// Binds `path` (mode 0660) unless another sandboxd holds it.
pub fn bind(path: &Path) -> anyhow::Result<Socket> {
    let dir = path.parent().context("the socket path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let lock_path = path.with_extension("lock");
    let lock = match crate::lockfile::lock(&lock_path, crate::lockfile::LockMode::ExclusiveNow) {
        Ok(lock) => lock,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => bail!(
            "another sandboxd is serving {} (it holds {}); stop it first",
            path.display(),
            lock_path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("lock {}", lock_path.display())),
    };
    // The lock is ours, so a socket file left here is from a daemon that died.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("remove the stale socket {}", path.display()))
        }
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod 0660 {}", path.display()))?;
    listener.set_nonblocking(true)?;
    Ok(Socket {
        listener: UnixListener::from_std(listener)?,
        path: path.to_path_buf(),
        lock,
    })
}

/// Serves the CRI API, and sandboxd's Services API beside it, on `socket` until
/// `shutdown` completes.
/// A node that joined a cluster also serves the cluster API (`cluster`).
pub async fn serve(
    runtime: Arc<Runtime>,
    cluster: Option<ClusterApi>,
    socket: Socket,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Socket {
        listener,
        path,
        lock,
    } = socket;
    // Removed however serving ends; the lock is released after it.
    let _socket_file = SocketFile(path, lock);
    let images = CriImageService::new(runtime.images.clone());
    let streams = crate::stream::StreamServer::start(
        runtime.clone(),
        &runtime.config.node.netns,
        runtime.config.streaming_address,
    )
    .await?;
    tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(CriService::new(
            runtime.clone(),
            streams,
        )))
        .add_service(ImageServiceServer::new(images))
        .add_service(ServicesServer::new(ServicesApi::new(runtime)))
        .add_optional_service(cluster.map(ClusterServer::new))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener)
                .map(|conn| conn.map(authority::AuthorityRewrite::new)),
            shutdown,
        )
        .await
        .context("serve the CRI API")
}

struct SocketFile(PathBuf, #[allow(dead_code)] std::fs::File);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
