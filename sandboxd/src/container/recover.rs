//! Start-up: reload container records, bring each up to date with what its monitor
//! recorded while sandboxd was down, and remove containers whose pod is gone.

use std::sync::Arc;

use crate::container::ContainerRecord;
use crate::runtime::{ContainerName, ContainerSlot, Runtime};

impl Runtime {
    pub(crate) async fn recover_containers(self: &Arc<Self>) -> anyhow::Result<()> {
        let loaded = self.container_records.load_all::<ContainerRecord>()?;
        for (id, e) in loaded.unreadable {
            eprintln!("sandboxd: skipping container record {id}: {e:#}");
        }
        for mut record in loaded.records {
            let pod_known = self
                .pods
                .read()
                .expect("pods lock")
                .contains_key(&record.sandbox_id);
            if !pod_known {
                eprintln!(
                    "sandboxd: removing {}: its pod sandbox is gone",
                    record.describe()
                );
                if let Err(e) = self.remove_locked(&mut record).await {
                    eprintln!("sandboxd: {e}");
                }
                continue;
            }
            if let Err(e) = self.observe(&mut record) {
                eprintln!("sandboxd: {e}");
            }
            self.container_names.lock().expect("names lock").insert(
                ContainerName {
                    sandbox_id: record.sandbox_id.clone(),
                    name: record.name.clone(),
                    attempt: record.attempt,
                },
                record.id.clone(),
            );
            self.containers.write().expect("containers lock").insert(
                record.id.clone(),
                ContainerSlot {
                    sandbox_id: record.sandbox_id.clone(),
                    entry: Arc::new(tokio::sync::Mutex::new(record)),
                },
            );
        }
        Ok(())
    }
}
