//! Undoing the finished steps of an operation that failed half-way.
//!
//! Each step that acquires something pushes its undo; on failure the undos run in reverse.
//! If the operation's future is dropped instead (a client that hung up cancels its RPC),
//! the guard hands the undos to a task of their own, so nothing is leaked either way:
//! Rust's form of containerd's chain of `defer`s in `sandbox_run.go`.

use std::future::Future;
use std::pin::Pin;

type Undo = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

#[derive(Default)]
pub struct Rollback {
    undos: Vec<(&'static str, Undo)>,
}

impl Rollback {
    pub fn new() -> Self {
        Rollback::default()
    }

    /// Registers the undo of a step that has (or may have) taken effect.
    pub fn push<F>(&mut self, what: &'static str, undo: F)
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.undos.push((what, Box::pin(undo)));
    }

    /// The step pushed last as `what` cleaned up after its own failure: forget its undo,
    /// so the cleanup is not done twice. The undo stays registered while the step runs,
    /// because a cancelled step gets no chance to clean up.
    pub fn settled(&mut self, what: &'static str) {
        if let Some(at) = self.undos.iter().rposition(|(name, _)| *name == what) {
            drop(self.undos.remove(at));
        }
    }

    /// The operation succeeded: forget the undos.
    pub fn commit(mut self) {
        self.undos.clear();
    }

    /// Runs every undo, last first, carrying on past failures; returns the failures.
    pub async fn run(mut self) -> Vec<String> {
        run_all(std::mem::take(&mut self.undos)).await
    }
}

async fn run_all(undos: Vec<(&'static str, Undo)>) -> Vec<String> {
    let mut failures = Vec::new();
    for (what, undo) in undos.into_iter().rev() {
        if let Err(e) = undo.await {
            failures.push(format!("undo {what}: {e}"));
        }
    }
    failures
}

impl Drop for Rollback {
    fn drop(&mut self) {
        let undos = std::mem::take(&mut self.undos);
        if undos.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    for failure in run_all(undos).await {
                        eprintln!("sandboxd: rollback after a cancelled operation: {failure}");
                    }
                });
            }
            Err(_) => eprintln!(
                "sandboxd: {} undo step(s) lost: no runtime to run them",
                undos.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Log = Arc<Mutex<Vec<&'static str>>>;

    fn recorder() -> (Log, impl Fn(&'static str, bool) -> Undo) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        (log, move |name, ok| {
            let sink = sink.clone();
            Box::pin(async move {
                sink.lock().unwrap().push(name);
                if ok {
                    Ok(())
                } else {
                    Err("boom".to_string())
                }
            })
        })
    }

    #[tokio::test]
    async fn undoes_in_reverse_and_reports_failures() {
        let (log, undo) = recorder();
        let mut rollback = Rollback::new();
        rollback.push("first", undo("first", true));
        rollback.push("second", undo("second", false));
        rollback.push("third", undo("third", true));
        assert_eq!(rollback.run().await, vec!["undo second: boom".to_string()]);
        assert_eq!(*log.lock().unwrap(), vec!["third", "second", "first"]);
    }

    #[tokio::test]
    async fn a_settled_step_is_not_undone() {
        let (log, undo) = recorder();
        let mut rollback = Rollback::new();
        rollback.push("first", undo("first", true));
        rollback.push("attach", undo("attach", true));
        rollback.settled("attach");
        rollback.settled("never pushed");
        assert!(rollback.run().await.is_empty());
        assert_eq!(*log.lock().unwrap(), vec!["first"]);
    }

    #[tokio::test]
    async fn commit_forgets_and_drop_undoes() {
        let (log, undo) = recorder();
        let mut committed = Rollback::new();
        committed.push("kept", undo("kept", true));
        committed.commit();
        let mut dropped = Rollback::new();
        dropped.push("dropped", undo("dropped", true));
        drop(dropped);
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert_eq!(*log.lock().unwrap(), vec!["dropped"]);
    }
}
