//! Start-up: undo the CreateContainer calls a crash interrupted, reload container records,
//! bring each up to date with what its monitor recorded while sandboxd was down (and with
//! the runtime, for one whose start was cut short), and remove containers whose pod is
//! gone.
//!
//! A container dir with a create intent and no record: the monitor and the runtime under
//! it (found by their tag) are killed, the runtime's state deleted, the rootfs unmounted
//! and the dir removed. A dir with neither is what a removal left: it goes.

use std::sync::Arc;

use nix::sys::signal::Signal;

use crate::container::monitor::CONTAINER_ID_ENV;
use crate::container::oci::OciRuntime;
use crate::container::{ContainerRecord, ContainerState, CreateIntent};
use crate::process;
use crate::runtime::{ContainerName, ContainerSlot, Runtime};

/// How long an interrupted create's processes get to die once killed.
const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Runtime {
    /// Undoes every CreateContainer a crash interrupted. A dir whose undo fails stays,
    /// intent and all, for the next start-up.
    async fn finish_interrupted_creates(&self) -> anyhow::Result<()> {
        let unfinished = self.container_records.unfinished(&self.create_intents)?;
        if unfinished.is_empty() {
            return Ok(());
        }
        let tagged = process::tagged(&[CONTAINER_ID_ENV]);
        for id in unfinished {
            let intent = self
                .create_intents
                .load::<CreateIntent>(&id)
                .unwrap_or_else(|e| {
                    eprintln!("sandboxd: the intent of container {id} is unreadable ({e:#}); undoing what can be found by its id");
                    None
                });
            let object = match &intent {
                Some(i) => crate::container::describe(&id, &i.name, &i.sandbox_id),
                None => format!("container {id}"),
            };
            let undone = async {
                for (process, _, _) in tagged.iter().filter(|(_, _, value)| *value == id) {
                    process.terminate(Signal::SIGKILL, KILL_WAIT).await?;
                }
                let runtime = intent
                    .as_ref()
                    .map_or_else(|| self.oci_runtime.clone(), |i| i.runtime.clone());
                OciRuntime::new(runtime, &self.config.oci_runtime_root)
                    .delete(&id)
                    .await?;
                self.container_dir(&id).rootfs(Vec::new()).unmount()?;
                self.container_records.remove(&id)
            }
            .await;
            match undone {
                Ok(()) => eprintln!("sandboxd: undid the interrupted CreateContainer of {object}"),
                Err(e) => eprintln!(
                    "sandboxd: cannot undo the interrupted CreateContainer of {object} (kept for the next start): {e:#}"
                ),
            }
        }
        Ok(())
    }

    pub(crate) async fn recover_containers(self: &Arc<Self>) -> anyhow::Result<()> {
        self.finish_interrupted_creates().await?;
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
            if record.state == ContainerState::Created {
                self.observe_start(&mut record).await;
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

impl Runtime {
    /// A container recorded as created may have been started by a StartContainer that
    /// was cut short before it could record so: the runtime knows.
    async fn observe_start(&self, record: &mut ContainerRecord) {
        let oci = OciRuntime::new(&record.runtime, &self.config.oci_runtime_root);
        match oci.status(&record.id).await {
            Ok(status) if status != "created" => {
                eprintln!(
                    "sandboxd: {} was started before a restart ({status}); recording it",
                    record.describe()
                );
                record.state = ContainerState::Running;
                record.started_at_ns = crate::runtime::now_ns();
                if let Err(e) = self.save_container(record) {
                    eprintln!("sandboxd: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => eprintln!("sandboxd: {}: ask the runtime: {e:#}", record.describe()),
        }
    }
}
