//! The streaming server's HTTP side: a URL per Exec/Attach/PortForward request, good for
//! one connection within a minute (as the kubelet's streaming server keeps them), served
//! on a loopback port of the node's network namespace, where the kubelet (and crictl, and
//! critest on that node) reach it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::node::NodeNetns;
use crate::runtime::Runtime;
use crate::stream::remotecommand::Asked;
use crate::stream::session::Stream;
use crate::stream::websocket::{self, Protocol};

/// How long a URL stays good.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// The exec and attach protocol spoken: stdin, stdout, stderr, and the exit status on the
/// error stream as a Status object.
const EXEC_PROTOCOL: &str = "v4.channel.k8s.io";
const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// What a URL was handed out for.
#[derive(Debug, Clone)]
pub enum StreamRequest {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

impl StreamRequest {
    fn kind(&self) -> &'static str {
        match self {
            StreamRequest::Exec(_) => "exec",
            StreamRequest::Attach(_) => "attach",
            StreamRequest::PortForward(_) => "portforward",
        }
    }

    fn protocol(&self) -> &'static str {
        match self {
            StreamRequest::Exec(_) | StreamRequest::Attach(_) => EXEC_PROTOCOL,
            StreamRequest::PortForward(_) => PORT_FORWARD_PROTOCOL,
        }
    }
}

pub struct StreamServer {
    runtime: Arc<Runtime>,
    address: SocketAddr,
    pending: Mutex<Tokens>,
}

/// The URLs handed out and not used yet, by token, with when they were issued.
#[derive(Default)]
struct Tokens(HashMap<String, (Instant, StreamRequest)>);

impl Tokens {
    /// Files `request` under a new token as of `now` (forgetting expired ones).
    fn issue(&mut self, request: StreamRequest, now: Instant) -> String {
        self.0
            .retain(|_, (issued, _)| now.duration_since(*issued) < TOKEN_TTL);
        let token = new_token();
        self.0.insert(token.clone(), (now, request));
        token
    }

    /// The request filed under `token` for a URL of `kind`, once, unless it expired.
    fn take(&mut self, kind: &str, token: &str, now: Instant) -> Option<StreamRequest> {
        let (issued, request) = self.0.remove(token)?;
        (now.duration_since(issued) < TOKEN_TTL && request.kind() == kind).then_some(request)
    }
}

