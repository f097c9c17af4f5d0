//! Services in the cluster store, the API half of a cluster node (validate, allocate,
//! persist), as the API server keeps them; every node's [`super::proxier`] programs them.
//!
//! Keys (values are JSON):
//! `/sandboxd/services/<ns>/<name>` the service ([`ServiceRecord`], ClusterIP and node
//! ports allocated); `/sandboxd/allocations/clusterips/<ip>` and
//! `/sandboxd/allocations/nodeports/<port>` the service holding that address or port.
//!
//! An allocation is one compare-and-create of its key, so two nodes creating services at
//! once never hand out the same address or port: the one that loses the race takes the
//! next free one, or — when the user asked for that one — gets an error naming the field
//! and the holder. Allocations are made before the service object and given back after
//! it is gone, so a crash in between leaves an allocation no service holds (never a
//! service without its allocation); [`repair`] gives such orphans back once they are
//! older than [`ORPHAN_GRACE`], as the API server's repair loops do.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::node::now_ms;
use super::store::{ClusterStore, Versioned};
use crate::error::{Error, Result};
use crate::service::allocate::{AllocationError, Allocator};
use crate::service::node_proxy::node_ports;
use crate::service::registry::{ServiceRecord, RECORD_VERSION};
use crate::service::{Service, ServiceInput, ServiceType};

pub const SERVICES: &str = "/sandboxd/services/";
pub const CLUSTER_IPS: &str = "/sandboxd/allocations/clusterips/";
pub const NODE_PORTS: &str = "/sandboxd/allocations/nodeports/";
/// How old an allocation no service holds must be before [`repair`] gives it back (a
/// create in flight holds its allocations for milliseconds before its object exists).
pub const ORPHAN_GRACE: Duration = Duration::from_secs(30);
/// How many times a verb lists again after losing a race for a key.
const ATTEMPTS: usize = 32;

/// An allocation key's value: who holds it, since when.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Allocation {
    service: String,
    at_ms: i64,
}

/// What an allocation key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ClusterIp,
    NodePort,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::ClusterIp => CLUSTER_IPS,
            Kind::NodePort => NODE_PORTS,
        }
    }

    fn key(self, value: u32) -> String {
        match self {
            Kind::ClusterIp => format!("{CLUSTER_IPS}{}", Ipv4Addr::from(value)),
            Kind::NodePort => format!("{NODE_PORTS}{value}"),
        }
    }

    fn parse(self, key: &str) -> Option<u32> {
        let text = key.strip_prefix(self.prefix())?;
        match self {
            Kind::ClusterIp => text.parse::<Ipv4Addr>().ok().map(u32::from),
            Kind::NodePort => text.parse::<u16>().ok().map(u32::from),
        }
    }

    /// Whether `service` holds `value`.
    fn held_by(self, service: &Service, value: u32) -> bool {
        match self {
            Kind::ClusterIp => service.cluster_ip.map(u32::from) == Some(value),
            Kind::NodePort => node_ports(service).any(|(_, p)| u32::from(p) == value),
        }
    }
}

pub fn record_key(key: &str) -> String {
    format!("{SERVICES}{key}")
}

fn object(key: &str) -> String {
    format!("service {key}")
}

/// The services of a listing (unreadable ones reported and skipped).
pub fn records<'a>(items: impl IntoIterator<Item = &'a Versioned>) -> Vec<ServiceRecord> {
    super::decode(items, SERVICES, "service")
        .into_iter()
        .map(|(record, _)| record)
        .collect()
}

fn validate(input: ServiceInput) -> Result<Service> {
    input.validate().map_err(|e| Error::InvalidArgument {
        object: object(&e.service),
        field: e.field,
        problem: e.problem,
    })
}

async fn read(store: &dyn ClusterStore, key: &str) -> Result<Option<(ServiceRecord, i64)>> {
    let Some(current) = store.get(&record_key(key)).await? else {
        return Ok(None);
    };
    let record = serde_json::from_str(&current.value)
        .map_err(|e| Error::step("read the record", object(key), anyhow::Error::from(e)))?;
    Ok(Some((record, current.revision)))
}

pub async fn get(store: &dyn ClusterStore, namespace: &str, name: &str) -> Result<ServiceRecord> {
    let key = format!("{namespace}/{name}");
    read(store, &key)
        .await?
        .map(|(record, _)| record)
        .ok_or(Error::NotFound {
            kind: "service",
            id: key,
        })
}

/// Every service, or those of one namespace, by namespace and name.
pub async fn list(store: &dyn ClusterStore, namespace: Option<&str>) -> Result<Vec<ServiceRecord>> {
    let listing = store.list(SERVICES).await?;
    Ok(records(listing.items.iter())
        .into_iter()
        .filter(|r| namespace.is_none_or(|ns| r.service.namespace == ns))
        .collect())
}

