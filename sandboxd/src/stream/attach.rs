//! A streamed Attach (`v4.channel.k8s.io`, see [`crate::stream::remotecommand`]): the
//! client's streams joined to the container's own stdio through its monitor's attach
//! socket ([`crate::container::attach`]). It ends when the monitor closes the connection
//! (the container exited, or the client's stdin ended and it detaches) with Success on
//! the error stream, or when the client goes away; the container runs on either way.

use std::sync::Arc;

use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::container::attach::{self, Frame, FrameReader, Wants};
use crate::runtime::Runtime;
use crate::stream::remotecommand::{self, Asked, Resizes, Streams};
use crate::stream::session::Stream;

pub async fn serve(
    runtime: Arc<Runtime>,
    request: cri::AttachRequest,
    mut incoming: mpsc::Receiver<Stream>,
    closed: CancellationToken,
) {
    let asked = Asked {
        stdin: request.stdin,
        stdout: request.stdout,
        stderr: request.stderr,
        tty: request.tty,
    };
    let what = || format!("attach to container {}", request.container_id);
    remotecommand::serve(asked, &mut incoming, &closed, what, |streams| async {
        run(&runtime, &request, streams, &closed).await.map(|()| 0)
    })
    .await;
}

async fn run(
    runtime: &Runtime,
    request: &cri::AttachRequest,
    streams: Streams,
    closed: &CancellationToken,
) -> Result<(), String> {
    let target = runtime
        .attach_target(request)
        .await
        .map_err(|e| e.to_string())?;
    let wants = Wants {
        stdin: streams.stdin.is_some(),
        stdout: streams.stdout.is_some(),
        stderr: streams.stderr.is_some() && !request.tty,
    };
    let socket = attach::connect(&target.socket, wants)
        .await
        .map_err(|e| format!("attach to {}: {e}", target.object))?;
    let (mut from_monitor, mut to_monitor) = socket.into_split();

    let (stdin, resize) = (streams.stdin, streams.resize);
    let input = tokio::spawn(async move {
        let (mut stdin, mut resize) = (stdin, resize);
        let mut resizes = Resizes::default();
        while stdin.is_some() || resize.is_some() {
            let frames = tokio::select! {
                data = next(&mut stdin) => match data {
                    Some(data) => vec![Frame::Stdin(data)],
                    None => {
                        stdin = None;
                        vec![Frame::StdinEnd]
                    }
                },
                data = next(&mut resize) => match data {
                    Some(data) => resizes
                        .push(&data)
                        .into_iter()
                        .map(|(width, height)| Frame::Resize { width, height })
                        .collect(),
                    None => {
                        resize = None;
                        Vec::new()
                    }
                },
            };
            for frame in frames {
                if to_monitor.write_all(&frame.encode()).await.is_err() {
                    return;
                }
            }
        }
        // Dropping the write half would shut the connection down, which the monitor
        // takes for the client leaving: it is held until the attach ends.
        std::future::pending::<()>().await;
    });

    let (stdout, stderr) = (
        streams.stdout.map(|s| s.writer()),
        streams.stderr.map(|s| s.writer()),
    );
    let copy_output = async {
        let mut reader = FrameReader::default();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = read_from_monitor(&mut from_monitor, &mut buf)
                .await
                .map_err(|e| format!("read from {}'s monitor: {e}", target.object))?;
            if n == 0 {
                return Ok(());
            }
            reader.push(&buf[..n]);
            while let Some(frame) = reader
                .next_frame()
                .map_err(|e| format!("{}'s monitor: {e}", target.object))?
            {
                let (writer, data) = match frame {
                    Frame::Stdout(data) => (&stdout, data),
                    Frame::Stderr(data) => (&stderr, data),
                    other => return Err(format!("{}'s monitor sent {other:?}", target.object)),
                };
                if let Some(writer) = writer {
                    writer.write(&data).await;
                }
            }
        }
    };
    let outcome = tokio::select! {
        outcome = copy_output => outcome,
        _ = closed.cancelled() => Err("the client went away".to_string()),
    };
    input.abort();
    outcome
}

/// Reads what the monitor sent; 0 at the connection's end. The monitor closes a
/// connection whose last frames it had no reason to read (the container exited before our
/// stdin's end reached it); a unix socket reports that as a reset once the output queued
/// before it has been read, and it is the same end as a clean close.
async fn read_from_monitor(
    from_monitor: &mut (impl AsyncReadExt + Unpin),
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match from_monitor.read(buf).await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(0),
        read => read,
    }
}

/// The next data a client stream carries; `None` at its end; never, for no stream.
async fn next(stream: &mut Option<Stream>) -> Option<Vec<u8>> {
    match stream {
        Some(stream) => stream.incoming.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_monitor_closing_with_our_frames_unread_ends_the_output_after_its_last() {
        let (mut ours, mut monitor) = tokio::net::UnixStream::pair().unwrap();
        ours.write_all(b"stdin the monitor never reads")
            .await
            .unwrap();
        monitor.write_all(b"last output").await.unwrap();
        drop(monitor);
        let mut buf = [0u8; 64];
        let n = read_from_monitor(&mut ours, &mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"last output");
        assert_eq!(read_from_monitor(&mut ours, &mut buf).await.unwrap(), 0);
    }
}