/// A token no one can guess: 128 random bits, hex.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut random) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut random, &mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl StreamServer {
    /// Binds `address` in the node's network namespace and serves it.
    pub async fn start(
        runtime: Arc<Runtime>,
        node: &NodeNetns,
        address: SocketAddr,
    ) -> anyhow::Result<Arc<StreamServer>> {
        let listener = node
            .run(move || {
                let listener = std::net::TcpListener::bind(address)?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .map_err(|e| anyhow::anyhow!("bind the streaming server to {address}: {e}"))?;
        let address = listener.local_addr()?;
        if let Some(dir) = runtime.config.socket.parent() {
            crate::container::console::remove_stale(dir);
        }
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let server = Arc::new(StreamServer {
            runtime,
            address,
            pending: Mutex::new(Tokens::default()),
        });
        let serving = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                // Frames are small and each waits for an answer: Nagle's algorithm would
                // hold one back for the peer's delayed ACK.
                let _ = tcp.set_nodelay(true);
                let server = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let server = server.clone();
                        async move { Ok::<_, std::convert::Infallible>(server.handle(request)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(server)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// A URL for `request`, good for one connection within [`TOKEN_TTL`].
    pub fn url(&self, request: StreamRequest) -> String {
        let kind = request.kind();
        let token = self
            .pending
            .lock()
            .expect("pending lock")
            .issue(request, Instant::now());
        format!("http://{}/{kind}/{token}", self.address)
    }

    /// The request a token was handed out for, once.
    fn take(&self, kind: &str, token: &str) -> Option<StreamRequest> {
        self.pending
            .lock()
            .expect("pending lock")
            .take(kind, token, Instant::now())
    }

    fn handle(self: &Arc<Self>, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let Some(stream_request) = self.take(kind, token) else {
            return reply(
                StatusCode::NOT_FOUND,
                format!("{path}: no such stream, or its URL expired or was used"),
            );
        };
        let upgrade = request
            .headers()
            .get(hyper::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        match upgrade.as_str() {
            "spdy/3.1" => self.upgrade_to_spdy(request, stream_request, &path),
            "websocket" => self.upgrade_to_websocket(request, stream_request, &path),
            _ => reply(
                StatusCode::BAD_REQUEST,
                format!(
                    "{path}: the connection must upgrade to SPDY/3.1 or websocket (got {upgrade:?})"
                ),
            ),
        }
    }

    fn upgrade_to_spdy(
        &self,
        mut request: Request<hyper::body::Incoming>,
        stream_request: StreamRequest,
        path: &str,
    ) -> Response<Full<Bytes>> {
        let protocol = stream_request.protocol();
        let offered = offered(&request, "X-Stream-Protocol-Version");
        if !offered.iter().any(|p| p == protocol) {
            return reply(
                StatusCode::FORBIDDEN,
                format!("{path}: the client offers {offered:?}; this server speaks {protocol}"),
            );
        }
        let on_upgrade = hyper::upgrade::on(&mut request);
        let runtime = self.runtime.clone();
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let (streams_tx, streams_rx) = mpsc::channel(16);
            let closed = CancellationToken::new();
            let connection = crate::stream::spdy_connection::serve(
                TokioIo::new(upgraded),
                streams_tx,
                closed.clone(),
            );
            let handler = handle_streams(runtime, stream_request, streams_rx, closed.clone());
            let _ = tokio::join!(connection, handler);
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(hyper::header::CONNECTION, "Upgrade")
            .header(hyper::header::UPGRADE, "SPDY/3.1")
            .header("X-Stream-Protocol-Version", protocol)
            .body(Full::new(Bytes::new()))
            .expect("an upgrade response")
    }

    fn upgrade_to_websocket(
        &self,
        mut request: Request<hyper::body::Incoming>,
        stream_request: StreamRequest,
        path: &str,
    ) -> Response<Full<Bytes>> {
        let key = request
            .headers()
            .get(hyper::header::SEC_WEBSOCKET_KEY)
            .map(|k| k.as_bytes().to_vec());
        let version = request
            .headers()
            .get(hyper::header::SEC_WEBSOCKET_VERSION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let Some(key) = key.filter(|_| version == "13") else {
            return reply(
                StatusCode::BAD_REQUEST,
                format!("{path}: a WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version 13"),
            );
        };
        let supported = match &stream_request {
            StreamRequest::Exec(_) | StreamRequest::Attach(_) => websocket::EXEC_PROTOCOLS,
            StreamRequest::PortForward(_) => websocket::PORT_FORWARD_PROTOCOLS,
        };
        let offered = offered(&request, "Sec-WebSocket-Protocol");
        let Some((name, protocol)) = websocket::negotiate(&offered, supported) else {
            let names: Vec<&str> = supported.iter().map(|(name, _)| *name).collect();
            return reply(
                StatusCode::FORBIDDEN,
                format!("{path}: the client offers {offered:?}; this server speaks {names:?}"),
            );
        };
        let ports = match &stream_request {
            // A SPDY tunnel names its ports in its streams' headers.
            StreamRequest::PortForward(forward) if protocol != Protocol::SpdyTunnel => {
                match websocket::ports(request.uri().query(), &forward.port) {
                    Ok(ports) => ports,
                    Err(message) => {
                        return reply(StatusCode::BAD_REQUEST, format!("{path}: {message}"))
                    }
                }
            }
            _ => Vec::new(),
        };
        let on_upgrade = hyper::upgrade::on(&mut request);
        let runtime = self.runtime.clone();
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let (streams_tx, streams_rx) = mpsc::channel(256);
            let closed = CancellationToken::new();
            let connection = async {
                match &stream_request {
                    StreamRequest::Exec(cri::ExecRequest {
                        stdin,
                        stdout,
                        stderr,
                        tty,
                        ..
                    })
                    | StreamRequest::Attach(cri::AttachRequest {
                        stdin,
                        stdout,
                        stderr,
                        tty,
                        ..
                    }) => {
                        let asked = Asked {
                            stdin: *stdin,
                            stdout: *stdout,
                            stderr: *stderr,
                            tty: *tty,
                        };
                        websocket::serve_exec(upgraded, protocol, asked, streams_tx, closed.clone())
                            .await
                    }
                    StreamRequest::PortForward(_) => {
                        websocket::serve_port_forward(
                            upgraded,
                            protocol,
                            &ports,
                            streams_tx,
                            closed.clone(),
                        )
                        .await
                    }
                }
            };
            let handler =
                handle_streams(runtime, stream_request.clone(), streams_rx, closed.clone());
            tokio::join!(connection, handler);
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(hyper::header::CONNECTION, "Upgrade")
            .header(hyper::header::UPGRADE, "websocket")
            .header(
                hyper::header::SEC_WEBSOCKET_ACCEPT,
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key),
            )
            .header(hyper::header::SEC_WEBSOCKET_PROTOCOL, name)
            .body(Full::new(Bytes::new()))
            .expect("an upgrade response")
    }
}

/// A plain-text answer to a request that is not served.
fn reply(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", "text/plain")
        .body(Full::new(Bytes::from(text + "\n")))
        .expect("a plain response")
}

/// The values of a comma-separated list header, over all its lines.
fn offered(request: &Request<hyper::body::Incoming>, name: &str) -> Vec<String> {
    request
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .filter(|p| !p.is_empty())
        .collect()
}

/// Runs what a URL was handed out for on the streams its connection opens.
async fn handle_streams(
    runtime: Arc<Runtime>,
    request: StreamRequest,
    streams: mpsc::Receiver<Stream>,
    closed: CancellationToken,
) {
    match request {
        StreamRequest::Exec(request) => {
            crate::stream::exec::serve(runtime, request, streams, closed).await
        }
        StreamRequest::Attach(request) => {
            crate::stream::attach::serve(runtime, request, streams, closed).await
        }
        StreamRequest::PortForward(request) => {
            crate::stream::portforward::serve(runtime, request, streams, closed).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> StreamRequest {
        StreamRequest::Exec(cri::ExecRequest::default())
    }

    #[test]
    fn a_token_serves_once_for_its_kind_within_a_minute() {
        let mut tokens = Tokens::default();
        let start = Instant::now();
        let token = tokens.issue(exec(), start);
        assert_eq!(token.len(), 32);
        assert!(tokens.take("exec", &token, start).is_some());
        assert!(tokens.take("exec", &token, start).is_none(), "reused");

        let token = tokens.issue(exec(), start);
        assert!(
            tokens.take("portforward", &token, start).is_none(),
            "another kind"
        );
        assert!(
            tokens.take("exec", &token, start).is_none(),
            "spent by the wrong kind"
        );

        let token = tokens.issue(exec(), start);
        let late = start + TOKEN_TTL + Duration::from_millis(1);
        assert!(tokens.take("exec", &token, late).is_none(), "expired");

        // Expired ones are forgotten when the next is issued.
        tokens.issue(exec(), start);
        tokens.issue(exec(), late);
        assert_eq!(tokens.0.len(), 1);
        assert_ne!(new_token(), new_token());
    }
}
