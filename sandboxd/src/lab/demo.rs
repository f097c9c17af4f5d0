//! `sandboxctl lab demo`: the seeds' walk-through on a lab that is up. It applies the seeds'
//! manifests unchanged and shows, command and real output, what the seeds look at on their
//! kubeadm cluster — the pause container and `container:<pause-id>`, `lsns`, the pod's
//! interface, each node's routes, bridge ports, flannel.1's neighbours and FDB entries, a
//! request from pod-src to pod-dest across the overlay, the same through svc-clusterip,
//! svc-nodeport held on every node and reached from k8s-master — with a capture of each
//! cross-node path on the nodes' eth1. Every step checks what it shows; the first check
//! that fails ends the demo with an error naming the step.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use super::{Lab, LabState, CONTROL_PLANE};
use crate::capture::{Capture, Packet};
use crate::cidr::Ipv4Cidr;
use crate::cluster::setup::DaemonPaths;
use crate::overlay::Backend;

/// The seeds' manifests, applied unchanged, in the order the walk-through uses them.
pub const MANIFESTS: [&str; 5] = [
    "pod-pause.yaml",
    "pod-dest.yaml",
    "pod-src.yaml",
    "svc-clusterip.yaml",
    "svc-nodeport.yaml",
];

/// The steps, in order: `lab demo` names a failed one by its number and title.
pub const STEPS: [&str; 12] = [
    "the lab",
    "pod-pause on k8s-node1",
    "the pause container beside the pod's containers",
    "NetworkMode container:<pause-id>",
    "lsns: net and ipc are pause's",
    "the pod's eth0",
    "pod-dest and pod-src on their nodes",
    "routes, cni0 and the overlay on every node",
    "pod-src → pod-dest across the overlay",
    "pod-src → svc-clusterip → pod-dest",
    "svc-nodeport 31080 held open on every node",
    "k8s-master → k8s-node2:31080 → pod-dest",
];

/// A step that failed: which, and why.
#[derive(Debug)]
pub struct StepFailed {
    pub step: usize,
    pub reason: String,
}

impl std::fmt::Display for StepFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step {} ({}) failed: {}",
            self.step,
            STEPS[self.step - 1],
            self.reason
        )
    }
}

impl std::error::Error for StepFailed {}