/// The allocation keys a verb took, to give back if it fails.
#[derive(Default)]
struct Taken(Vec<String>);

pub async fn create(store: &dyn ClusterStore, input: ServiceInput) -> Result<ServiceRecord> {
    let mut service = validate(input)?;
    let key = service.key();
    if read(store, &key).await?.is_some() {
        return Err(Error::AlreadyExists(format!(
            "{} already exists; update it instead (sandboxctl apply does)",
            object(&key)
        )));
    }
    let mut taken = Taken::default();
    let outcome = async {
        let ip = allocate(
            store,
            Kind::ClusterIp,
            &key,
            service.cluster_ip.map(u32::from),
            "spec.clusterIP",
            &mut taken,
        )
        .await?;
        service.cluster_ip = Some(Ipv4Addr::from(ip));
        if service.service_type == ServiceType::NodePort {
            for i in 0..service.ports.len() {
                let field = format!("spec.ports[{i}].nodePort");
                let wanted = service.ports[i].node_port.map(u32::from);
                let port =
                    allocate(store, Kind::NodePort, &key, wanted, &field, &mut taken).await?;
                service.ports[i].node_port = Some(port as u16);
            }
        }
        let record = ServiceRecord {
            version: RECORD_VERSION,
            service,
            created_at_ns: crate::runtime::now_ns(),
        };
        let value = serde_json::to_string(&record).expect("a record serializes");
        if store.create(&record_key(&key), &value).await?.is_none() {
            return Err(Error::AlreadyExists(format!(
                "{} was created by another node meanwhile",
                object(&key)
            )));
        }
        Ok(record)
    };
    let outcome = outcome.await;
    if outcome.is_err() {
        give_back(store, &key, &taken.0).await;
    }
    outcome
}

pub async fn update(store: &dyn ClusterStore, input: ServiceInput) -> Result<ServiceRecord> {
    let wanted = validate(input)?;
    let key = wanted.key();
    for _ in 0..ATTEMPTS {
        let Some((old, revision)) = read(store, &key).await? else {
            return Err(Error::NotFound {
                kind: "service",
                id: key,
            });
        };
        let mut service = wanted.clone();
        let old_ip = old.service.cluster_ip;
        if let (Some(old_ip), Some(given)) = (old_ip, service.cluster_ip) {
            if given != old_ip {
                return Err(Error::invalid(
                    object(&key),
                    "spec.clusterIP",
                    format!("is immutable: the service has {old_ip}; delete and create it to change the address"),
                ));
            }
        }
        service.cluster_ip = old_ip;
        let mut taken = Taken::default();
        let outcome = async {
            if service.service_type == ServiceType::NodePort {
                for i in 0..service.ports.len() {
                    let port = &service.ports[i];
                    let field = format!("spec.ports[{i}].nodePort");
                    // A given one, else the one this port had, else a free one.
                    let wanted = port.node_port.or_else(|| {
                        old.service
                            .ports
                            .iter()
                            .find(|p| p.protocol == port.protocol && p.port == port.port)
                            .and_then(|p| p.node_port)
                    });
                    let number = allocate(
                        store,
                        Kind::NodePort,
                        &key,
                        wanted.map(u32::from),
                        &field,
                        &mut taken,
                    )
                    .await?;
                    service.ports[i].node_port = Some(number as u16);
                }
            }
            let record = ServiceRecord {
                version: RECORD_VERSION,
                service,
                created_at_ns: old.created_at_ns,
            };
            let value = serde_json::to_string(&record).expect("a record serializes");
            Ok::<_, Error>(
                store
                    .update(&record_key(&key), &value, revision)
                    .await?
                    .map(|_| record),
            )
        }
        .await;
        match outcome {
            Ok(Some(record)) => {
                // The old node ports the new spec does not keep.
                let released: Vec<String> = node_ports(&old.service)
                    .filter(|(_, p)| !node_ports(&record.service).any(|(_, q)| q == *p))
                    .map(|(_, p)| Kind::NodePort.key(p.into()))
                    .collect();
                give_back(store, &key, &released).await;
                return Ok(record);
            }
            // Changed by another node meanwhile: start again from what it wrote.
            Ok(None) => give_back(store, &key, &taken.0).await,
            Err(e) => {
                give_back(store, &key, &taken.0).await;
                return Err(e);
            }
        }
    }
    Err(Error::FailedPrecondition(format!(
        "{} kept changing while it was updated; apply again",
        object(&key)
    )))
}

