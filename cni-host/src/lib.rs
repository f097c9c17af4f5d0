//! cni-host: the runtime side of the Container Network Interface (spec 1.1.0), for Rust.
//!
//! What libcni is for Go runtimes. A runtime loads a network, then ADDs and DELs
//! containers to it; each call runs the network's plugin chain.
//!
//! * [`config`]: load `.conflist`/`.conf`/`.json` files from a conf dir and validate them;
//!   every error names the file and the field.
//! * [`runtime`]: [`CniHost`], the verbs: ADD (with rollback), DEL, CHECK, STATUS, GC and
//!   VERSION, chaining `prevResult`, injecting `runtimeConfig`, checking plugin versions.
//! * [`exec`]: how a plugin runs: [`PluginExec`] is the seam, [`ProcessExec`] the real
//!   one (tokio processes, a deadline per call, optional host netns for lab nodes).
//! * [`cache`]: the on-disk result cache (libcni's `cniCacheV1` format) that DEL, CHECK and
//!   GC read.
//! * [`result`]: typed results (1.x shape, converted from and to 0.1.0–0.4.0) and error objects.
//! * [`version`]: spec versions.
//!
//! The `cni-host` binary is a cnitool-compatible CLI over this library.

pub mod cache;
pub mod config;
pub mod exec;
pub mod result;
pub mod runtime;
pub mod version;

pub use config::{
    load_default_network, load_network, ConfigError, LoadError, NetworkConfigList, PluginConfig,
};
pub use exec::{ExecError, Invocation, PluginExec, ProcessExec};
pub use result::{CniResult, ErrorObject, IpNetwork};
pub use runtime::{
    CniHost, Command, Error, GcAttachment, GcReport, PluginError, RuntimeConf, DEFAULT_BIN_DIRS,
    DEFAULT_PLUGIN_TIMEOUT,
};
pub use version::SpecVersion;