/// Runs the walk-through on `lab`, the manifests read from `manifests`, writing to `out`.
/// What it applies it deletes again at the end, also after a failed step, so the demo can
/// run again on the same lab.
pub fn run(lab: &Lab, manifests: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let state = lab
        .load()?
        .context("no lab is up: run `sandboxctl lab up` first")?;
    for manifest in MANIFESTS {
        let path = manifests.join(manifest);
        anyhow::ensure!(
            path.is_file(),
            "{} is missing: --manifests must name the dir with the seeds' manifests (examples/)",
            path.display()
        );
    }
    let sandboxctl = crate::config::locate_beside_exe("sandboxctl", None).map_err(|searched| {
        anyhow::anyhow!("sandboxctl not found (looked at {})", searched.join(", "))
    })?;
    let mut demo = Demo {
        lab,
        state,
        manifests: manifests.to_path_buf(),
        sandboxctl,
        out,
        step: 0,
        started: Instant::now(),
    };
    let outcome = demo.walk();
    demo.clean_up();
    let seconds = demo.started.elapsed().as_secs_f64();
    match outcome {
        Ok(()) => {
            writeln!(
                demo.out,
                "\nall {} steps checked in {seconds:.1}s",
                STEPS.len()
            )?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

struct Demo<'a> {
    lab: &'a Lab,
    state: LabState,
    manifests: PathBuf,
    sandboxctl: PathBuf,
    out: &'a mut dyn Write,
    step: usize,
    started: Instant,
}

/// What the walk-through learns as it goes.
struct Pod {
    id: String,
    ip: Ipv4Addr,
}

type Step<T> = Result<T, StepFailed>;

impl Demo<'_> {
    fn walk(&mut self) -> Step<()> {
        self.begin();
        let status = self.ctl(&["lab", "status"])?;
        for node in self.state.nodes.clone() {
            self.check(
                status
                    .lines()
                    .any(|l| l.starts_with(&node.name) && l.contains("running")),
                &format!("{}'s sandboxd runs", node.name),
            )?;
        }
        self.check(
            status.contains("etcd: healthy"),
            "etcd answers on k8s-master",
        )?;

        // The first seed: pod-pause, its pause container and its namespaces.
        self.begin();
        self.apply("pod-pause.yaml")?;
        let pods = self.ctl(&["get", "pods", "-o", "wide"])?;
        self.check(
            row(&pods, "pod-pause")
                .is_some_and(|r| r.contains("Running") && r.contains("k8s-node1")),
            "pod-pause is Running on k8s-node1, as its nodeSelector says",
        )?;

        self.begin();
        let pod = self.pod("k8s-node1", "pod-pause")?;
        self.ctl(&["--node", "k8s-node1", "pods", "--name", "pod-pause"])?;
        let containers = self.ctl(&["--node", "k8s-node1", "ps", "--pod", "pod-pause"])?;
        for name in ["container1", "container2"] {
            self.check(
                containers
                    .lines()
                    .any(|l| l.contains(name) && l.contains("Running")),
                &format!("{name} runs in pod-pause, beside its pause (the sandbox)"),
            )?;
        }

        self.begin();
        let c1 = self.container("k8s-node1", "pod-pause", "container1")?;
        let c2 = self.container("k8s-node1", "pod-pause", "container2")?;
        let inspect = self.ctl_quiet(&["--node", "k8s-node1", "inspect", &c1])?;
        let mode = json_at(&inspect, "/info/networkMode").unwrap_or_default();
        self.show(
            &format!(
                "sandboxctl --node k8s-node1 inspect {} | grep networkMode",
                &c1[..12]
            ),
            &format!("    \"networkMode\": \"{mode}\"\n"),
        );
        self.check(
            mode == format!("container:{}", pod.id),
            "container1's network mode is container:<pod-pause's pause id>",
        )?;

        self.begin();
        let inspectp = self.ctl_quiet(&["--node", "k8s-node1", "inspectp", &pod.id])?;
        let pause_pid =
            json_at(&inspectp, "/info/pid").context_step(self.step, "no pid in inspectp")?;
        let namespaces = |demo: &mut Self, pid: &str| -> Step<Vec<(String, String)>> {
            let text = demo.run(&format!("lsns -p {pid}"), "lsns", &["-p", pid])?;
            Ok(text
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let mut cells = l.split_whitespace();
                    let inode = cells.next()?.to_string();
                    Some((cells.next()?.to_string(), inode))
                })
                .collect())
        };
        let of_pause = namespaces(self, &pause_pid)?;
        for container in [&c1, &c2] {
            let inspect = self.ctl_quiet(&["--node", "k8s-node1", "inspect", container])?;
            let pid =
                json_at(&inspect, "/info/pid").context_step(self.step, "no pid in inspect")?;
            let of_container = namespaces(self, &pid)?;
            let same = |kind: &str| {
                let a = of_pause.iter().find(|(k, _)| k == kind);
                a.is_some() && a == of_container.iter().find(|(k, _)| k == kind)
            };
            self.check(
                same("net") && same("ipc") && !same("mnt") && !same("uts") && !same("pid"),
                &format!(
                    "{}: net and ipc are pause's, mnt, uts and pid its own",
                    &container[..12]
                ),
            )?;
        }

        self.begin();
        let netns =
            json_at(&inspectp, "/info/netnsPath").context_step(self.step, "no netnsPath")?;
        let addresses = self.run(
            &format!("nsenter --net={netns} ip -br addr show eth0   # the pod's netns, as inspectp names it"),
            "nsenter",
            &[&format!("--net={netns}"), "ip", "-br", "addr", "show", "eth0"],
        )?;
        self.check(
            addresses.contains(&format!("{}/24", pod.ip)),
            &format!("eth0 holds pod-pause's IP {}", pod.ip),
        )?;

        // The second seed: pod-src calls pod-dest on another node.
        self.begin();
        self.apply("pod-dest.yaml")?;
        self.apply("pod-src.yaml")?;
        let pods = self.ctl(&["--node", "k8s-node2", "get", "pods", "-o", "wide"])?;
        for (name, node) in [("pod-dest", "k8s-node1"), ("pod-src", "k8s-node2")] {
            self.check(
                row(&pods, name).is_some_and(|r| r.contains("Running") && r.contains(node)),
                &format!("{name} is Running on {node}"),
            )?;
        }
        let dest = self.pod("k8s-node1", "pod-dest")?;
        let src_container = self.container("k8s-node2", "pod-src", "")?;

        self.begin();
        self.overlay_objects()?;

        self.begin();
        let url = format!("http://{}:8080/hostname", dest.ip);
        let seen = self.fetch_seen("k8s-node2", &src_container, &url, "k8s-node2", |p| {
            touches(p, dest.ip)
        })?;
        self.check_envelope(&seen, dest.ip, None)?;

        self.begin();
        self.apply("svc-clusterip.yaml")?;
        let services = self.ctl(&["get", "svc"])?;
        let cluster_ip: Ipv4Addr = row(&services, "svc-clusterip")
            .and_then(|r| r.split_whitespace().nth(2)?.parse().ok())
            .context_step(self.step, "svc-clusterip has no ClusterIP in `get svc`")?;
        self.ctl(&["get", "endpoints", "svc-clusterip"])?;
        let url = format!("http://{cluster_ip}:8080/hostname");
        let seen = self.fetch_seen("k8s-node2", &src_container, &url, "k8s-node2", |p| {
            touches(p, dest.ip) || touches(p, cluster_ip)
        })?;
        self.check_envelope(&seen, dest.ip, Some(cluster_ip))?;

        self.begin();
        self.apply("svc-nodeport.yaml")?;
        for node in self.state.nodes.clone() {
            let listening = self.on_node(&node.name, &["ss", "-ltnH", "sport = :31080"])?;
            self.check(
                listening.contains("0.0.0.0:31080"),
                &format!("{} holds 31080 open", node.name),
            )?;
        }

        self.begin();
        let node2 = self.node_ip("k8s-node2")?;
        let url = format!("http://{node2}:31080/hostname");
        let node2_subnet = self.subnet("k8s-node2")?;
        let mut capture = self.capture("k8s-node1")?;
        let body = self.on_node(CONTROL_PLANE, &["curl", "-sS", "--max-time", "5", &url])?;
        self.check(
            body.trim() == "pod-dest",
            "k8s-master reached pod-dest through k8s-node2:31080",
        )?;
        let seen = self.drain(&mut capture, "k8s-node1", |p| touches(p, dest.ip))?;
        // Masqueraded to k8s-node2's address toward k8s-node1: flannel.1's under VXLAN,
        // eth1's under host-gw.
        let (masqueraded, vxlan) = match self.state.backend {
            Backend::Vxlan => (node2_subnet.addr, true),
            Backend::HostGw => (node2, false),
        };
        self.check(
            seen.iter().any(|p| match p.vxlan {
                Some((vni, inner)) => {
                    vxlan && vni == 1 && inner.src == masqueraded && inner.dst == dest.ip
                }
                None => !vxlan && p.outer.src == masqueraded && p.outer.dst == dest.ip,
            }),
            &format!(
                "on k8s-node1's eth1 the request comes from {masqueraded} (k8s-node2 masqueraded it, so the reply returns through k8s-node2)"
            ),
        )?;
        Ok(())
    }

    /// Starts the next step: its number and title.
    fn begin(&mut self) {
        self.step += 1;
        let _ = writeln!(
            self.out,
            "\n\u{2501}\u{2501} {}. {} \u{2501}\u{2501}",
            self.step,
            STEPS[self.step - 1]
        );
    }

    fn fail(&self, reason: impl Into<String>) -> StepFailed {
        StepFailed {
            step: self.step,
            reason: reason.into(),
        }
    }

    fn check(&mut self, ok: bool, what: &str) -> Step<()> {
        if !ok {
            let _ = writeln!(self.out, "  \u{2717} {what}");
            return Err(self.fail(format!("expected: {what}")));
        }
        let _ = writeln!(self.out, "  \u{2713} {what}");
        Ok(())
    }

    fn show(&mut self, command: &str, output: &str) {
        let _ = writeln!(self.out, "$ {command}");
        let _ = write!(self.out, "{output}");
    }

    /// Runs a command, shows it as `display` with its output, and returns the output.
    fn run(&mut self, display: &str, program: &str, args: &[&str]) -> Step<String> {
        let output = self.output(program, args.iter().map(OsString::from))?;
        self.show(display, &output);
        Ok(output)
    }

    fn output(&self, program: &str, args: impl IntoIterator<Item = OsString>) -> Step<String> {
        let mut command = if program == "sandboxctl" {
            let mut command = Command::new(&self.sandboxctl);
            command.env("SANDBOXD_LAB_DIR", self.lab.root());
            command
        } else {
            Command::new(program)
        };
        let args: Vec<OsString> = args.into_iter().collect();
        let output = command
            .args(&args)
            .output()
            .map_err(|e| self.fail(format!("run {program}: {e}")))?;
        if !output.status.success() {
            return Err(self.fail(format!(
                "{program} {} failed: {}",
                args.iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `sandboxctl ARGS`, shown.
    fn ctl(&mut self, args: &[&str]) -> Step<String> {
        let display = format!("sandboxctl {}", shell_words(args));
        self.run(&display, "sandboxctl", args)
    }

    /// `sandboxctl ARGS`, not shown (ids and documents the walk-through reads).
    fn ctl_quiet(&mut self, args: &[&str]) -> Step<String> {
        self.output("sandboxctl", args.iter().map(OsString::from))
    }

    fn apply(&mut self, manifest: &str) -> Step<String> {
        let path = self.manifests.join(manifest);
        let shown = format!("sandboxctl apply -f examples/{manifest}");
        let output = self.output(
            "sandboxctl",
            ["apply".into(), "-f".into(), path.into_os_string()],
        )?;
        self.show(&shown, &output);
        Ok(output)
    }

    /// A command on a node: `ip netns exec NODE …` in the default lab (its nodes are named
    /// there), `nsenter --net=PIN …` in a lab rooted elsewhere.
    fn on_node(&mut self, node: &str, args: &[&str]) -> Step<String> {
        let machine = self.lab.machine(node);
        let (display, program, mut all): (String, &str, Vec<String>) = if self.state.named {
            (
                format!("ip netns exec {node} {}", shell_words(args)),
                "ip",
                vec!["netns".into(), "exec".into(), node.into()],
            )
        } else {
            let net = format!("--net={}", machine.path().display());
            (
                format!("nsenter {net} {}   # {node}", shell_words(args)),
                "nsenter",
                vec![net],
            )
        };
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let output = self.output(program, all.iter().map(OsString::from))?;
        self.show(&display, &output);
        Ok(output)
    }

    /// A pod's sandbox id and IP, as its node has them.
    fn pod(&mut self, node: &str, name: &str) -> Step<Pod> {
        let id = self
            .ctl_quiet(&["--node", node, "pods", "--name", name, "-q", "--no-trunc"])?
            .lines()
            .next()
            .map(str::to_string)
            .ok_or_else(|| self.fail(format!("{node} runs no pod {name}")))?;
        let inspectp = self.ctl_quiet(&["--node", node, "inspectp", &id])?;
        let ip = json_at(&inspectp, "/status/network/ip")
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| self.fail(format!("{name} has no IP")))?;
        Ok(Pod { id, ip })
    }

    /// The id of a pod's container (its first when `name` is empty).
    fn container(&mut self, node: &str, pod: &str, name: &str) -> Step<String> {
        let mut args = vec!["--node", node, "ps", "--pod", pod, "-q", "--no-trunc"];
        if !name.is_empty() {
            args.extend(["--name", name]);
        }
        self.ctl_quiet(&args)?
            .lines()
            .next()
            .map(str::to_string)
            .ok_or_else(|| self.fail(format!("{pod} on {node} has no container {name}")))
    }

    fn node_ip(&self, node: &str) -> Step<Ipv4Addr> {
        self.state
            .nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| n.ip)
            .ok_or_else(|| self.fail(format!("the lab has no node {node}")))
    }

    /// The /24 a node leased: the subnet of the pod network it wrote.
    fn subnet(&self, node: &str) -> Step<Ipv4Cidr> {
        let file = DaemonPaths::under(&self.lab.node_dir(node)).pod_network();
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| network_subnet(&text))
            .ok_or_else(|| self.fail(format!("{node} has no pod subnet in {}", file.display())))
    }

    /// Each node's routes, bridge ports and overlay entries: one for every other node.
    fn overlay_objects(&mut self) -> Step<()> {
        let nodes = self.state.nodes.clone();
        let vxlan = self.state.backend == Backend::Vxlan;
        for node in &nodes {
            let routes = self.on_node(&node.name, &["ip", "route"])?;
            let ports = self.on_node(&node.name, &["bridge", "link", "show"])?;
            let own = self.subnet(&node.name)?;
            if ports.contains("master cni0") {
                self.check(
                    routes.contains(&format!("{own} dev cni0")),
                    &format!(
                        "{}: its pods' {own} is on cni0, their veths its ports",
                        node.name
                    ),
                )?;
            }
            let (neighbours, fdb) = if vxlan {
                let link = self.on_node(&node.name, &["ip", "-d", "link", "show", "flannel.1"])?;
                self.check(
                    link.contains("vxlan id 1 ")
                        && link.contains("dstport 8472")
                        && link.contains("nolearning")
                        && link.contains("mtu 1450"),
                    &format!(
                        "{}: flannel.1 is VXLAN VNI 1, port 8472, no learning, MTU 1450",
                        node.name
                    ),
                )?;
                (
                    self.on_node(&node.name, &["ip", "neigh", "show", "dev", "flannel.1"])?,
                    self.on_node(&node.name, &["bridge", "fdb", "show", "dev", "flannel.1"])?,
                )
            } else {
                (String::new(), String::new())
            };
            for peer in nodes.iter().filter(|p| p.name != node.name) {
                let subnet = self.subnet(&peer.name)?;
                let ok = if vxlan {
                    routes.contains(&format!(
                        "{subnet} via {} dev flannel.1 onlink",
                        subnet.addr
                    )) && neighbours.lines().any(|l| {
                        l.starts_with(&format!("{} ", subnet.addr)) && l.contains("PERMANENT")
                    }) && fdb
                        .lines()
                        .any(|l| l.contains(&format!("dst {} ", peer.ip)))
                } else {
                    routes.contains(&format!("{subnet} via {} dev eth1", peer.ip))
                };
                let what = if vxlan {
                    format!(
                        "{}: route, neighbour and FDB entry to {} ({subnet} via {} on flannel.1 → {})",
                        node.name, peer.name, subnet.addr, peer.ip
                    )
                } else {
                    format!(
                        "{}: a route to {} ({subnet} via {})",
                        node.name, peer.name, peer.ip
                    )
                };
                self.check(ok, &what)?;
            }
        }
        Ok(())
    }

    fn capture(&self, node: &str) -> Step<Capture> {
        Capture::open(Some(self.lab.machine(node).path()), "eth1")
            .map_err(|e| self.fail(format!("capture on {node}'s eth1: {e}")))
    }

    /// A request from a pod's container, with a capture on `capture_node`'s eth1 during it.
    fn fetch_seen(
        &mut self,
        node: &str,
        container: &str,
        url: &str,
        capture_node: &str,
        relevant: impl Fn(&Packet) -> bool,
    ) -> Step<Vec<Packet>> {
        let mut capture = self.capture(capture_node)?;
        let body = self.ctl(&["--node", node, "exec", container, "wget", "-qO-", url])?;
        self.check(body.trim() == "pod-dest", "pod-dest answered")?;
        self.drain(&mut capture, capture_node, relevant)
    }

    /// What the capture holds of the request, shown as tcpdump shows it.
    fn drain(
        &mut self,
        capture: &mut Capture,
        node: &str,
        relevant: impl Fn(&Packet) -> bool,
    ) -> Step<Vec<Packet>> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(500);
        while let Some(frame) = capture
            .next(deadline.saturating_duration_since(Instant::now()))
            .map_err(|e| self.fail(format!("capture on {node}'s eth1: {e}")))?
        {
            if let Some(packet) = Packet::parse(&frame.data).filter(|p| relevant(p)) {
                seen.push(packet);
            }
        }
        let mut text = String::new();
        for packet in seen.iter().take(6) {
            let _ = writeln!(text, "{packet}");
        }
        if seen.len() > 6 {
            let _ = writeln!(text, "… ({} packets of the request in all)", seen.len());
        }
        let filter = if self.state.backend == Backend::Vxlan {
            "-T vxlan udp port 8472"
        } else {
            "tcp port 8080 or tcp port 31080"
        };
        let prefix = if self.state.named {
            format!("ip netns exec {node} ")
        } else {
            String::new()
        };
        self.show(
            &format!(
                "{prefix}tcpdump -n -i eth1 {filter}   # {node}, during the request (a packet socket of sandboxd::capture)"
            ),
            &text,
        );
        Ok(seen)
    }

    /// The request crossed in VXLAN VNI 1 from k8s-node2 to k8s-node1, addressed to the
    /// pod; through a Service, never to the ClusterIP (k8s-node2 translated it first).
    fn check_envelope(
        &mut self,
        seen: &[Packet],
        pod: Ipv4Addr,
        cluster_ip: Option<Ipv4Addr>,
    ) -> Step<()> {
        let (node2, node1) = (self.node_ip("k8s-node2")?, self.node_ip("k8s-node1")?);
        if self.state.backend == Backend::Vxlan {
            self.check(
                seen.iter().any(|p| {
                    p.outer.src == node2
                        && p.outer.dst == node1
                        && p.outer.dst_port == Some(8472)
                        && p.vxlan.is_some_and(|(vni, inner)| vni == 1 && inner.dst == pod && inner.dst_port == Some(8080))
                }),
                &format!("on k8s-node2's eth1: UDP {node2} → {node1}:8472, VNI 1, inside it the request to the pod {pod}:8080"),
            )?;
        } else {
            self.check(
                seen.iter().any(|p| p.outer.dst == pod && p.outer.dst_port == Some(8080)),
                &format!("on k8s-node2's eth1: the request to the pod {pod}:8080, routed without a tunnel"),
            )?;
        }
        if let Some(cluster_ip) = cluster_ip {
            self.check(
                !seen.iter().any(|p| {
                    p.outer.dst == cluster_ip || p.vxlan.is_some_and(|(_, i)| i.dst == cluster_ip)
                }),
                &format!(
                    "the ClusterIP {cluster_ip} never left k8s-node2: it was translated there"
                ),
            )?;
        }
        Ok(())
    }

    /// Deletes what the walk-through applied.
    fn clean_up(&mut self) {
        for manifest in MANIFESTS.iter().rev() {
            let path = self.manifests.join(manifest);
            let _ = self.output(
                "sandboxctl",
                [
                    "delete".into(),
                    "-f".into(),
                    path.into_os_string(),
                    "--ignore-not-found".into(),
                    "--grace-period".into(),
                    "1".into(),
                ],
            );
        }
    }
}

