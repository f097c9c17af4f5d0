//! What Exec and Attach share on the wire (`v4.channel.k8s.io`, the kubelet's
//! "remotecommand"): the client opens an error stream and one per standard stream it asked
//! for (and a resize stream with a terminal); the end is reported on the error stream as a
//! Status object; a resize stream carries the window's size as JSON
//! (`{"Width":80,"Height":24}`, one object per change).

use std::future::Future;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::stream::session::{Stream, StreamWriter};

/// How long the client gets to open the streams its request named.
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);

/// Which streams a request asked for.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The streams of one exec or attach, by their `streamtype`.
#[derive(Default)]
pub struct Streams {
    pub error: Option<Stream>,
    pub stdin: Option<Stream>,
    pub stdout: Option<Stream>,
    pub stderr: Option<Stream>,
    pub resize: Option<Stream>,
}

impl Streams {
    fn complete(&self, asked: Asked) -> bool {
        self.error.is_some()
            && (!asked.stdin || self.stdin.is_some())
            && (!asked.stdout || self.stdout.is_some())
            && (!asked.stderr || asked.tty || self.stderr.is_some())
            && (!asked.tty || self.resize.is_some())
    }

    /// Waits for the client to open the streams it asked for; none if it goes away or
    /// takes too long.
    pub async fn open(
        asked: Asked,
        incoming: &mut mpsc::Receiver<Stream>,
        closed: &CancellationToken,
    ) -> Option<Streams> {
        let mut streams = Streams::default();
        let deadline = tokio::time::sleep(STREAMS_TIMEOUT);
        tokio::pin!(deadline);
        while !streams.complete(asked) {
            tokio::select! {
                stream = incoming.recv() => {
                    let stream = stream?;
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
                _ = &mut deadline => return None,
                _ = closed.cancelled() => return None,
            }
        }
        Some(streams)
    }
}

/// One exec or attach session: waits for the streams the client asked for, runs the
/// session with them, then ends the client's outputs and reports the outcome (an exit
/// code, or why it could not run) on the error stream, in that order, as the client reads
/// its outputs to their end before the status. `what` names the session in the daemon's
/// log when it fails. A client that went away gets nothing more.
pub async fn serve<Session>(
    asked: Asked,
    incoming: &mut mpsc::Receiver<Stream>,
    closed: &CancellationToken,
    what: impl FnOnce() -> String,
    session: impl FnOnce(Streams) -> Session,
) where
    Session: Future<Output = Result<i32, String>>,
{
    let Some(mut streams) = Streams::open(asked, incoming, closed).await else {
        return;
    };
    let error = streams.error.take().expect("opened").writer();
    let outputs: Vec<StreamWriter> = [&streams.stdout, &streams.stderr]
        .into_iter()
        .flatten()
        .map(|s| s.writer())
        .collect();
    let outcome = session(streams).await;
    if let Err(message) = &outcome {
        eprintln!("sandboxd: {}: {message}", what());
    }
    if closed.is_cancelled() {
        return;
    }
    for output in outputs {
        output.finish().await;
    }
    let report = serde_json::to_vec(&status(outcome)).expect("a JSON status");
    error.write(&report).await;
    error.finish().await;
}

/// The Status the v4 protocol ends with: the command's exit code (0 for an attach that
/// ended), or why it could not run.
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

/// Window sizes out of a resize stream, which may split its JSON objects anywhere.
#[derive(Default)]
pub struct Resizes {
    pending: Vec<u8>,
}

impl Resizes {
    /// Takes `data`; every size it completes, as (width, height).
    pub fn push(&mut self, data: &[u8]) -> Vec<(u16, u16)> {
        self.pending.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut objects =
            serde_json::Deserializer::from_slice(&self.pending).into_iter::<serde_json::Value>();
        let mut used = 0;
        while let Some(Ok(size)) = objects.next() {
            used = objects.byte_offset();
            let dimension = |key: &str| size[key].as_u64().map(|v| v.min(u16::MAX as u64) as u16);
            if let (Some(width), Some(height)) = (dimension("Width"), dimension("Height")) {
                sizes.push((width, height));
            }
        }
        self.pending.drain(..used);
        sizes
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

    #[test]
    fn sizes_are_read_across_any_split() {
        let mut resizes = Resizes::default();
        assert_eq!(resizes.push(br#"{"Width":80,"Hei"#), vec![]);
        assert_eq!(
            resizes.push(br#"ght":24}{"Width":100,"Height":40}{"Width":70000,"Height":1}"#),
            vec![(80, 24), (100, 40), (65535, 1)]
        );
        assert_eq!(
            resizes.push(br#"{"Width":1}"#),
            vec![],
            "no height: skipped"
        );
        assert!(resizes.pending.is_empty());
    }
}
