//! The executor of `exec`'d processes: the container's seccomp filter on them too.
//!
//! libcontainer 0.7 builds an exec'd process from the container's process but not its
//! `linux.seccomp`, so a command run with `exec` would escape the filter its container
//! runs under (runc's exec applies it). This executor loads the filter in the exec'd
//! process itself, just before it becomes the command.
//!
//! Loading a filter needs no_new_privs or CAP_SYS_ADMIN. Without no_new_privs, runc loads
//! the filter while the process still holds every capability, then drops them under it;
//! here the executor runs after libcontainer has dropped them, so the process is given
//! CAP_SYS_ADMIN (and CAP_SETPCAP, to drop it from the bounding set) for those few steps
//! when the container lacks them, and drops both under the filter before exec. A filter
//! that forbids capset or prctl makes the exec fail rather than run with more.

use std::collections::HashSet;

use caps::{CapSet, Capability};
use libcontainer::oci_spec::runtime::{LinuxSeccomp, Spec};
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

#[derive(Clone)]
pub struct FilteredExecutor {
    seccomp: Option<LinuxSeccomp>,
    /// Capabilities the container lacks that the exec'd process holds until its filter
    /// is loaded.
    borrowed: Vec<Capability>,
}

impl FilteredExecutor {
    pub fn new(spec: &Spec) -> Self {
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        let process = spec.process().as_ref();
        let no_new_privs = process.and_then(|p| p.no_new_privileges()) == Some(true);
        let bounding: HashSet<String> = process
            .and_then(|p| p.capabilities().as_ref())
            .and_then(|c| c.bounding().as_ref())
            .map(|set| set.iter().map(|c| format!("CAP_{c}")).collect())
            .unwrap_or_default();
        let borrowed = if seccomp.is_some() && !no_new_privs {
            // In the order they are dropped from the bounding set.
            [Capability::CAP_SYS_ADMIN, Capability::CAP_SETPCAP]
                .into_iter()
                .filter(|cap| !bounding.contains(&cap.to_string()))
                .collect()
        } else {
            Vec::new()
        };
        FilteredExecutor { seccomp, borrowed }
    }

    /// The names libcontainer's tenant builder adds to the exec'd process's sets.
    pub fn borrowed_capability_names(&self) -> Vec<String> {
        self.borrowed.iter().map(|c| c.to_string()).collect()
    }

    fn load_filter(&self) -> Result<(), String> {
        let Some(seccomp) = &self.seccomp else {
            return Ok(());
        };
        let notify = libcontainer::seccomp::initialize_seccomp(seccomp)
            .map_err(|e| format!("load the container's seccomp filter: {e}"))?;
        if notify.is_some() {
            return Err("seccomp notify (SCMP_ACT_NOTIFY) is not supported for exec".into());
        }
        // Bounding first, while CAP_SETPCAP is still effective; CAP_SETPCAP last of all.
        for cap in self.borrowed.iter() {
            caps::drop(None, CapSet::Bounding, *cap)
                .map_err(|e| format!("drop {cap} from the bounding set: {e}"))?;
        }
        for cap in self.borrowed.iter() {
            for set in [
                CapSet::Ambient,
                CapSet::Inheritable,
                CapSet::Effective,
                CapSet::Permitted,
            ] {
                caps::drop(None, set, *cap)
                    .map_err(|e| format!("drop {cap} from the {set:?} set: {e}"))?;
            }
        }
        Ok(())
    }
}

/// Adds the capabilities `executor` borrows to every set of `process` but the ambient one,
/// for an exec whose whole process is given (libcontainer's builder adds them otherwise).
pub fn borrow_capabilities(
    process: &mut libcontainer::oci_spec::runtime::Process,
    executor: &FilteredExecutor,
) {
    use libcontainer::oci_spec::runtime::Capability as SpecCapability;
    let borrowed: Vec<SpecCapability> = executor
        .borrowed_capability_names()
        .iter()
        .filter_map(|name| serde_json::from_value(serde_json::Value::String(name.clone())).ok())
        .collect();
    if borrowed.is_empty() {
        return;
    }
    let Some(mut caps) = process.capabilities().clone() else {
        return;
    };
    let add = |set: &Option<std::collections::HashSet<SpecCapability>>| {
        let mut set = set.clone().unwrap_or_default();
        set.extend(borrowed.iter().copied());
        set
    };
    caps.set_bounding(Some(add(caps.bounding())));
    caps.set_effective(Some(add(caps.effective())));
    caps.set_permitted(Some(add(caps.permitted())));
    process.set_capabilities(Some(caps));
}

impl Executor for FilteredExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        self.load_filter().map_err(ExecutorError::Other)?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}
