//! The runtime side of CNI: ADD, DEL, CHECK, STATUS, GC and VERSION over network lists.
//!
//! What libcni's `CNIConfig` is for Go runtimes, with three differences a node needs:
//! * an ADD that fails part-way is rolled back at once by a DEL of the whole chain (each
//!   call with a fresh deadline), so a failing or hanging plugin never leaks an IP or a veth;
//! * DEL walks every plugin even when one fails, and keeps the cache entry until all succeed,
//!   so a retry finishes the job;
//! * plugin versions are checked before the first side effect of an ADD, and remembered per
//!   binary (path, size, mtime) so the check costs one exec per plugin, not per ADD.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::cache::{CacheError, CachedAttachment, ResultCache};
use crate::config::{is_valid_name, NetworkConfigList, PluginConfig};
use crate::exec::{ExecError, Invocation, PluginExec, ProcessExec};
use crate::result::{CniResult, ErrorObject};
use crate::version::{PluginVersions, SpecVersion};

/// Where plugin binaries are looked for unless told otherwise (upstream's and Debian's).
pub const DEFAULT_BIN_DIRS: &[&str] = &["/opt/cni/bin", "/usr/lib/cni"];
/// Deadline of one plugin call unless told otherwise.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A CNI command, as `CNI_COMMAND` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    /// The command `CNI_COMMAND` names (as a plugin reads it).
    pub fn parse(text: &str) -> Option<Command> {
        [
            Command::Add,
            Command::Del,
            Command::Check,
            Command::Status,
            Command::Gc,
            Command::Version,
        ]
        .into_iter()
        .find(|c| c.as_str() == text)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The per-attachment arguments of ADD, DEL and CHECK.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuntimeConf {
    pub container_id: String,
    /// Path of the container's network namespace (may be empty on DEL if it is gone).
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` pairs, e.g. `K8S_POD_NAMESPACE`, `K8S_POD_NAME`.
    pub args: Vec<(String, String)>,
    /// Capability arguments (e.g. `portMappings`), passed to plugins that declare them.
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    pub fn new(
        container_id: impl Into<String>,
        netns: impl Into<String>,
        ifname: impl Into<String>,
    ) -> Self {
        RuntimeConf {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            ..RuntimeConf::default()
        }
    }

    /// The Kubernetes arguments runtimes pass (as the kubelet's runtimes do).
    pub fn with_pod(mut self, namespace: &str, name: &str, infra_container_id: &str) -> Self {
        self.args.extend([
            ("IgnoreUnknown".to_string(), "1".to_string()),
            ("K8S_POD_NAMESPACE".to_string(), namespace.to_string()),
            ("K8S_POD_NAME".to_string(), name.to_string()),
            (
                "K8S_POD_INFRA_CONTAINER_ID".to_string(),
                infra_container_id.to_string(),
            ),
        ]);
        self
    }

    fn cni_args(&self) -> String {
        let pairs: Vec<String> = self.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.join(";")
    }

    fn validate(&self, command: Command) -> Result<(), Error> {
        let invalid = |field: &'static str, value: &str, problem: &str| Error::InvalidRuntimeConf {
            field,
            value: value.to_string(),
            container_id: self.container_id.clone(),
            problem: problem.to_string(),
        };
        if !is_valid_name(&self.container_id) {
            return Err(invalid(
                "container id",
                &self.container_id,
                "must be letters, digits, '_', '.', '-', starting with a letter or digit",
            ));
        }
        let ifname = &self.ifname;
        if ifname.is_empty()
            || ifname.len() > 15
            || ifname == "."
            || ifname == ".."
            || ifname
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace())
        {
            return Err(invalid(
                "interface name",
                ifname,
                "must be 1-15 characters without '/', ':' or spaces",
            ));
        }
        if self.netns.is_empty() && command != Command::Del {
            return Err(invalid(
                "netns",
                &self.netns,
                "is required for ADD and CHECK",
            ));
        }
        for (key, value) in &self.args {
            if key.is_empty() || key.contains(['=', ';']) || value.contains(';') {
                return Err(invalid(
                    "CNI_ARGS",
                    &format!("{key}={value}"),
                    "keys and values may not contain ';' (or '=' in keys)",
                ));
            }
        }
        Ok(())
    }
}

/// One attachment a GC must keep.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GcAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(rename = "ifname")]
    pub ifname: String,
}

/// What a GC removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed: Vec<GcAttachment>,
}

/// What went wrong inside one plugin call.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("binary not found in {dirs}")]
    NotFound { dirs: String },
    #[error("cannot start it: {0}")]
    Spawn(std::io::Error),
    #[error("cannot read its output or exit status: {0}")]
    Io(std::io::Error),
    #[error("did not finish within {0:?} and was killed")]
    TimedOut(Duration),
    #[error("{0}")]
    Cni(ErrorObject),
    #[error("exited with {status} without a CNI error object{}{}", excerpt_suffix("output", .stdout), excerpt_suffix("stderr", .stderr))]
    ExitedWithoutError {
        status: String,
        stdout: String,
        stderr: String,
    },
    #[error("printed something that is not a CNI result ({reason}){}", excerpt_suffix("output", .output))]
    BadOutput { reason: String, output: String },
    #[error("succeeded but printed no result")]
    NoResult,
    #[error("does not support CNI version {wanted} (it supports {})", .supported.join(", "))]
    IncompatibleVersion {
        wanted: String,
        supported: Vec<String>,
    },
}

fn excerpt_suffix(label: &str, text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!("; {label}: {text:?}")
    }
}

fn excerpt(bytes: &[u8]) -> String {
    const KEEP: usize = 200;
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(KEEP) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Whom a failed call was for: a container (ADD/DEL/CHECK) or a network (STATUS/GC/VERSION).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Container(String),
    Network(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Container(id) => write!(f, "container {id}"),
            Subject::Network(name) => write!(f, "network {name}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field} {value:?} for container {container_id}: {problem}")]
    InvalidRuntimeConf {
        field: &'static str,
        value: String,
        container_id: String,
        problem: String,
    },
    /// "plugin bridge failed (ADD) for container 3f2a…: <msg> (code 11)"
    #[error("plugin {plugin} failed ({command}) for {subject}: {source}")]
    Plugin {
        plugin: String,
        command: Command,
        subject: Subject,
        #[source]
        source: Box<PluginError>,
    },
    #[error("{add}; the cleanup DEL also failed, so something may be left behind: {cleanup}")]
    AddAndCleanup {
        add: Box<Error>,
        cleanup: Box<Error>,
    },
    #[error("{first}{}", if *.more > 0 { format!(" (and {} more DEL failures)", .more) } else { String::new() })]
    DelIncomplete { first: Box<Error>, more: usize },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("CHECK of network {network} for container {container_id}: nothing cached from an ADD (was it attached through this cache dir?)")]
    NotAttached {
        network: String,
        container_id: String,
    },
    #[error("network {network} has cniVersion {version}; CHECK needs 0.4.0 or later")]
    CheckNotSupported {
        network: String,
        version: SpecVersion,
    },
    #[error("GC of network {network} removed {} attachment(s) but failed: {}", .removed.len(), .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Gc {
        network: String,
        removed: Vec<GcAttachment>,
        errors: Vec<Error>,
    },
}

impl Error {
    /// The CNI error object behind this error, if a plugin printed one.
    pub fn cni_error(&self) -> Option<&ErrorObject> {
        match self {
            Error::Plugin { source, .. } => match source.as_ref() {
                PluginError::Cni(obj) => Some(obj),
                _ => None,
            },
            Error::AddAndCleanup { add, .. } => add.cni_error(),
            Error::DelIncomplete { first, .. } => first.cni_error(),
            _ => None,
        }
    }
}

/// Identity of a plugin binary for the version memo: a replaced binary is asked again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BinaryStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl BinaryStamp {
    fn of(path: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(BinaryStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
        })
    }
}

/// The CNI runtime: plugin dirs, a result cache, and how plugins are run.
pub struct CniHost<E: PluginExec = ProcessExec> {
    bin_dirs: Vec<PathBuf>,
    cache: ResultCache,
    exec: E,
    timeout: Duration,
    versions: Mutex<HashMap<PathBuf, (BinaryStamp, PluginVersions)>>,
}

impl CniHost<ProcessExec> {
    /// A runtime that runs real plugin binaries in the caller's network namespace.
    pub fn new(bin_dirs: Vec<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        CniHost::with_exec(bin_dirs, cache_dir, ProcessExec::new())
    }
}

impl<E: PluginExec> CniHost<E> {
    pub fn with_exec(bin_dirs: Vec<PathBuf>, cache_dir: impl Into<PathBuf>, exec: E) -> Self {
        CniHost {
            bin_dirs,
            cache: ResultCache::new(cache_dir),
            exec,
            timeout: DEFAULT_PLUGIN_TIMEOUT,
            versions: Mutex::new(HashMap::new()),
        }
    }

    /// Sets the deadline of each plugin call.
    pub fn plugin_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn cache(&self) -> &ResultCache {
        &self.cache
    }

    pub fn exec(&self) -> &E {
        &self.exec
    }

    fn cni_path(&self) -> String {
        let dirs: Vec<String> = self
            .bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        dirs.join(":")
    }

    fn find(
        &self,
        plugin: &PluginConfig,
        command: Command,
        subject: &Subject,
    ) -> Result<PathBuf, Error> {
        self.exec
            .find(&plugin.plugin_type, &self.bin_dirs)
            .ok_or_else(|| Error::Plugin {
                plugin: plugin.plugin_type.clone(),
                command,
                subject: subject.clone(),
                source: Box::new(PluginError::NotFound {
                    dirs: self.cni_path(),
                }),
            })
    }

    /// ADDs the container to every plugin of the list, in order, each getting the previous
    /// plugin's result. On any failure the whole chain is DELeted before the error returns.
    pub async fn add(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<CniResult, Error> {
        rt.validate(Command::Add)?;
        let subject = Subject::Container(rt.container_id.clone());
        // Resolve every binary and its version before the first side effect.
        let (list, paths) = self.negotiate(list, Command::Add, &subject).await?;
        let list = list.as_ref();

        let mut result: Option<CniResult> = None;
        for (plugin, path) in list.plugins.iter().zip(paths) {
            let stdin = plugin_stdin(list, plugin, Some(rt), result.as_ref(), None);
            let outcome = self
                .run(
                    plugin,
                    path,
                    Command::Add,
                    &subject,
                    self.attachment_env(Command::Add, rt),
                    stdin,
                )
                .await
                .and_then(|stdout| {
                    parse_add_output(&stdout).map_err(|source| Error::Plugin {
                        plugin: plugin.plugin_type.clone(),
                        command: Command::Add,
                        subject: subject.clone(),
                        source: Box::new(source),
                    })
                });
            match outcome {
                Ok(next) => result = Some(next),
                Err(failure) => {
                    return Err(self.roll_back_add(list, rt, result.as_ref(), failure).await)
                }
            }
        }
        let mut result = result.expect("a validated list has at least one plugin");
        // The chain was spoken in one version; the caller learns which from the result.
        result.cni_version = list.cni_version.to_string();

        let mut entry = CachedAttachment::new(&list.name, &rt.container_id, &rt.ifname);
        entry.config = serde_json::to_vec(&list.to_json()).expect("config serializes");
        entry.netns = rt.netns.clone();
        entry.cni_args = rt.args.clone();
        entry.capability_args = rt.capability_args.clone();
        entry.result = Some(
            result
                .to_version(list.cni_version)
                .expect("list versions are supported"),
        );
        if let Err(e) = self.cache.store(&entry) {
            return Err(self.roll_back_add(list, rt, Some(&result), e.into()).await);
        }
        Ok(result)
    }

    async fn roll_back_add(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
        partial: Option<&CniResult>,
        failure: Error,
    ) -> Error {
        // Each DEL gets a deadline of its own, so a hung ADD does not starve its cleanup.
        match self.del_chain(list, rt, partial).await {
            Ok(()) => {
                let _ = self.cache.remove(&list.name, &rt.container_id, &rt.ifname);
                failure
            }
            Err(cleanup) => Error::AddAndCleanup {
                add: Box::new(failure),
                cleanup: Box::new(cleanup),
            },
        }
    }

    /// DELs the container from every plugin, in reverse order, with the cached ADD result as
    /// `prevResult` when there is one. Safe to repeat; works without a cache entry.
    pub async fn del(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), Error> {
        rt.validate(Command::Del)?;
        let subject = Subject::Container(rt.container_id.clone());
        // The same binaries give the same answer as at ADD; a plugin that is gone or silent
        // must not stop the others' DELs, so the highest candidate is the fallback.
        let list = match self.negotiate(list, Command::Del, &subject).await {
            Ok((list, _)) => list,
            Err(_) => Cow::Borrowed(list),
        };
        let list = list.as_ref();
        let cached = if list.cni_version.has_check() {
            // A corrupt entry must not make the attachment impossible to delete.
            self.cache
                .load(&list.name, &rt.container_id, &rt.ifname)
                .ok()
                .flatten()
                .and_then(|entry| entry.result)
                .and_then(|value| CniResult::from_value(value).ok())
        } else {
            None
        };
        self.del_chain(list, rt, cached.as_ref()).await?;
        self.cache
            .remove(&list.name, &rt.container_id, &rt.ifname)?;
        Ok(())
    }

    /// Runs DEL on every plugin in reverse order, carrying on past failures.
    async fn del_chain(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
        prev: Option<&CniResult>,
    ) -> Result<(), Error> {
        let subject = Subject::Container(rt.container_id.clone());
        let mut failures = Vec::new();
        for plugin in list.plugins.iter().rev() {
            let outcome = match self.find(plugin, Command::Del, &subject) {
                Ok(path) => {
                    let stdin = plugin_stdin(list, plugin, Some(rt), prev, None);
                    self.run(
                        plugin,
                        path,
                        Command::Del,
                        &subject,
                        self.attachment_env(Command::Del, rt),
                        stdin,
                    )
                    .await
                    .map(drop)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                failures.push(e);
            }
        }
        let mut failures = failures.into_iter();
        match failures.next() {
            None => Ok(()),
            Some(first) => Err(Error::DelIncomplete {
                first: Box::new(first),
                more: failures.count(),
            }),
        }
    }

    /// CHECKs the attachment against what ADD cached.
    pub async fn check(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), Error> {
        rt.validate(Command::Check)?;
        let subject = Subject::Container(rt.container_id.clone());
        let (list, paths) = self.negotiate(list, Command::Check, &subject).await?;
        let list = list.as_ref();
        if !list.cni_version.has_check() {
            return Err(Error::CheckNotSupported {
                network: list.name.clone(),
                version: list.cni_version,
            });
        }
        if list.disable_check {
            return Ok(());
        }
        let prev = self
            .cache
            .load(&list.name, &rt.container_id, &rt.ifname)?
            .and_then(|entry| entry.result)
            .and_then(|value| CniResult::from_value(value).ok())
            .ok_or_else(|| Error::NotAttached {
                network: list.name.clone(),
                container_id: rt.container_id.clone(),
            })?;
        for (plugin, path) in list.plugins.iter().zip(paths) {
            let stdin = plugin_stdin(list, plugin, Some(rt), Some(&prev), None);
            self.run(
                plugin,
                path,
                Command::Check,
                &subject,
                self.attachment_env(Command::Check, rt),
                stdin,
            )
            .await?;
        }
        Ok(())
    }

    /// Whether the network is ready for ADDs: every plugin is installed and, for 1.1.0
    /// configs, answers STATUS without error.
    pub async fn status(&self, list: &NetworkConfigList) -> Result<(), Error> {
        let subject = Subject::Network(list.name.clone());
        let (list, paths) = self.negotiate(list, Command::Status, &subject).await?;
        let list = list.as_ref();
        if !list.cni_version.has_status_and_gc() {
            return Ok(());
        }
        for (plugin, path) in list.plugins.iter().zip(paths) {
            let stdin = plugin_stdin(list, plugin, None, None, None);
            self.run(
                plugin,
                path,
                Command::Status,
                &subject,
                self.network_env(Command::Status),
                stdin,
            )
            .await?;
        }
        Ok(())
    }

    /// Removes every cached attachment of the network that is not in `valid` (a DEL each),
    /// then, for 1.1.0 configs, asks each plugin to GC with `cni.dev/valid-attachments`.
    pub async fn gc(
        &self,
        list: &NetworkConfigList,
        valid: &[GcAttachment],
    ) -> Result<GcReport, Error> {
        let subject = Subject::Network(list.name.clone());
        let list = match self.negotiate(list, Command::Gc, &subject).await {
            Ok((list, _)) => list,
            Err(_) => Cow::Borrowed(list),
        };
        let list = list.as_ref();
        let mut report = GcReport::default();
        let mut errors = Vec::new();
        for entry in self
            .cache
            .list()?
            .into_iter()
            .filter(|e| e.network == list.name)
        {
            let attachment = GcAttachment {
                container_id: entry.container_id.clone(),
                ifname: entry.ifname.clone(),
            };
            if valid.contains(&attachment) {
                continue;
            }
            let rt = RuntimeConf {
                container_id: entry.container_id.clone(),
                netns: entry.netns.clone(),
                ifname: entry.ifname.clone(),
                args: entry.cni_args.clone(),
                capability_args: entry.capability_args.clone(),
            };
            let prev = entry
                .result
                .clone()
                .and_then(|v| CniResult::from_value(v).ok());
            let outcome = match self.del_chain(list, &rt, prev.as_ref()).await {
                Ok(()) => self
                    .cache
                    .remove(&list.name, &rt.container_id, &rt.ifname)
                    .map_err(Error::from),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => report.removed.push(attachment),
                Err(e) => errors.push(e),
            }
        }

        if list.cni_version.has_status_and_gc() && !list.disable_gc {
            let valid_json = serde_json::to_value(valid).expect("attachments serialize");
            for plugin in &list.plugins {
                let outcome = match self.find(plugin, Command::Gc, &subject) {
                    Ok(path) => {
                        let stdin = plugin_stdin(
                            list,
                            plugin,
                            None,
                            None,
                            Some(("cni.dev/valid-attachments", valid_json.clone())),
                        );
                        self.run(
                            plugin,
                            path,
                            Command::Gc,
                            &subject,
                            self.network_env(Command::Gc),
                            stdin,
                        )
                        .await
                        .map(drop)
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = outcome {
                    errors.push(e);
                }
            }
        }

        if errors.is_empty() {
            Ok(report)
        } else {
            Err(Error::Gc {
                network: list.name.clone(),
                removed: report.removed,
                errors,
            })
        }
    }

    /// Asks a plugin of the network which spec versions it supports (VERSION), remembering
    /// the answer per binary.
    pub async fn plugin_versions(
        &self,
        list: &NetworkConfigList,
        plugin: &PluginConfig,
    ) -> Result<PluginVersions, Error> {
        let subject = Subject::Network(list.name.clone());
        let path = self.find(plugin, Command::Version, &subject)?;
        self.versions_of(plugin, &path, list.cni_version, &subject)
            .await
    }

    async fn versions_of(
        &self,
        plugin: &PluginConfig,
        path: &std::path::Path,
        asking: SpecVersion,
        subject: &Subject,
    ) -> Result<PluginVersions, Error> {
        let stamp = BinaryStamp::of(path);
        if let Some((seen, versions)) = self.versions.lock().expect("version memo").get(path) {
            if Some(seen) == stamp.as_ref() {
                return Ok(versions.clone());
            }
        }
        let stdin = serde_json::to_vec(&json!({ "cniVersion": asking.to_string() })).expect("json");
        let stdout = self
            .run(
                plugin,
                path.to_path_buf(),
                Command::Version,
                subject,
                self.network_env(Command::Version),
                stdin,
            )
            .await?;
        let versions: PluginVersions =
            serde_json::from_slice(&stdout).map_err(|e| Error::Plugin {
                plugin: plugin.plugin_type.clone(),
                command: Command::Version,
                subject: subject.clone(),
                source: Box::new(PluginError::BadOutput {
                    reason: e.to_string(),
                    output: excerpt(&stdout),
                }),
            })?;
        if let Some(stamp) = stamp {
            self.versions
                .lock()
                .expect("version memo")
                .insert(path.to_path_buf(), (stamp, versions.clone()));
        }
        Ok(versions)
    }

    /// Finds every plugin of the chain and settles the version it is spoken in: the
    /// config's own, or for a SPEC 1.1 `cniVersions` config the highest of them that every
    /// plugin supports (one chain, one version: results pass from plugin to plugin).
    async fn negotiate<'l>(
        &self,
        list: &'l NetworkConfigList,
        command: Command,
        subject: &Subject,
    ) -> Result<(Cow<'l, NetworkConfigList>, Vec<PathBuf>), Error> {
        let mut paths = Vec::with_capacity(list.plugins.len());
        let mut answers = Vec::with_capacity(list.plugins.len());
        for plugin in &list.plugins {
            let path = self.find(plugin, command, subject)?;
            answers.push(
                self.versions_of(plugin, &path, list.cni_version, subject)
                    .await?,
            );
            paths.push(path);
        }
        let spoken_by_all = |v: SpecVersion| answers.iter().all(|a| a.supports(v));
        match list
            .cni_versions
            .iter()
            .copied()
            .find(|v| spoken_by_all(*v))
        {
            Some(version) if version == list.cni_version => Ok((Cow::Borrowed(list), paths)),
            Some(version) => Ok((Cow::Owned(list.at_version(version)), paths)),
            None => {
                // No candidate is common, so some plugin lacks the highest: name it.
                let (plugin, answer) = list
                    .plugins
                    .iter()
                    .zip(answers)
                    .find(|(_, a)| !a.supports(list.cni_version))
                    .expect("no common version, so the highest is not spoken by one");
                let wanted: Vec<String> = list.cni_versions.iter().map(|v| v.to_string()).collect();
                Err(Error::Plugin {
                    plugin: plugin.plugin_type.clone(),
                    command: Command::Version,
                    subject: subject.clone(),
                    source: Box::new(PluginError::IncompatibleVersion {
                        wanted: wanted.join(" or "),
                        supported: answer.supported_versions,
                    }),
                })
            }
        }
    }

    fn attachment_env(&self, command: Command, rt: &RuntimeConf) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", command.as_str().to_string()),
            ("CNI_CONTAINERID", rt.container_id.clone()),
            ("CNI_NETNS", rt.netns.clone()),
            ("CNI_IFNAME", rt.ifname.clone()),
            ("CNI_ARGS", rt.cni_args()),
            ("CNI_PATH", self.cni_path()),
        ]
    }

    fn network_env(&self, command: Command) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", command.as_str().to_string()),
            ("CNI_PATH", self.cni_path()),
        ]
    }

    /// Runs one plugin call and turns process-level failures into CNI errors.
    async fn run(
        &self,
        plugin: &PluginConfig,
        path: PathBuf,
        command: Command,
        subject: &Subject,
        env: Vec<(&'static str, String)>,
        stdin: Vec<u8>,
    ) -> Result<Vec<u8>, Error> {
        let invocation = Invocation {
            plugin: path,
            env,
            stdin,
            timeout: self.timeout,
        };
        self.exec.run(invocation).await.map_err(|e| Error::Plugin {
            plugin: plugin.plugin_type.clone(),
            command,
            subject: subject.clone(),
            source: Box::new(match e {
                ExecError::Spawn { source, .. } => PluginError::Spawn(source),
                ExecError::Io(source) => PluginError::Io(source),
                ExecError::TimedOut(after) => PluginError::TimedOut(after),
                ExecError::Failed {
                    status,
                    stdout,
                    stderr,
                } => match serde_json::from_slice::<ErrorObject>(&stdout) {
                    Ok(object) => PluginError::Cni(object),
                    Err(_) => PluginError::ExitedWithoutError {
                        status,
                        stdout: excerpt(&stdout),
                        stderr,
                    },
                },
            }),
        })
    }
}

fn parse_add_output(stdout: &[u8]) -> Result<CniResult, PluginError> {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Err(PluginError::NoResult);
    }
    CniResult::parse(stdout).map_err(|e| PluginError::BadOutput {
        reason: e.to_string(),
        output: excerpt(stdout),
    })
}

/// The config a plugin reads on stdin: its own object with the list's name and version,
/// the capability arguments it declared, `prevResult`, and any extra key.
fn plugin_stdin(
    list: &NetworkConfigList,
    plugin: &PluginConfig,
    rt: Option<&RuntimeConf>,
    prev: Option<&CniResult>,
    extra: Option<(&str, Value)>,
) -> Vec<u8> {
    let mut conf = plugin.raw.clone();
    // SPEC: `capabilities` is the runtime's to read; plugins see only `runtimeConfig`.
    conf.remove("capabilities");
    conf.insert("name".into(), json!(list.name));
    conf.insert("cniVersion".into(), json!(list.cni_version.to_string()));
    if let Some(rt) = rt {
        let runtime_config: Map<String, Value> = plugin
            .capabilities
            .iter()
            .filter(|(_, enabled)| **enabled)
            .filter_map(|(cap, _)| Some((cap.clone(), rt.capability_args.get(cap)?.clone())))
            .collect();
        if !runtime_config.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
    }
    if let Some(prev) = prev {
        let value = prev
            .to_version(list.cni_version)
            .expect("list versions are supported");
        conf.insert("prevResult".into(), value);
    }
    if let Some((key, value)) = extra {
        conf.insert(key.into(), value);
    }
    serde_json::to_vec(&conf).expect("config serializes")
}
