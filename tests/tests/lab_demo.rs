//! The main job: `sandboxctl lab demo`, the seeds' walk-through, on a lab of the test's own.
//! Every step's check passes on a healthy lab under both backends, the demo leaves the lab
//! as it found it (it can run again), and a node broken by hand makes it exit non-zero
//! naming the step that saw it.

use std::path::Path;

use sandboxd::lab::demo::STEPS;
use sandboxd::overlay::Backend;
use sandboxd_tests::lab::TestLab;

fn manifests() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .display()
        .to_string()
}

fn demo(lab: &TestLab) -> (Option<i32>, String, String) {
    lab.sandboxctl(&["lab", "demo", "--manifests", &manifests()])
}

fn assert_all_steps_pass(lab: &TestLab) -> String {
    let (code, out, err) = demo(lab);
    assert_eq!(code, Some(0), "lab demo failed: {err}\n{out}");
    for (i, title) in STEPS.iter().enumerate() {
        assert!(
            out.contains(&format!("{}. {title}", i + 1)),
            "step {} missing:\n{out}",
            i + 1
        );
    }
    assert!(!out.contains('\u{2717}'), "a check failed:\n{out}");
    assert!(
        out.contains(&format!("all {} steps checked", STEPS.len())),
        "{out}"
    );
    out
}

#[test]
fn the_walk_through_checks_every_step_over_vxlan_and_runs_again() {
    let lab = TestLab::up(3, Backend::Vxlan);
    let out = assert_all_steps_pass(&lab);
    // What the seeds look at, with the lab's real values.
    for seen in [
        "\"networkMode\": \"container:",
        "via 10.244.1.0 dev flannel.1 onlink",
        "dst 192.168.102.11 self permanent",
        "PERMANENT",
        "VXLAN, flags [I] (0x08), vni 1",
        "0.0.0.0:31080",
        "IP 10.244.2.0.",
    ] {
        assert!(out.contains(seen), "{seen:?} not shown:\n{out}");
    }
    // It deleted what it applied: nothing is left, and a second run passes as well.
    let pods = lab.ok(&["get", "pods"]);
    assert!(!pods.contains("pod-"), "left behind: {pods}");
    assert_all_steps_pass(&lab);
}

#[test]
fn the_walk_through_checks_every_step_over_host_gw() {
    let lab = TestLab::up(3, Backend::HostGw);
    let out = assert_all_steps_pass(&lab);
    assert!(out.contains("via 192.168.102.11 dev eth1"), "{out}");
    assert!(!out.contains("flannel.1"), "{out}");
}

#[test]
fn a_node_broken_by_hand_fails_the_step_that_sees_it() {
    let lab = TestLab::up(3, Backend::Vxlan);
    lab.on_node("k8s-node1", &["ip", "link", "del", "flannel.1"]);
    let (code, out, err) = demo(&lab);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        err.contains("step 8 (routes, cni0 and the overlay on every node) failed"),
        "{err}"
    );
    assert!(
        !out.contains("9. "),
        "it went on after the failed step:\n{out}"
    );
    // The pods it applied are deleted again, failure or not.
    let pods = lab.ok(&["get", "pods"]);
    assert!(!pods.contains("pod-"), "left behind: {pods}");
}
