//! The streaming server's WebSocket side, for clients that do not speak SPDY (client-go's
//! WebSocket executor, crictl `--transport websocket`, the Python and JavaScript
//! Kubernetes clients, browsers). Two ways of carrying streams over one WebSocket:
//!
//! * channels (`v5.channel.k8s.io`, `v4.channel.k8s.io`, `v4.base64.channel.k8s.io`): each
//!   message starts with the number of the stream it belongs to. Exec and attach use
//!   0 stdin, 1 stdout, 2 stderr, 3 error (the v4 Status), 4 resize; port-forward uses
//!   two per port given in the URL's `port` (or `ports`) parameter, data on 2i and errors
//!   on 2i+1, each first carrying its port (two bytes, little-endian). In v5 a client ends
//!   its side of a stream with the message `[255, stream]`; base64 sends text messages,
//!   the number as an ASCII digit and the data base64-encoded. The connection's close
//!   ends every stream.
//! * a SPDY tunnel (`SPDY/3.1+portforward.k8s.io`, client-go's port-forward over
//!   WebSocket): binary messages carry the bytes of a SPDY/3.1 connection, served as an
//!   upgraded one is.
//!
//! Either way the handlers get [`Stream`]s as they do from SPDY.

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::stream::remotecommand::Asked;
use crate::stream::session::{Outgoing, Stream};
use crate::stream::spdy::Headers;

/// What a WebSocket carries, as negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Numbered channels; `close_signal`: the client may end one (v5); `base64`: text.
    Channels {
        close_signal: bool,
        base64: bool,
    },
    SpdyTunnel,
}

/// The subprotocols exec and attach speak, in the order this server prefers them.
pub const EXEC_PROTOCOLS: &[(&str, Protocol)] = &[
    (
        "v5.channel.k8s.io",
        Protocol::Channels {
            close_signal: true,
            base64: false,
        },
    ),
    (
        "v4.channel.k8s.io",
        Protocol::Channels {
            close_signal: false,
            base64: false,
        },
    ),
    (
        "v4.base64.channel.k8s.io",
        Protocol::Channels {
            close_signal: false,
            base64: true,
        },
    ),
];

/// The subprotocols port-forward speaks.
pub const PORT_FORWARD_PROTOCOLS: &[(&str, Protocol)] = &[
    ("SPDY/3.1+portforward.k8s.io", Protocol::SpdyTunnel),
    (
        "v4.channel.k8s.io",
        Protocol::Channels {
            close_signal: false,
            base64: false,
        },
    ),
    (
        "v4.base64.channel.k8s.io",
        Protocol::Channels {
            close_signal: false,
            base64: true,
        },
    ),
];

/// The first protocol the client offers (in its order of preference) that is in
/// `supported`.
pub fn negotiate(
    offered: &[String],
    supported: &'static [(&'static str, Protocol)],
) -> Option<(&'static str, Protocol)> {
    offered
        .iter()
        .find_map(|o| supported.iter().find(|(name, _)| name == o).copied())
}

/// The client's end of a stream, in v5.
const CLOSE_SIGNAL: u8 = 255;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

/// One channel of a connection: its number, the headers its stream gets, whether the
/// client writes on it, and what the server sends on it first.
struct Channel {
    number: u8,
    headers: Headers,
    readable: bool,
    first: Option<Vec<u8>>,
}

fn headers(pairs: &[(&str, String)]) -> Headers {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.clone()))
        .collect()
}

