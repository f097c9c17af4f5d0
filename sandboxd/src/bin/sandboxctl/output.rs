//! Output shared by the commands: tables, JSON, ages, errors.

use std::time::{SystemTime, UNIX_EPOCH};

/// How a list or an object is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Prints a document as JSON or YAML (a table format prints JSON: there is no table of
/// one object).
pub fn print_doc(doc: &serde_json::Value, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Yaml => print!("{}", serde_norway::to_string(doc)?),
        Format::Json | Format::Table => println!("{}", serde_json::to_string_pretty(doc)?),
    }
    Ok(())
}

/// The largest manifest or config read: twice the API server's 1.5 MiB per object, so
/// any object Kubernetes takes fits, and a runaway file is refused before it is parsed.
pub const MAX_INPUT: u64 = 3 * 1024 * 1024;

/// Reads a config file or manifest, or stdin for `-`: JSON or YAML (YAML is a superset of
/// JSON); over [`MAX_INPUT`] bytes is refused unread.
pub fn read_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    use std::io::Read;
    let (name, reader): (String, Box<dyn Read>) = if path.as_os_str() == "-" {
        ("<stdin>".into(), Box::new(std::io::stdin()))
    } else {
        let file = std::fs::File::open(path).with_context(|| format!("read {}", path.display()))?;
        (path.display().to_string(), Box::new(file))
    };
    let mut text = String::new();
    reader
        .take(MAX_INPUT + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("read {name}"))?;
    if text.len() as u64 > MAX_INPUT {
        anyhow::bail!(
            "{name} is larger than 3 MiB, the most sandboxctl reads (the API server takes objects up to 1.5 MiB)"
        );
    }
    Ok(text)
}

/// How long ago, as crictl prints creation times (go-units' HumanDuration and " ago"):
/// "Less than a second ago", "5 seconds ago", "About a minute ago", "3 hours ago".
pub fn age(created_at_ns: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    format!(
        "{} ago",
        human_duration((now - created_at_ns).max(0) as f64 / 1e9)
    )
}

fn human_duration(secs: f64) -> String {
    let (seconds, minutes, hours) = (
        secs as i64,
        (secs / 60.0) as i64,
        (secs / 3600.0 + 0.5) as i64,
    );
    match () {
        _ if seconds < 1 => "Less than a second".into(),
        _ if seconds == 1 => "1 second".into(),
        _ if seconds < 60 => format!("{seconds} seconds"),
        _ if minutes == 1 => "About a minute".into(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", (secs / 3600.0) as i64 / 24 / 365),
    }
}

/// A size in decimal units with three significant digits, as crictl prints image sizes
/// (go-units' HumanSizeWithPrecision(size, 3)): "1.04MB", "512B", "12.3kB".
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    // %.3g: three significant digits, trailing zeros dropped.
    let decimals = match value {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        _ => 2,
    };
    let text = format!("{value:.decimals$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{}", UNITS[unit])
}

/// crictl's width for truncated ids.
pub const SHORT_ID_LEN: usize = 13;

/// An id as crictl's tables show it: its first 13 characters, or whole with --no-trunc.
pub fn short_id(id: &str, no_trunc: bool) -> String {
    if no_trunc {
        id.to_string()
    } else {
        id.chars().take(SHORT_ID_LEN).collect()
    }
}

/// Prints rows as crictl does (Go's tabwriter: cells padded by 3 to at least 20 wide, the
/// last column as it is), so scripts that read crictl's columns read these.
pub fn crictl_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len() + 3).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count() + 3);
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                let width = (*width).max(20);
                text.push_str(&format!("{cell:<width$}"));
            }
        }
        println!("{text}");
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// Prints rows under headers, columns padded to their widest cell, as kubectl does.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("   ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// kubectl's note for an empty listing, on stderr.
pub fn no_resources(namespace: &str, all_namespaces: bool) {
    if all_namespaces {
        eprintln!("No resources found.");
    } else {
        eprintln!("No resources found in {namespace} namespace.");
    }
}

/// A gRPC error as a person reads it: the runtime's message, and the code.
pub fn describe_error(e: &anyhow::Error) -> String {
    match e.downcast_ref::<tonic::Status>() {
        Some(status) => format!("{} ({:?})", status.message(), status.code()),
        None => format!("{e:#}"),
    }
}

/// `key=value` flags as a label selector; `flag` names them in errors.
pub fn labels(
    flag: &str,
    pairs: &[String],
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => anyhow::bail!("{flag} {pair:?}: expected key=value"),
        })
        .collect()
}

/// A runtime's verbose `info` value: JSON when it is (sandboxd's always is), else the text.
pub fn info_value(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_as_crictl_prints_them() {
        assert_eq!(human_size(1_037_355), "1.04MB");
        assert_eq!(human_size(1_661_000), "1.66MB");
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(12_340), "12.3kB");
        assert_eq!(human_size(1_000_000), "1MB");
        assert_eq!(human_size(123_456_789), "123MB");
        assert_eq!(human_duration(0.4), "Less than a second");
        assert_eq!(human_duration(1.2), "1 second");
        assert_eq!(human_duration(59.0), "59 seconds");
        assert_eq!(human_duration(61.0), "About a minute");
        assert_eq!(human_duration(600.0), "10 minutes");
        assert_eq!(human_duration(3600.0), "About an hour");
        assert_eq!(human_duration(5.0 * 86400.0), "5 days");
        assert_eq!(short_id("0123456789abcdef", false), "0123456789abc");
    }
}
