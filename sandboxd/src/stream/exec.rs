//! A streamed Exec (`v4.channel.k8s.io`): the client opens an error stream and one per
//! standard stream it asked for; the command's stdin comes from the client, its stdout
//! and stderr go back, and its end is reported on the error stream as a Status (Success,
//! or Failure with reason NonZeroExitCode and the code). With a terminal, stdin and
//! stdout are the terminal's, and a resize stream carries the window's size as JSON
//! (`{"Width":80,"Height":24}`, one object per change). A client that goes away kills
//! the command.

use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::container::oci::kill_exec;
use crate::runtime::Runtime;
use crate::stream::session::{Stream, StreamWriter};

/// How long the client gets to open the streams its request named.
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);

/// The streams of one exec, by their `streamtype`.
#[derive(Default)]
struct Streams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

impl Streams {
    fn complete(&self, request: &cri::ExecRequest) -> bool {
        self.error.is_some()
            && (!request.stdin || self.stdin.is_some())
            && (!request.stdout || self.stdout.is_some())
            && (!request.stderr || request.tty || self.stderr.is_some())
            && (!request.tty || self.resize.is_some())
    }
}

/// The Status the v4 protocol ends an exec with.
fn status(outcome: Result<i32, String>) -> serde_json::Value {
    match outcome {
        Ok(0) => json!({ "metadata": {}, "status": "Success" }),
        Ok(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": { "causes": [{ "reason": "ExitCode", "message": code.to_string() }] },
        }),
        Err(message) => json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "InternalError",
        }),
    }
}

pub async fn serve(
    runtime: Arc<Runtime>,
    request: cri::ExecRequest,
    mut incoming: mpsc::Receiver<Stream>,
    closed: CancellationToken,
) {
    let mut streams = Streams::default();
    let deadline = tokio::time::sleep(STREAMS_TIMEOUT);
    tokio::pin!(deadline);
    while !streams.complete(&request) {
        tokio::select! {
            stream = incoming.recv() => {
                let Some(stream) = stream else { return };
                let slot = match stream.header("streamtype") {
                    Some("error") => &mut streams.error,
                    Some("stdin") => &mut streams.stdin,
                    Some("stdout") => &mut streams.stdout,
                    Some("stderr") => &mut streams.stderr,
                    Some("resize") => &mut streams.resize,
                    _ => continue,
                };
                *slot = Some(stream);
            }
            _ = &mut deadline => return,
            _ = closed.cancelled() => return,
        }
    }
    let error = streams.error.take().expect("complete").writer();
    let outputs: Vec<StreamWriter> = [&streams.stdout, &streams.stderr]
        .into_iter()
        .flatten()
        .map(|s| s.writer())
        .collect();
    let outcome = run(&runtime, &request, streams, &closed).await;
    if let Err(message) = &outcome {
        eprintln!(
            "sandboxd: exec {:?} in container {}: {message}",
            request.cmd, request.container_id
        );
        // The client reads its outputs to their end before the status.
        if !closed.is_cancelled() {
            for output in outputs {
                output.finish().await;
            }
        }
    }
    let report = serde_json::to_vec(&status(outcome)).expect("a JSON status");
    error.write(&report).await;
    error.finish().await;
}

/// Runs the command with the streams as its stdio; its exit code.
async fn run(
    runtime: &Runtime,
    request: &cri::ExecRequest,
    streams: Streams,
    closed: &CancellationToken,
) -> Result<i32, String> {
    let mut exec = runtime
        .exec_streamed(
            &request.container_id,
            &request.cmd,
            streams.stdin.is_some(),
            request.tty,
        )
        .await
        .map_err(|e| e.to_string())?;
    if let Some(master) = exec.terminal.take() {
        return run_in_terminal(exec, master, streams, closed).await;
    }
    let stdin_pump = match (exec.child.stdin.take(), streams.stdin) {
        (Some(mut pipe), Some(mut stream)) => Some(tokio::spawn(async move {
            while let Some(data) = stream.incoming.recv().await {
                if pipe.write_all(&data).await.is_err() {
                    break;
                }
            }
            // The client's end of stdin closes the command's.
            drop(pipe);
        })),
        _ => None,
    };
    let stdout_pump = tokio::spawn(pump(exec.child.stdout.take(), streams.stdout));
    let stderr_pump = tokio::spawn(pump(exec.child.stderr.take(), streams.stderr));
    let status = tokio::select! {
        status = exec.child.wait() => status.map_err(|e| format!("wait for the exec in {}: {e}", exec.object))?,
        _ = closed.cancelled() => {
            kill_exec(&mut exec.child, &exec.pid_file).await;
            if let Some(pump) = stdin_pump {
                pump.abort();
            }
            return Err("the client went away".to_string());
        }
    };
    let _ = std::fs::remove_file(&exec.pid_file);
    let _ = tokio::join!(stdout_pump, stderr_pump);
    if let Some(pump) = stdin_pump {
        pump.abort();
    }
    Ok(exit_code(status))
}

