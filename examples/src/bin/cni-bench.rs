//! Benchmarks of the pod start path, printed as Markdown for BENCHMARKS.md.
//!
//!   cni-bench [--cycles N] [--libcni PATH]
//!
//! * pause: binary size, resident memory while running, and start + netns pin latency;
//! * CNI ADD, DEL and ADD+DEL of the upstream chain (bridge + host-local, portmap, loopback)
//!   through cni-host, N cycles on one pod netns, in a node netns of its own;
//! * with `--libcni PATH` (the Go harness `examples/libcni-bench`, built by
//!   `scripts/bench.sh`), the same cycles through upstream libcni, in the same run;
//! * the same chain with sandboxd's own plugins (`sandboxd-cni`) in place of Debian's,
//!   through cni-host, without and with a hostPort: run as processes, and run inside
//!   cni-host's process as sandboxd runs them (`--cni-plugins own`);
//! * the kernel's floor under a DEL: a veth pair's deletion and an nf_tables batch that
//!   removes rules, each against a plain round trip on the same socket.
//!
//! Needs root, iproute2, util-linux and Debian's containernetworking-plugins.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cni_host::{CniHost, NetworkConfigList, PluginExec, RuntimeConf};
use sandboxd::cni_plugin::in_process::InProcessExec;
use sandboxd::lab::machine::Machine;
use sandboxd::netlink::Family;
use sandboxd::{netns, pause};
use sandboxd_examples::{new_id, rss_kib, run};
use serde_json::json;

const NETWORK: &str = "bench";

struct Stats {
    samples: Vec<Duration>,
}

impl Stats {
    fn new(mut samples: Vec<Duration>) -> Stats {
        samples.sort();
        Stats { samples }
    }

    fn quantile(&self, q: f64) -> Duration {
        let index = ((self.samples.len() as f64 - 1.0) * q).round() as usize;
        self.samples[index]
    }

    fn row(&self, what: &str, tool: &str) -> String {
        let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
        format!(
            "| {what} | {tool} | {} | {} | {} | {} |",
            self.samples.len(),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.9)),
            ms(self.quantile(0.99)),
        )
    }
}

/// ADD, DEL and ADD+DEL durations of a run of cycles.
#[derive(Default)]
struct Series {
    add: Vec<Duration>,
    del: Vec<Duration>,
    add_del: Vec<Duration>,
}

impl Series {
    fn extend(&mut self, other: Series) {
        self.add.extend(other.add);
        self.del.extend(other.del);
        self.add_del.extend(other.add_del);
    }

    fn rows(&self, scenario: &str, runtime: &str) -> [String; 3] {
        [
            ("CNI ADD", &self.add),
            ("CNI DEL", &self.del),
            ("CNI ADD+DEL", &self.add_del),
        ]
        .map(|(op, samples)| Stats::new(samples.clone()).row(&format!("{op}, {scenario}"), runtime))
    }
}

/// Both runtimes run in alternating blocks, so drift (page cache, conntrack, host-local's
/// lease scan) does not favour whichever runs first.
const BLOCKS: usize = 4;

/// Namespaces and dirs of one benchmark run, removed on drop.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// The node: a lab machine, where the bridge and host-side veths go.
    fn node(&self) -> Machine {
        Machine::at(self.dir.path().join("node"))
    }
    fn pod(&self) -> PathBuf {
        self.dir.path().join("pod")
    }
    fn noop_bin_dir(&self) -> PathBuf {
        self.dir.path().join("noop-bin")
    }
    /// Links to sandboxd-cni as bridge, host-local and loopback.
    fn own_bin_dir(&self) -> PathBuf {
        self.dir.path().join("own-bin")
    }
    /// The plugin dirs both runtimes search: the no-op plugin's, then Debian's.
    fn cni_path(&self) -> String {
        format!(
            "{}:/usr/lib/cni:/opt/cni/bin",
            self.noop_bin_dir().display()
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = netns::unpin(&self.pod()) {
            eprintln!("cni-bench: {e}");
        }
        if let Err(e) = self.node().remove() {
            eprintln!("cni-bench: {e:#}");
        }
    }
}

fn conflist(ipam_dir: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            { "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
              "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.244.1.0/24" }]],
                        "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": ipam_dir } },
            { "type": "portmap", "capabilities": { "portMappings": true } },
            { "type": "loopback" }
        ]
    })
}

