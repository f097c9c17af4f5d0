//! `sandboxctl lab graph`: the SVG of a live lab is valid XML, names every node, pod and
//! tunnel, shows each veth pair with its indexes as `ip link` does, the Services with
//! their endpoints, and a headless browser (Debian's chromium) renders it to a PNG.

use std::path::Path;
use std::process::Command;

use sandboxd::overlay::Backend;
use sandboxd_tests::lab::TestLab;

/// The texts of an SVG's `<text>` elements, read by Python's XML parser (which also
/// refuses a file that is not well-formed XML).
fn svg_texts(svg: &Path) -> Vec<String> {
    let script = "import sys, xml.etree.ElementTree as ET\n\
                  root = ET.parse(sys.argv[1]).getroot()\n\
                  assert root.tag == '{http://www.w3.org/2000/svg}svg', root.tag\n\
                  for t in root.iter('{http://www.w3.org/2000/svg}text'):\n    print(''.join(t.itertext()))\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(svg)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "not a valid SVG: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_picture_of_the_lab_names_every_node_pod_and_tunnel_and_renders_in_a_browser() {
    let lab = TestLab::up(3, Backend::Vxlan);
    lab.apply_seeds_cross_node_manifests();
    let svg = lab.root().join("lab.svg");
    lab.ok(&["lab", "graph", "-o", svg.to_str().unwrap()]);
    let texts = svg_texts(&svg);
    let has = |wanted: &str| texts.iter().any(|t| t.contains(wanted));
    for node in ["k8s-master", "k8s-node1", "k8s-node2"] {
        assert!(texts.iter().any(|t| t == node), "node {node}: {texts:?}");
    }
    for pod in ["pod pod-dest", "pod pod-src"] {
        assert!(has(pod), "{pod}: {texts:?}");
    }
    for tunnel in [
        "tunnel k8s-master ⇄ k8s-node1: VXLAN VNI 1",
        "tunnel k8s-master ⇄ k8s-node2: VXLAN VNI 1",
        "tunnel k8s-node1 ⇄ k8s-node2: VXLAN VNI 1",
    ] {
        assert!(has(tunnel), "{tunnel}: {texts:?}");
    }
    for object in [
        "192.168.102.11/24",
        "10.244.1.0/32",
        "10.244.2.1/24",
        "service svc-clusterip",
        "service svc-nodeport",
        ":31080/TCP",
    ] {
        assert!(has(object), "{object}: {texts:?}");
    }
    // Each pod's pair as `ip link` numbers it: eth0@ifN in the pod, N: veth…@ifM on the
    // node, M being eth0's index.
    let eth0 = texts
        .iter()
        .find(|t| t.contains(": eth0@if"))
        .unwrap_or_else(|| panic!("no eth0@ifN: {texts:?}"));
    let (eth0_index, veth_index) = eth0.split_once(": eth0@if").unwrap();
    assert!(
        has(&format!("{veth_index}: veth")) && has(&format!("@if{eth0_index}")),
        "no veth {veth_index} pointing back at {eth0_index}: {texts:?}"
    );

    let dot = lab.ok(&["lab", "graph", "--format", "dot"]);
    assert!(dot.starts_with("digraph"), "{dot}");

    // A headless browser draws it.
    let png = lab.root().join("lab.png");
    let rendered = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1200,1000",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", svg.display()))
        .output()
        .expect("run chromium (Debian: chromium)");
    assert!(
        rendered.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let image = std::fs::read(&png).expect("the screenshot");
    assert_eq!(&image[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        image.len() > 20_000,
        "an empty picture? {} bytes",
        image.len()
    );
}
