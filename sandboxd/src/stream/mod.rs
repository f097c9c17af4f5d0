//! The CRI streaming server, as containerd's: Exec, Attach and PortForward answer with a
//! single-use URL on an HTTP port of the node (loopback), and the client (crictl, the
//! kubelet, the Kubernetes clients) upgrades a request to it, into a SPDY/3.1 connection
//! or a WebSocket, carrying the streams: a command's or a container's stdin, stdout,
//! stderr, terminal size and exit status (`v4`/`v5.channel.k8s.io`), or a pod port's data
//! (`portforward.k8s.io`).
//!
//! * [`server`]: the tokens, the HTTP listener and the upgrade;
//! * the transports: [`spdy`] (the frames and their compressed header blocks) with
//!   [`spdy_connection`] (a connection, server side), and [`websocket`] (channels, or a
//!   SPDY tunnel);
//! * [`session`]: a connection's streams as the handlers see them, whatever the transport;
//! * the handlers: `exec`, `attach` (over `remotecommand`, what they share) and
//!   `portforward`.

mod attach;
mod exec;
mod portforward;
mod remotecommand;
pub mod server;
pub mod session;
pub mod spdy;
pub mod spdy_connection;
pub mod websocket;

pub use server::StreamServer;
