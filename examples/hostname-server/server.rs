//! hostname-server: the demo images' web server. Answers `GET /hostname` with the pod's
//! hostname (the seeds' `curl <ip>:8080/hostname`), and `GET /` with a line naming it.
//!
//!   hostname-server [--port N] [--title TEXT] [--pid-file PATH]
//!                                                  (port default: $PORT, else 8080)
//!
//! `--title` only rides along in the command line, where `ps` and `/proc/<pid>/cmdline`
//! show it: a stand-in for a server that sets its process title (nginx shows "nginx:
//! master process …", which critest looks for as PID 1 of a container's pid namespace).
//! `--pid-file` writes the server's pid once it listens, as nginx writes /var/run/nginx.pid.
//!
//! Built statically by `examples/build.rs` (glibc with crt-static, no other crates), so it
//! runs in a busybox image that has no libc. A port already taken is reported on stderr as
//! "address in use" with exit status 1, which the pod tests look for in the logs. SIGTERM
//! ends it with status 0, as a stopped container should.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;

fn hostname() -> String {
    // Read from the kernel: the uts namespace's name, which is the pod's.
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

struct Options {
    port: u16,
    pid_file: Option<String>,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut port = std::env::var("PORT").ok();
    let mut pid_file = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" | "-p" => port = Some(args.next().ok_or("--port needs a number")?),
            "--title" => {
                args.next().ok_or("--title needs a text")?;
            }
            "--pid-file" => pid_file = Some(args.next().ok_or("--pid-file needs a path")?),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: hostname-server [--port N] [--title TEXT] [--pid-file PATH]"
                ))
            }
        }
    }
    let text = port.unwrap_or_else(|| "8080".to_string());
    let port = text.parse().map_err(|_| format!("{text:?} is not a port"))?;
    Ok(Options { port, pid_file })
}

fn serve(stream: TcpStream, port: u16) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers so the client sees a clean close.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, path) {
        ("GET", "/hostname") => ("200 OK", format!("{}\n", hostname())),
        ("GET", "/") => ("200 OK", format!("hostname-server on port {port}, pod {}\n", hostname())),
        ("GET", _) => ("404 Not Found", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    println!("{method} {path} -> {status}");
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(status: i32) -> !;
}

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// Ends at once: the server holds nothing that needs flushing (println! writes through).
extern "C" fn stop(_: i32) {
    // SAFETY: _exit(2) is async-signal-safe.
    unsafe { _exit(0) }
}

fn main() -> ExitCode {
    // As PID 1 of its container, a signal without a handler would be ignored, and a stop
    // would wait out its whole grace period before SIGKILL.
    // SAFETY: installs a handler that only calls _exit.
    unsafe {
        signal(SIGTERM, stop);
        signal(SIGINT, stop);
    }
    let Options { port, pid_file } = match options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("hostname-server: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            eprintln!("hostname-server: cannot listen on port {port}: address in use");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("hostname-server: cannot listen on port {port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = pid_file {
        if let Err(e) = std::fs::write(&path, format!("{}\n", std::process::id())) {
            eprintln!("hostname-server: cannot write the pid file {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    println!("hostname-server: listening on 0.0.0.0:{port} as {}", hostname());
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(e) = serve(stream, port) {
                    eprintln!("hostname-server: {e}");
                }
            }
            Err(e) => eprintln!("hostname-server: accept: {e}"),
        }
    }
    ExitCode::SUCCESS
}
