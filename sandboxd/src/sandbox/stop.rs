//! StopPodSandbox: stop the pod's containers, detach the network (CNI DEL, with its own
//! deadline), stop pause, unpin the netns, unmount the pod's shm. Idempotent: each step
//! runs only if its resource is still recorded and accepts one already gone, and the
//! record is saved whatever happens, so a failed or crashed stop is finished by the next.

use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::fault;
use crate::runtime::Runtime;
use crate::sandbox::{files, SandboxRecord, SandboxState};

impl Runtime {
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let (_, entry) = self.lookup(id)?;
        let mut record = entry.lock().await;
        let outcome = self.release(&mut record).await;
        self.save(&record)?;
        outcome
    }

    /// Releases what the sandbox still holds, recording each release as it happens.
    pub(crate) async fn release(&self, record: &mut SandboxRecord) -> Result<()> {
        let object = record.describe();
        record.state = SandboxState::NotReady;

        // The containers first, while their network is still there to say goodbye on.
        for container in self.containers_of(&record.id) {
            let mut container = container.lock().await;
            self.stop_locked(&mut container, self.config.stop_grace)
                .await?;
        }
        fault::point("stop-pod-sandbox/containers-stopped");

        if let Some(name) = record.network.clone() {
            let rt = Runtime::cni_runtime_conf(record);
            match self.attached_network(&name, &rt) {
                Ok(list) => self
                    .cni
                    .del(&list, &rt)
                    .await
                    .map_err(|e| Error::step("detach the pod network", &object, e))?,
                // Neither the conf dir nor the CNI cache knows the network any more, so no
                // plugin can be called: refusing would keep the pod forever. What the
                // plugins hold outside the netns (an IP lease) may stay; say so.
                Err(e) => eprintln!(
                    "sandboxd: stop {object}: cannot detach network {name} ({e:#}); \
                     removing the pod without a CNI DEL, so its IP lease may remain"
                ),
            }
            record.network = None;
            record.cni_result = None;
            fault::point("stop-pod-sandbox/network-detached");
        }
        if let Some(pause) = record.pause {
            pause
                .terminate(Signal::SIGTERM, self.config.stop_grace)
                .await
                .map_err(|e| Error::step("stop pause", &object, e))?;
            record.pause = None;
            fault::point("stop-pod-sandbox/pause-stopped");
        }
        if let Some(path) = record.netns_path.clone() {
            crate::netns::unpin(&path).map_err(|e| Error::step("unpin the netns", &object, e))?;
            record.netns_path = None;
            fault::point("stop-pod-sandbox/netns-unpinned");
        }
        if let Some(shm) = record.shm.clone() {
            files::unmount_shm(&shm)
                .map_err(|e| Error::step("unmount the pod's shm", &object, e))?;
            record.shm = None;
        }
        Ok(())
    }
}
