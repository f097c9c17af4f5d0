//! Network configuration: loading `.conflist`, `.conf` and `.json` files and validating them.
//!
//! A conf dir is read in lexical order, as libcni and the kubelet do. Every problem is
//! reported with the file and the JSON field it is in, e.g.
//! `/etc/cni/net.d/10-pod.conflist: plugins[1].type: missing`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::version::SpecVersion;

/// File extensions a conf dir is scanned for, as libcni does.
pub const CONFIG_EXTENSIONS: &[&str] = &["conflist", "conf", "json"];

/// One plugin of a network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// The plugin binary's name (`type`).
    pub plugin_type: String,
    /// Capabilities the plugin accepts in `runtimeConfig` (e.g. `portMappings`).
    pub capabilities: BTreeMap<String, bool>,
    /// The plugin's configuration object as written.
    pub raw: Map<String, Value>,
}

/// A network: a named, versioned chain of plugins.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    /// The version plugins are called with. For a SPEC 1.1 `cniVersions` list it is the
    /// highest candidate until [`CniHost`](crate::CniHost) learns which of them every
    /// plugin of the chain speaks.
    pub cni_version: SpecVersion,
    /// The versions this config may be spoken in that this runtime knows, highest first:
    /// `cniVersions` and `cniVersion` together. Just `[cni_version]` for older configs.
    pub cni_versions: Vec<SpecVersion>,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub plugins: Vec<PluginConfig>,
    /// Where it was loaded from, for messages.
    pub source: Option<PathBuf>,
}

