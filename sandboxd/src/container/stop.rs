//! StopContainer: SIGTERM, then SIGKILL once the timeout has passed, and wait until the
//! monitor has recorded the exit. Stopping a container that is not running succeeds.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::container::{ContainerRecord, ContainerState, ExitRecord};
use crate::error::{Error, Result};
use crate::runtime::Runtime;

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
                process
                    .signal(Signal::SIGTERM)
                    .map_err(|e| Error::step("signal the container", &object, e))?;
                wait_for(&exit_file, timeout).await;
            }
            if ExitRecord::read(&exit_file).is_none() {
                process
                    .signal(Signal::SIGKILL)
                    .map_err(|e| Error::step("kill the container", &object, e))?;
                wait_for(&exit_file, KILL_WAIT).await;
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

/// Waits until the monitor has written the exit file, or the timeout.
async fn wait_for(exit_file: &std::path::Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if exit_file.exists() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
