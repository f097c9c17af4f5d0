//! The lab: the seeds' cluster on one machine. Nodes are network namespaces (`k8s-master`,
//! `k8s-node1`, `k8s-node2`, …) cabled by `eth1` to an underlay bridge that lives in a
//! namespace of its own ([`underlay`]).

pub mod etcd;
pub mod spawn;
pub mod underlay;