/// A configuration problem, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file, or `<inline>` for configs given as bytes.
    pub source_name: String,
    /// The JSON path of the bad field; empty for whole-document problems.
    pub field: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.source_name, self.problem)
        } else {
            write!(f, "{}: {}: {}", self.source_name, self.field, self.problem)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read CNI config dir {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no valid CNI network config in {dir}{}", describe_skipped(.skipped))]
    NoValidConfig {
        dir: PathBuf,
        skipped: Vec<ConfigError>,
    },
    #[error("no CNI network named {name:?} in {dir}{}", describe_skipped(.skipped))]
    NoSuchNetwork {
        name: String,
        dir: PathBuf,
        skipped: Vec<ConfigError>,
    },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

fn describe_skipped(skipped: &[ConfigError]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let list: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    format!(" (skipped invalid files: {})", list.join("; "))
}

/// Names valid for networks and container ids: libcni's `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl NetworkConfigList {
    /// Parses a `.conflist`, or a single-plugin `.conf`/`.json`, from bytes.
    /// `source_name` is what errors call the document (a path or `<inline>`).
    pub fn from_bytes(bytes: &[u8], source_name: &str) -> Result<Self, ConfigError> {
        let err = |field: &str, problem: String| ConfigError {
            source_name: source_name.to_string(),
            field: field.to_string(),
            problem,
        };
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| err("", format!("invalid JSON: {e}")))?;
        let Value::Object(top) = value else {
            return Err(err("", "expected a JSON object".into()));
        };

        let name = match top.get("name") {
            Some(Value::String(s)) if is_valid_name(s) => s.clone(),
            Some(Value::String(s)) => {
                return Err(err(
                    "name",
                    format!("{s:?} is not a valid network name (letters, digits, '_', '.', '-'; starting with a letter or digit)"),
                ))
            }
            Some(_) => return Err(err("name", "must be a string".into())),
            None => return Err(err("name", "missing".into())),
        };
        let unsupported = |field: &str, text: &str| {
            err(
                field,
                format!(
                    "version {text} is not supported (supported: {})",
                    crate::version::SUPPORTED.join(", ")
                ),
            )
        };
        let single = match top.get("cniVersion") {
            Some(Value::String(s)) => {
                let version: SpecVersion =
                    s.parse().map_err(|e| err("cniVersion", format!("{e}")))?;
                Some((version, s.as_str()))
            }
            Some(_) => return Err(err("cniVersion", "must be a string".into())),
            None => None,
        };
        // SPEC 1.1: `cniVersions` lists every version the config may be spoken in; versions
        // newer than this runtime are skipped (as libcni does), and `cniVersion` joins them.
        let mut cni_versions = Vec::new();
        match top.get("cniVersions") {
            None | Some(Value::Null) => match single {
                Some((version, _)) if version.is_supported() => cni_versions.push(version),
                Some((_, text)) => return Err(unsupported("cniVersion", text)),
                None => return Err(err("cniVersion", "missing".into())),
            },
            Some(Value::Array(entries)) => {
                for (i, entry) in entries.iter().enumerate() {
                    let field = format!("cniVersions[{i}]");
                    let Value::String(text) = entry else {
                        return Err(err(&field, "must be a string".into()));
                    };
                    let version: SpecVersion =
                        text.parse().map_err(|e| err(&field, format!("{e}")))?;
                    if version.is_supported() {
                        cni_versions.push(version);
                    }
                }
                if let Some((version, _)) = single.filter(|(v, _)| v.is_supported()) {
                    cni_versions.push(version);
                }
                if cni_versions.is_empty() {
                    let listed: Vec<&str> = entries.iter().filter_map(Value::as_str).collect();
                    return Err(unsupported("cniVersions", &listed.join(", ")));
                }
            }
            Some(_) => {
                return Err(err(
                    "cniVersions",
                    "must be a list of version strings".into(),
                ))
            }
        }
        cni_versions.sort_by(|a, b| b.cmp(a));
        cni_versions.dedup();
        let cni_version = cni_versions[0];
        let flag = |field: &str| -> Result<bool, ConfigError> {
            match top.get(field) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                // libcni accepts the string forms too.
                Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
                Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
                Some(_) => Err(err(field, "must be true or false".into())),
            }
        };
        let disable_check = flag("disableCheck")?;
        let disable_gc = flag("disableGC")?;

        let plugins = match top.get("plugins") {
            // A conflist.
            Some(Value::Array(list)) => {
                if list.is_empty() {
                    return Err(err(
                        "plugins",
                        "is empty: a network needs at least one plugin".into(),
                    ));
                }
                list.iter()
                    .enumerate()
                    .map(|(i, p)| parse_plugin(p, &format!("plugins[{i}]"), &err))
                    .collect::<Result<Vec<_>, _>>()?
            }
            Some(_) => return Err(err("plugins", "must be a list of plugin objects".into())),
            // A single-plugin .conf: the document is the plugin.
            None => vec![parse_plugin(&Value::Object(top.clone()), "", &err)?],
        };

        Ok(NetworkConfigList {
            name,
            cni_version,
            cni_versions,
            disable_check,
            disable_gc,
            plugins,
            source: None,
        })
    }

    /// The list as a `.conflist` document, which [`from_bytes`](Self::from_bytes) reads
    /// back: for the cache, and for runtimes that keep the config an attachment was made
    /// with.
    pub fn to_json(&self) -> Value {
        let mut doc = serde_json::json!({
            "cniVersion": self.cni_version.to_string(),
            "name": self.name,
            "plugins": self.plugins.iter().map(|p| Value::Object(p.raw.clone())).collect::<Vec<_>>(),
        });
        if self.cni_versions.len() > 1 {
            let versions: Vec<String> = self.cni_versions.iter().map(|v| v.to_string()).collect();
            doc["cniVersions"] = serde_json::json!(versions);
        }
        if self.disable_check {
            doc["disableCheck"] = Value::Bool(true);
        }
        if self.disable_gc {
            doc["disableGC"] = Value::Bool(true);
        }
        doc
    }

    /// Loads one config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let source_name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| ConfigError {
            source_name: source_name.clone(),
            field: String::new(),
            problem: format!("cannot read: {e}"),
        })?;
        let mut list = Self::from_bytes(&bytes, &source_name)?;
        list.source = Some(path.to_path_buf());
        Ok(list)
    }

    /// The same network pinned to one of its versions, as a chain is called once the
    /// plugins' versions are known (and as the cache records it).
    pub fn at_version(&self, version: SpecVersion) -> Self {
        NetworkConfigList {
            cni_version: version,
            cni_versions: vec![version],
            ..self.clone()
        }
    }

    /// What messages call this network: its name and, if known, its file.
    pub fn describe(&self) -> String {
        match &self.source {
            Some(path) => format!("{} ({})", self.name, path.display()),
            None => self.name.clone(),
        }
    }
}

