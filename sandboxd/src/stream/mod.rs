//! The CRI streaming server, as containerd's: Exec, Attach and PortForward answer with a
//! single-use URL on an HTTP port of the node (loopback), and the client (crictl, the
//! kubelet) upgrades a request to it into a SPDY/3.1 connection carrying the streams:
//! a command's stdin, stdout, stderr and its exit status (`v4.channel.k8s.io`), or a pod
//! port's data (`portforward.k8s.io`).
//!
//! * [`spdy`]: the frames and their compressed header blocks;
//! * [`session`]: a connection's streams, server side;
//! * [`server`]: the tokens, the HTTP listener and the upgrade;
//! * [`exec`] and [`portforward`]: what runs behind a stream.

mod attach;
mod exec;
mod portforward;
mod remotecommand;
pub mod server;
pub mod session;
pub mod spdy;

pub use server::StreamServer;
