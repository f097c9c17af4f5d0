//! A SPDY/3.1 connection, server side: the client opens streams (SYN_STREAM, each
//! answered at once with SYN_REPLY) and sends their data; the handler gets each stream
//! with its headers, reads what the client sends on it and writes back. PINGs are
//! answered; the connection ends when the client closes it or sends GOAWAY, and every
//! stream's reader then sees its end.

use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::stream::session::{Outgoing, Stream};
use crate::stream::spdy::{Codec, Frame, Headers};

/// Serves the SPDY connection on `io`: each stream the client opens is sent to
/// `streams`; `closed` is cancelled when the client is gone. Returns once the handler has
/// let go of every stream too.
pub async fn serve(
    io: impl AsyncRead + AsyncWrite + Send + 'static,
    streams: mpsc::Sender<Stream>,
    closed: CancellationToken,
) -> anyhow::Result<()> {
    let (mut read_half, mut write_half) = tokio::io::split(io);
    let (writer, mut written) = mpsc::channel::<Outgoing>(64);
    // The connection's own frames (replies, pings), ahead of the handlers' data: a
    // stream's SYN_REPLY is queued before the handler has the stream to write on.
    let (control, mut control_rx) = mpsc::channel::<Frame>(16);
    // Each direction has its own header compression context.
    let write_task = tokio::spawn(async move {
        let mut codec = Codec::new();
        let mut out = Vec::new();
        loop {
            let frame = tokio::select! {
                biased;
                Some(frame) = control_rx.recv() => frame,
                Some(outgoing) = written.recv() => match outgoing {
                    Outgoing::Data { stream, data } => Frame::Data { stream, fin: false, data },
                    Outgoing::End { stream } => Frame::Data { stream, fin: true, data: Vec::new() },
                },
                else => break,
            };
            out.clear();
            codec.encode(&frame, &mut out)?;
            write_half.write_all(&out).await?;
        }
        let _ = write_half.shutdown().await;
        anyhow::Ok(())
    });

    let mut codec = Codec::new();
    let mut open: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let result = 'read: loop {
        while let Some((frame, used)) = match codec.decode(&buf) {
            Ok(decoded) => decoded,
            Err(e) => break 'read Err(e),
        } {
            buf.drain(..used);
            match frame {
                Frame::SynStream {
                    stream,
                    fin,
                    headers,
                    ..
                } => {
                    let (tx, rx) = mpsc::channel(16);
                    if !fin {
                        open.insert(stream, tx);
                    }
                    let reply = Frame::SynReply {
                        stream,
                        fin: false,
                        headers: Headers::new(),
                    };
                    if control.send(reply).await.is_err() {
                        break 'read Ok(());
                    }
                    let stream = Stream::new(stream, headers, rx, writer.clone());
                    if streams.send(stream).await.is_err() {
                        break 'read Ok(());
                    }
                }
                Frame::Data { stream, fin, data } => {
                    if let Some(tx) = open.get(&stream) {
                        if !data.is_empty() && tx.send(data).await.is_err() {
                            open.remove(&stream);
                        }
                    }
                    if fin {
                        open.remove(&stream);
                    }
                }
                Frame::RstStream { stream, .. } => {
                    open.remove(&stream);
                }
                Frame::Ping { id } => {
                    let _ = control.send(Frame::Ping { id }).await;
                }
                Frame::GoAway { .. } => break 'read Ok(()),
                Frame::SynReply { .. }
                | Frame::Settings { .. }
                | Frame::Headers { .. }
                | Frame::WindowUpdate { .. } => {}
            }
        }
        match read_half.read(&mut chunk).await {
            Ok(0) => break Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => break Err(e.into()),
        }
    };
    closed.cancel();
    drop(open);
    drop(streams);
    drop(writer);
    drop(control);
    // The writer ends once every stream's writer is dropped by the handler.
    let _ = write_task.await;
    result
}
