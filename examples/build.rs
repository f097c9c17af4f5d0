//! Builds `hostname-server/server.rs` as a static executable for the demo images.
//!
//! The images are busybox plus this server, with no C library inside, so the server must be
//! static. Cargo cannot link one package's binary with `crt-static` on the gnu target
//! without changing every crate's flags; this script compiles the one dependency-free file
//! with the same `rustc` and puts it beside the other binaries as `hostname-server`.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let source = Path::new("hostname-server/server.rs");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-changed=build.rs");
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let output = out_dir.join("hostname-server");
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let status = Command::new(rustc)
        .args([
            "--edition=2021",
            "--crate-name=hostname_server",
            "--crate-type=bin",
        ])
        .args(["--target", &target])
        .args(["-C", "target-feature=+crt-static"])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args(["-D", "warnings"])
        .arg(source)
        .arg("-o")
        .arg(&output)
        .status()
        .expect("run rustc for hostname-server");
    assert!(
        status.success(),
        "rustc failed to build hostname-server/server.rs"
    );
    println!(
        "cargo:rustc-env=HOSTNAME_SERVER_BINARY={}",
        output.display()
    );
    match out_dir.ancestors().nth(3) {
        Some(profile_dir) if profile_dir.join("build").is_dir() => {
            let staging = profile_dir.join(".hostname-server.tmp");
            std::fs::copy(&output, &staging).expect("copy hostname-server");
            std::fs::rename(&staging, profile_dir.join("hostname-server"))
                .expect("install hostname-server");
        }
        _ => println!(
            "cargo:warning=unexpected OUT_DIR layout; hostname-server is at {}",
            output.display()
        ),
    }
}
