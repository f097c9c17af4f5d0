//! sandboxd: the node daemon, from "run this pod" to a pod with an IP.
//!
//! The pieces a pod sandbox is made of, in the order RunPodSandbox uses them:
//!
//! * [`pause`]: find the pause binary (beside sandboxd, or a configured path) and start it
//!   in new net, ipc and uts namespaces: the process that owns the pod's namespaces.
//! * [`netns`]: pin the pause process's network namespace at `/run/sandboxd/netns/<id>`
//!   so it outlives any process and tools can enter it (`nsenter --net=<path>`).
//! * [`network`]: the node's default pod network (bridge `cni0`, host-local IPAM on the
//!   node's /24 of 10.244.0.0/16, portmap, loopback), attached through `cni-host`.
//!
//! The CRI server, containers, images, services and the overlay build on these in
//! later modules.

pub mod netns;
pub mod network;
pub mod pause;
