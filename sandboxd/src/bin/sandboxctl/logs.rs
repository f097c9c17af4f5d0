//! `logs [-f] [--tail N] [-t] ID`: a container's output, read from its CRI log file as
//! crictl and the kubelet read it (the runtime says where the file is). Partial lines (`P`)
//! are joined to the line they begin; stdout goes to stdout and stderr to stderr.

use std::io::{BufRead, Seek, Write};
use std::time::Duration;

use anyhow::Context;
use k8s_cri::v1 as cri;

use crate::Client;

#[derive(clap::Args)]
pub struct Args {
    /// Keep printing new output until the container exits.
    #[arg(long, short)]
    pub follow: bool,
    /// Only the last N lines (-1: all).
    #[arg(long, default_value_t = -1)]
    tail: i64,
    /// Prefix each line with its RFC 3339 time.
    #[arg(long, short)]
    timestamps: bool,
    /// The container: id or unique id prefix.
    id: String,
}

/// One line of output, joined from its pieces.
struct Line {
    time: String,
    stderr: bool,
    text: String,
}

/// Joins CRI log lines: `<time> <stream> <P|F> <text>`. A malformed line is kept as text.
#[derive(Default)]
struct Parser {
    partial: [Option<Line>; 2],
}

impl Parser {
    fn push(&mut self, raw: &str) -> Option<Line> {
        let raw = raw.strip_suffix('\n').unwrap_or(raw);
        let mut parts = raw.splitn(4, ' ');
        let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            return Some(Line {
                time: String::new(),
                stderr: false,
                text: raw.to_string(),
            });
        };
        let text = parts.next().unwrap_or("");
        let stderr = stream == "stderr";
        let slot = &mut self.partial[usize::from(stderr)];
        let mut line = slot.take().unwrap_or(Line {
            time: time.to_string(),
            stderr,
            text: String::new(),
        });
        line.text.push_str(text);
        if tag == "P" {
            *slot = Some(line);
            None
        } else {
            Some(line)
        }
    }
}

fn print(line: &Line, timestamps: bool) -> std::io::Result<()> {
    let text = if timestamps {
        format!("{} {}\n", line.time, line.text)
    } else {
        format!("{}\n", line.text)
    };
    if line.stderr {
        std::io::stderr().write_all(text.as_bytes())
    } else {
        let mut out = std::io::stdout();
        out.write_all(text.as_bytes())?;
        out.flush()
    }
}

async fn is_running(client: &mut Client, id: &str) -> anyhow::Result<bool> {
    let status = client
        .container_status(cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .unwrap_or_default();
    Ok(status.state != cri::ContainerState::ContainerExited as i32)
}

pub async fn run(client: &mut Client, args: Args) -> anyhow::Result<()> {
    let status = client
        .container_status(cri::ContainerStatusRequest {
            container_id: args.id.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .unwrap_or_default();
    let path = std::path::PathBuf::from(&status.log_path);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        // A created container has written nothing yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !args.follow => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
    };
    let mut reader = std::io::BufReader::new(file);
    let mut parser = Parser::default();
    let mut lines = Vec::new();
    let mut raw = String::new();
    while reader.read_line(&mut raw)? > 0 {
        if raw.ends_with('\n') {
            lines.extend(parser.push(&raw));
            raw.clear();
        } else {
            break; // the monitor is mid-write: finish the line when following
        }
    }
    let skip = if args.tail >= 0 {
        lines.len().saturating_sub(args.tail as usize)
    } else {
        0
    };
    for line in &lines[skip..] {
        print(line, args.timestamps)?;
    }
    if !args.follow {
        return Ok(());
    }
    let id = status.id;
    loop {
        let read = reader.read_line(&mut raw)?;
        if read > 0 && raw.ends_with('\n') {
            if let Some(line) = parser.push(&raw) {
                print(&line, args.timestamps)?;
            }
            raw.clear();
            continue;
        }
        // At the end: done once the container has exited and all it wrote is read.
        if !is_running(client, &id).await? {
            let rest = reader.read_line(&mut raw)?;
            if rest == 0 {
                return Ok(());
            }
            continue;
        }
        // A rotated log (ReopenContainerLog) starts a new file at the path.
        let position = reader.stream_position()?;
        if std::fs::metadata(&path).is_ok_and(|m| m.len() < position) {
            reader = std::io::BufReader::new(std::fs::File::open(&path)?);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_partial_lines_per_stream() {
        let mut parser = Parser::default();
        assert!(parser.push("t1 stdout P hel\n").is_none());
        let err = parser.push("t2 stderr F oops\n").unwrap();
        assert!(err.stderr && err.text == "oops");
        let out = parser.push("t3 stdout F lo\n").unwrap();
        assert_eq!((out.time.as_str(), out.text.as_str()), ("t1", "hello"));
        assert_eq!(parser.push("t4 stdout F \n").unwrap().text, "");
    }
}