/// The same chain on a bridge of its own with an IPv4 and an IPv6 range.
fn dual_stack_conflist(ipam_dir: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": DUAL_NETWORK,
        "plugins": [
            { "type": "bridge", "bridge": "cni1", "isDefaultGateway": true,
              "ipam": { "type": "host-local", "dataDir": ipam_dir, "ranges": [
                  [{ "subnet": "10.244.2.0/24" }], [{ "subnet": "fd00:10:244:2::/64" }]] } },
            { "type": "portmap", "capabilities": { "portMappings": true } },
            { "type": "loopback" }
        ]
    })
}

/// What is measured: pods on the upstream chain without a hostPort (portmap does nothing)
/// and with one (portmap adds and removes iptables rules, which dominates their cost), and
/// a chain of three no-op plugins, which leaves only the runtime's own work per call
/// (spawn, pipes, JSON, the cache write).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    NoHostPort,
    OneHostPort,
    NoopChain,
    /// NoHostPort with sandboxd-cni's plugins.
    OwnPlugins,
    /// OneHostPort with sandboxd-cni's plugins (portmap in nftables).
    OwnPluginsHostPort,
    /// OwnPlugins run inside cni-host's process (sandboxd's `--cni-plugins own` path).
    OwnInProcess,
    /// OwnPluginsHostPort run inside cni-host's process.
    OwnInProcessHostPort,
    /// OneHostPort on a dual-stack network: an address, gateway, route and forward of
    /// each family.
    DualStack,
    /// DualStack with sandboxd-cni's plugins.
    OwnDualStack,
    /// OwnDualStack run inside cni-host's process.
    OwnInProcessDualStack,
}

const NOOP_NETWORK: &str = "noop";
const DUAL_NETWORK: &str = "bench-dual";

impl Scenario {
    fn network(self) -> &'static str {
        match self {
            Scenario::NoopChain => NOOP_NETWORK,
            Scenario::DualStack | Scenario::OwnDualStack | Scenario::OwnInProcessDualStack => {
                DUAL_NETWORK
            }
            _ => NETWORK,
        }
    }

    fn port_mappings(self) -> Option<serde_json::Value> {
        match self {
            Scenario::NoHostPort
            | Scenario::NoopChain
            | Scenario::OwnPlugins
            | Scenario::OwnInProcess => None,
            Scenario::OneHostPort
            | Scenario::OwnPluginsHostPort
            | Scenario::OwnInProcessHostPort
            | Scenario::DualStack
            | Scenario::OwnDualStack
            | Scenario::OwnInProcessDualStack => {
                Some(json!([{ "hostPort": 8080, "containerPort": 80, "protocol": "tcp" }]))
            }
        }
    }

    fn own(self) -> bool {
        matches!(
            self,
            Scenario::OwnPlugins
                | Scenario::OwnPluginsHostPort
                | Scenario::OwnInProcess
                | Scenario::OwnInProcessHostPort
                | Scenario::OwnDualStack
                | Scenario::OwnInProcessDualStack
        )
    }

    fn in_process(self) -> bool {
        matches!(
            self,
            Scenario::OwnInProcess
                | Scenario::OwnInProcessHostPort
                | Scenario::OwnInProcessDualStack
        )
    }

    fn label(self) -> &'static str {
        match self {
            Scenario::NoHostPort => "no hostPort",
            Scenario::OneHostPort => "1 hostPort",
            Scenario::NoopChain => "3 no-op plugins",
            Scenario::OwnPlugins => "no hostPort, sandboxd-cni's plugins (processes)",
            Scenario::OwnPluginsHostPort => "1 hostPort, sandboxd-cni's plugins (processes)",
            Scenario::OwnInProcess => "no hostPort, sandboxd-cni's plugins (in-process)",
            Scenario::OwnInProcessHostPort => "1 hostPort, sandboxd-cni's plugins (in-process)",
            Scenario::DualStack => "dual-stack, 1 hostPort",
            Scenario::OwnDualStack => "dual-stack, 1 hostPort, sandboxd-cni's plugins (processes)",
            Scenario::OwnInProcessDualStack => {
                "dual-stack, 1 hostPort, sandboxd-cni's plugins (in-process)"
            }
        }
    }
}

fn rt(pod: &Path, cycle: usize, scenario: Scenario) -> RuntimeConf {
    let id = format!("bench-{cycle}");
    let mut rt =
        RuntimeConf::new(&id, pod.display().to_string(), "eth0").with_pod("default", &id, &id);
    if let Some(mappings) = scenario.port_mappings() {
        rt.capability_args.insert("portMappings".into(), mappings);
    }
    rt
}