/// The channels of an exec or attach. The client hears first on the lowest channel the
/// server writes (an empty message), so it knows the streams are there.
fn exec_channels(asked: Asked) -> Vec<Channel> {
    let channel = |number: u8, kind: &str, readable: bool| Channel {
        number,
        headers: headers(&[("streamtype", kind.to_string())]),
        readable,
        first: None,
    };
    let mut channels = vec![channel(ERROR, "error", false)];
    if asked.stdin {
        channels.push(channel(STDIN, "stdin", true));
    }
    if asked.stdout {
        channels.push(channel(STDOUT, "stdout", false));
    }
    if asked.stderr && !asked.tty {
        channels.push(channel(STDERR, "stderr", false));
    }
    if asked.tty {
        channels.push(channel(RESIZE, "resize", true));
    }
    let first = [STDOUT, STDERR, ERROR]
        .into_iter()
        .find(|n| channels.iter().any(|c| c.number == *n && !c.readable))
        .expect("the error channel");
    for channel in channels.iter_mut() {
        if channel.number == first {
            channel.first = Some(Vec::new());
        }
    }
    channels
}

/// The channels of a port-forward: for the i-th port, its error stream then its data
/// stream (the order the handler pairs them in), with `requestid` i.
fn port_channels(ports: &[u16]) -> Vec<Channel> {
    let mut channels = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        for (offset, kind) in [(1u8, "error"), (0u8, "data")] {
            channels.push(Channel {
                number: 2 * i as u8 + offset,
                headers: headers(&[
                    ("streamtype", kind.to_string()),
                    ("port", port.to_string()),
                    ("requestid", i.to_string()),
                ]),
                readable: kind == "data",
                first: Some(port.to_le_bytes().to_vec()),
            });
        }
    }
    channels
}

/// The ports a port-forward URL names (`port=80&port=8080`, or `ports=80,8080` as the
/// Python client sends), else those of the CRI request.
pub fn ports(query: Option<&str>, requested: &[i32]) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.unwrap_or("").split('&') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        if key != "port" && key != "ports" {
            continue;
        }
        for port in value.split(',') {
            match port.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(format!("query parameter {key}: {port:?} is not a port")),
            }
        }
    }
    if ports.is_empty() {
        for port in requested {
            ports.push(
                u16::try_from(*port)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("port {port} is not a port"))?,
            );
        }
    }
    if ports.is_empty() {
        return Err("no port to forward: give one in the query (port=N)".into());
    }
    if ports.len() > 127 {
        return Err(format!("{} ports: at most 127", ports.len()));
    }
    Ok(ports)
}

/// Serves an exec or attach over channels.
pub async fn serve_exec(
    io: Upgraded,
    protocol: Protocol,
    asked: Asked,
    streams: mpsc::Sender<Stream>,
    closed: CancellationToken,
) {
    serve_channels(io, protocol, exec_channels(asked), streams, closed).await
}

/// Serves a port-forward over channels, or over a SPDY tunnel.
pub async fn serve_port_forward(
    io: Upgraded,
    protocol: Protocol,
    ports: &[u16],
    streams: mpsc::Sender<Stream>,
    closed: CancellationToken,
) {
    match protocol {
        Protocol::SpdyTunnel => serve_spdy_tunnel(io, streams, closed).await,
        Protocol::Channels { .. } => {
            serve_channels(io, protocol, port_channels(ports), streams, closed).await
        }
    }
}

