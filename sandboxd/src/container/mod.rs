//! Containers of a pod: what they run on and how they join the pod.
//!
//! * [`rootfs`]: the container's root filesystem, an overlayfs of the image's layers with a
//!   writable upper dir of its own;
//! * [`bundle`]: the OCI runtime bundle (`config.json`, built with the `oci-spec` crate): the
//!   process, the mounts, and the namespaces, joining the pause process's net, ipc and uts
//!   namespaces by path (`container:<pause-id>`) with a mount namespace and, unless the pod
//!   shares one, a pid namespace of its own;
//! * [`log`]: the CRI log format a container's output is written in.
//!
//! Any OCI runtime runs the bundle (runc does in the tests); `sandboxd-monitor` holds each
//! container's output and exit code. The CRI container verbs build on these.

pub mod bundle;
pub mod log;
pub mod rootfs;