pub async fn delete(store: &dyn ClusterStore, namespace: &str, name: &str) -> Result<()> {
    let key = format!("{namespace}/{name}");
    for _ in 0..ATTEMPTS {
        let Some((record, revision)) = read(store, &key).await? else {
            return Err(Error::NotFound {
                kind: "service",
                id: key,
            });
        };
        if !store.delete(&record_key(&key), Some(revision)).await? {
            continue;
        }
        let mut held: Vec<String> = node_ports(&record.service)
            .map(|(_, p)| Kind::NodePort.key(p.into()))
            .collect();
        if let Some(ip) = record.service.cluster_ip {
            held.push(Kind::ClusterIp.key(ip.into()));
        }
        give_back(store, &key, &held).await;
        return Ok(());
    }
    Err(Error::FailedPrecondition(format!(
        "{} kept changing while it was deleted; delete again",
        object(&key)
    )))
}

/// Takes `requested` of `kind` for service `owner`, or the next free one; the value.
async fn allocate(
    store: &dyn ClusterStore,
    kind: Kind,
    owner: &str,
    requested: Option<u32>,
    field: &str,
    taken: &mut Taken,
) -> Result<u32> {
    for _ in 0..ATTEMPTS {
        let holders = allocations(store, kind).await?;
        let planned = plan(kind, owner, requested, &holders);
        let value = match planned {
            Ok(value) => value,
            Err(AllocationError::Taken(what, holder)) => {
                let value = requested.expect("only a requested value is taken");
                let (allocation, revision) = &holders[&value];
                if reclaim_orphan(store, kind, value, allocation, *revision).await? {
                    continue;
                }
                return Err(Error::invalid(
                    object(owner),
                    field,
                    AllocationError::Taken(what, holder).to_string(),
                ));
            }
            Err(e @ AllocationError::Exhausted(_)) => {
                return Err(Error::FailedPrecondition(format!("{}: {e}", object(owner))));
            }
        };
        if holders.get(&value).is_some_and(|(a, _)| a.service == owner) {
            return Ok(value);
        }
        let allocation = Allocation {
            service: owner.to_string(),
            at_ms: now_ms(),
        };
        let key = kind.key(value);
        let json = serde_json::to_string(&allocation).expect("an allocation serializes");
        if store.create(&key, &json).await?.is_some() {
            taken.0.push(key);
            return Ok(value);
        }
        // Another node took it between the listing and now: list again.
    }
    Err(Error::FailedPrecondition(format!(
        "{}: allocations kept changing under {field}; apply again",
        object(owner)
    )))
}

/// The allocations of `kind`: value → holder and the key's revision.
async fn allocations(
    store: &dyn ClusterStore,
    kind: Kind,
) -> Result<BTreeMap<u32, (Allocation, i64)>> {
    Ok(store
        .list(kind.prefix())
        .await?
        .items
        .iter()
        .filter_map(|item| {
            let value = kind.parse(&item.key)?;
            let allocation = serde_json::from_str::<Allocation>(&item.value).ok()?;
            Some((value, (allocation, item.revision)))
        })
        .collect())
}

/// The value to try for `owner`, given who holds what.
fn plan(
    kind: Kind,
    owner: &str,
    requested: Option<u32>,
    holders: &BTreeMap<u32, (Allocation, i64)>,
) -> std::result::Result<u32, AllocationError> {
    // The first free one after the highest held, as a node alone hands them out.
    let held = holders
        .iter()
        .map(|(value, (a, _))| (*value, a.service.clone()));
    match kind {
        Kind::ClusterIp => {
            let mut allocator = Allocator::resuming(held.map(|(v, o)| (Ipv4Addr::from(v), o)), []);
            allocator
                .cluster_ip(owner, requested.map(Ipv4Addr::from))
                .map(u32::from)
        }
        Kind::NodePort => {
            let mut allocator = Allocator::resuming([], held.map(|(v, o)| (v as u16, o)));
            allocator
                .node_port(owner, requested.map(|p| p as u16))
                .map(u32::from)
        }
    }
}

/// Gives back an allocation its holder does not hold (a create or delete that crashed
/// half-way) once it is older than [`ORPHAN_GRACE`]; whether it did.
async fn reclaim_orphan(
    store: &dyn ClusterStore,
    kind: Kind,
    value: u32,
    allocation: &Allocation,
    revision: i64,
) -> Result<bool> {
    if now_ms() - allocation.at_ms < ORPHAN_GRACE.as_millis() as i64 {
        return Ok(false);
    }
    let holder = read(store, &allocation.service).await?;
    if holder.is_some_and(|(record, _)| kind.held_by(&record.service, value)) {
        return Ok(false);
    }
    Ok(store.delete(&kind.key(value), Some(revision)).await?)
}

