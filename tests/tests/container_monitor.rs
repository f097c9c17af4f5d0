//! sandboxd-monitor with runc: it creates the container, holds its output in the CRI log
//! format, and records the exit code, including a kill's 128 + signal. Needs root, runc and
//! busybox-static.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sandboxd_tests::TestContainer;
use serde_json::Value;

/// Starts the monitor and returns the container's pid once it is created.
fn create(container: &TestContainer) -> u32 {
    let mut monitor = container
        .monitor()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(monitor.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Ok(pid) = line.trim().parse() else {
        let out = monitor.wait_with_output().unwrap();
        panic!(
            "the monitor printed no pid: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The monitor lives as long as the container; a thread reaps it.
    std::thread::spawn(move || monitor.wait());
    pid
}

fn exit_record(container: &TestContainer) -> Value {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(container.path("exit.json")) {
            return serde_json::from_str(&text).unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(15), "no exit file");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_goes_to_the_cri_log_and_the_exit_code_is_kept() {
    let container = TestContainer::new("echo out; echo err >&2; printf partial; exit 3", "mon");
    let pid = create(&container);
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let started = container.runc(&["start", &container.id]);
    assert!(
        started.status.success(),
        "runc start: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let exit = exit_record(&container);
    assert_eq!(exit["exit_code"], 3);
    assert!(exit["signal"].is_null());

    let log = std::fs::read_to_string(container.path("container.log")).unwrap();
    let lines: Vec<(String, String, String)> = log
        .lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let time = parts.next().unwrap().to_string();
            assert!(
                time.ends_with('Z') && time.len() == 30,
                "not an RFC 3339 time with nanoseconds: {time}"
            );
            let stream = parts.next().unwrap().to_string();
            let tag = parts.next().unwrap().to_string();
            (stream, tag, parts.next().unwrap_or("").to_string())
        })
        .collect();
    let has = |stream: &str, tag: &str, text: &str| {
        lines
            .iter()
            .any(|l| l == &(stream.to_string(), tag.to_string(), text.to_string()))
    };
    assert!(has("stdout", "F", "out"), "{log}");
    assert!(has("stderr", "F", "err"), "{log}");
    assert!(has("stdout", "P", "partial"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_records_128_plus_the_signal() {
    let container = TestContainer::new("echo started; exec sleep 100", "mon");
    create(&container);
    assert!(container.runc(&["start", &container.id]).status.success());
    let start = Instant::now();
    while !std::fs::read_to_string(container.path("container.log"))
        .unwrap_or_default()
        .contains("started")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the container did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = container.runc(&["kill", &container.id, "KILL"]);
    assert!(
        killed.status.success(),
        "runc kill: {}",
        String::from_utf8_lossy(&killed.stderr)
    );
    let exit = exit_record(&container);
    assert_eq!(exit["exit_code"], 137);
    assert_eq!(exit["signal"], 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_is_reported_with_the_runtimes_message() {
    let container = TestContainer::new("true", "mon");
    // A bundle whose rootfs is not there cannot be created.
    container.rootfs.unmount().unwrap();
    std::fs::remove_dir(&container.rootfs.target).unwrap();
    let out = container.monitor().output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("runc create {} failed", container.id)),
        "{stderr}"
    );
    assert!(!container.path("exit.json").exists());
}

/// An attached client that never reads is cut off once it falls 8 MiB behind; the
/// container's output all reaches the log and its exit is recorded as if no one had
/// attached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_client_that_never_reads_holds_nothing_up() {
    use sandboxd::container::attach::{Frame, Wants};
    use std::io::{Read, Write};
    const LINES: usize = 20_000;
    let line = "a".repeat(999);
    let container = TestContainer::new(&format!("yes {line} | head -n {LINES}"), "mon");
    create(&container);
    let mut client = std::os::unix::net::UnixStream::connect(container.path("attach.sock"))
        .expect("the monitor listens for attaches once the container is created");
    let hello = Frame::Hello(Wants {
        stdout: true,
        ..Default::default()
    });
    client.write_all(&hello.encode()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(container.runc(&["start", &container.id]).status.success());
    assert_eq!(exit_record(&container)["exit_code"], 0);
    let log = std::fs::read_to_string(container.path("container.log")).unwrap();
    assert_eq!(log.lines().filter(|l| l.ends_with(&line)).count(), LINES);
    // What it was sent before the cut, then the end.
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut received = Vec::new();
    client
        .read_to_end(&mut received)
        .expect("the connection ends");
    assert!(
        received.len() < LINES * 1000,
        "{} bytes: not cut off",
        received.len()
    );
    assert!(!container.path("attach.sock").exists());
}
