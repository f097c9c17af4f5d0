//! One call of a plugin, as the CNI spec defines it: the command and the container in
//! `CNI_*` environment variables, the network config on stdin; the answer on stdout (a
//! result in the config's `cniVersion`, or an error object) with the exit status.

use std::path::PathBuf;

use cni_host::result::{CniResult, ErrorObject};
use cni_host::version::SpecVersion;
use serde_json::{json, Value};

use crate::cni_plugin::{Plugin, VERSIONS};

/// The commands, as the runtime side (cni-host) names them.
pub use cni_host::Command;

/// What a plugin is asked to do.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    /// The container's network namespace (DEL may come after it is gone).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS`: `K=V;K=V`.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`: where delegated plugins (another IPAM) are found.
    pub cni_path: Vec<PathBuf>,
    /// The network config (with `prevResult`, `runtimeConfig`, …); `Null` for VERSION
    /// without one.
    pub config: Value,
    /// The config's `cniVersion`, which the answer is written in.
    pub version: SpecVersion,
}

/// A failure, as the error object the spec defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl PluginError {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// What upstream's plugins answer for every failure of their own.
    pub const INTERNAL: u32 = 999;

    pub fn new(code: u32, msg: impl Into<String>) -> PluginError {
        PluginError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> PluginError {
        self.details = details.into();
        self
    }

    pub fn config(msg: impl Into<String>) -> PluginError {
        PluginError::new(PluginError::INVALID_CONFIG, msg)
    }

    pub fn internal(msg: impl Into<String>) -> PluginError {
        PluginError::new(PluginError::INTERNAL, msg)
    }

    pub fn to_object(&self, version: &str) -> ErrorObject {
        ErrorObject {
            cni_version: version.to_string(),
            code: self.code,
            msg: self.msg.clone(),
            details: self.details.clone(),
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for PluginError {}

impl Invocation {
    /// Reads an invocation from the `CNI_*` variables `env` gives and the config on
    /// `stdin`.
    pub fn from_env(
        env: impl Fn(&str) -> Option<String>,
        stdin: &[u8],
    ) -> Result<Invocation, PluginError> {
        let text = env("CNI_COMMAND").unwrap_or_default();
        let command = Command::parse(&text).ok_or_else(|| {
            PluginError::new(
                PluginError::INVALID_ENVIRONMENT,
                format!("CNI_COMMAND {text:?} is not ADD, DEL, CHECK, STATUS, GC or VERSION"),
            )
        })?;
        let config: Value = if stdin.iter().all(u8::is_ascii_whitespace) {
            if command != Command::Version {
                return Err(PluginError::new(
                    PluginError::DECODE_FAILURE,
                    "no network config on stdin",
                ));
            }
            Value::Null
        } else {
            serde_json::from_slice(stdin).map_err(|e| {
                PluginError::new(
                    PluginError::DECODE_FAILURE,
                    format!("the network config on stdin is not JSON: {e}"),
                )
            })?
        };
        let version_text = config
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or(if command == Command::Version {
                "0.1.0"
            } else {
                ""
            })
            .to_string();
        let version: SpecVersion = version_text.parse().map_err(|_| {
            PluginError::new(
                PluginError::INCOMPATIBLE_VERSION,
                format!("cniVersion {version_text:?} is not a CNI version"),
            )
        })?;
        if command != Command::Version && !VERSIONS.contains(&version_text.as_str()) {
            return Err(PluginError::new(
                PluginError::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {version_text} is not one these plugins speak ({})",
                    VERSIONS.join(", ")
                ),
            ));
        }
        if matches!(command, Command::Status | Command::Gc) && !version.has_status_and_gc() {
            return Err(PluginError::new(
                PluginError::INCOMPATIBLE_VERSION,
                format!("{text} needs cniVersion 1.1.0 or later (the config says {version})"),
            ));
        }
        let required = |name: &str| -> Result<String, PluginError> {
            env(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                PluginError::new(
                    PluginError::INVALID_ENVIRONMENT,
                    format!("{name} is required for {text}"),
                )
            })
        };
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let (container_id, ifname) = if per_container {
            (required("CNI_CONTAINERID")?, required("CNI_IFNAME")?)
        } else {
            (String::new(), String::new())
        };
        let netns = match command {
            Command::Add | Command::Check => Some(PathBuf::from(required("CNI_NETNS")?)),
            _ => env("CNI_NETNS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        };
        let mut args = Vec::new();
        for pair in env("CNI_ARGS").unwrap_or_default().split(';') {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                PluginError::new(
                    PluginError::INVALID_ENVIRONMENT,
                    format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
                )
            })?;
            args.push((key.to_string(), value.to_string()));
        }
        let cni_path = env("CNI_PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        Ok(Invocation {
            command,
            container_id,
            netns,
            ifname,
            args,
            cni_path,
            config,
            version,
        })
    }

    /// The network's name (`name` of the config).
    pub fn network_name(&self) -> Result<&str, PluginError> {
        self.config
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| PluginError::config("the network config has no name"))
    }

    /// A result rendered in the config's version.
    pub fn render(&self, result: &CniResult) -> Result<Value, PluginError> {
        result
            .to_version(self.version)
            .map_err(|e| PluginError::new(PluginError::INCOMPATIBLE_VERSION, e.to_string()))
    }
}

