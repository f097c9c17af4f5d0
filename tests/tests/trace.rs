//! `sandboxctl trace` on a lab of the test's own: pod → pod on one node and across nodes,
//! pod → svc-clusterip across nodes, k8s-master → k8s-node2:31080 → a pod on k8s-node1;
//! the pcap file reads back with tcpdump; a destination nobody answers ends within the
//! timeout saying where the request was last seen.

use std::process::Command;
use std::time::{Duration, Instant};

use sandboxd::overlay::Backend;
use sandboxd_tests::lab::TestLab;

/// The seeds' pods and services, plus `pod-peer` beside pod-dest on k8s-node1.
fn lab_with_the_seeds_pods() -> TestLab {
    let lab = TestLab::up(3, Backend::Vxlan);
    lab.apply_seeds_cross_node_manifests();
    let peer = lab.root().join("pod-peer.json");
    std::fs::write(
        &peer,
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"pod-peer"},
            "spec":{"nodeName":"k8s-node1","containers":[{"name":"c","image":"kubetm/p8000"}]}}"#,
    )
    .unwrap();
    lab.ok(&["apply", "-f", peer.to_str().unwrap()]);
    lab
}

/// The lines of the request part of a trace (before `reply:`).
fn request_lines(out: &str) -> Vec<&str> {
    out.lines()
        .skip_while(|l| *l != "request:")
        .skip(1)
        .take_while(|l| *l != "reply:")
        .collect()
}

fn pod_ip(lab: &TestLab, name: &str) -> String {
    let pods = lab.ok(&["get", "pods", "-o", "wide"]);
    pods.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(5))
        .unwrap_or_else(|| panic!("no {name} in {pods}"))
        .to_string()
}

#[test]
fn every_path_of_the_seeds_is_traced_hop_by_hop() {
    let lab = lab_with_the_seeds_pods();
    let dest_ip = pod_ip(&lab, "pod-dest");

    // Pod → pod on one node: bridged on k8s-node1's cni0, never on an eth1.
    let out = lab.ok(&["trace", "pod-peer", "pod-dest:8080"]);
    assert!(out.contains("answered \"HTTP/1.1"), "{out}");
    let request = request_lines(&out);
    assert!(request[0].contains("k8s-node1 pod-peer eth0"), "{out}");
    assert!(
        request.iter().any(|l| l.contains("(pod-dest)")),
        "pod-dest's veth: {out}"
    );
    assert!(!out.contains("eth1 ") && !out.contains("VXLAN"), "{out}");

    // Pod → pod across nodes: wrapped on k8s-node2, unwrapped on k8s-node1.
    let out = lab.ok(&["trace", "pod-src", "pod-dest:8080"]);
    let request = request_lines(&out);
    let hops: Vec<&str> = request
        .iter()
        .filter(|l| l.contains("ms   "))
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .find(|c| c.starts_with("k8s-"))
                .unwrap()
        })
        .collect();
    assert_eq!(hops.len(), 5, "{out}");
    assert!(hops[0].starts_with("k8s-node2 pod-src eth0"), "{hops:?}");
    assert!(hops[1].starts_with("k8s-node2 veth"), "{hops:?}");
    assert_eq!(&hops[2..4], ["k8s-node2 eth1", "k8s-node1 eth1"], "{out}");
    assert!(hops[4].contains("(pod-dest)"), "{hops:?}");
    assert!(out.contains(
        "request: encapsulated on k8s-node2 in VXLAN VNI 1 (UDP 192.168.102.12 → 192.168.102.11:8472), decapsulated on k8s-node1"
    ), "{out}");

    // Pod → svc-clusterip: on k8s-node2's eth1 the pod's address is inside VXLAN 8472
    // VNI 1; the translation happened on k8s-node2.
    let out = lab.ok(&["trace", "pod-src", "svc-clusterip:8080"]);
    let request = request_lines(&out);
    let at_eth1 = request
        .iter()
        .position(|l| l.contains("k8s-node2 eth1"))
        .unwrap_or_else(|| panic!("no line at k8s-node2 eth1: {out}"));
    assert!(
        request[at_eth1].contains("> 192.168.102.11.8472: VXLAN, flags [I] (0x08), vni 1"),
        "{out}"
    );
    assert!(
        request[at_eth1 + 1].contains(&format!("> {dest_ip}.8080: Flags [S]")),
        "{out}"
    );
    assert!(
        out.contains("translated on k8s-node2 (conntrack): destination 10.96.0.")
            && out.contains(&format!("→ {dest_ip}:8080 (DNAT)")),
        "{out}"
    );

    // k8s-master → k8s-node2:31080 → pod-dest on k8s-node1, masqueraded to k8s-node2's
    // flannel.1 address so the reply comes back through k8s-node2; kept in a pcap file.
    let pcap = lab.root().join("nodeport.pcap");
    let out = lab.ok(&[
        "trace",
        "--from-node",
        "k8s-master",
        "192.168.102.12:31080",
        "-w",
        pcap.to_str().unwrap(),
    ]);
    assert!(out.contains("answered \"HTTP/1.1"), "{out}");
    assert!(
        out.contains("destination 192.168.102.12:31080 → ")
            && out.contains("source 192.168.102.10:")
            && out.contains("→ 10.244.2.0:"),
        "{out}"
    );
    assert!(
        out.contains("reply path:")
            && out
                .trim_end()
                .lines()
                .any(|l| l.contains("reply path:") && l.ends_with("k8s-master eth1")),
        "{out}"
    );
    let written: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("wrote "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no 'wrote N frames': {out}"));
    let read = Command::new("tcpdump")
        .args(["-n", "-T", "vxlan", "-r"])
        .arg(&pcap)
        .output()
        .expect("run tcpdump (Debian: tcpdump)");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let text = String::from_utf8_lossy(&read.stdout);
    // VXLAN frames print two lines: count frames by their time stamps.
    let frames = text
        .lines()
        .filter(|l| l.as_bytes().get(2) == Some(&b':'))
        .count();
    assert_eq!(frames, written, "{text}");
    assert!(text.contains("192.168.102.10.") && text.contains("> 192.168.102.12.31080: Flags [S]"));
    assert!(text.contains("10.244.2.0.") && text.contains(&format!("> {dest_ip}.8080: Flags [S]")));
}