async fn bench_cni_host(
    scratch: &Scratch,
    list: &NetworkConfigList,
    cycles: usize,
    scenario: Scenario,
) -> Result<Series> {
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&scratch.cni_path()).collect();
    if scenario.own() {
        dirs.insert(0, scratch.own_bin_dir());
    }
    let cache = scratch.dir.path().join("cache-cni-host");
    let processes = scratch.node().netns().plugin_exec();
    if scenario.in_process() {
        let own = std::env::current_exe()?.with_file_name("sandboxd-cni");
        let exec = InProcessExec::new(processes, Some(&own));
        cycle(
            &CniHost::with_exec(dirs, cache, exec),
            scratch,
            list,
            cycles,
            scenario,
        )
        .await
    } else {
        cycle(
            &CniHost::with_exec(dirs, cache, processes),
            scratch,
            list,
            cycles,
            scenario,
        )
        .await
    }
}

async fn cycle<E: PluginExec>(
    host: &CniHost<E>,
    scratch: &Scratch,
    list: &NetworkConfigList,
    cycles: usize,
    scenario: Scenario,
) -> Result<Series> {
    // One warm-up cycle creates the bridge and learns the plugins' versions.
    host.add(list, &rt(&scratch.pod(), usize::MAX, scenario))
        .await?;
    host.del(list, &rt(&scratch.pod(), usize::MAX, scenario))
        .await?;
    let mut series = Series::default();
    for cycle in 0..cycles {
        let rt = rt(&scratch.pod(), cycle, scenario);
        let start = Instant::now();
        host.add(list, &rt)
            .await
            .with_context(|| format!("ADD {cycle}"))?;
        let added = Instant::now();
        host.del(list, &rt)
            .await
            .with_context(|| format!("DEL {cycle}"))?;
        let done = Instant::now();
        series.add.push(added - start);
        series.del.push(done - added);
        series.add_del.push(done - start);
    }
    Ok(series)
}

