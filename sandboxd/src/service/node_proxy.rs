//! The node-proxy half of Services: what every node runs, as kube-proxy does. Given the
//! services (validated, their ClusterIP and node ports allocated by the API half) and the
//! ready pods, it keeps this node's data plane and node-port sockets equal to them.
//!
//! Two API halves drive it: [`super::registry`] on a node alone (each verb programs its
//! one service before it answers), and [`crate::cluster::proxier`] on a cluster node
//! (services and pods followed from the cluster store, the whole state converged on each
//! change).

use std::collections::{BTreeMap, BTreeSet};

use crate::node::NodeNetns;
use crate::service::endpoints::{self, Endpoint, ReadyPod};
use crate::service::node_port::NodePorts;
use crate::service::plan::Cluster;
use crate::service::proxy::{Proxy, ProxyMode};
use crate::service::{Protocol, Service};

pub struct NodeProxy {
    proxy: Proxy,
    node_ports: NodePorts,
    /// Each programmed service's endpoints, as last programmed.
    endpoints: BTreeMap<String, Vec<Endpoint>>,
    /// What failed on the last pass, by service and what of it ("program", "node port
    /// 31080/tcp"), with the error: reported when it starts or changes, not on every pass.
    failing: BTreeMap<(String, String), String>,
}

/// The node ports of `service`, by protocol.
pub fn node_ports(service: &Service) -> impl Iterator<Item = (Protocol, u16)> + '_ {
    service
        .ports
        .iter()
        .filter_map(|p| p.node_port.map(|n| (p.protocol, n)))
}

impl NodeProxy {
    pub fn open(mode: ProxyMode, netns: &NodeNetns, cluster: Cluster) -> anyhow::Result<Self> {
        Ok(NodeProxy {
            proxy: Proxy::open(mode, netns, cluster)?,
            node_ports: NodePorts::new(netns),
            endpoints: BTreeMap::new(),
            failing: BTreeMap::new(),
        })
    }

    /// Replaces whatever the data plane holds with `services` and their endpoints among
    /// `pods`, in one transaction, and holds their node ports (a port some process took
    /// meanwhile is reported, and still forwarded).
    pub fn sync_all<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a Service>,
        pods: &[ReadyPod],
    ) -> anyhow::Result<()> {
        let mut programmed = BTreeMap::new();
        let mut endpoints = BTreeMap::new();
        for service in services {
            let key = service.key();
            for (protocol, port) in node_ports(service) {
                if let Err(e) = self.node_ports.hold(protocol, port) {
                    eprintln!("sandboxd: service {key}: {e:#}");
                }
            }
            let found = endpoints::resolve(service, pods);
            programmed.insert(key.clone(), endpoints::programmed(service, &found));
            endpoints.insert(key, found);
        }
        self.proxy
            .sync_all(programmed)
            .map_err(|e| anyhow::anyhow!("program the services: {e:#}"))?;
        self.endpoints = endpoints;
        Ok(())
    }

    /// Opens a node port unless it is held already; whether this call opened it.
    pub fn hold_node_port(&mut self, protocol: Protocol, port: u16) -> anyhow::Result<bool> {
        if self.node_ports.is_held(protocol, port) {
            return Ok(false);
        }
        self.node_ports.hold(protocol, port)?;
        Ok(true)
    }

    pub fn release_node_port(&mut self, protocol: Protocol, port: u16) {
        self.node_ports.release(protocol, port);
    }

    /// Programs `service` with its endpoints among `pods`, in one transaction; nothing
    /// changes when it fails.
    pub fn program(&mut self, service: &Service, pods: &[ReadyPod]) -> anyhow::Result<()> {
        let key = service.key();
        let found = endpoints::resolve(service, pods);
        self.proxy
            .apply(&key, Some(endpoints::programmed(service, &found)))?;
        self.endpoints.insert(key, found);
        Ok(())
    }

    /// Takes the service out of the data plane (its node ports stay with the caller).
    pub fn remove(&mut self, key: &str) -> anyhow::Result<()> {
        self.proxy.apply(key, None)?;
        self.endpoints.remove(key);
        self.failing.retain(|(service, _), _| service != key);
        Ok(())
    }

    /// The endpoints of `key` as programmed.
    pub fn endpoints(&self, key: &str) -> Vec<Endpoint> {
        self.endpoints.get(key).cloned().unwrap_or_default()
    }

    /// Makes the data plane hold exactly `services` with their endpoints among `pods`:
    /// services gone are removed, new or changed ones programmed (each its own
    /// transaction: one failing leaves the others done, and is retried on the next call),
    /// node ports held for the services that have them and released for the rest.
    pub fn converge(&mut self, services: &BTreeMap<String, Service>, pods: &[ReadyPod]) {
        let gone: Vec<String> = self
            .endpoints
            .keys()
            .filter(|key| !services.contains_key(*key))
            .cloned()
            .collect();
        for key in gone {
            let outcome = self.remove(&key);
            self.outcome(&key, "remove from the data plane", outcome);
        }
        let endpoints = &self.endpoints;
        self.failing.retain(|(service, _), _| {
            services.contains_key(service) || endpoints.contains_key(service)
        });
        let wanted_ports: BTreeSet<(Protocol, u16)> =
            services.values().flat_map(node_ports).collect();
        for stale in self
            .node_ports
            .held()
            .filter(|p| !wanted_ports.contains(p))
            .collect::<Vec<_>>()
        {
            self.node_ports.release(stale.0, stale.1);
        }
        for (key, service) in services {
            for (protocol, port) in node_ports(service) {
                // A port it cannot hold is still forwarded, as kube-proxy does.
                let held = self.hold_node_port(protocol, port).map(|_| ());
                self.outcome(
                    key,
                    &format!("hold node port {port}/{}", protocol.nft()),
                    held,
                );
            }
            let found = endpoints::resolve(service, pods);
            let wanted = endpoints::programmed(service, &found);
            if self.proxy.programmed(key) == Some(&wanted) {
                self.endpoints.insert(key.clone(), found);
                continue;
            }
            let programmed = self.proxy.apply(key, Some(wanted));
            if programmed.is_ok() {
                self.endpoints.insert(key.clone(), found);
            }
            self.outcome(key, "program it", programmed);
        }
    }

    /// Reports a step's failure when it starts or changes, and its recovery.
    fn outcome(&mut self, key: &str, step: &str, outcome: anyhow::Result<()>) {
        let subject = (key.to_string(), step.to_string());
        match outcome {
            Ok(()) => {
                if self.failing.remove(&subject).is_some() {
                    eprintln!("sandboxd: service {key}: {step}: done now");
                }
            }
            Err(e) => {
                let error = format!("{e:#}");
                if self.failing.get(&subject) != Some(&error) {
                    eprintln!("sandboxd: service {key}: {step}: {error} (retried)");
                    self.failing.insert(subject, error);
                }
            }
        }
    }
}
