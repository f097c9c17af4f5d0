//! The Services verbs of the runtime: the API's calls, and keeping endpoints current as
//! pods come and go.
//!
//! On a node alone, the [`Registry`] is both halves: each verb persists and programs its
//! service, and endpoints are recomputed after every pod or container verb that can change
//! them (run, stop, remove of a pod; start, stop, remove of a container) and every few
//! seconds, which catches containers that exit on their own. The registry's work (netlink
//! transactions, iptables-restore in that mode) runs on the blocking pool, never on the
//! executor.
//!
//! On a cluster node, the verbs are the cluster store's ([`crate::cluster::services`]) and
//! endpoints come from the pods every node reports there; the [`Proxier`] programs them.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::proxier::{self, Proxier};
use crate::cluster::store::ClusterStore;
use crate::cluster::{pods, services as cluster_services};
use crate::container::ContainerState;
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::sandbox::SandboxState;
use crate::service::endpoints::{self, ReadyPod, CONTAINER_PORTS_ANNOTATION};
use crate::service::node_proxy::NodeProxy;
use crate::service::plan::Cluster;
use crate::service::registry::{Registry, ServiceRecord, ServiceView};
use crate::service::ServiceInput;

/// Where the runtime's Services live.
pub(crate) enum Services {
    /// A node alone: the registry, both halves.
    Local(Box<std::sync::Mutex<Registry>>),
    /// A cluster node: the services in the store; the proxier (None with --proxy-mode
    /// none) programs them.
    Cluster {
        store: Arc<dyn ClusterStore>,
        _proxier: Option<Proxier>,
    },
}

/// How often endpoints are recomputed without an event.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(2);

/// Marks a container as an init container (sandboxctl runs them to completion before the
/// app containers); they never make a pod unready.
pub const INIT_CONTAINER_LABEL: &str = "sandboxd.io/init-container";

impl Runtime {
    /// Starts the services of a cluster node: the store's, programmed by a proxier.
    pub(crate) async fn start_cluster_services(
        self: &Arc<Self>,
        store: Arc<dyn ClusterStore>,
    ) -> anyhow::Result<()> {
        let proxier = match self.config.proxy_mode {
            None => None,
            Some(mode) => {
                let netns = self.config.node.netns.clone();
                let cluster = Cluster::new(self.config.cluster_cidr);
                let proxy = tokio::task::spawn_blocking(move || {
                    ensure_bridge_netfilter(&netns);
                    NodeProxy::open(mode, &netns, cluster)
                })
                .await??;
                Some(proxier::start(store.clone(), proxy))
            }
        };
        let _ = self.services.set(Some(Services::Cluster {
            store,
            _proxier: proxier,
        }));
        Ok(())
    }

