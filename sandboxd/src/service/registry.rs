//! The Services of a node alone, the API half: their records (persisted, one per service)
//! and the ClusterIPs and node ports they hold, over the node-proxy half
//! ([`NodeProxy`]) that forwards to their endpoints. (A cluster node keeps its services in
//! the cluster store instead: [`crate::cluster::services`].)
//!
//! Every verb is all-or-nothing: a create or update that fails at some step gives back
//! what the earlier steps took (addresses, ports, sockets, the record) and leaves the
//! kernel as it was (each data-plane change is one transaction, made last).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::node::NodeNetns;
use crate::service::allocate::{AllocationError, Allocator};
use crate::service::endpoints::{Endpoint, ReadyPod};
use crate::service::node_proxy::{node_ports, NodeProxy};
use crate::service::plan::Cluster;
use crate::service::proxy::ProxyMode;
use crate::service::{Protocol, Service, ServiceInput, ServiceType};
use crate::store::Store;

pub const RECORD_VERSION: u32 = 1;
pub const RECORD_FILE: &str = "service.json";

/// A service as persisted: validated, its ClusterIP and node ports allocated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub version: u32,
    pub service: Service,
    pub created_at_ns: i64,
}

/// A service with its current endpoints, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub record: ServiceRecord,
    pub endpoints: Vec<Endpoint>,
}

pub struct Registry {
    store: Store,
    allocator: Allocator,
    records: BTreeMap<String, ServiceRecord>,
    proxy: NodeProxy,
}

/// The store id of a service: namespace and name are DNS labels, which have no '_'.
fn store_id(key: &str) -> String {
    key.replacen('/', "_", 1)
}

fn object(key: &str) -> String {
    format!("service {key}")
}

/// What a create or update took, to give back if it fails.
#[derive(Default)]
struct Taken {
    cluster_ip: Option<Ipv4Addr>,
    node_ports: Vec<u16>,
    sockets: Vec<(Protocol, u16)>,
}

impl Registry {
    /// Loads the persisted services, takes their addresses and ports again, computes their
    /// endpoints from `pods` and programs the data plane in one full sync.
    pub fn start(
        services_dir: &Path,
        mode: ProxyMode,
        netns: &NodeNetns,
        cluster: Cluster,
        pods: &[ReadyPod],
    ) -> anyhow::Result<Registry> {
        let mut registry = Registry {
            store: Store::new(services_dir, RECORD_FILE),
            allocator: Allocator::default(),
            records: BTreeMap::new(),
            proxy: NodeProxy::open(mode, netns, cluster)?,
        };
        let loaded = registry.store.load_all::<ServiceRecord>()?;
        for (id, error) in loaded.unreadable {
            eprintln!("sandboxd: service record {id} is unreadable and left as is: {error:#}");
        }
        for record in loaded.records {
            let key = record.service.key();
            if let Err(e) = registry.retake(&record) {
                eprintln!("sandboxd: {}: {e}; not programmed", object(&key));
                continue;
            }
            registry.records.insert(key, record);
        }
        registry
            .proxy
            .sync_all(registry.records.values().map(|r| &r.service), pods)?;
        Ok(registry)
    }

    /// A persisted service's ClusterIP and node ports, taken again after a restart.
    fn retake(&mut self, record: &ServiceRecord) -> anyhow::Result<()> {
        let service = &record.service;
        let key = service.key();
        self.allocator.cluster_ip(&key, service.cluster_ip)?;
        for (_, node_port) in node_ports(service) {
            self.allocator.node_port(&key, Some(node_port))?;
        }
        Ok(())
    }