#[test]
fn a_destination_nobody_answers_ends_in_time_and_says_where_it_was_last_seen() {
    let lab = lab_with_the_seeds_pods();
    let started = Instant::now();
    let (code, out, err) =
        lab.sandboxctl(&["trace", "pod-src", "10.244.1.99:8080", "--timeout", "1.5"]);
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(out.contains("no answer within 1.5s"), "{out}");
    assert!(out.contains("last seen: k8s-node1 eth1"), "{out}");
    assert!(
        err.contains("10.244.1.99:8080 did not answer within 1.5s; the request was last seen on k8s-node1 eth1"),
        "{err}"
    );
    // Bad input names what is wrong.
    let (code, _, err) = lab.sandboxctl(&["trace", "pod-nowhere", "pod-dest:8080"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("invalid source pod \"pod-nowhere\""), "{err}");
    let (code, _, err) = lab.sandboxctl(&["trace", "pod-src", "svc-nowhere:80"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no pod or Service \"svc-nowhere\""), "{err}");
    let (code, _, err) =
        lab.sandboxctl(&["trace", "--from-node", "k8s-node9", "192.168.102.12:31080"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("invalid --from-node \"k8s-node9\""), "{err}");
}

#[test]
fn on_a_node_alone_the_trace_follows_a_service_between_its_own_pods() {
    let daemon = sandboxd_tests::daemon::SandboxdProcess::start();
    let manifest = daemon.path("pods.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client, labels: {app: client}}\n\
         spec: {containers: [{name: c, image: kubetm/p8000}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: server, labels: {app: server}}\n\
         spec: {containers: [{name: c, image: kubetm/p8080}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: svc-server}\n\
         spec: {selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}\n",
    )
    .unwrap();
    let (code, out, err) = daemon.sandboxctl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = daemon.sandboxctl(&["trace", "client", "svc-server:80"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("answered \"HTTP/1.1"), "{out}");
    let request = request_lines(&out);
    assert!(request[0].contains("client eth0"), "{out}");
    assert!(request.iter().any(|l| l.contains("(server)")), "{out}");
    assert!(out.contains(":80 → 10.244.1."), "the DNAT: {out}");
    assert!(!out.contains("VXLAN"), "{out}");
}