async fn serve_channels(
    io: Upgraded,
    protocol: Protocol,
    channels: Vec<Channel>,
    streams: mpsc::Sender<Stream>,
    closed: CancellationToken,
) {
    let Protocol::Channels {
        close_signal,
        base64,
    } = protocol
    else {
        return;
    };
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
    let (mut sink, mut source) = ws.split();
    let encode = move |number: u8, data: &[u8]| encode(number, data, base64);
    let (writer, mut written) = mpsc::channel::<Outgoing>(64);
    let mut readers = std::collections::HashMap::new();
    let mut first = Vec::new();
    let mut opened = Vec::new();
    for channel in channels {
        let (tx, rx) = mpsc::channel(16);
        if channel.readable {
            readers.insert(channel.number, tx);
        }
        if let Some(data) = channel.first {
            first.push(encode(channel.number, &data));
        }
        opened.push(Stream::new(
            channel.number as u32,
            channel.headers,
            rx,
            writer.clone(),
        ));
    }
    drop(writer);
    let write_task = tokio::spawn(async move {
        for message in first {
            sink.send(message).await?;
        }
        // The handler's writes; End is the connection's close (no stream ends alone).
        while let Some(outgoing) = written.recv().await {
            if let Outgoing::Data { stream, data } = outgoing {
                sink.send(encode(stream as u8, &data)).await?;
            }
        }
        sink.close().await?;
        anyhow::Ok(())
    });
    for stream in opened {
        if streams.send(stream).await.is_err() {
            break;
        }
    }
    drop(streams);

    while let Some(Ok(message)) = source.next().await {
        let data = match decode(message, base64) {
            Decoded::Data(data) => data,
            Decoded::Skip => continue,
            Decoded::End => break,
        };
        let Some((&number, payload)) = data.split_first() else {
            continue;
        };
        if number == CLOSE_SIGNAL && close_signal {
            if let Some(&ended) = payload.first() {
                readers.remove(&ended);
            }
            continue;
        }
        if let Some(reader) = readers.get(&number) {
            if !payload.is_empty() && reader.send(payload.to_vec()).await.is_err() {
                readers.remove(&number);
            }
        }
    }
    closed.cancel();
    drop(readers);
    let _ = write_task.await;
}

