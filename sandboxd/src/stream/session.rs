//! A SPDY/3.1 connection, server side: the client opens streams (SYN_STREAM, each
//! answered at once with SYN_REPLY) and sends their data; the handler gets each stream
//! with its headers, reads what the client sends on it and writes back. PINGs are
//! answered; the connection ends when the client closes it or sends GOAWAY, and every
//! stream's reader then sees its end.

use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::stream::spdy::{header, Codec, Frame, Headers};

/// The most a DATA frame written here carries.
const CHUNK: usize = 32 * 1024;

/// One stream the client opened.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// What the client sends on it; closed at its FIN, a reset, or the connection's end.
    pub incoming: mpsc::Receiver<Vec<u8>>,
    writer: Writer,
}

impl Stream {
    /// The value of a header of its SYN_STREAM (`streamtype`, `port`, `requestid`).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn writer(&self) -> StreamWriter {
        StreamWriter {
            id: self.id,
            writer: self.writer.clone(),
        }
    }
}

#[derive(Clone)]
struct Writer(mpsc::Sender<Frame>);

/// The sending half of a stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    writer: Writer,
}

impl StreamWriter {
    /// Sends `data`, in frames of at most 32 KiB; false once the connection is gone.
    pub async fn write(&self, data: &[u8]) -> bool {
        for chunk in data.chunks(CHUNK) {
            let frame = Frame::Data {
                stream: self.id,
                fin: false,
                data: chunk.to_vec(),
            };
            if self.writer.0.send(frame).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Ends the stream's sending half.
    pub async fn finish(&self) {
        let _ = self
            .writer
            .0
            .send(Frame::Data {
                stream: self.id,
                fin: true,
                data: Vec::new(),
            })
            .await;
    }

    /// Copies `reader` to the stream until its end, then ends the stream.
    pub async fn copy_from(&self, mut reader: impl AsyncRead + Unpin) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !self.write(&buf[..n]).await {
                        return;
                    }
                }
            }
        }
        self.finish().await;
    }
}

/// Serves the SPDY connection on `io`: each stream the client opens is sent to
/// `streams`; `closed` is cancelled when the client is gone. Returns once the handler has
/// let go of every stream too.
pub async fn serve(
    io: impl AsyncRead + AsyncWrite + Send + 'static,
    streams: mpsc::Sender<Stream>,
    closed: CancellationToken,
) -> anyhow::Result<()> {
    let (mut read_half, mut write_half) = tokio::io::split(io);
    let (frames_tx, mut frames_rx) = mpsc::channel::<Frame>(64);
    let writer = Writer(frames_tx);
    // Each direction has its own header compression context.
    let write_task = tokio::spawn(async move {
        let mut codec = Codec::new();
        let mut out = Vec::new();
        while let Some(frame) = frames_rx.recv().await {
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
                    if writer.0.send(reply).await.is_err() {
                        break 'read Ok(());
                    }
                    let stream = Stream {
                        id: stream,
                        headers,
                        incoming: rx,
                        writer: writer.clone(),
                    };
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
                    let _ = writer.0.send(Frame::Ping { id }).await;
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
    // The writer ends once every stream's writer is dropped by the handler.
    let _ = write_task.await;
    result
}