    /// Starts the service proxy of a node alone (unless configured off): one full sync
    /// from the persisted services and the recovered pods, then the periodic endpoint
    /// resync.
    pub(crate) async fn start_services(self: &Arc<Self>) -> anyhow::Result<()> {
        let Some(mode) = self.config.proxy_mode else {
            let _ = self.services.set(None);
            return Ok(());
        };
        ensure_bridge_netfilter(&self.config.node.netns);
        let pods = self.ready_pods().await;
        let runtime = self.clone();
        let registry = tokio::task::spawn_blocking(move || {
            Registry::start(
                &runtime.config.services_dir(),
                mode,
                &runtime.config.node.netns,
                Cluster::new(runtime.config.cluster_cidr),
                &pods,
            )
        })
        .await??;
        let _ = self
            .services
            .set(Some(Services::Local(Box::new(std::sync::Mutex::new(
                registry,
            )))));
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RESYNC_PERIOD).await;
                let Some(runtime) = weak.upgrade() else {
                    return;
                };
                runtime.endpoints_changed().await;
            }
        });
        Ok(())
    }

    /// The cluster store, when the services live there.
    fn cluster_store(&self) -> Option<Arc<dyn ClusterStore>> {
        match self.services.get() {
            Some(Some(Services::Cluster { store, .. })) => Some(store.clone()),
            _ => None,
        }
    }

    /// Runs `f` on the registry of a node alone, on the blocking pool.
    async fn with_registry<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Registry) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let runtime = self.clone();
        tokio::task::spawn_blocking(move || {
            let Some(Some(Services::Local(registry))) = runtime.services.get() else {
                return Err(Error::FailedPrecondition(
                    "this sandboxd runs without a service proxy (--proxy-mode none)".into(),
                ));
            };
            f(&mut registry.lock().expect("services lock"))
        })
        .await
        .map_err(|e| Error::FailedPrecondition(format!("the services task failed: {e}")))?
    }

    /// Cluster services with their endpoints among the pods the store's nodes report.
    async fn cluster_views(
        store: &dyn ClusterStore,
        records: Vec<ServiceRecord>,
    ) -> Result<Vec<ServiceView>> {
        let listing = store.list(pods::PODS).await?;
        let objects: Vec<pods::PodObject> = pods::objects(listing.items.iter())
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let ready = pods::ready_pods(&objects);
        Ok(records
            .into_iter()
            .map(|record| ServiceView {
                endpoints: endpoints::resolve(&record.service, &ready),
                record,
            })
            .collect())
    }

    async fn cluster_view(store: &dyn ClusterStore, record: ServiceRecord) -> Result<ServiceView> {
        Ok(Self::cluster_views(store, vec![record])
            .await?
            .pop()
            .expect("one view per record"))
    }

    /// The pods that can be endpoints: sandbox Ready with an IPv4 address, at least one
    /// app container and every app container running.
    pub async fn ready_pods(&self) -> Vec<ReadyPod> {
        let mut ready = Vec::new();
        for entry in self.entries() {
            let pod = entry.lock().await;
            if pod.state != SandboxState::Ready {
                continue;
            }
            let Ok(ip) = pod.ip.parse::<Ipv4Addr>() else {
                continue;
            };
            let mut ports = Vec::new();
            let mut app_containers = 0;
            let mut all_running = true;
            for container in self.containers_of(&pod.id) {
                let mut container = container.lock().await;
                if container.labels.contains_key(INIT_CONTAINER_LABEL) {
                    continue;
                }
                app_containers += 1;
                if self.observe(&mut container).is_err()
                    || container.state != ContainerState::Running
                {
                    all_running = false;
                    break;
                }
                if let Some(json) = container.annotations.get(CONTAINER_PORTS_ANNOTATION) {
                    match endpoints::parse_container_ports(json) {
                        Ok(list) => ports.extend(list),
                        Err(e) => eprintln!(
                            "sandboxd: {}: ignoring its {CONTAINER_PORTS_ANNOTATION} annotation: {e}",
                            container.describe()
                        ),
                    }
                }
            }
            if app_containers == 0 || !all_running {
                continue;
            }
            ready.push(ReadyPod {
                sandbox_id: pod.id.clone(),
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                labels: pod.labels.clone(),
                ip,
                ports,
            });
        }
        ready
    }

    /// Recomputes endpoints and reprograms the services whose endpoints changed.
    pub async fn endpoints_changed(self: &Arc<Self>) {
        // Without services there is nothing to recompute: pod and container verbs, which
        // call this, stay as fast as without a proxy.
        match self.services.get() {
            Some(Some(Services::Local(registry)))
                if !registry.lock().expect("services lock").is_empty() => {}
            _ => return,
        }
        let pods = self.ready_pods().await;
        let _ = self
            .with_registry(move |registry| {
                registry.resync(&pods);
                Ok(())
            })
            .await;
    }

    pub async fn create_service(self: &Arc<Self>, input: ServiceInput) -> Result<ServiceView> {
        if let Some(store) = self.cluster_store() {
            let record = cluster_services::create(store.as_ref(), input).await?;
            return Self::cluster_view(store.as_ref(), record).await;
        }
        let pods = self.ready_pods().await;
        self.with_registry(move |registry| registry.create(input, &pods))
            .await
    }

    pub async fn update_service(self: &Arc<Self>, input: ServiceInput) -> Result<ServiceView> {
        if let Some(store) = self.cluster_store() {
            let record = cluster_services::update(store.as_ref(), input).await?;
            return Self::cluster_view(store.as_ref(), record).await;
        }
        let pods = self.ready_pods().await;
        self.with_registry(move |registry| registry.update(input, &pods))
            .await
    }

    pub async fn delete_service(self: &Arc<Self>, namespace: &str, name: &str) -> Result<()> {
        if let Some(store) = self.cluster_store() {
            return cluster_services::delete(store.as_ref(), namespace, name).await;
        }
        let (namespace, name) = (namespace.to_string(), name.to_string());
        self.with_registry(move |registry| registry.delete(&namespace, &name))
            .await
    }

    pub async fn get_service(self: &Arc<Self>, namespace: &str, name: &str) -> Result<ServiceView> {
        if let Some(store) = self.cluster_store() {
            let record = cluster_services::get(store.as_ref(), namespace, name).await?;
            return Self::cluster_view(store.as_ref(), record).await;
        }
        let (namespace, name) = (namespace.to_string(), name.to_string());
        self.with_registry(move |registry| registry.get(&namespace, &name))
            .await
    }

    pub async fn list_services(
        self: &Arc<Self>,
        namespace: Option<String>,
    ) -> Result<Vec<ServiceView>> {
        if let Some(store) = self.cluster_store() {
            let records = cluster_services::list(store.as_ref(), namespace.as_deref()).await?;
            return Self::cluster_views(store.as_ref(), records).await;
        }
        self.with_registry(move |registry| Ok(registry.list(namespace.as_deref())))
            .await
    }
}

/// Traffic from a pod to a service whose endpoint is on the same bridge is bridged, not
/// routed; its reply is un-NATed only if bridged traffic passes netfilter, as kube-proxy
/// requires. Set in the node's namespace (the setting is per namespace); a kernel without
/// br_netfilter gets it loaded first.
fn ensure_bridge_netfilter(netns: &crate::node::NodeNetns) {
    const SYSCTL: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if !std::path::Path::new(SYSCTL).exists() {
        let _ = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status();
    }
    let set = || -> std::io::Result<()> {
        if std::fs::read_to_string(SYSCTL)?.trim() != "1" {
            std::fs::write(SYSCTL, "1")?;
        }
        Ok(())
    };
    let outcome = netns.run(set);
    if let Err(e) = outcome {
        eprintln!(
            "sandboxd: could not set {SYSCTL}=1 ({e}): a pod calling a service whose endpoint is on its own bridge will not get replies"
        );
    }
}
