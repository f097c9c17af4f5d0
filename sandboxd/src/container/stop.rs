//! StopContainer: SIGTERM, then SIGKILL once the timeout has passed, and wait until the
//! monitor has recorded the exit. Stopping a container that is not running succeeds.
//!
//! A container's first process is PID 1 of its pid namespace, and the kernel drops a
//! signal sent to such a process while it has no handler for it. A stop right after a
//! start can land while the program is still starting (between exec and installing its
//! handler) and would then wait out its whole timeout; so SIGTERM is sent once more as
//! soon as the process is seen to catch it, if it did not when first sent.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::container::{ContainerRecord, ContainerState, ExitRecord};
use crate::error::{Error, Result};
use crate::process::ProcessHandle;
use crate::runtime::Runtime;

/// How often a stopping process's signal handlers are looked at.
const RESEND_CHECK: Duration = Duration::from_millis(20);

/// How long the monitor gets to record an exit after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);

impl Runtime {
    pub async fn stop_container(&self, id: &str, timeout: Duration) -> Result<()> {
        let (_, entry) = self.lookup_container(id)?;
        let mut record = entry.lock().await;
        self.stop_locked(&mut record, timeout).await
    }

    /// Stops the container `record` holds; the caller holds its lock.
    pub(crate) async fn stop_locked(
        &self,
        record: &mut ContainerRecord,
        timeout: Duration,
    ) -> Result<()> {
        self.observe(record)?;
        if record.state == ContainerState::Exited {
            return Ok(());
        }
        let object = record.describe();
        let exit_file = self.container_dir(&record.id).exit_file();
        if let Some(process) = record.process {
            if !timeout.is_zero() {
                let caught = process.catches(Signal::SIGTERM) == Some(true);
                process
                    .signal(Signal::SIGTERM)
                    .map_err(|e| Error::step("signal the container", &object, e))?;
                let resend = (!caught).then_some(process);
                wait_for(&exit_file, timeout, resend).await;
            }
            if ExitRecord::read(&exit_file).is_none() {
                process
                    .signal(Signal::SIGKILL)
                    .map_err(|e| Error::step("kill the container", &object, e))?;
                wait_for(&exit_file, KILL_WAIT, None).await;
            }
        }
        self.observe(record)?;
        if record.state != ContainerState::Exited {
            return Err(Error::step(
                "stop the container",
                object,
                anyhow::anyhow!("it did not exit within {KILL_WAIT:?} of SIGKILL"),
            ));
        }
        Ok(())
    }
}

/// Waits until the monitor has written the exit file, or the timeout; sends SIGTERM again
/// to `resend` once it is seen to catch it.
async fn wait_for(
    exit_file: &std::path::Path,
    timeout: Duration,
    mut resend: Option<ProcessHandle>,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut looked = Instant::now();
    loop {
        if exit_file.exists() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        // Its handlers are read less often than the exit file: a program that never
        // installs one would otherwise have its status read 500 times a second.
        if let Some(process) = resend.filter(|_| looked.elapsed() >= RESEND_CHECK) {
            looked = Instant::now();
            if process.catches(Signal::SIGTERM) != Some(false) {
                let _ = process.signal(Signal::SIGTERM);
                resend = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
