//! Builds `src/pause.rs` into a static, no_std executable.
//!
//! The program needs `panic=abort` (a no_std binary cannot unwind on stable Rust), and Cargo
//! only sets the panic strategy per profile for the whole workspace. Rather than make every
//! crate abort on panic, this script compiles the one file itself with the flags it needs,
//! using the same `rustc` Cargo uses, and places the result beside the workspace's other
//! binaries (`target/<profile>/pause`), where sandboxd looks for it.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let source = Path::new("src/pause.rs");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-changed=build.rs");

    let target = env::var("TARGET").expect("cargo sets TARGET");
    if target != "x86_64-unknown-linux-gnu" {
        panic!("pause is written for x86_64 Linux (raw syscalls), not {target}");
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let output = out_dir.join("pause");
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let opt_level = match env::var("OPT_LEVEL").as_deref() {
        Ok("0") | Ok("1") => "1",
        _ => "s",
    };

    let status = Command::new(rustc)
        .args(["--edition=2021", "--crate-name=pause", "--crate-type=bin"])
        .args(["--target", &target])
        .args(["-C", "panic=abort"])
        .args(["-C", &format!("opt-level={opt_level}")])
        .args(["-C", "codegen-units=1"])
        .args(["-C", "relocation-model=static"])
        .args(["-C", "strip=symbols"])
        // Nothing unwinds in a panic=abort program; unwind tables would be dead weight.
        .args(["-C", "force-unwind-tables=no"])
        // No C runtime: `_start` is ours. -n drops page alignment between sections, which is
        // most of the size of a tiny static executable.
        .args(["-C", "link-arg=-nostartfiles"])
        .args(["-C", "link-arg=-static"])
        .args([
            "-C",
            "link-arg=-Wl,-n,--gc-sections,--build-id=none,--no-eh-frame-hdr",
        ])
        .args(["-D", "warnings"])
        .arg(source)
        .arg("-o")
        .arg(&output)
        .status()
        .expect("run rustc for pause");
    assert!(status.success(), "rustc failed to build src/pause.rs");

    println!("cargo:rustc-env=PAUSE_BINARY={}", output.display());

    // OUT_DIR is target/<profile>/build/pause-<hash>/out; the binaries of the profile live
    // three levels up. If Cargo ever changes that layout, say so instead of guessing.
    match out_dir.ancestors().nth(3) {
        Some(profile_dir) if profile_dir.join("build").is_dir() => {
            let installed = profile_dir.join("pause");
            let staging = profile_dir.join(".pause.tmp");
            std::fs::copy(&output, &staging).expect("copy pause beside the other binaries");
            std::fs::rename(&staging, &installed).expect("install pause beside the other binaries");
        }
        _ => println!(
            "cargo:warning=unexpected OUT_DIR layout {}; pause is only at {}",
            out_dir.display(),
            output.display()
        ),
    }
}