/// Capability arguments as a Go runtime writes them, read as a Go plugin reads them: go-cni
/// (containerd's CNI library) marshals its structs without JSON tags, so containerd sends
/// `{"HostPort": 80, "HostIP": ""}` where the conventions say `hostPort`, and Go's decoder
/// matches field names case-insensitively and takes `""` as unset. This renames every key
/// of the objects in `value` (through nested lists) that matches one of `fields` but for
/// case to that spelling, and drops keys whose value is `""`.
pub fn fields_as_go_reads_them(value: &Value, fields: &[&str]) -> Value {
    match value {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| fields_as_go_reads_them(item, fields))
                .collect(),
        ),
        Value::Object(object) => Value::Object(
            object
                .iter()
                .filter(|(_, v)| v.as_str() != Some(""))
                .map(|(key, v)| {
                    let canonical = fields
                        .iter()
                        .find(|f| f.eq_ignore_ascii_case(key))
                        .map_or_else(|| key.clone(), |f| f.to_string());
                    (canonical, v.clone())
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The answer to VERSION.
pub fn version_answer(invocation: &Invocation) -> Value {
    json!({
        "cniVersion": invocation.version.to_string(),
        "supportedVersions": VERSIONS,
    })
}

/// Runs `plugin` as a binary does: the answer's bytes for stdout, and the exit status.
pub fn respond(
    plugin: Plugin,
    env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> (i32, Vec<u8>) {
    respond_in(plugin, env, stdin, None)
}

/// [`respond`] with the node's side in the namespace at `host`.
pub fn respond_in(
    plugin: Plugin,
    env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    host: Option<&std::path::Path>,
) -> (i32, Vec<u8>) {
    let outcome =
        Invocation::from_env(env, stdin).and_then(|invocation| plugin.run_in(&invocation, host));
    match outcome {
        Ok(Some(answer)) => (0, serde_json::to_vec(&answer).expect("JSON")),
        Ok(None) => (0, Vec::new()),
        Err(e) => {
            let version = stdin_version(stdin);
            let object = e.to_object(&version);
            (1, serde_json::to_vec(&object).expect("JSON"))
        }
    }
}

/// The cniVersion on stdin, for an error object (empty if there is none to read).
fn stdin_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|c| {
            c.get("cniVersion")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_runtimes_capability_arguments_read_as_go_reads_them() {
        let containerd =
            json!([{ "HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": "" }]);
        assert_eq!(
            fields_as_go_reads_them(
                &containerd,
                &["hostPort", "containerPort", "protocol", "hostIP"]
            ),
            json!([{ "hostPort": 8080, "containerPort": 80, "protocol": "tcp" }])
        );
        let ranges =
            json!([[{ "Subnet": "10.1.0.0/16", "RangeStart": "", "gateway": "10.1.0.1" }]]);
        assert_eq!(
            fields_as_go_reads_them(&ranges, &["subnet", "rangeStart", "rangeEnd", "gateway"]),
            json!([[{ "subnet": "10.1.0.0/16", "gateway": "10.1.0.1" }]])
        );
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    const CONFIG: &[u8] = br#"{"cniVersion":"1.0.0","name":"net","type":"loopback"}"#;

    #[test]
    fn an_add_needs_its_container_and_namespace() {
        let err = Invocation::from_env(env(&[("CNI_COMMAND", "ADD")]), CONFIG).unwrap_err();
        assert_eq!(err.code, PluginError::INVALID_ENVIRONMENT);
        assert!(err.msg.contains("CNI_CONTAINERID"), "{err}");
        let add = Invocation::from_env(
            env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/run/netns/x"),
                ("CNI_ARGS", "IgnoreUnknown=1;IP=10.0.0.5"),
            ]),
            CONFIG,
        )
        .unwrap();
        assert_eq!(add.args[1], ("IP".into(), "10.0.0.5".into()));
        assert_eq!(add.network_name().unwrap(), "net");
        // DEL may come after the namespace is gone.
        let del = Invocation::from_env(
            env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
            ]),
            CONFIG,
        )
        .unwrap();
        assert_eq!(del.netns, None);
    }

    #[test]
    fn versions_are_checked_and_answered() {
        let old = br#"{"cniVersion":"0.2.0","name":"n"}"#;
        let err = Invocation::from_env(
            env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "e"),
            ]),
            old,
        )
        .unwrap_err();
        assert_eq!(err.code, PluginError::INCOMPATIBLE_VERSION);
        let gc = Invocation::from_env(env(&[("CNI_COMMAND", "GC")]), CONFIG).unwrap_err();
        assert!(gc.msg.contains("1.1.0"), "{gc}");
        let (code, out) = respond(Plugin::Loopback, env(&[("CNI_COMMAND", "VERSION")]), b"");
        assert_eq!(code, 0);
        let answer: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(answer["supportedVersions"][4], "1.1.0");
        let (code, out) = respond(Plugin::Loopback, env(&[("CNI_COMMAND", "ADD")]), b"{nope");
        assert_eq!(code, 1);
        let object: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(object["code"], PluginError::DECODE_FAILURE);
    }
}
