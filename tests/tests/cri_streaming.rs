//! The CRI streaming server with the real crictl (cri-tools v1.26.1: client-go's SPDY
//! executor and port forwarder, as the kubelet of its time uses them), run on the node as
//! a kubelet would be: `crictl exec` with stdout, stderr and exit codes, `exec -i` with
//! stdin, `attach` to a container's own stdin and output (with and without a terminal),
//! `port-forward` to a pod's port, a client killed mid-exec, and URLs that are good for
//! one use only; over WebSocket, the Kubernetes Python client (`kubernetes` from PyPI:
//! v5 and v4 channels) execs, attaches and port-forwards, and client-go's SPDY tunnel
//! is driven by hand. Each with the embedded runtime and with runc.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use sandboxd_tests::cri::{container_config, pod_config, Cri};
use sandboxd_tests::daemon::SandboxdProcess;
use sandboxd_tests::shared_tool;

sandboxd_tests::with_both_runtimes!(
    crictl_exec_streams_stdio_and_exit_codes,
    crictl_exec_it_gets_a_terminal_of_the_clients_size,
    crictl_attach_joins_the_containers_stdin_and_output,
    crictl_attach_it_reaches_a_containers_terminal,
    websocket_exec_and_attach_with_the_python_client,
    websocket_port_forward_with_the_python_client_and_a_spdy_tunnel,
    crictl_port_forward_reaches_the_pods_port,
    a_client_that_goes_away_leaves_no_process,
);

/// crictl on the node (in its network namespace, where the streaming server listens).
fn crictl(daemon: &SandboxdProcess, args: &[&str]) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", daemon.node.path().display()))
        .arg(shared_tool("crictl"))
        .args(["--runtime-endpoint", &daemon.endpoint()])
        .args(["--timeout", "30s"])
        .args(args);
    command
}

