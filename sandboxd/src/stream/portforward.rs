//! A streamed PortForward (`portforward.k8s.io`): for each connection the client
//! forwards, it opens an error stream and a data stream (headers `port` and `requestid`);
//! the data stream is joined to a TCP connection to that port on localhost in the pod's
//! network namespace, and a failure to connect is written on the error stream.

use std::path::PathBuf;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::runtime::Runtime;
use crate::stream::session::{Stream, StreamWriter};

pub async fn serve(
    runtime: Arc<Runtime>,
    request: cri::PortForwardRequest,
    mut incoming: mpsc::Receiver<Stream>,
    closed: CancellationToken,
) {
    let Ok(netns) = runtime.pod_netns(&request.pod_sandbox_id).await else {
        return;
    };
    // A request's error stream, kept until its data stream comes.
    let mut errors: std::collections::HashMap<String, StreamWriter> = Default::default();
    loop {
        let stream = tokio::select! {
            stream = incoming.recv() => match stream { Some(s) => s, None => return },
            _ = closed.cancelled() => return,
        };
        let request_id = stream.header("requestid").unwrap_or("").to_string();
        match stream.header("streamtype") {
            Some("error") => {
                errors.insert(request_id, stream.writer());
            }
            Some("data") => {
                let error = errors.remove(&request_id);
                let port = stream.header("port").and_then(|p| p.parse::<u16>().ok());
                let netns = netns.clone();
                let pod = request.pod_sandbox_id.clone();
                let closed = closed.clone();
                tokio::spawn(async move {
                    if let Err(message) = forward(stream, netns, port, &closed).await {
                        if let Some(error) = error {
                            error
                                .write(
                                    format!("error forwarding to pod {pod}: {message}").as_bytes(),
                                )
                                .await;
                            error.finish().await;
                        }
                    } else if let Some(error) = error {
                        error.finish().await;
                    }
                });
            }
            _ => {}
        }
    }
}

/// Joins `stream` to `port` on localhost in the namespace at `netns` (None: the node's
/// own, for a hostNetwork pod) until the pod's side closes or the client goes away.
async fn forward(
    mut stream: Stream,
    netns: Option<PathBuf>,
    port: Option<u16>,
    closed: &CancellationToken,
) -> Result<(), String> {
    let port = port.ok_or("the data stream names no valid port")?;
    let tcp = crate::netns::run_in(netns.as_deref(), move || {
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_nonblocking(true)?;
        Ok(tcp)
    })
    .map_err(|e| format!("connect to port {port}: {e}"))?;
    let tcp = tokio::net::TcpStream::from_std(tcp).map_err(|e| e.to_string())?;
    let (read_half, mut write_half) = tcp.into_split();
    let writer = stream.writer();
    let mut to_client = tokio::spawn(async move { writer.copy_from(read_half).await });
    let to_pod = tokio::spawn(async move {
        while let Some(data) = stream.incoming.recv().await {
            if write_half.write_all(&data).await.is_err() {
                break;
            }
        }
        // The client is done sending: the pod's side reads its end.
        let _ = write_half.shutdown().await;
    });
    // The forward ends when the pod's side closes (the client waits for that, and then
    // for the error stream's end, before it closes its own connection), or the client
    // goes away.
    tokio::select! {
        _ = &mut to_client => {}
        _ = closed.cancelled() => to_client.abort(),
    }
    to_pod.abort();
    Ok(())
}
