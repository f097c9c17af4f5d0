//! ADD and DEL of one CNI plugin, upstream's binary against sandboxd's, run as a runtime
//! runs a plugin (a process per call, the config on stdin), and sandboxd's code called
//! in-process, in the same run; printed as Markdown for BENCHMARKS.md.
//!
//!   plugin-bench [--cycles N]
//!
//! Measures host-local (a lease dir of its own per tool, a /24): the cost of a plugin
//! call without the kernel work a bridge adds. The tools run in alternating blocks, so
//! drift favours none. Needs Debian's containernetworking-plugins and
//! `cargo build --release --workspace`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sandboxd::cni_plugin::host_local;
use sandboxd::cni_plugin::invocation::Invocation;
use serde_json::{json, Value};

const BLOCKS: usize = 4;

fn network(data_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "host-local",
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": "10.99.0.0/24" }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dataDir": data_dir,
        }
    })
}

fn exec(plugin: &Path, command: &str, container: &str, config: &[u8]) -> Result<()> {
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", "/proc/self/ns/net")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", plugin.display()))?;
    child.stdin.take().expect("piped").write_all(config)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} {command} {container}: {}",
            plugin.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

#[derive(Default)]
struct Series {
    add: Vec<Duration>,
    del: Vec<Duration>,
    both: Vec<Duration>,
}

impl Series {
    fn push(&mut self, add: Duration, del: Duration) {
        self.add.push(add);
        self.del.push(del);
        self.both.push(add + del);
    }

    fn rows(&self, tool: &str) {
        for (op, samples) in [
            ("ADD", &self.add),
            ("DEL", &self.del),
            ("ADD+DEL", &self.both),
        ] {
            let mut sorted = samples.clone();
            sorted.sort();
            let at = |q: f64| {
                let d = sorted[((sorted.len() - 1) as f64 * q).round() as usize];
                format!("{:.3}", d.as_secs_f64() * 1e3)
            };
            println!(
                "| host-local {op} | {tool} | {} | {} | {} | {} |",
                sorted.len(),
                at(0.5),
                at(0.9),
                at(0.99)
            );
        }
    }
}

enum Tool {
    Binary(PathBuf),
    InProcess,
}

fn cycle(tool: &Tool, data_dir: &Path, id: &str) -> Result<(Duration, Duration)> {
    let config = network(data_dir);
    match tool {
        Tool::Binary(plugin) => {
            let bytes = config.to_string().into_bytes();
            let start = Instant::now();
            exec(plugin, "ADD", id, &bytes)?;
            let added = Instant::now();
            exec(plugin, "DEL", id, &bytes)?;
            Ok((added - start, added.elapsed()))
        }
        Tool::InProcess => {
            let env = |command: &'static str| {
                let id = id.to_string();
                move |name: &str| match name {
                    "CNI_COMMAND" => Some(command.to_string()),
                    "CNI_CONTAINERID" => Some(id.clone()),
                    "CNI_NETNS" => Some("/proc/self/ns/net".to_string()),
                    "CNI_IFNAME" => Some("eth0".to_string()),
                    _ => None,
                }
            };
            let bytes = config.to_string().into_bytes();
            let start = Instant::now();
            let add = Invocation::from_env(env("ADD"), &bytes)?;
            let loaded = host_local::Config::load(&add)?;
            host_local::add(&loaded, id, "eth0")?;
            let added = Instant::now();
            let del = Invocation::from_env(env("DEL"), &bytes)?;
            let loaded = host_local::Config::load(&del)?;
            host_local::del(&loaded, id, "eth0")?;
            Ok((added - start, added.elapsed()))
        }
    }
}

fn main() -> Result<()> {
    let mut cycles: usize = 200;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--cycles" => cycles = args.next().context("--cycles N")?.parse()?,
            other => bail!("unknown argument {other:?}; usage: plugin-bench [--cycles N]"),
        }
    }
    let upstream = PathBuf::from("/usr/lib/cni/host-local");
    if !upstream.is_file() {
        bail!(
            "{} is missing: apt-get install containernetworking-plugins",
            upstream.display()
        );
    }
    let own = std::env::current_exe()?
        .parent()
        .context("the executable's dir")?
        .join("sandboxd-cni");
    if !own.is_file() {
        bail!(
            "{} is missing: cargo build --release --workspace",
            own.display()
        );
    }
    let scratch = tempfile::Builder::new().prefix("plugin-bench-").tempdir()?;
    let link_dir = scratch.path().join("bin");
    std::fs::create_dir_all(&link_dir)?;
    std::os::unix::fs::symlink(&own, link_dir.join("host-local"))?;
    let tools = [
        ("upstream host-local (Debian)", Tool::Binary(upstream)),
        (
            "sandboxd-cni host-local",
            Tool::Binary(link_dir.join("host-local")),
        ),
        ("in-process (sandboxd)", Tool::InProcess),
    ];
    let mut series: Vec<Series> = tools.iter().map(|_| Series::default()).collect();
    for (i, (_, tool)) in tools.iter().enumerate() {
        // A warm-up cycle each: page cache, the lease dir.
        cycle(tool, &scratch.path().join(format!("ipam-{i}")), "warm-up")?;
    }
    let per_block = cycles.div_ceil(BLOCKS);
    for block in 0..BLOCKS {
        for (i, (_, tool)) in tools.iter().enumerate() {
            let data_dir = scratch.path().join(format!("ipam-{i}"));
            for n in 0..per_block {
                let (add, del) = cycle(tool, &data_dir, &format!("bench-{block}-{n}"))?;
                series[i].push(add, del);
            }
        }
    }
    println!("| operation | tool | n | p50 ms | p90 ms | p99 ms |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for ((label, _), series) in tools.iter().zip(&series) {
        series.rows(label);
    }
    Ok(())
}
