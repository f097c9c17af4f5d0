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

/// Reads a config file, or stdin for `-`: JSON or YAML (YAML is a superset of JSON).
pub fn read_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("read stdin")
    } else {
        std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
    }
}

/// "3 seconds ago", "5 minutes ago", as crictl prints creation times.
pub fn age(created_at_ns: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let secs = ((now - created_at_ns) / 1_000_000_000).max(0);
    let (n, unit) = match secs {
        0..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86399 => (secs / 3600, "hour"),
        _ => (secs / 86400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// Prints rows under headers, columns padded to their widest cell.
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