/// Runs crictl with `stdin`; (exit code, stdout, stderr).
fn run(daemon: &SandboxdProcess, args: &[&str], stdin: &[u8]) -> (Option<i32>, String, String) {
    let mut child = crictl(daemon, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run crictl");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn pod_with(
    daemon: &SandboxdProcess,
    image: &str,
    command: &[&str],
) -> (Cri, String, String) {
    pod_with_stdio(daemon, image, command, |_| {}).await
}

/// A pod running one container whose config `stdio` sets the stdin/tty fields of.
async fn pod_with_stdio(
    daemon: &SandboxdProcess,
    image: &str,
    command: &[&str],
    stdio: impl FnOnce(&mut cri::ContainerConfig),
) -> (Cri, String, String) {
    let mut cri = Cri {
        client: daemon.client().await,
    };
    let config = pod_config("streams", None);
    let pod = cri.run_pod(config.clone()).await;
    let mut container = container_config("main", image, command);
    container.log_path = String::new();
    stdio(&mut container);
    let id = cri.run(&pod, &config, container).await;
    (cri, pod, id)
}

/// Reads `from` on a thread of its own, into a buffer that can be looked at meanwhile.
fn collect(mut from: impl Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<String>> {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let filling = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            filling
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// Waits up to 20 s for `text` to satisfy `done`.
fn wait_for(text: &std::sync::Mutex<String>, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(&text.lock().unwrap()) {
        assert!(
            Instant::now() < deadline,
            "{what}: {:?}",
            text.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn container_state(cri: &mut Cri, id: &str) -> cri::ContainerStatus {
    cri.client
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("a status")
}

async fn wait_exited(cri: &mut Cri, id: &str) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = container_state(cri, id).await;
        if status.state == cri::ContainerState::ContainerExited as i32 {
            return status;
        }
        assert!(Instant::now() < deadline, "still running: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A shell reading the container's own stdin: a client that keeps its stdin open types
/// into it and detaches when its stdin ends (the container keeps its stdin for the next);
/// a watcher attached without stdin sees the same output; with `stdin_once`, the end of
/// the attached stdin is the end of the container's, and the client stays to its exit.
async fn crictl_attach_joins_the_containers_stdin_and_output(runtime: &[&str]) {
    let daemon = SandboxdProcess::start_with(runtime);
    let (mut cri, pod, id) = pod_with_stdio(&daemon, "busybox", &["sh"], |c| c.stdin = true).await;

    let mut watcher = crictl(&daemon, &["attach", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let watched = collect(watcher.stdout.take().unwrap());
    let mut typist = crictl(&daemon, &["attach", "-i", &id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut keys = typist.stdin.take().unwrap();
    let typed = collect(typist.stdout.take().unwrap());
    let typed_errors = collect(typist.stderr.take().unwrap());
    // Until the watcher is attached, what is typed is not shown to it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !watched.lock().unwrap().contains("ping") {
        assert!(Instant::now() < deadline, "the watcher saw nothing");
        keys.write_all(b"echo ping\n").unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    keys.write_all(b"echo one; echo to-stderr >&2\n").unwrap();
    wait_for(&typed, "the typist's stdout", |t| t.contains("one\n"));
    wait_for(&typed_errors, "the typist's stderr", |t| {
        t.contains("to-stderr\n")
    });
    wait_for(&watched, "the watcher's stdout", |t| t.contains("one\n"));
    // The typist's stdin ends: it detaches, the shell keeps running.
    drop(keys);
    let status = typist.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        container_state(&mut cri, &id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    // Another one ends the shell; both attaches end with it.
    let (code, out, err) = run(&daemon, &["attach", "-i", &id], b"echo two; exit 3\n");
    assert_eq!(code, Some(0), "{err}");
    // Its stdin ended as it was sent: it may have detached before the shell answered.
    assert!(out.is_empty() || out == "two\n", "{out}");
    let status = wait_exited(&mut cri, &id).await;
    assert_eq!(status.exit_code, 3);
    wait_for(&watched, "the watcher's stdout", |t| t.contains("two\n"));
    let watcher = watcher.wait().unwrap();
    assert!(
        watcher.success(),
        "the watcher's attach ends with the container: {watcher}"
    );
    let log = std::fs::read_to_string(&status.log_path).unwrap();
    for line in ["stdout F one", "stderr F to-stderr", "stdout F two"] {
        assert!(log.contains(line), "{line:?} in {log}");
    }

    // stdin_once: the client's stdin ending closes the shell's, which ends; the client
    // reads to the end.
    let config = pod_config("streams-once", None);
    let once_pod = cri.run_pod(config.clone()).await;
    let mut container = container_config("once", "busybox", &["sh"]);
    container.log_path = String::new();
    container.stdin = true;
    container.stdin_once = true;
    let once = cri.run(&once_pod, &config, container).await;
    let (code, out, err) = run(
        &daemon,
        &["attach", "-i", &once],
        b"sleep 0.5; echo after-a-while\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "after-a-while\n");
    assert_eq!(wait_exited(&mut cri, &once).await.exit_code, 0);

    // What a container was not created with, or one that is not running, is refused.
    let (code, _, err) = run(&daemon, &["attach", "-i", &once], b"");
    assert_ne!(code, Some(0));
    assert!(err.contains("attach needs a running container"), "{err}");
    let mut plain = container_config("plain", "busybox", &["sleep", "1000"]);
    plain.log_path = String::new();
    let plain = cri.run(&once_pod, &config, plain).await;
    for (flags, field) in [(&["-i"][..], "stdin"), (&["-t"][..], "tty")] {
        let mut args = vec!["attach"];
        args.extend_from_slice(flags);
        args.push(&plain);
        let (code, _, err) = run(&daemon, &args, b"");
        assert_ne!(code, Some(0));
        assert!(err.contains(&format!("invalid {field}")), "{err}");
    }
    for pod in [pod, once_pod] {
        cri.remove_pod(&pod).await;
    }
    assert_eq!(daemon.processes(), Vec::<u32>::new(), "processes left");
}

/// A container with a terminal: `crictl attach -it` from a terminal (40 rows by 100
/// columns, by `script`) types into it and sets its size; what it shows is in the log as
/// stdout. The container's monitor holds the terminal, so a restart of sandboxd between
/// the start and the attach changes nothing.
async fn crictl_attach_it_reaches_a_containers_terminal(runtime: &[&str]) {
    let mut daemon = SandboxdProcess::start_with(runtime);
    let (mut cri, pod, id) = pod_with_stdio(&daemon, "busybox", &["sh"], |c| {
        c.stdin = true;
        c.tty = true;
    })
    .await;
    daemon.respawn_with(runtime);
    cri.client = daemon.client().await;
    let crictl_line = {
        let command = crictl(&daemon, &["attach", "-it", &id]);
        let mut words = vec![command.get_program().to_string_lossy().into_owned()];
        words.extend(
            command
                .get_args()
                .map(|a| format!("'{}'", a.to_string_lossy())),
        );
        words.join(" ")
    };
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!("stty rows 40 cols 100; {crictl_line}"))
        .arg("/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        let _ =
            stdin.write_all(b"test -t 0 && echo on-a-terminal; stty size; echo $((6*7)); exit 5\n");
        std::thread::sleep(Duration::from_secs(5));
    });
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(text.contains("on-a-terminal\n"), "{text}");
    assert!(text.contains("40 100\n"), "the terminal's size: {text}");
    assert!(text.contains("42\n"), "{text}");
    let status = wait_exited(&mut cri, &id).await;
    assert_eq!(status.exit_code, 5);
    let log = std::fs::read_to_string(&status.log_path).unwrap();
    assert!(log.contains(" stdout F 42\r"), "{log}");
    assert!(!log.contains(" stderr "), "{log}");
    cri.remove_pod(&pod).await;
    assert_eq!(daemon.processes(), Vec::<u32>::new(), "processes left");
}

async fn crictl_exec_streams_stdio_and_exit_codes(runtime: &[&str]) {
    let daemon = SandboxdProcess::start_with(runtime);
    let (mut cri, pod, id) = pod_with(&daemon, "busybox", &["sleep", "1000"]).await;

    let (code, out, err) = run(
        &daemon,
        &["exec", &id, "sh", "-c", "echo out; echo err >&2"],
        b"",
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));

    // A non-zero exit code comes back as the v4 protocol's NonZeroExitCode.
    let (code, _, err) = run(&daemon, &["exec", &id, "sh", "-c", "exit 3"], b"");
    assert_ne!(code, Some(0));
    assert!(err.contains("exit code 3"), "{err}");

    // stdin, to its end; 1 MiB of it through and back.
    let (code, out, err) = run(
        &daemon,
        &["exec", "-i", &id, "sh", "-c", "cat; echo done"],
        b"hello\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "hello\ndone\n");
    let big: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let (code, out, err) = run(&daemon, &["exec", "-i", &id, "cat"], &big);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.as_bytes(), &big[..]);

    // A URL serves one connection: used (here by a request that does not upgrade), it is
    // gone.
    let url = cri
        .client
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .expect("Exec")
        .into_inner()
        .url;
    let get = |url: &str| {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", daemon.node.path().display()))
            .args(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(get(&url), "400");
    assert_eq!(get(&url), "404");
    // Bad requests are refused when the URL is asked for.
    let err = cri
        .client
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec![],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("cmd"), "{err}");
    cri.remove_pod(&pod).await;
    assert_eq!(daemon.processes(), Vec::<u32>::new(), "processes left");
}

/// `crictl exec -it` from a terminal (util-linux `script` gives crictl one, 40 rows by 100
/// columns): the command runs on a terminal of that size, reads what is typed, and its
/// exit code comes back (crictl reports it and fails).
async fn crictl_exec_it_gets_a_terminal_of_the_clients_size(runtime: &[&str]) {
    let daemon = SandboxdProcess::start_with(runtime);
    let (mut cri, pod, id) = pod_with(&daemon, "busybox", &["sleep", "1000"]).await;
    let crictl_line = {
        let command = crictl(&daemon, &["exec", "-it", &id, "sh", "-c", "test -t 0 && test -t 1 && echo on-a-terminal; stty size; read line; echo got $line; exit 7"]);
        let mut words = vec![command.get_program().to_string_lossy().into_owned()];
        words.extend(
            command
                .get_args()
                .map(|a| format!("'{}'", a.to_string_lossy())),
        );
        words.join(" ")
    };
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!("stty rows 40 cols 100; {crictl_line}"))
        .arg("/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        let _ = stdin.write_all(b"typed\n");
        std::thread::sleep(Duration::from_secs(5));
    });
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(text.contains("on-a-terminal\n"), "{text}");
    assert!(text.contains("40 100\n"), "the terminal's size: {text}");
    assert!(text.contains("got typed\n"), "{text}");
    assert!(text.contains("exit code 7"), "{text}");
    assert_ne!(out.status.code(), Some(0), "{text}");
    cri.remove_pod(&pod).await;
    assert_eq!(daemon.processes(), Vec::<u32>::new(), "processes left");
}

async fn crictl_port_forward_reaches_the_pods_port(runtime: &[&str]) {
    let daemon = SandboxdProcess::start_with(runtime);
    let (mut cri, pod, _) = pod_with(&daemon, "kubetm/p8080", &[]).await;
    let mut forward = crictl(&daemon, &["port-forward", &pod, "18080:8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let node = daemon.node.path();
    let fetch = move || {
        sandboxd::netns::run_in(Some(&node), || {
            let mut tcp = std::net::TcpStream::connect(("127.0.0.1", 18080))?;
            tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
            tcp.write_all(b"GET /hostname HTTP/1.0\r\n\r\n")?;
            let mut answer = String::new();
            tcp.read_to_string(&mut answer)?;
            Ok(answer)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        match fetch() {
            Ok(answer) if answer.contains("200 OK") => break answer,
            other => {
                if Instant::now() > deadline {
                    let _ = forward.kill();
                    let out = forward.wait_with_output().unwrap();
                    panic!(
                        "no answer through the forward: {other:?}\n{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert!(answer.trim_end().ends_with("streams"), "{answer}");
    // Twice more, each its own stream pair on the one connection.
    for _ in 0..2 {
        assert!(fetch().unwrap().contains("200 OK"));
    }
    let _ = forward.kill();
    let _ = forward.wait();
    cri.remove_pod(&pod).await;
    assert_eq!(daemon.processes(), Vec::<u32>::new(), "processes left");
}

async fn a_client_that_goes_away_leaves_no_process(runtime: &[&str]) {
    let daemon = SandboxdProcess::start_with(runtime);
    let (mut cri, pod, id) = pod_with(&daemon, "busybox", &["sleep", "1000"]).await;
    let mut client = crictl(&daemon, &["exec", &id, "sleep", "4242"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sleeping = || {
        cri_output(&daemon, &id)
            .lines()
            .filter(|l| l.contains("sleep 4242"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleeping() == 0 {
        assert!(Instant::now() < deadline, "the exec did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    client.kill().unwrap();
    client.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleeping() != 0 {
        assert!(Instant::now() < deadline, "the exec outlived its client");
        std::thread::sleep(Duration::from_millis(50));
    }
    cri.remove_pod(&pod).await;
    assert_eq!(daemon.processes(), Vec::<u32>::new(), "processes left");
}

/// The container's processes, as `ps` in it shows them (through ExecSync).
fn cri_output(daemon: &SandboxdProcess, id: &str) -> String {
    let (_, out, _) = daemon.sandboxctl(&["exec", "-s", id, "ps", "-o", "args"]);
    out
}

/// The Kubernetes Python client from PyPI, in a virtualenv made once per target dir.
fn kubernetes_python() -> std::path::PathBuf {
    sandboxd_tests::pypi_venv(
        &std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubernetes-venv"),
        "kubernetes.stream.ws_client",
        &["kubernetes>=32"],
    )
}

/// Runs tests/python/k8s_stream.py on the node; what it printed.
fn python_stream(daemon: &SandboxdProcess, args: &[&str]) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/k8s_stream.py");
    let out = Command::new("nsenter")
        .arg(format!("--net={}", daemon.node.path().display()))
        .arg(kubernetes_python())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "k8s_stream.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn exec_url(cri: &mut Cri, request: cri::ExecRequest) -> String {
    cri.client
        .exec(request)
        .await
        .expect("Exec")
        .into_inner()
        .url
}

/// The HTTP status a WebSocket upgrade offering `protocol` gets.
fn websocket_upgrade_status(daemon: &SandboxdProcess, url: &str, protocol: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", daemon.node.path().display()))
        .args(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"])
        .args(["-H", "Sec-WebSocket-Version: 13"])
        .args(["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="])
        .args(["-H", &format!("Sec-WebSocket-Protocol: {protocol}")])
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn websocket_exec_and_attach_with_the_python_client(runtime: &[&str]) {
    let daemon = SandboxdProcess::start_with(runtime);
    let (mut cri, pod, id) = pod_with(&daemon, "busybox", &["sleep", "1000"]).await;
    let exec = |cmd: &[&str], stdin: bool, tty: bool| cri::ExecRequest {
        container_id: id.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        stdin,
        stdout: true,
        stderr: !tty,
        tty,
    };

    // v5: stdin to its end (the client closes its channel), stdout and stderr apart, the
    // exit code from the Status.
    let url = exec_url(
        &mut cri,
        exec(&["sh", "-c", "cat; echo err >&2; exit 3"], true, false),
    )
    .await;
    let result = python_stream(&daemon, &["exec", &url, "--stdin", "hello\n"]);
    assert_eq!(result["protocol"], "v5.channel.k8s.io");
    assert_eq!(result["stdout"], "hello\n");
    assert_eq!(result["stderr"], "err\n");
    assert_eq!(result["returncode"], 3);
    assert_eq!(result["open"], false, "the server closes the connection");

    // A client that offers only v4.
    let url = exec_url(&mut cri, exec(&["echo", "four"], false, false)).await;
    let result = python_stream(&daemon, &["exec", &url, "--protocol", "v4.channel.k8s.io"]);
    assert_eq!(result["protocol"], "v4.channel.k8s.io");
    assert_eq!(result["stdout"], "four\n");
    assert_eq!(result["returncode"], 0);

    // A terminal, sized through the resize channel.
    let url = exec_url(
        &mut cri,
        exec(&["sh", "-c", "read x; stty size"], true, true),
    )
    .await;
    let result = python_stream(
        &daemon,
        &["exec", &url, "--resize", "100x40", "--stdin", "go\n"],
    );
    assert!(
        result["stdout"].as_str().unwrap().contains("40 100"),
        "{result}"
    );
    assert_eq!(result["returncode"], 0);

    // A client that goes away mid-stream leaves no process.
    let url = exec_url(
        &mut cri,
        exec(&["sh", "-c", "echo started; exec sleep 4343"], false, false),
    )
    .await;
    let result = python_stream(&daemon, &["exec", &url, "--leave-after", "1"]);
    assert_eq!(result["stdout"], "started\n", "the exec ran");
    let deadline = Instant::now() + Duration::from_secs(10);
    while cri_output(&daemon, &id).contains("sleep 4343") {
        assert!(Instant::now() < deadline, "the exec outlived its client");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A protocol this server does not speak is refused, and the URL is spent.
    let url = exec_url(&mut cri, exec(&["true"], false, false)).await;
    assert_eq!(
        websocket_upgrade_status(&daemon, &url, "channel.k8s.io"),
        "403"
    );
    assert_eq!(
        websocket_upgrade_status(&daemon, &url, "v5.channel.k8s.io"),
        "404"
    );

    // Attach to a shell reading its own stdin (stdin_once): the client's end of stdin is
    // the shell's, which ends, and the attach with it.
    let config = pod_config("ws-attach", None);
    let attach_pod = cri.run_pod(config.clone()).await;
    let mut container = container_config("shell", "busybox", &["sh"]);
    container.log_path = String::new();
    container.stdin = true;
    container.stdin_once = true;
    let shell = cri.run(&attach_pod, &config, container).await;
    let url = cri
        .client
        .attach(cri::AttachRequest {
            container_id: shell.clone(),
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let result = python_stream(
        &daemon,
        &["exec", &url, "--stdin", "echo attached; echo e >&2\n"],
    );
    assert_eq!(result["stdout"], "attached\n");
    assert_eq!(result["stderr"], "e\n");
    assert_eq!(result["returncode"], 0);
    assert_eq!(wait_exited(&mut cri, &shell).await.exit_code, 0);

    for pod in [pod, attach_pod] {
        cri.remove_pod(&pod).await;
    }
    assert_eq!(daemon.processes(), Vec::<u32>::new(), "processes left");
}

async fn websocket_port_forward_with_the_python_client_and_a_spdy_tunnel(runtime: &[&str]) {
    let daemon = SandboxdProcess::start_with(runtime);
    let (mut cri, pod, _) = pod_with(&daemon, "kubetm/p8080", &[]).await;
    let forward_url = || {
        let mut client = cri.client.clone();
        let pod = pod.clone();
        async move {
            client
                .port_forward(cri::PortForwardRequest {
                    pod_sandbox_id: pod,
                    port: vec![],
                })
                .await
                .expect("PortForward")
                .into_inner()
                .url
        }
    };
    let request = "GET /hostname HTTP/1.0\r\n\r\n";
    // The server is up once the pod runs its container; the first forwards may find no
    // listener yet.
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let url = forward_url().await;
        let result = python_stream(&daemon, &["portforward", &url, "8080", request]);
        let answer = result["answer"].as_str().unwrap().to_string();
        if answer.contains("200 OK") {
            break answer;
        }
        assert!(Instant::now() < deadline, "no answer: {result}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(answer.trim_end().ends_with("streams"), "{answer}");

    // Nothing listens on port 1: the error channel says so.
    let url = forward_url().await;
    let result = python_stream(&daemon, &["portforward", &url, "1", request]);
    let error = result["error"].as_str().unwrap_or("");
    assert!(error.contains("connect to port 1"), "{result}");

    // client-go's port-forward over WebSocket: a SPDY connection tunnelled in binary
    // messages (`SPDY/3.1+portforward.k8s.io`), driven here with the project's own frame
    // codec since no client of that kind is on this machine.
    let url = forward_url().await;
    let answer = spdy_tunnel_forward(&daemon, &url, 8080, request).await;
    assert!(answer.contains("200 OK"), "{answer}");
    assert!(answer.trim_end().ends_with("streams"), "{answer}");

    cri.remove_pod(&pod).await;
    assert_eq!(daemon.processes(), Vec::<u32>::new(), "processes left");
}

/// Forwards one connection to `port` through a SPDY tunnel over WebSocket at `url`:
/// opens the error and data streams client-go opens, sends `request`, returns what the
/// data stream carried back to its end.
async fn spdy_tunnel_forward(
    daemon: &SandboxdProcess,
    url: &str,
    port: u16,
    request: &str,
) -> String {
    use futures_util::{SinkExt, StreamExt};
    use sandboxd::stream::spdy::{Codec, Frame};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let address = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let tcp = sandboxd::netns::run_in(Some(&daemon.node.path()), move || {
        let tcp = std::net::TcpStream::connect(&address)?;
        tcp.set_nonblocking(true)?;
        Ok(tcp)
    })
    .unwrap();
    let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
    let mut upgrade = url
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    upgrade.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "SPDY/3.1+portforward.k8s.io".parse().unwrap(),
    );
    let (mut ws, response) = tokio_tungstenite::client_async(upgrade, tcp)
        .await
        .expect("the tunnel's upgrade");
    assert_eq!(
        response.headers()["Sec-WebSocket-Protocol"],
        "SPDY/3.1+portforward.k8s.io"
    );
    let mut codec = Codec::new();
    let headers = |kind: &str| {
        vec![
            ("streamtype".to_string(), kind.to_string()),
            ("port".to_string(), port.to_string()),
            ("requestid".to_string(), "0".to_string()),
        ]
    };
    let frames = [
        Frame::SynStream {
            stream: 1,
            associated: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: headers("error"),
        },
        Frame::SynStream {
            stream: 3,
            associated: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: headers("data"),
        },
        Frame::Data {
            stream: 3,
            fin: false,
            data: request.as_bytes().to_vec(),
        },
    ];
    for frame in &frames {
        let mut bytes = Vec::new();
        codec.encode(frame, &mut bytes).unwrap();
        ws.send(Message::binary(bytes)).await.unwrap();
    }
    let mut decoder = Codec::new();
    let mut pending = Vec::new();
    let mut answer = Vec::new();
    let reading = async {
        while let Some(Ok(message)) = ws.next().await {
            let Message::Binary(bytes) = message else {
                continue;
            };
            pending.extend_from_slice(&bytes);
            while let Some((frame, used)) = decoder.decode(&pending).unwrap() {
                pending.drain(..used);
                if let Frame::Data {
                    stream: 3,
                    fin,
                    data,
                } = frame
                {
                    answer.extend_from_slice(&data);
                    if fin {
                        return;
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), reading)
        .await
        .expect("the data stream ends");
    let _ = ws.close(None).await;
    String::from_utf8_lossy(&answer).into_owned()
}
