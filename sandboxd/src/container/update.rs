//! UpdateContainerResources: the new CPU and memory resources written into the container's
//! cgroups, then recorded (ContainerStatus reports them). A container that has exited has
//! no cgroups left to change.

use k8s_cri::v1 as cri;

use crate::container::resources::Resources;
use crate::container::ContainerState;
use crate::error::{Error, Result};
use crate::runtime::Runtime;

impl Runtime {
    pub async fn update_container_resources(
        &self,
        id: &str,
        linux: Option<cri::LinuxContainerResources>,
    ) -> Result<()> {
        let (_, entry) = self.lookup_container(id)?;
        let mut record = entry.lock().await;
        self.observe(&mut record)?;
        let object = record.describe();
        let resources = Resources::from_cri(&object, "linux", linux.as_ref())?;
        let pid = match (&record.state, &record.process) {
            (ContainerState::Exited, _) | (_, None) => {
                return Err(Error::FailedPrecondition(format!(
                    "{object} has exited: there are no cgroups left to update"
                )))
            }
            (_, Some(process)) => process.pid,
        };
        let to_write = resources.clone();
        tokio::task::spawn_blocking(move || to_write.write_to_cgroups(pid))
            .await
            .map_err(|e| Error::step("update the cgroups", &object, e))?
            .map_err(|e| Error::step("update the cgroups", &object, e))?;
        record.resources = resources;
        self.save_container(&record)
    }
}
