//! StartContainer: let a created container run its program.

use crate::container::oci::OciRuntime;
use crate::container::ContainerState;
use crate::error::{Error, Result};
use crate::fault;
use crate::runtime::{now_ns, Runtime};

impl Runtime {
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let (_, entry) = self.lookup_container(id)?;
        let mut record = entry.lock().await;
        self.observe(&mut record)?;
        if record.state != ContainerState::Created {
            return Err(Error::FailedPrecondition(format!(
                "{} is {}; only a created container can be started",
                record.describe(),
                record.state.as_str()
            )));
        }
        let oci = OciRuntime::new(&record.runtime, &self.config.oci_runtime_root);
        // Taken before the start: a program that ends at once may be recorded as finished
        // before `start` returns, and must not look as if it finished before it started.
        let started_at_ns = now_ns();
        if let Err(e) = oci.start(&record.id).await {
            // The process may be gone (killed while created): say so in the status too.
            record.reason = "StartError".into();
            record.message = format!("{e:#}");
            self.save_container(&record)?;
            return Err(Error::step("start the container", record.describe(), e));
        }
        fault::point("start-container/started");
        record.state = ContainerState::Running;
        record.started_at_ns = started_at_ns;
        self.save_container(&record)
    }
}
