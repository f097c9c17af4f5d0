//! A CNI plugin that does what a JSON file tells it, to test runtimes' failure paths.
//!
//! The script is `<argv0>.json` (install the binary, or a symlink to it, under the plugin
//! name; the script sits beside it). For each command it holds one behaviour:
//!
//! ```json
//! { "ADD": {"action": "error", "code": 11, "msg": "busy", "details": "lock held"},
//!   "DEL": {"action": "succeed"},
//!   "VERSION": {"action": "version", "supportedVersions": ["0.3.1"]} }
//! ```
//!
//! Actions: `succeed` (ADD passes prevResult on, or prints a minimal result), `error` (a
//! CNI error object, exit 1), `print` (prints `output` verbatim, exit 0: garbage or an odd
//! result), `hang` (sleeps until killed), `exit` (exits with `status`, printing nothing),
//! `version` (VERSION answer). Commands without an entry succeed. Every call is appended
//! to `<argv0>.log` as one JSON line (command, container id, netns, ifname, args, stdin).

use std::io::{Read, Write};
use std::process::ExitCode;

use serde_json::{json, Value};

const ALL_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

fn main() -> ExitCode {
    let argv0 = std::env::args().next().unwrap_or_default();
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    let config: Value = serde_json::from_str(&stdin).unwrap_or(Value::Null);
    let version = config["cniVersion"].as_str().unwrap_or("1.0.0").to_string();

    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let record = json!({
        "command": command,
        "containerId": var("CNI_CONTAINERID"),
        "netns": var("CNI_NETNS"),
        "ifname": var("CNI_IFNAME"),
        "args": var("CNI_ARGS"),
        "path": var("CNI_PATH"),
        "stdin": config,
    });
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{argv0}.log"))
    {
        let _ = writeln!(log, "{record}");
    }

    let script: Value = std::fs::read_to_string(format!("{argv0}.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    let behaviour = &script[command.as_str()];
    let action = behaviour["action"]
        .as_str()
        .unwrap_or(match command.as_str() {
            "VERSION" => "version",
            _ => "succeed",
        });

    match action {
        "succeed" if command == "ADD" => {
            let result = if config["prevResult"].is_object() {
                config["prevResult"].clone()
            } else {
                json!({ "cniVersion": version })
            };
            println!("{result}");
            ExitCode::SUCCESS
        }
        "succeed" => ExitCode::SUCCESS,
        "version" => {
            let supported = behaviour
                .get("supportedVersions")
                .cloned()
                .unwrap_or(json!(ALL_VERSIONS));
            println!(
                "{}",
                json!({ "cniVersion": version, "supportedVersions": supported })
            );
            ExitCode::SUCCESS
        }
        "error" => {
            let mut object = json!({
                "cniVersion": version,
                "code": behaviour["code"].as_u64().unwrap_or(999),
                "msg": behaviour["msg"].as_str().unwrap_or("fake failure"),
            });
            if let Some(details) = behaviour["details"].as_str() {
                object["details"] = json!(details);
            }
            println!("{object}");
            ExitCode::FAILURE
        }
        "print" => {
            print!("{}", behaviour["output"].as_str().unwrap_or(""));
            ExitCode::SUCCESS
        }
        "hang" => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        "exit" => ExitCode::from(behaviour["status"].as_u64().unwrap_or(1) as u8),
        other => {
            eprintln!("cni-fake-plugin: unknown action {other:?} in {argv0}.json");
            ExitCode::from(100)
        }
    }
}
