//! A cluster node's service proxy, the node-proxy half as kube-proxy runs it: follows the
//! Services and the Pods in the store and keeps this node's data plane equal to every
//! service with endpoints from the ready pods of every node, so a ClusterIP or a NodePort
//! on any node reaches a pod on any node (NodePort traffic from outside the pod CIDR is
//! masqueraded, so replies come back through the node it arrived at: kube-proxy's
//! externalTrafficPolicy: Cluster).
//!
//! The first pass replaces whatever the data plane holds (what an earlier daemon left) in
//! one transaction, once both followers have listed; until then, and while the store is
//! unreachable, the kernel keeps what it has. Later passes change only the services whose
//! rules differ. It also gives back allocations that crashed verbs left ([`repair`]).
//!
//! [`repair`]: super::services::repair

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::pods;
use super::services::{self, ORPHAN_GRACE};
use super::store::ClusterStore;
use crate::service::node_proxy::NodeProxy;
use crate::service::Service;

/// The running proxier; its tasks stop when it is dropped (the rules stay).
pub struct Proxier {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Proxier {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the followers have seen; None until their first listing.
#[derive(Clone, Default)]
struct Seen {
    services: Option<BTreeMap<String, Service>>,
    pods: Option<Vec<pods::PodObject>>,
}

/// Starts following the store and programming `proxy`.
pub fn start(store: Arc<dyn ClusterStore>, proxy: NodeProxy) -> Proxier {
    let (seen, mut changed) = watch::channel(Seen::default());
    let seen = Arc::new(seen);
    let services_seen = seen.clone();
    let services_follower = super::follow(store.clone(), services::SERVICES, move |copy| {
        let services = services::records(copy.values())
            .into_iter()
            .map(|r| (r.service.key(), r.service))
            .collect();
        services_seen.send_modify(|s| s.services = Some(services));
    });
    let pods_seen = seen.clone();
    let pods_follower = super::follow(store.clone(), pods::PODS, move |copy| {
        let objects = pods::objects(copy.values())
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        pods_seen.send_modify(|s| s.pods = Some(objects));
    });
    let proxy = Arc::new(std::sync::Mutex::new(proxy));
    let programmer = tokio::spawn(async move {
        let mut synced = false;
        while changed.changed().await.is_ok() {
            let (Some(services), Some(objects)) = ({
                let seen = changed.borrow_and_update();
                (seen.services.clone(), seen.pods.clone())
            }) else {
                continue;
            };
            let ready = pods::ready_pods(&objects);
            let proxy = proxy.clone();
            let first = !synced;
            let outcome = tokio::task::spawn_blocking(move || {
                let mut proxy = proxy.lock().expect("proxy lock");
                if first {
                    proxy.sync_all(services.values(), &ready)
                } else {
                    proxy.converge(&services, &ready);
                    Ok(())
                }
            })
            .await;
            match outcome {
                Ok(Ok(())) => synced = true,
                Ok(Err(e)) => eprintln!("sandboxd: program the services (retried): {e:#}"),
                Err(e) => eprintln!("sandboxd: the service proxy task failed: {e}"),
            }
            if !synced {
                // Retry the full sync after a pause even if nothing changes.
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                changed.mark_changed();
            }
        }
    });
    let repairer = tokio::spawn(async move {
        // Reported when it starts or changes, not every pass through an etcd outage.
        let mut last_error = None;
        loop {
            tokio::time::sleep(ORPHAN_GRACE).await;
            let error = services::repair(store.as_ref())
                .await
                .err()
                .map(|e| e.to_string());
            if error.is_some() && error != last_error {
                eprintln!(
                    "sandboxd: give back orphaned service allocations (retried): {}",
                    error.as_deref().unwrap_or_default()
                );
            }
            last_error = error;
        }
    });
    Proxier {
        tasks: vec![services_follower, pods_follower, programmer, repairer],
    }
}
