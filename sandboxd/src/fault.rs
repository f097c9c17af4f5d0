//! Fault points: places in the verbs where the daemon kills itself, as `kill -9` would,
//! when the environment variable [`ENV`] names them. Tests walk every point (crash there,
//! restart, check that nothing leaked and the verb can be retried); in normal use the
//! variable is unset and a point costs one load of a cached value.

use std::sync::OnceLock;

/// The variable that selects a point.
pub const ENV: &str = "SANDBOXD_FAULT_POINT";

/// Every point, in the order the verbs pass them.
pub const POINTS: &[&str] = &[
    "run-pod-sandbox/intent-written",
    "run-pod-sandbox/pause-started",
    "run-pod-sandbox/netns-pinned",
    "run-pod-sandbox/network-attached",
    "run-pod-sandbox/files-written",
    "run-pod-sandbox/record-saved",
    "create-container/intent-written",
    "create-container/rootfs-mounted",
    "create-container/bundle-written",
    "create-container/container-created",
    "create-container/record-saved",
    "start-container/started",
    "stop-pod-sandbox/containers-stopped",
    "stop-pod-sandbox/network-detached",
    "stop-pod-sandbox/pause-stopped",
    "stop-pod-sandbox/netns-unpinned",
    "remove-pod-sandbox/containers-removed",
    "service-sync/record-saved",
    "service-sync/programmed",
];

fn selected() -> Option<&'static str> {
    static SELECTED: OnceLock<Option<&'static str>> = OnceLock::new();
    *SELECTED.get_or_init(|| {
        let wanted = std::env::var(ENV).ok()?;
        let point = POINTS.iter().copied().find(|p| *p == wanted);
        if point.is_none() {
            eprintln!("sandboxd: {ENV}={wanted:?} names no fault point; ignored");
        }
        point
    })
}

/// Kills the daemon here if `name` is the selected point.
pub fn point(name: &'static str) {
    debug_assert!(POINTS.contains(&name), "unknown fault point {name}");
    if selected() == Some(name) {
        eprintln!("sandboxd: fault point {name}: killing sandboxd");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    }
}
