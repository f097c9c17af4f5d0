//! sandboxd: the node daemon, from "run this pod" to a pod with an IP, behind the CRI v1
//! API the kubelet speaks to containerd.
//!
//! From the socket inwards:
//!
//! * [`server`]: binds the CRI socket (0660, one daemon per socket) and serves it to any
//!   gRPC client (`server::authority` mends the `:authority` h2 would refuse);
//! * [`cri`]: the `runtime.v1.RuntimeService` RPCs, each a thin call into [`runtime`];
//!   [`cri_image`]: the `runtime.v1.ImageService` RPCs over the image store;
//! * [`services_api`]: sandboxd's own `sandboxd.services.v1.Services` RPCs (Services and
//!   their endpoints) over [`service`]: the Service model, its allocation, endpoints and
//!   data plane (kube-proxy's nftables design, or its iptables one);
//! * [`runtime`]: the daemon's core, holding the sandboxes; [`config`] says where things live;
//! * [`sandbox`]: the pod sandbox record and its verbs, one module each: `run`, `stop`,
//!   `remove`, `status` (status and list), `recover` (start-up);
//! * [`pause`]: find and start the pause binary in new namespaces;
//! * [`netns`]: pin a netns at `/run/sandboxd/netns/<id>`, create and remove namespaces;
//! * [`network`]: the node's default pod network config;
//! * [`image`]: the local image store and imports of OCI and docker archives;
//! * [`container`]: a container's overlayfs rootfs and its OCI bundle, joined to the pod;
//! * [`kube`]: Kubernetes `v1` manifests (Pods, Services) and what a Pod becomes in CRI;
//! * [`store`]: records on disk, one dir per id, written atomically and fsynced;
//!   [`lockfile`]: the flock both the socket and the image store are guarded by;
//! * [`rollback`]: undoing the finished steps of a failed operation; intents (beside the
//!   records, see `sandbox::RunIntent`, `container::CreateIntent`) undo those of a crash;
//! * [`process`]: processes named by pid and start time, signalled and awaited;
//! * [`error`]: the daemon's errors and their gRPC codes;
//! * [`fault`]: fault points, where tests make the daemon kill itself mid-verb;
//! * [`client`]: connecting to a CRI socket, for `sandboxctl` and tests;
//! * [`cluster`]: what nodes share (the store, node records, subnet leases, joining);
//!   [`overlay`]: the pod network between nodes (VXLAN, host-gw); [`netlink`]: the
//!   kernel's configuration socket; [`cidr`]: IPv4 networks; [`lab`]: the seeds' cluster
//!   on one machine; [`capture`]: packets on an interface, VXLAN decoded.
//!
//! Binaries: `sandboxd` (the daemon), `sandboxctl` (the CLI) and `sandboxd-monitor` (one per
//! container: its output and exit code), all thin over this library.

pub mod capture;
pub mod cidr;
pub mod client;
pub mod cluster;
pub mod cluster_api;
pub mod cni_plugin;
pub mod config;
pub mod container;
pub mod cri;
pub mod cri_image;
pub mod error;
pub mod fault;
pub mod image;
pub mod kube;
pub mod kubelet;
pub mod lab;
pub mod lockfile;
pub mod netlink;
pub mod netns;
pub mod network;
pub mod node;
pub mod overlay;
pub mod pause;
pub mod process;
pub mod rollback;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod service;
pub mod services_api;
pub mod store;
pub mod stream;
pub mod trace;
