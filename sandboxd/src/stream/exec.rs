//! A streamed Exec (`v4.channel.k8s.io`, see [`crate::stream::remotecommand`]): the
//! command's stdin comes from the client, its stdout and stderr go back, and its end is
//! reported on the error stream as a Status (Success, or Failure with reason
//! NonZeroExitCode and the code). With a terminal, stdin and stdout are the terminal's,
//! and resizes set its window. A client that goes away kills the command.

use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::container::oci::kill_exec;
use crate::runtime::Runtime;
use crate::stream::remotecommand::{self, Asked, Resizes, Streams};
use crate::stream::session::{Stream, StreamWriter};

pub async fn serve(
    runtime: Arc<Runtime>,
    request: cri::ExecRequest,
    mut incoming: mpsc::Receiver<Stream>,
    closed: CancellationToken,
) {
    let asked = Asked {
        stdin: request.stdin,
        stdout: request.stdout,
        stderr: request.stderr,
        tty: request.tty,
    };
    let what = || {
        format!(
            "exec {:?} in container {}",
            request.cmd, request.container_id
        )
    };
    remotecommand::serve(asked, &mut incoming, &closed, what, |streams| {
        run(&runtime, &request, streams, &closed)
    })
    .await;
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
            let mut resizes = Resizes::default();
            while let Some(data) = stream.incoming.recv().await {
                for (width, height) in resizes.push(&data) {
                    let _ = crate::container::console::resize(&master, width, height);
                }
            }
        })
    });
    // A terminal whose last writer is gone reads EIO: that is its end here.
    let output = streams.stdout.map(|s| s.writer());
    let mut output_pump = tokio::spawn(async move {
        let reader = tokio::fs::File::from_std(reader);
        match output {
            Some(writer) => {
                writer.copy(reader).await;
            }
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
/// for that stream); the session ends the stream.
async fn pump(pipe: Option<impl tokio::io::AsyncRead + Unpin>, stream: Option<Stream>) {
    let writer: Option<StreamWriter> = stream.map(|s| s.writer());
    match (pipe, writer) {
        (Some(pipe), Some(writer)) => {
            writer.copy(pipe).await;
        }
        (Some(mut pipe), None) => {
            let _ = tokio::io::copy(&mut pipe, &mut tokio::io::sink()).await;
        }
        _ => {}
    }
}