/// Deletes those of `keys` still held by `owner` (a failure is reported: [`repair`]
/// gives the key back later).
async fn give_back(store: &dyn ClusterStore, owner: &str, keys: &[String]) {
    for key in keys {
        let outcome = async {
            let Some(current) = store.get(key).await? else {
                return Ok(());
            };
            let allocation: Allocation = serde_json::from_str(&current.value)
                .map_err(|e| super::store::StoreError::Failed(e.to_string()))?;
            if allocation.service == owner {
                store.delete(key, Some(current.revision)).await?;
            }
            Ok::<_, super::store::StoreError>(())
        }
        .await;
        if let Err(e) = outcome {
            eprintln!(
                "sandboxd: {}: give back {key} (repaired later): {e}",
                object(owner)
            );
        }
    }
}

/// Gives back every allocation older than [`ORPHAN_GRACE`] that no service holds; how
/// many.
pub async fn repair(store: &dyn ClusterStore) -> Result<usize> {
    let mut repaired = 0;
    for kind in [Kind::ClusterIp, Kind::NodePort] {
        for (value, (allocation, revision)) in allocations(store, kind).await? {
            if reclaim_orphan(store, kind, value, &allocation, revision).await? {
                eprintln!(
                    "sandboxd: gave back {} (held by service {}, which does not hold it)",
                    kind.key(value),
                    allocation.service
                );
                repaired += 1;
            }
        }
    }
    Ok(repaired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::local::LocalStore;

    fn input(yaml: &str) -> ServiceInput {
        serde_json::from_value(serde_norway::from_str::<serde_json::Value>(yaml).unwrap()).unwrap()
    }

    const NODE_PORT: &str =
        "name: web\nselector: {app: web}\ntype: NodePort\nports: [{port: 80, nodePort: 31080}]\n";

    /// Every allocation key, in order.
    async fn keys(store: &dyn ClusterStore) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for prefix in [CLUSTER_IPS, NODE_PORTS] {
            keys.extend(
                store
                    .list(prefix)
                    .await
                    .unwrap()
                    .items
                    .into_iter()
                    .map(|v| v.key),
            );
        }
        keys
    }

    #[tokio::test]
    async fn allocations_follow_the_service_and_orphans_are_given_back_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&dir.path().join("cluster.json")).unwrap();
        let web = create(&store, input(NODE_PORT)).await.unwrap();
        assert_eq!(web.service.cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 2)));
        assert_eq!(
            keys(&store).await,
            [
                "/sandboxd/allocations/clusterips/10.96.0.2",
                "/sandboxd/allocations/nodeports/31080"
            ]
        );
        // The same node port for another service: the field and the holder.
        let other = input(&NODE_PORT.replace("name: web", "name: other"));
        assert_eq!(
            create(&store, other).await.unwrap_err().to_string(),
            "invalid spec.ports[0].nodePort of service default/other: node port 31080 is already allocated to service default/web"
        );
        // ... which left nothing of its own.
        assert_eq!(keys(&store).await.len(), 2);
        // An update keeps the address and moves the node port.
        let moved = update(&store, input(&NODE_PORT.replace("31080", "31081")))
            .await
            .unwrap();
        assert_eq!(moved.service.cluster_ip, web.service.cluster_ip);
        assert!(keys(&store).await.contains(&format!("{NODE_PORTS}31081")));
        assert!(!keys(&store).await.contains(&format!("{NODE_PORTS}31080")));
        delete(&store, "default", "web").await.unwrap();
        assert!(keys(&store).await.is_empty());

        // A crash between allocating and creating the object leaves an allocation no
        // service holds: kept while a create may still be in flight, then given back.
        let orphan = |at_ms| {
            serde_json::to_string(&Allocation {
                service: "default/crashed".into(),
                at_ms,
            })
            .unwrap()
        };
        let key = format!("{NODE_PORTS}31090");
        store.create(&key, &orphan(now_ms())).await.unwrap();
        assert_eq!(repair(&store).await.unwrap(), 0);
        let asked = input(&NODE_PORT.replace("31080", "31090"));
        assert!(create(&store, asked.clone()).await.is_err());
        store.delete(&key, None).await.unwrap();
        let long_ago = now_ms() - ORPHAN_GRACE.as_millis() as i64 - 1;
        store.create(&key, &orphan(long_ago)).await.unwrap();
        // Asking for it reclaims it at once; the repair pass gives back the rest.
        assert_eq!(
            create(&store, asked).await.unwrap().service.ports[0].node_port,
            Some(31090)
        );
        store
            .create(&format!("{CLUSTER_IPS}10.96.0.50"), &orphan(long_ago))
            .await
            .unwrap();
        assert_eq!(repair(&store).await.unwrap(), 1);
        assert_eq!(keys(&store).await.len(), 2);
    }
}
