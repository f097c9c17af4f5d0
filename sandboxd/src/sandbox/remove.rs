//! RemovePodSandbox: stop what still runs, remove the pod's containers, then delete the
//! record. Removing an unknown
//! sandbox succeeds, as the CRI asks (the kubelet retries removals).

use crate::error::{Error, Result};
use crate::fault;
use crate::runtime::Runtime;

impl Runtime {
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let (id, entry) = match self.lookup(id) {
            Ok(found) => found,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut record = entry.lock().await;
        let mut outcome = self.release(&mut record).await;
        if outcome.is_ok() {
            for container in self.containers_of(&id) {
                let mut container = container.lock().await;
                if let Err(e) = self.remove_locked(&mut container).await {
                    outcome = Err(e);
                    break;
                }
                self.containers
                    .write()
                    .expect("containers lock")
                    .remove(&container.id);
            }
        }
        if let Err(e) = outcome {
            self.save(&record)?;
            return Err(e);
        }
        fault::point("remove-pod-sandbox/containers-removed");
        self.sandboxes
            .remove(&id)
            .map_err(|e| Error::step("remove the record", record.describe(), e))?;
        self.pods.write().expect("pods lock").remove(&id);
        self.names
            .lock()
            .expect("names lock")
            .remove(&record.metadata);
        Ok(())
    }
}