fn bench_libcni(
    scratch: &Scratch,
    harness: &Path,
    conf_dir: &Path,
    cycles: usize,
    scenario: Scenario,
) -> Result<Series> {
    let mut args = vec![
        conf_dir.display().to_string(),
        scenario.network().into(),
        scratch.pod().display().to_string(),
        scratch
            .dir
            .path()
            .join("cache-libcni")
            .display()
            .to_string(),
        cycles.to_string(),
    ];
    if let Some(mappings) = scenario.port_mappings() {
        args.push(mappings.to_string());
    }
    let out = scratch
        .node()
        .command(&harness.display().to_string())
        .args(&args)
        .env("CNI_PATH", scratch.cni_path())
        .output()
        .context("run the libcni harness")?;
    if !out.status.success() {
        bail!(
            "libcni harness failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let out = String::from_utf8(out.stdout)?;
    let doc: serde_json::Value = serde_json::from_str(&out).context("libcni harness output")?;
    let samples = |key: &str| -> Result<Vec<Duration>> {
        let values = doc[key]
            .as_array()
            .with_context(|| format!("no {key} in libcni output"))?;
        Ok(values
            .iter()
            .filter_map(|v| v.as_u64())
            .map(Duration::from_nanos)
            .collect())
    };
    Ok(Series {
        add: samples("add_ns")?,
        del: samples("del_ns")?,
        add_del: samples("add_del_ns")?,
    })
}

async fn bench_pause(rounds: usize) -> Result<(u64, u64, Stats)> {
    let binary = pause::locate(None)?;
    let size = std::fs::metadata(&binary)?.len();
    let dir = tempfile::tempdir()?;
    let mut rss = 0;
    let mut starts = Vec::new();
    for round in 0..rounds {
        let start = Instant::now();
        let pid = pause::spawn(
            &binary,
            "bench",
            &pause::PodNamespaces {
                hostname: Some("bench".into()),
                ..Default::default()
            },
        )?;
        let pin = netns::pin(dir.path(), &format!("p{round}"), pid);
        starts.push(start.elapsed());
        if round == 0 {
            // Let it reach pause(2) before reading its memory.
            std::thread::sleep(Duration::from_millis(50));
            rss = rss_kib(pid)?;
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        pause::reap(pid).await?;
        netns::unpin(&pin?)?;
    }
    Ok((size, rss, Stats::new(starts)))
}

/// The kernel's share of a DEL, over the same netlink sockets the plugins use, in the
/// node: deleting a veth pair against reading one link, an nf_tables batch that removes
/// a hostPort's map element and chain against listing the table's chains, and closing a
/// socket right after such a batch (the kernel then finishes its deferred destruction).
fn bench_kernel_floor(scratch: &Scratch, cycles: usize) -> Result<[Stats; 6]> {
    use sandboxd::netlink::nftables::NftSocket;
    use sandboxd::netlink::RouteSocket;
    use sandboxd::service::plan::{
        BaseChain, ChainType, Hook, Key, MapKey, Op, Plan, Rule, Verdict,
    };
    use sandboxd::service::Protocol;
    const TABLE: &str = "cni-bench-floor";
    const MAP: &str = "ports";
    let node = scratch.node();
    let mut links = RouteSocket::open_in(Some(node.path()))?;
    // The alternative to deleting: moving the pair into a namespace about to be dropped,
    // whose cleanup would free it in the background.
    let elsewhere = std::fs::File::open(scratch.pod())?;
    let mut there = RouteSocket::open_in(Some(&scratch.pod()))?;
    let (mut read, mut delete, mut moved) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cycles {
        let start = Instant::now();
        links.link("lo")?;
        read.push(start.elapsed());
        links.add_veth("floor-a", "floor-b", None)?;
        let veth = links.link("floor-a")?.context("the veth just made")?;
        let start = Instant::now();
        links.delete_link(veth.index)?;
        delete.push(start.elapsed());
        links.add_veth("floor-a", "floor-b", None)?;
        let veth = links.link("floor-a")?.context("the veth just made")?;
        let start = Instant::now();
        links.move_to_netns(veth.index, std::os::fd::AsFd::as_fd(&elsewhere))?;
        moved.push(start.elapsed());
        let veth = there.link("floor-a")?.context("the veth just moved")?;
        there.delete_link(veth.index)?;
    }
    let mut nft = NftSocket::open_in(Some(node.path()))?;
    let mut plan = Plan::default();
    plan.ops.push(Op::AddTable);
    plan.ops.push(Op::AddMap {
        name: MAP,
        key: MapKey::ProtocolPort,
    });
    // As portmap's table: the map dispatched to from a nat hook.
    plan.ops.push(Op::AddChain {
        name: "prerouting".into(),
        base: Some(BaseChain {
            chain_type: ChainType::Nat,
            hook: Hook::Prerouting,
            priority: -100,
        }),
    });
    plan.ops.push(Op::AddRule {
        chain: "prerouting".into(),
        rule: Rule::AnyLocalPortVmap(MAP),
    });
    nft.apply_to(Family::V4, TABLE, &plan)?;
    let (mut list, mut unlink, mut close) = (Vec::new(), Vec::new(), Vec::new());
    for cycle in 0..cycles {
        let chain = format!("hp/{cycle}");
        let key = Key::NodePort(Protocol::Tcp, 10_000 + cycle as u16);
        let mut add = Plan::default();
        add.ops.push(Op::AddChain {
            name: chain.clone(),
            base: None,
        });
        add.ops.push(Op::AddRule {
            chain: chain.clone(),
            rule: Rule::Dnat(Protocol::Tcp, "10.244.1.2:80".parse()?),
        });
        add.ops.push(Op::ClaimElement {
            map: MAP,
            key,
            verdict: Verdict::Goto(chain.clone()),
        });
        nft.apply_to(Family::V4, TABLE, &add)?;
        let start = Instant::now();
        nft.chains(Family::V4, TABLE)?;
        list.push(start.elapsed());
        let mut del = Plan::default();
        del.ops.push(Op::DeleteElement { map: MAP, key });
        del.ops.push(Op::FlushChain(chain.clone()));
        del.ops.push(Op::DeleteChain(chain));
        // Every other cycle on a socket of its own, closed at once, as a plugin process's.
        if cycle % 2 == 0 {
            let start = Instant::now();
            nft.apply_to(Family::V4, TABLE, &del)?;
            unlink.push(start.elapsed());
        } else {
            let mut own = NftSocket::open_in(Some(node.path()))?;
            own.apply_to(Family::V4, TABLE, &del)?;
            let start = Instant::now();
            drop(own);
            close.push(start.elapsed());
        }
    }
    let mut drop_table = Plan::default();
    drop_table.ops.push(Op::DeleteTable);
    nft.apply_to(Family::V4, TABLE, &drop_table)?;
    Ok([read, delete, moved, list, unlink, close].map(Stats::new))
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut cycles = 200;
    let mut libcni: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--cycles" => cycles = args.next().context("--cycles N")?.parse()?,
            "--libcni" => libcni = Some(args.next().context("--libcni PATH")?.into()),
            other => {
                bail!("unknown argument {other:?}; usage: cni-bench [--cycles N] [--libcni PATH]")
            }
        }
    }
    if cycles == 0 {
        bail!("--cycles must be at least 1");
    }

    let (size, rss, starts) = bench_pause(cycles).await?;

    let scratch = Scratch {
        dir: tempfile::Builder::new().prefix("cni-bench-").tempdir()?,
    };
    Machine::create(scratch.node().path())?;
    netns::create(&scratch.pod())?;
    let conf_dir = scratch.dir.path().join("net.d");
    std::fs::create_dir_all(&conf_dir)?;
    let doc = conflist(&scratch.dir.path().join("ipam"));
    std::fs::write(conf_dir.join("10-bench.conflist"), doc.to_string())?;
    let dual = dual_stack_conflist(&scratch.dir.path().join("ipam"));
    std::fs::write(conf_dir.join("30-dual.conflist"), dual.to_string())?;
    // The no-op plugin is the workspace's fake CNI plugin without a script.
    let fake = std::env::current_exe()?.with_file_name("cni-fake-plugin");
    if !fake.is_file() {
        bail!(
            "{} is missing: cargo build --release --workspace",
            fake.display()
        );
    }
    std::fs::create_dir_all(scratch.noop_bin_dir())?;
    std::os::unix::fs::symlink(&fake, scratch.noop_bin_dir().join("noop"))?;
    let noop = json!({ "cniVersion": "1.0.0", "name": NOOP_NETWORK,
        "plugins": [{ "type": "noop" }, { "type": "noop" }, { "type": "noop" }] });
    std::fs::write(conf_dir.join("20-noop.conflist"), noop.to_string())?;
    let own = std::env::current_exe()?.with_file_name("sandboxd-cni");
    if !own.is_file() {
        bail!(
            "{} is missing: cargo build --release --workspace",
            own.display()
        );
    }
    std::fs::create_dir_all(scratch.own_bin_dir())?;
    for name in ["bridge", "host-local", "portmap", "loopback"] {
        std::os::unix::fs::symlink(&own, scratch.own_bin_dir().join(name))?;
    }

    println!(
        "run {} on {} ({} cores), {cycles} cycles each",
        new_id()?.get(..8).unwrap_or(""),
        run("uname", &["-r"])?.trim(),
        std::thread::available_parallelism()?.get()
    );
    println!();
    println!("| pause | value |");
    println!("| --- | --- |");
    println!("| binary size (stripped, static) | {size} bytes |");
    println!("| resident memory while running (VmRSS) | {rss} KiB |");
    println!();
    println!("| operation | runtime | n | median ms | p90 ms | p99 ms |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!("{}", starts.row("pause start + netns pin", "sandboxd"));
    for scenario in [
        Scenario::NoHostPort,
        Scenario::OneHostPort,
        Scenario::NoopChain,
        Scenario::OwnPlugins,
        Scenario::OwnPluginsHostPort,
        Scenario::OwnInProcess,
        Scenario::OwnInProcessHostPort,
        Scenario::DualStack,
        Scenario::OwnDualStack,
        Scenario::OwnInProcessDualStack,
    ] {
        let list = cni_host::load_network(&conf_dir, scenario.network())?;
        let (mut ours, mut theirs) = (Series::default(), Series::default());
        for block in 0..BLOCKS {
            let block_cycles = cycles / BLOCKS + usize::from(block < cycles % BLOCKS);
            ours.extend(bench_cni_host(&scratch, &list, block_cycles, scenario).await?);
            if let Some(harness) = libcni.as_ref().filter(|_| !scenario.own()) {
                theirs.extend(bench_libcni(
                    &scratch,
                    harness,
                    &conf_dir,
                    block_cycles,
                    scenario,
                )?);
            }
        }
        let ours = ours.rows(scenario.label(), "cni-host (Rust)");
        let theirs = libcni
            .as_ref()
            .filter(|_| !scenario.own())
            .map(|_| theirs.rows(scenario.label(), "libcni 1.1.2 (Go)"));
        for (i, row) in ours.iter().enumerate() {
            println!("{row}");
            if let Some(theirs) = &theirs {
                println!("{}", theirs[i]);
            }
        }
    }
    let [read, delete, moved, list, unlink, close] = bench_kernel_floor(&scratch, cycles)?;
    for (stats, what) in [
        (read, "netlink: read one link (a round trip)"),
        (delete, "netlink: delete a veth pair"),
        (moved, "netlink: move a veth end to another namespace"),
        (list, "nf_tables: list a table's chains (a round trip)"),
        (
            unlink,
            "nf_tables: remove a hostPort's element and chain (one batch)",
        ),
        (close, "nf_tables: close the socket after such a batch"),
    ] {
        println!("{}", stats.row(what, "the kernel"));
    }
    Ok(())
}
