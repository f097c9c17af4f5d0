//! `sandboxctl lab demo`: the seeds' walk-through on a lab that is up. It applies the seeds'
//! manifests unchanged and shows, command and real output, what the seeds look at on their
//! kubeadm cluster — the pause container and `container:<pause-id>`, `lsns`, the pod's
//! interface, each node's routes, bridge ports, flannel.1's neighbours and FDB entries, a
//! request from pod-src to pod-dest across the overlay, the same through svc-clusterip,
//! svc-nodeport held on every node and reached from k8s-master — with `sandboxctl trace`
//! following each cross-node path hop by hop. Every step checks what it shows; the first check
//! that fails ends the demo with an error naming the step.

use std::ffi::OsString;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use serde_json::Value;

use super::{Lab, LabState, CONTROL_PLANE};
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
            let text = demo.lsns(pid)?;
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
        self.fetch("k8s-node2", &src_container, &url)?;
        let trace = self.ctl(&["trace", "pod-src", "pod-dest:8080"])?;
        self.check_crossing(&trace, dest.ip)?;

        self.begin();
        self.apply("svc-clusterip.yaml")?;
        let services = self.ctl(&["get", "svc"])?;
        let cluster_ip: Ipv4Addr = row(&services, "svc-clusterip")
            .and_then(|r| r.split_whitespace().nth(2)?.parse().ok())
            .context_step(self.step, "svc-clusterip has no ClusterIP in `get svc`")?;
        self.ctl(&["get", "endpoints", "svc-clusterip"])?;
        let url = format!("http://{cluster_ip}:8080/hostname");
        self.fetch("k8s-node2", &src_container, &url)?;
        let trace = self.ctl(&["trace", "pod-src", "svc-clusterip:8080"])?;
        self.check(
            trace.contains(&format!(
                "translated on k8s-node2 (conntrack): destination {cluster_ip}:8080 → {}:8080 (DNAT)",
                dest.ip
            )),
            &format!("k8s-node2 translated {cluster_ip}:8080 to pod-dest's {}:8080", dest.ip),
        )?;
        self.check_crossing(&trace, dest.ip)?;
        self.check(
            !trace
                .lines()
                .skip_while(|l| !l.contains("k8s-node2 eth1"))
                .take_while(|l| !l.starts_with("reply:"))
                .any(|l| l.contains(&format!("> {cluster_ip}."))),
            &format!("the ClusterIP {cluster_ip} never left k8s-node2"),
        )?;

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
        let body = self.on_node(CONTROL_PLANE, &["curl", "-sS", "--max-time", "5", &url])?;
        self.check(
            body.trim() == "pod-dest",
            "k8s-master reached pod-dest through k8s-node2:31080",
        )?;
        let trace = self.ctl(&[
            "trace",
            "--from-node",
            CONTROL_PLANE,
            &format!("{node2}:31080"),
        ])?;
        // Masqueraded to k8s-node2's address toward k8s-node1: flannel.1's under VXLAN,
        // eth1's under host-gw.
        let masqueraded = match self.state.backend {
            Backend::Vxlan => self.subnet("k8s-node2")?.addr,
            Backend::HostGw => node2,
        };
        self.check(
            trace.lines().any(|l| {
                l.contains("translated on k8s-node2")
                    && l.contains(&format!("→ {}:8080 (DNAT)", dest.ip))
                    && l.contains(&format!("→ {masqueraded}:"))
            }),
            &format!(
                "k8s-node2 sent it to pod-dest from {masqueraded} (masqueraded, so the reply returns through k8s-node2)"
            ),
        )?;
        self.check(
            trace
                .lines()
                .any(|l| l.starts_with("  reply path:") && l.ends_with("k8s-master eth1")),
            "the reply went back to k8s-master the way the request came",
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
        let args: Vec<OsString> = args.into_iter().collect();
        let output = self.spawn(program, &args)?;
        self.succeeded(program, &args, output)
    }

    /// What `program ARGS` printed and how it ended, whatever that was.
    fn spawn(&self, program: &str, args: &[OsString]) -> Step<std::process::Output> {
        let mut command = if program == "sandboxctl" {
            let mut command = Command::new(&self.sandboxctl);
            command.env("SANDBOXD_LAB_DIR", self.lab.root());
            command
        } else {
            Command::new(program)
        };
        command
            .args(args)
            .output()
            .map_err(|e| self.fail(format!("run {program}: {e}")))
    }

    /// Its stdout, if `program ARGS` succeeded; the failure with its stderr, if not.
    fn succeeded(
        &self,
        program: &str,
        args: &[OsString],
        output: std::process::Output,
    ) -> Step<String> {
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

    /// `lsns -p PID`, shown. util-linux before 2.40.3 (Debian 12 has 2.38) exits 1 with
    /// no message when any process of the node exits while it scans /proc
    /// (util-linux#2799); a node starting and stopping pods does that, so a silent failure
    /// is asked again, a few times.
    fn lsns(&mut self, pid: &str) -> Step<String> {
        let args = [OsString::from("-p"), OsString::from(pid)];
        let mut output = self.spawn("lsns", &args)?;
        for _ in 1..5 {
            if output.status.success() || !output.stderr.is_empty() {
                break;
            }
            output = self.spawn("lsns", &args)?;
        }
        let text = self.succeeded("lsns", &args, output)?;
        self.show(&format!("lsns -p {pid}"), &text);
        Ok(text)
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
        // Each node's leased subnet, read once.
        let subnets = nodes
            .iter()
            .map(|n| self.subnet(&n.name))
            .collect::<Step<Vec<Ipv4Cidr>>>()?;
        for (node, &own) in nodes.iter().zip(&subnets) {
            let routes = self.on_node(&node.name, &["ip", "route"])?;
            let ports = self.on_node(&node.name, &["bridge", "link", "show"])?;
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
            for (peer, &subnet) in nodes
                .iter()
                .zip(&subnets)
                .filter(|(p, _)| p.name != node.name)
            {
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

    /// The seeds' request: wget from a container of the source pod.
    fn fetch(&mut self, node: &str, container: &str, url: &str) -> Step<()> {
        let body = self.ctl(&["--node", node, "exec", container, "wget", "-qO-", url])?;
        self.check(body.trim() == "pod-dest", "pod-dest answered")
    }

    /// From a trace of pod-src's request: it left k8s-node2 for k8s-node1 addressed to
    /// the pod, in VXLAN VNI 1 (or routed, under host-gw).
    fn check_crossing(&mut self, trace: &str, pod: Ipv4Addr) -> Step<()> {
        let (node2, node1) = (self.node_ip("k8s-node2")?, self.node_ip("k8s-node1")?);
        let request: Vec<&str> = trace
            .lines()
            .skip_while(|l| *l != "request:")
            .take_while(|l| *l != "reply:")
            .collect();
        let at_eth1 = request.iter().position(|l| l.contains("k8s-node2 eth1"));
        match self.state.backend {
            Backend::Vxlan => {
                let envelope = at_eth1.is_some_and(|i| {
                    request[i].contains(&format!(
                        "IP {node2}."
                    )) && request[i].contains(&format!("> {node1}.8472: VXLAN, flags [I] (0x08), vni 1"))
                        && request
                            .get(i + 1)
                            .is_some_and(|inner| inner.contains(&format!("> {pod}.8080: Flags [S]")))
                });
                self.check(
                    envelope,
                    &format!("on k8s-node2's eth1: UDP {node2} → {node1}:8472, VNI 1, inside it the request to the pod {pod}:8080"),
                )
            }
            Backend::HostGw => self.check(
                at_eth1.is_some_and(|i| {
                    request[i].contains(&format!("> {pod}.8080: Flags [S]"))
                        && !request[i].contains("VXLAN")
                }),
                &format!("on k8s-node2's eth1: the request to the pod {pod}:8080, routed without a tunnel"),
            ),
        }
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
