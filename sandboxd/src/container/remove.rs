//! RemoveContainer: kill what still runs, delete it from the runtime, unmount its rootfs
//! and delete its files and record. Removing an unknown container succeeds, as the CRI asks.
//! The log stays when it is in the pod's log directory (the kubelet's to remove).

use std::time::Duration;

use crate::container::oci::OciRuntime;
use crate::container::{ContainerRecord, RECORD_FILE};
use crate::error::{Error, Result};
use crate::runtime::{ContainerName, Runtime};

impl Runtime {
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let (id, entry) = match self.lookup_container(id) {
            Ok(found) => found,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut record = entry.lock().await;
        self.remove_locked(&mut record).await?;
        self.containers
            .write()
            .expect("containers lock")
            .remove(&id);
        Ok(())
    }

    /// Removes everything of the container but its map entry; the caller holds its lock.
    pub(crate) async fn remove_locked(&self, record: &mut ContainerRecord) -> Result<()> {
        let object = record.describe();
        self.stop_locked(record, Duration::ZERO).await?;
        let oci = OciRuntime::new(&record.runtime, &self.config.oci_runtime_root);
        oci.delete(&record.id)
            .await
            .map_err(|e| Error::step("delete the container from the runtime", &object, e))?;
        let dir = self.container_dir(&record.id);
        dir.rootfs(Vec::new())
            .unmount()
            .map_err(|e| Error::step("unmount the rootfs", &object, e))?;
        // The record goes last, so a failure above leaves it for the next try.
        let files = std::fs::read_dir(dir.path())
            .map(|entries| entries.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default();
        for path in files.iter().filter(|p| !p.ends_with(RECORD_FILE)) {
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
            removed.map_err(|e| {
                Error::step(
                    "remove the container's files",
                    &object,
                    anyhow::anyhow!("{}: {e}", path.display()),
                )
            })?;
        }
        self.container_records
            .remove(&record.id)
            .map_err(|e| Error::step("remove the record", &object, e))?;
        self.container_names
            .lock()
            .expect("names lock")
            .remove(&ContainerName {
                sandbox_id: record.sandbox_id.clone(),
                name: record.name.clone(),
                attempt: record.attempt,
            });
        Ok(())
    }
}