/// A channel's message on the wire: its number then the bytes, or for base64 the number
/// as a digit then the bytes encoded, as text.
fn encode(number: u8, data: &[u8], base64: bool) -> Message {
    if base64 {
        let mut text = String::from(char::from(b'0' + number));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
        Message::text(text)
    } else {
        let mut bytes = Vec::with_capacity(data.len() + 1);
        bytes.push(number);
        bytes.extend_from_slice(data);
        Message::binary(bytes)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    /// A channel's number then its bytes.
    Data(Vec<u8>),
    /// Nothing for a channel (a ping, a pong).
    Skip,
    /// The connection ends (a close, or base64 that is not).
    End,
}

fn decode(message: Message, base64: bool) -> Decoded {
    match message {
        // Clients send text too (the Python client, for a str): the bytes are the same.
        Message::Binary(data) if !base64 => Decoded::Data(data.into()),
        Message::Text(text) if !base64 => Decoded::Data(text.as_bytes().to_vec()),
        Message::Text(text) => {
            let Some((&digit, rest)) = text.as_bytes().split_first() else {
                return Decoded::Skip;
            };
            match base64::engine::general_purpose::STANDARD.decode(rest) {
                Ok(mut decoded) => {
                    decoded.insert(0, digit.wrapping_sub(b'0'));
                    Decoded::Data(decoded)
                }
                Err(_) => Decoded::End,
            }
        }
        Message::Close(_) => Decoded::End,
        // Pings are answered by the WebSocket layer.
        _ => Decoded::Skip,
    }
}

/// Runs the SPDY connection whose bytes the WebSocket's binary messages carry.
async fn serve_spdy_tunnel(io: Upgraded, streams: mpsc::Sender<Stream>, closed: CancellationToken) {
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
    let (mut sink, mut source) = ws.split();
    let (spdy_side, tunnel_side) = tokio::io::duplex(256 * 1024);
    let (mut from_spdy, mut to_spdy) = tokio::io::split(tunnel_side);
    let inbound = tokio::spawn(async move {
        while let Some(Ok(message)) = source.next().await {
            match message {
                Message::Binary(data) if to_spdy.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_spdy.shutdown().await;
    });
    let outbound = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from_spdy.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    let _ = crate::stream::spdy_connection::serve(spdy_side, streams, closed).await;
    inbound.abort();
    let _ = outbound.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_clients_preference_picks_the_protocol() {
        let (name, _) = negotiate(
            &offered(&["v5.channel.k8s.io", "v4.channel.k8s.io"]),
            EXEC_PROTOCOLS,
        )
        .unwrap();
        assert_eq!(name, "v5.channel.k8s.io");
        let (name, protocol) = negotiate(
            &offered(&["v5.channel.k8s.io", "v4.channel.k8s.io"]),
            PORT_FORWARD_PROTOCOLS,
        )
        .unwrap();
        assert_eq!(name, "v4.channel.k8s.io");
        assert!(matches!(protocol, Protocol::Channels { .. }));
        assert!(negotiate(&offered(&["channel.k8s.io"]), EXEC_PROTOCOLS).is_none());
        assert_eq!(
            negotiate(
                &offered(&["SPDY/3.1+portforward.k8s.io"]),
                PORT_FORWARD_PROTOCOLS
            )
            .unwrap()
            .1,
            Protocol::SpdyTunnel
        );
    }

    #[test]
    fn exec_channels_are_the_asked_streams_and_the_first_writable_hears_first() {
        let channels = exec_channels(Asked {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: true,
        });
        let numbers: Vec<u8> = channels.iter().map(|c| c.number).collect();
        assert_eq!(
            numbers,
            vec![ERROR, STDIN, STDOUT, RESIZE],
            "no stderr with tty"
        );
        let first: Vec<u8> = channels
            .iter()
            .filter(|c| c.first.is_some())
            .map(|c| c.number)
            .collect();
        assert_eq!(first, vec![STDOUT]);
        let only_error = exec_channels(Asked {
            stdin: true,
            stdout: false,
            stderr: false,
            tty: false,
        });
        assert_eq!(
            only_error
                .iter()
                .filter(|c| c.first.is_some())
                .map(|c| c.number)
                .collect::<Vec<_>>(),
            vec![ERROR]
        );
    }

    #[test]
    fn port_channels_pair_up_and_announce_their_port() {
        let channels = port_channels(&[80, 8080]);
        let layout: Vec<(u8, &str, Option<Vec<u8>>)> = channels
            .iter()
            .map(|c| {
                let kind = c.headers.iter().find(|(k, _)| k == "streamtype").unwrap();
                (c.number, kind.1.as_str(), c.first.clone())
            })
            .collect();
        assert_eq!(
            layout,
            vec![
                (1, "error", Some(vec![80, 0])),
                (0, "data", Some(vec![80, 0])),
                (3, "error", Some(vec![0x90, 0x1f])),
                (2, "data", Some(vec![0x90, 0x1f])),
            ]
        );
    }

    #[test]
    fn messages_carry_their_channel_raw_or_in_base64() {
        assert_eq!(
            encode(1, b"hi", false),
            Message::binary(vec![1, b'h', b'i'])
        );
        assert_eq!(encode(3, b"hi", true), Message::text("3aGk="));
        assert_eq!(
            decode(Message::text("0aGk="), true),
            Decoded::Data(vec![0, b'h', b'i'])
        );
        assert_eq!(decode(Message::text("0!!"), true), Decoded::End);
        assert_eq!(
            decode(Message::text("\u{0}hi"), false),
            Decoded::Data(vec![0, b'h', b'i'])
        );
        assert_eq!(
            decode(Message::binary(vec![255, 0]), false),
            Decoded::Data(vec![255, 0])
        );
        assert_eq!(decode(Message::Close(None), false), Decoded::End);
        assert_eq!(
            decode(Message::Ping(Default::default()), false),
            Decoded::Skip
        );
    }

    #[test]
    fn ports_come_from_the_query_or_the_request() {
        assert_eq!(
            ports(Some("port=80&port=8080"), &[]).unwrap(),
            vec![80, 8080]
        );
        assert_eq!(ports(Some("ports=80,8080"), &[1]).unwrap(), vec![80, 8080]);
        assert_eq!(ports(None, &[443]).unwrap(), vec![443]);
        assert!(ports(Some("port=0"), &[]).unwrap_err().contains("\"0\""));
        assert!(ports(Some("port=x"), &[]).is_err());
        assert!(ports(None, &[]).unwrap_err().contains("no port"));
        assert!(ports(None, &[70000]).is_err());
    }
}
