//! A connection's streams as the handlers (exec, attach, port-forward) see them, whatever
//! carries them: each stream has its headers (`streamtype`, `port`, `requestid`), what
//! the client sends on it, and a writer back. The transports ([`crate::stream::spdy_connection`],
//! [`crate::stream::websocket`]) make the streams and frame what is written their own way.

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::stream::spdy::{header, Headers};

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

impl Stream {
    /// A stream a transport opened, whose writes go to `writer`.
    pub fn new(
        id: u32,
        headers: Headers,
        incoming: mpsc::Receiver<Vec<u8>>,
        writer: mpsc::Sender<Outgoing>,
    ) -> Stream {
        Stream {
            id,
            headers,
            incoming,
            writer: Writer(writer),
        }
    }
}

/// What a handler writes on a stream, for its transport to frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    Data {
        stream: u32,
        data: Vec<u8>,
    },
    /// The stream's sending half ends.
    End {
        stream: u32,
    },
}

#[derive(Clone)]
struct Writer(mpsc::Sender<Outgoing>);

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
            let frame = Outgoing::Data {
                stream: self.id,
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
        let _ = self.writer.0.send(Outgoing::End { stream: self.id }).await;
    }

    /// Copies `reader` to the stream until its end; false once the connection is gone.
    pub async fn copy(&self, mut reader: impl AsyncRead + Unpin) -> bool {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => {
                    if !self.write(&buf[..n]).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Copies `reader` to the stream until its end, then ends the stream.
    pub async fn copy_from(&self, reader: impl AsyncRead + Unpin) {
        if self.copy(reader).await {
            self.finish().await;
        }
    }
}