/// Whether `ip` is an end of the packet, or of the packet inside its VXLAN envelope.
fn touches(packet: &Packet, ip: Ipv4Addr) -> bool {
    [packet.outer.src, packet.outer.dst].contains(&ip)
        || packet
            .vxlan
            .is_some_and(|(_, inner)| [inner.src, inner.dst].contains(&ip))
}

/// Arguments as a shell would need them typed (quoted where they hold spaces or
/// specials), a full 64-digit id shortened to the 13 digits crictl shows (any unique
/// prefix names an object).
fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|arg| {
            if arg.len() == 64 && arg.bytes().all(|b| b.is_ascii_hexdigit()) {
                arg[..13].to_string()
            } else if arg.is_empty()
                || arg
                    .bytes()
                    .any(|b| !(b.is_ascii_alphanumeric() || b"-_./:=,@+%".contains(&b)))
            {
                format!("'{}'", arg.replace('\'', "'\\''"))
            } else {
                arg.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The line of a table whose first cell is `name`.
fn row<'a>(table: &'a str, name: &str) -> Option<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
}

/// The value at a JSON pointer (`/info/pid`) of a document, as text.
fn json_at(document: &str, pointer: &str) -> Option<String> {
    let value: Value = serde_json::from_str(document).ok()?;
    match value.pointer(pointer)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The subnet of a pod network config (host-local's first range).
fn network_subnet(document: &str) -> Option<Ipv4Cidr> {
    let value: Value = serde_json::from_str(document).ok()?;
    let plugins = value.get("plugins")?.as_array()?;
    plugins.iter().find_map(|plugin| {
        plugin
            .pointer("/ipam/ranges/0/0/subnet")
            .or_else(|| plugin.pointer("/ipam/subnet"))?
            .as_str()?
            .parse()
            .ok()
    })
}

trait ContextStep<T> {
    fn context_step(self, step: usize, reason: &str) -> Step<T>;
}

impl<T> ContextStep<T> for Option<T> {
    fn context_step(self, step: usize, reason: &str) -> Step<T> {
        self.ok_or_else(|| StepFailed {
            step,
            reason: reason.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_documents_and_networks_are_read_where_sandboxctl_writes_them() {
        let doc = r#"{"status": {"network": {"ip": "10.244.1.2"}, "linux": {"pid": "CONTAINER"}}, "info": {"pid": 42}}"#;
        assert_eq!(
            json_at(doc, "/status/network/ip").as_deref(),
            Some("10.244.1.2")
        );
        assert_eq!(json_at(doc, "/info/pid").as_deref(), Some("42"));
        assert_eq!(json_at(doc, "/info/missing"), None);
        let network = r#"{"plugins": [{"type": "bridge", "ipam": {"ranges": [[{"subnet": "10.244.2.0/24"}]]}}]}"#;
        assert_eq!(
            network_subnet(network),
            Some("10.244.2.0/24".parse().unwrap())
        );
    }

    #[test]
    fn commands_are_shown_as_they_would_be_typed() {
        let id = "a4ed99f207bffe028b7c46c724092821d5353826082a5902bb44305fb54b3deb";
        assert_eq!(
            shell_words(&["exec", id, "ss", "-ltnH", "sport = :31080", "it's"]),
            "exec a4ed99f207bff ss -ltnH 'sport = :31080' 'it'\\''s'"
        );
    }

    #[test]
    fn a_failed_step_names_its_number_and_title() {
        let failed = StepFailed {
            step: 8,
            reason: "expected: x".into(),
        };
        assert_eq!(
            failed.to_string(),
            "step 8 (routes, cni0 and the overlay on every node) failed: expected: x"
        );
    }
}
