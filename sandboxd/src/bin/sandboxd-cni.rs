//! sandboxd-cni: sandboxd's CNI plugins in one binary, which is the plugin it is run as
//! (`host-local`, `loopback`; links to it named so, in a directory of their own), or the
//! one named by its first argument (`sandboxd-cni host-local`). Speaks CNI 0.3.0 to 1.1.0
//! on stdin, stdout and the `CNI_*` variables, as every plugin does.

use std::io::{Read, Write};
use std::process::ExitCode;

use sandboxd::cni_plugin::invocation::respond;
use sandboxd::cni_plugin::Plugin;

fn main() -> ExitCode {
    let mut args = std::env::args();
    let invoked = args.next().unwrap_or_default();
    let invoked = std::path::Path::new(&invoked)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match Plugin::from_name(&invoked) {
        Some(_) => invoked,
        None => args.next().unwrap_or_default(),
    };
    let Some(plugin) = Plugin::from_name(&name) else {
        let names: Vec<&str> = Plugin::ALL.iter().map(|p| p.name()).collect();
        eprintln!(
            "sandboxd-cni: run it as one of {} (a link named so, or the name as its first argument)",
            names.join(", ")
        );
        return ExitCode::from(2);
    };
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        eprintln!("sandboxd-cni: read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let (code, out) = respond(plugin, |name| std::env::var(name).ok(), &stdin);
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(&out);
    let _ = stdout.flush();
    ExitCode::from(code as u8)
}