    fn view(&self, key: &str) -> Option<ServiceView> {
        let record = self.records.get(key)?;
        Some(ServiceView {
            record: record.clone(),
            endpoints: self.proxy.endpoints(key),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn get(&self, namespace: &str, name: &str) -> Result<ServiceView> {
        let key = format!("{namespace}/{name}");
        self.view(&key).ok_or(Error::NotFound {
            kind: "service",
            id: key,
        })
    }

    /// Every service, or those of one namespace, by namespace and name.
    pub fn list(&self, namespace: Option<&str>) -> Vec<ServiceView> {
        self.records
            .iter()
            .filter(|(_, r)| namespace.is_none_or(|ns| r.service.namespace == ns))
            .filter_map(|(key, _)| self.view(key))
            .collect()
    }

    pub fn create(&mut self, input: ServiceInput, pods: &[ReadyPod]) -> Result<ServiceView> {
        let service = validate(input)?;
        let key = service.key();
        if self.records.contains_key(&key) {
            return Err(Error::AlreadyExists(format!(
                "{} already exists; update it instead (sandboxctl apply does)",
                object(&key)
            )));
        }
        let mut taken = Taken::default();
        let outcome = self.commit(service, None, pods, &mut taken);
        if outcome.is_err() {
            self.give_back(taken);
        }
        outcome
    }

    pub fn update(&mut self, input: ServiceInput, pods: &[ReadyPod]) -> Result<ServiceView> {
        let service = validate(input)?;
        let key = service.key();
        let old = self.records.get(&key).cloned().ok_or(Error::NotFound {
            kind: "service",
            id: key.clone(),
        })?;
        let mut taken = Taken::default();
        let outcome = self.commit(service, Some(&old), pods, &mut taken);
        match outcome {
            Ok(view) => {
                self.release_node_ports(&old.service, Some(&view.record.service));
                Ok(view)
            }
            Err(e) => {
                self.give_back(taken);
                Err(e)
            }
        }
    }

    /// Gives back the node ports of `old` (sockets and numbers) that `new` does not use.
    fn release_node_ports(&mut self, old: &Service, new: Option<&Service>) {
        let kept: BTreeSet<(Protocol, u16)> = new.map(node_ports).into_iter().flatten().collect();
        for (protocol, port) in node_ports(old).filter(|p| !kept.contains(p)) {
            self.proxy.release_node_port(protocol, port);
            // A number is per node, whatever the protocol: free only if no port keeps it.
            if !kept.iter().any(|(_, number)| *number == port) {
                self.allocator.release_node_port(port);
            }
        }
    }

    /// Allocates, holds, persists and programs `service` (replacing `old`); `taken`
    /// collects what was newly taken, for the caller to give back on failure.
    fn commit(
        &mut self,
        mut service: Service,
        old: Option<&ServiceRecord>,
        pods: &[ReadyPod],
        taken: &mut Taken,
    ) -> Result<ServiceView> {
        let key = service.key();
        let invalid = |field: &str, problem: String| Error::InvalidArgument {
            object: object(&key),
            field: field.to_string(),
            problem,
        };
        let allocation = |field: &str, e: AllocationError| match e {
            AllocationError::Taken(..) => invalid(field, e.to_string()),
            AllocationError::Exhausted(_) => {
                Error::FailedPrecondition(format!("{}: {e}", object(&key)))
            }
        };

        // 1. The ClusterIP: kept across updates, as the API server keeps it.
        let old_ip = old.and_then(|o| o.service.cluster_ip);
        match (old_ip, service.cluster_ip) {
            (Some(old_ip), Some(given)) if given != old_ip => {
                return Err(invalid(
                    "spec.clusterIP",
                    format!("is immutable: the service has {old_ip}; delete and create it to change the address"),
                ))
            }
            (Some(old_ip), _) => service.cluster_ip = Some(old_ip),
            (None, requested) => {
                let ip = self
                    .allocator
                    .cluster_ip(&key, requested)
                    .map_err(|e| allocation("spec.clusterIP", e))?;
                taken.cluster_ip = Some(ip);
                service.cluster_ip = Some(ip);
            }
        }

        // 2. Node ports: a given one, else the one this port had, else a free one.
        let old_node_ports: BTreeMap<(Protocol, u16), u16> = old
            .map(|o| {
                o.service
                    .ports
                    .iter()
                    .filter_map(|p| p.node_port.map(|n| ((p.protocol, p.port), n)))
                    .collect()
            })
            .unwrap_or_default();
        let in_use_before: BTreeSet<u16> = old_node_ports.values().copied().collect();
        if service.service_type == ServiceType::NodePort {
            for (i, port) in service.ports.iter_mut().enumerate() {
                let field = format!("spec.ports[{i}].nodePort");
                let wanted = port
                    .node_port
                    .or_else(|| old_node_ports.get(&(port.protocol, port.port)).copied());
                let number = self
                    .allocator
                    .node_port(&key, wanted)
                    .map_err(|e| allocation(&field, e))?;
                if !in_use_before.contains(&number) && !taken.node_ports.contains(&number) {
                    taken.node_ports.push(number);
                }
                port.node_port = Some(number);
                if self
                    .proxy
                    .hold_node_port(port.protocol, number)
                    .map_err(|e| invalid(&field, format!("{e:#}")))?
                {
                    taken.sockets.push((port.protocol, number));
                }
            }
        }

        // 3. The record.
        let record = ServiceRecord {
            version: RECORD_VERSION,
            created_at_ns: old.map_or_else(crate::runtime::now_ns, |o| o.created_at_ns),
            service,
        };
        self.store
            .save(&store_id(&key), &record)
            .map_err(|e| Error::step("save the record", object(&key), e))?;
        crate::fault::point("service-sync/record-saved");

        // 4. The data plane, in one transaction; on failure the old record goes back.
        if let Err(e) = self.proxy.program(&record.service, pods) {
            let restored = match old {
                Some(old) => self.store.save(&store_id(&key), old),
                None => self.store.remove(&store_id(&key)),
            };
            if let Err(undo) = restored {
                eprintln!("sandboxd: {}: restore the record: {undo:#}", object(&key));
            }
            return Err(Error::step("program the data plane", object(&key), e));
        }
        crate::fault::point("service-sync/programmed");
        self.records.insert(key.clone(), record);
        Ok(self.view(&key).expect("just inserted"))
    }

    fn give_back(&mut self, taken: Taken) {
        for (protocol, port) in taken.sockets {
            self.proxy.release_node_port(protocol, port);
        }
        for port in taken.node_ports {
            self.allocator.release_node_port(port);
        }
        if let Some(ip) = taken.cluster_ip {
            self.allocator.release_cluster_ip(ip);
        }
    }

    pub fn delete(&mut self, namespace: &str, name: &str) -> Result<()> {
        let key = format!("{namespace}/{name}");
        let record = self.records.get(&key).cloned().ok_or(Error::NotFound {
            kind: "service",
            id: key.clone(),
        })?;
        // The data plane first: if it refuses, the service stays whole.
        self.proxy
            .remove(&key)
            .map_err(|e| Error::step("remove from the data plane", object(&key), e))?;
        self.store
            .remove(&store_id(&key))
            .map_err(|e| Error::step("remove the record", object(&key), e))?;
        self.records.remove(&key);
        self.release_node_ports(&record.service, None);
        if let Some(ip) = record.service.cluster_ip {
            self.allocator.release_cluster_ip(ip);
        }
        Ok(())
    }

    /// Recomputes every service's endpoints from `pods` and reprograms the services whose
    /// endpoints changed (each its own transaction; one failing leaves the others done).
    pub fn resync(&mut self, pods: &[ReadyPod]) {
        let services: BTreeMap<String, Service> = self
            .records
            .iter()
            .map(|(key, record)| (key.clone(), record.service.clone()))
            .collect();
        self.proxy.converge(&services, pods);
    }
}

fn validate(input: ServiceInput) -> Result<Service> {
    input.validate().map_err(|e| Error::InvalidArgument {
        object: format!("service {}", e.service),
        field: e.field,
        problem: e.problem,
    })
}