fn parse_plugin(
    value: &Value,
    at: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<PluginConfig, ConfigError> {
    let field = |name: &str| {
        if at.is_empty() {
            name.to_string()
        } else {
            format!("{at}.{name}")
        }
    };
    let Value::Object(raw) = value else {
        return Err(err(at, "must be a plugin object".into()));
    };
    let plugin_type = match raw.get("type") {
        Some(Value::String(t)) if !t.is_empty() && !t.contains('/') && t != "." && t != ".." => {
            t.clone()
        }
        Some(Value::String(t)) => {
            return Err(err(
                &field("type"),
                format!("{t:?} is not a plugin binary name"),
            ))
        }
        Some(_) => return Err(err(&field("type"), "must be a string".into())),
        None => return Err(err(&field("type"), "missing".into())),
    };
    let capabilities = match raw.get("capabilities") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(caps)) => caps
            .iter()
            .map(|(k, v)| match v {
                Value::Bool(b) => Ok((k.clone(), *b)),
                _ => Err(err(
                    &field(&format!("capabilities.{k}")),
                    "must be true or false".into(),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(err(&field("capabilities"), "must be an object".into())),
    };
    Ok(PluginConfig {
        plugin_type,
        capabilities,
        raw: raw.clone(),
    })
}

/// Config files of a dir, in the lexical order that decides which network is the default.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::ReadDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Loads the network called `name` from `dir`. A file that names it but is invalid is an
/// error; other invalid files are only mentioned if the network is not found.
pub fn load_network(dir: &Path, name: &str) -> Result<NetworkConfigList, LoadError> {
    let mut skipped = Vec::new();
    for file in config_files(dir)? {
        match NetworkConfigList::from_file(&file) {
            Ok(list) if list.name == name => return Ok(list),
            Ok(_) => {}
            Err(e) => {
                if declared_name(&file).as_deref() == Some(name) {
                    return Err(e.into());
                }
                skipped.push(e);
            }
        }
    }
    Err(LoadError::NoSuchNetwork {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        skipped,
    })
}

/// Loads the first valid network of `dir`, as the kubelet's runtimes pick their default.
pub fn load_default_network(dir: &Path) -> Result<NetworkConfigList, LoadError> {
    let mut skipped = Vec::new();
    for file in config_files(dir)? {
        match NetworkConfigList::from_file(&file) {
            Ok(list) => return Ok(list),
            Err(e) => skipped.push(e),
        }
    }
    Err(LoadError::NoValidConfig {
        dir: dir.to_path_buf(),
        skipped,
    })
}

fn declared_name(file: &Path) -> Option<String> {
    let value: Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    value.get("name")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NetworkConfigList, ConfigError> {
        NetworkConfigList::from_bytes(text.as_bytes(), "test.conflist")
    }

    #[test]
    fn parses_a_conflist() {
        let list = parse(
            r#"{"cniVersion":"1.0.0","name":"pods","plugins":[
                {"type":"bridge","bridge":"cni0"},
                {"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        assert_eq!(list.name, "pods");
        assert_eq!(list.cni_version, SpecVersion::V1_0_0);
        assert_eq!(list.plugins[0].plugin_type, "bridge");
        assert_eq!(list.plugins[0].raw["bridge"], "cni0");
        assert!(list.plugins[1].capabilities["portMappings"]);
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_one_plugin_list() {
        let list = parse(r#"{"cniVersion":"0.4.0","name":"lo","type":"loopback"}"#).unwrap();
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugins[0].plugin_type, "loopback");
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let cases = [
            (
                r#"{"name":"n","plugins":[{"type":"x"}]}"#,
                "test.conflist: cniVersion: missing",
            ),
            (
                r#"{"cniVersion":"7.0.0","name":"n","plugins":[{"type":"x"}]}"#,
                "cniVersion: version 7.0.0 is not supported",
            ),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                "name: missing",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a b","plugins":[{"type":"x"}]}"#,
                "name: \"a b\" is not a valid network name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "plugins: is empty",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x"},{"bridge":"b"}]}"#,
                "plugins[1].type: missing",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}"#,
                "plugins[0].type: \"../x\" is not a plugin binary name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x","capabilities":{"portMappings":1}}]}"#,
                "plugins[0].capabilities.portMappings: must be true or false",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n"}"#,
                "test.conflist: type: missing",
            ),
            ("{ not json", "test.conflist: invalid JSON"),
        ];
        for (text, expected) in cases {
            let message = parse(text).unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "{text}: got {message:?}, want {expected:?}"
            );
        }
    }

    #[test]
    fn cni_versions_offer_every_known_version_highest_first() {
        let list = parse(
            r#"{"cniVersion":"0.4.0","cniVersions":["1.0.0","9.9.9","1.1.0"],"name":"n",
                "plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        let v = |s: &str| s.parse::<SpecVersion>().unwrap();
        assert_eq!(list.cni_versions, [v("1.1.0"), v("1.0.0"), v("0.4.0")]);
        assert_eq!(list.cni_version, v("1.1.0"));

        let without_single =
            parse(r#"{"cniVersions":["1.0.0"],"name":"n","plugins":[{"type":"x"}]}"#).unwrap();
        assert_eq!(without_single.cni_version, SpecVersion::V1_0_0);

        let pinned = list.at_version(SpecVersion::V1_0_0);
        assert_eq!(pinned.cni_versions, [SpecVersion::V1_0_0]);
        assert_eq!(pinned.to_json()["cniVersion"], "1.0.0");

        for (text, expected) in [
            (
                r#"{"cniVersions":["9.0.0"],"name":"n","plugins":[{"type":"x"}]}"#,
                "cniVersions: version 9.0.0 is not supported",
            ),
            (
                r#"{"cniVersions":["1.0.0",1],"name":"n","plugins":[{"type":"x"}]}"#,
                "cniVersions[1]: must be a string",
            ),
            (
                r#"{"cniVersions":["1.0"],"name":"n","plugins":[{"type":"x"}]}"#,
                "cniVersions[0]: \"1.0\" is not a CNI version",
            ),
            (
                r#"{"cniVersions":"1.0.0","name":"n","plugins":[{"type":"x"}]}"#,
                "cniVersions: must be a list",
            ),
        ] {
            let message = parse(text).unwrap_err().to_string();
            assert!(message.contains(expected), "{text}: got {message:?}");
        }
    }

    #[test]
    fn a_conf_dir_is_read_in_lexical_order() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "30-b.conflist",
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        );
        write(
            "10-broken.conflist",
            r#"{"cniVersion":"1.0.0","name":"broken","plugins":[]}"#,
        );
        write(
            "20-a.conf",
            r#"{"cniVersion":"1.0.0","name":"a","type":"bridge"}"#,
        );
        write("05-ignored.txt", "not a config");

        let first = load_default_network(dir.path()).unwrap();
        assert_eq!(
            first.name, "a",
            "the first valid file wins; invalid ones are skipped"
        );
        assert_eq!(load_network(dir.path(), "b").unwrap().name, "b");

        let broken = load_network(dir.path(), "broken").unwrap_err().to_string();
        assert!(
            broken.contains("10-broken.conflist: plugins: is empty"),
            "{broken}"
        );
        let missing = load_network(dir.path(), "nope").unwrap_err().to_string();
        assert!(
            missing.contains("no CNI network named \"nope\"") && missing.contains("10-broken"),
            "{missing}"
        );
    }
}
