//! Start-up: rebuild the view from the records, check each against what runs, and clean up
//! what nothing owns any more.
//!
//! A sandbox whose pause still runs and whose netns is still pinned is adopted as READY;
//! anything else is marked NOTREADY, keeping what is left for Stop to release. Pins in the
//! netns dir without a record are removed, and CNI attachments in the cache without a
//! sandbox holding them are DELeted (a CNI GC with the live sandboxes as the valid list).

use std::sync::Arc;

use cni_host::GcAttachment;

use crate::runtime::Runtime;
use crate::sandbox::{SandboxRecord, SandboxState};

impl Runtime {
    pub(crate) async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
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
