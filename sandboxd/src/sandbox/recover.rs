//! Start-up: finish what a crash interrupted, rebuild the view from the records, check each
//! against what runs, and clean up what nothing owns any more.
//!
//! A sandbox dir with a run intent and no record is a RunPodSandbox that did not finish:
//! its CNI plugins still running are killed, the network is DELeted with the config the
//! intent kept, its pause (found by its tag) is killed, the netns unpinned, the shm
//! unmounted and the dir removed. A dir with neither is what a removal left: it goes. The
//! intent is not fsynced (see [`Store::transient`](crate::store::Store::transient)): after
//! a power loss it may be missing or torn, which is undone by the pod's id alone.
//!
//! A sandbox whose pause still runs and whose netns is still pinned is adopted as READY;
//! anything else is marked NOTREADY, keeping what is left for Stop to release. Pins in the
//! netns dir without a record are removed, and CNI attachments in the cache without a
//! sandbox holding them are DELeted (a CNI GC with the live sandboxes as the valid list).

use std::sync::Arc;

use cni_host::{GcAttachment, NetworkConfigList};
use nix::sys::signal::Signal;

use crate::process::{self, ProcessHandle};
use crate::runtime::Runtime;
use crate::sandbox::{describe, files, RunIntent, SandboxRecord, SandboxState};

/// How long an interrupted run's processes get to die once killed.
const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Runtime {
    pub(crate) async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        self.finish_interrupted_runs().await?;
        let loaded = self.sandboxes.load_all::<SandboxRecord>()?;
        for (id, e) in loaded.unreadable {
            eprintln!("sandboxd: skipping sandbox record {id}: {e:#}");
        }
        let mut valid = Vec::new();
        for mut record in loaded.records {
            let pause_alive = record.pause.is_some_and(|p| p.is_alive());
            let netns_ok = record.host_network
                || record
                    .netns_path
                    .as_deref()
                    .is_some_and(crate::netns::is_pinned);
            if record.state == SandboxState::Ready && !(pause_alive && netns_ok) {
                eprintln!(
                    "sandboxd: {} is no longer running; marking it NOTREADY",
                    record.describe()
                );
                record.state = SandboxState::NotReady;
                if !pause_alive {
                    record.pause = None;
                }
                self.save(&record)?;
            }
            if record.network.is_some() {
                valid.push(GcAttachment {
                    container_id: record.id.clone(),
                    ifname: "eth0".into(),
                });
            }
            self.names
                .lock()
                .expect("names lock")
                .insert(record.metadata.clone(), record.id.clone());
            self.pods
                .write()
                .expect("pods lock")
                .insert(record.id.clone(), Arc::new(tokio::sync::Mutex::new(record)));
        }

        self.recover_containers().await?;

        // Pins nobody owns. Only names sandboxd gives are its own: the dir may be shared
        // (`--netns-dir /run/netns` puts pods beside `ip netns add`'s names).
        if let Ok(entries) = std::fs::read_dir(&self.config.netns_dir) {
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().into_owned();
                if !crate::runtime::is_id(&id) {
                    continue;
                }
                if !self.pods.read().expect("pods lock").contains_key(&id) {
                    eprintln!(
                        "sandboxd: removing orphaned netns pin {}",
                        entry.path().display()
                    );
                    crate::netns::unpin(&entry.path())?;
                }
            }
        }
        // Attachments nobody owns.
        if let Ok(list) = self.pod_network() {
            match self.cni.gc(&list, &valid).await {
                Ok(report) => {
                    for gone in report.removed {
                        eprintln!(
                            "sandboxd: released orphaned CNI attachment {}/{}",
                            gone.container_id, gone.ifname
                        );
                    }
                }
                Err(e) => eprintln!("sandboxd: CNI GC at start-up: {e}"),
            }
        }
        Ok(())
    }
}

impl Runtime {
    /// Undoes every RunPodSandbox a crash interrupted (see the module's doc). A dir whose
    /// undo fails stays, intent and all, for the next start-up to try again.
    async fn finish_interrupted_runs(&self) -> anyhow::Result<()> {
        let unfinished = self.sandboxes.unfinished(&self.run_intents)?;
        if unfinished.is_empty() {
            return Ok(());
        }
        let tagged = process::tagged(&[crate::pause::SANDBOX_ID_ENV, "CNI_CONTAINERID"]);
        let of = |id: &str, var: &str| -> Vec<ProcessHandle> {
            tagged
                .iter()
                .filter(|(_, v, value)| v == var && value == id)
                .map(|(handle, _, _)| *handle)
                .collect()
        };
        for id in unfinished {
            let intent = match self.run_intents.load::<RunIntent>(&id) {
                Ok(intent) => intent,
                Err(e) => {
                    eprintln!("sandboxd: the intent of sandbox {id} is unreadable ({e:#}); undoing what can be found by its id");
                    None
                }
            };
            let object = match &intent {
                Some(intent) => describe(&id, &intent.record.metadata),
                None => format!("pod sandbox {id}"),
            };
            // Plugins still working on it (the daemon died under them) first, so none adds
            // after the DEL; they run in process groups of their own.
            for plugin in of(&id, "CNI_CONTAINERID") {
                let group = nix::unistd::Pid::from_raw(plugin.pid as i32);
                let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
                let _ = plugin.terminate(Signal::SIGKILL, KILL_WAIT).await;
            }
            let undone = self
                .undo_run(&id, intent.as_ref(), &of(&id, crate::pause::SANDBOX_ID_ENV))
                .await;
            match undone {
                Ok(()) if intent.is_none() => {
                    eprintln!("sandboxd: removed what a removal of {object} left")
                }
                Ok(()) => eprintln!("sandboxd: undid the interrupted RunPodSandbox of {object}"),
                Err(e) => eprintln!(
                    "sandboxd: cannot undo the interrupted RunPodSandbox of {object} (kept for the next start): {e:#}"
                ),
            }
        }
        Ok(())
    }

    async fn undo_run(
        &self,
        id: &str,
        intent: Option<&RunIntent>,
        pause: &[ProcessHandle],
    ) -> anyhow::Result<()> {
        let pin = self.config.netns_dir.join(id);
        if let Some(intent) = intent {
            if let Some(config) = &intent.network_config {
                let list = NetworkConfigList::from_bytes(
                    &serde_json::to_vec(config)?,
                    "<the run intent's network config>",
                )?;
                let mut rt = Runtime::cni_runtime_conf(&intent.record);
                if !crate::netns::is_pinned(&pin) {
                    // The namespace is gone or was never pinned: the plugins release what
                    // they hold outside it (the spec lets CNI_NETNS be empty for DEL).
                    rt.netns = String::new();
                }
                self.cni.del(&list, &rt).await?;
            }
        }
        for process in pause {
            process.terminate(Signal::SIGKILL, KILL_WAIT).await?;
        }
        crate::netns::unpin(&pin)?;
        let dir = self.sandboxes.dir_of(id);
        files::unmount_shm(&dir.join(files::SHM_DIR))?;
        self.sandboxes.remove(id)
    }
}