/// The exit code of a finished exec.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// How long a terminal's last output gets to drain once the command has exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs an exec whose stdio is the terminal `master`: the client's stdin is typed into
/// it, what it shows goes to the client's stdout, resizes set its window.
async fn run_in_terminal(
    mut exec: crate::container::StreamedExec,
    master: std::os::fd::OwnedFd,
    streams: Streams,
    closed: &CancellationToken,
) -> Result<i32, String> {
    let object = exec.object.clone();
    let reader = std::fs::File::from(master.try_clone().map_err(|e| e.to_string())?);
    let writer = std::fs::File::from(master.try_clone().map_err(|e| e.to_string())?);
    let mut input_pump = streams.stdin.map(|mut stream| {
        let mut writer = tokio::fs::File::from_std(writer);
        tokio::spawn(async move {
            while let Some(data) = stream.incoming.recv().await {
                if writer.write_all(&data).await.is_err() || writer.flush().await.is_err() {
                    break;
                }
            }
        })
    });
    let mut resize_pump = streams.resize.map(|mut stream| {
        tokio::spawn(async move {
            let mut pending = Vec::new();
            while let Some(data) = stream.incoming.recv().await {
                pending.extend_from_slice(&data);
                // One JSON object per size; a stream of them may split anywhere.
                let mut objects =
                    serde_json::Deserializer::from_slice(&pending).into_iter::<serde_json::Value>();
                let mut used = 0;
                while let Some(Ok(size)) = objects.next() {
                    used = objects.byte_offset();
                    let (width, height) = (size["Width"].as_u64(), size["Height"].as_u64());
                    if let (Some(width), Some(height)) = (width, height) {
                        let _ = crate::container::console::resize(
                            &master,
                            width.min(u16::MAX as u64) as u16,
                            height.min(u16::MAX as u64) as u16,
                        );
                    }
                }
                pending.drain(..used);
            }
        })
    });
    // A terminal whose last writer is gone reads EIO: that is its end here.
    let output = streams.stdout.map(|s| s.writer());
    let mut output_pump = tokio::spawn(async move {
        let reader = tokio::fs::File::from_std(reader);
        match output {
            Some(writer) => writer.copy_from(reader).await,
            None => {
                let mut reader = reader;
                let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
            }
        }
    });
    let status = tokio::select! {
        status = exec.child.wait() => status.map_err(|e| format!("wait for the exec in {object}: {e}")),
        _ = closed.cancelled() => {
            kill_exec(&mut exec.child, &exec.pid_file).await;
            Err("the client went away".to_string())
        }
    };
    let _ = std::fs::remove_file(&exec.pid_file);
    if tokio::time::timeout(DRAIN_TIMEOUT, &mut output_pump)
        .await
        .is_err()
    {
        output_pump.abort();
    }
    for pump in [input_pump.take(), resize_pump.take()]
        .into_iter()
        .flatten()
    {
        pump.abort();
    }
    status.map(exit_code)
}

/// Copies a pipe of the command to its stream (or drains it when the client did not ask
/// for that stream), then ends the stream.
async fn pump(pipe: Option<impl tokio::io::AsyncRead + Unpin>, stream: Option<Stream>) {
    let writer: Option<StreamWriter> = stream.map(|s| s.writer());
    match (pipe, writer) {
        (Some(pipe), Some(writer)) => writer.copy_from(pipe).await,
        (Some(mut pipe), None) => {
            let _ = tokio::io::copy(&mut pipe, &mut tokio::io::sink()).await;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_the_v4_protocols() {
        assert_eq!(status(Ok(0))["status"], "Success");
        let failed = status(Ok(3));
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        assert_eq!(status(Err("gone".into()))["reason"], "InternalError");
    }
}
