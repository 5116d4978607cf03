//! `ferry-agent`: the typed-task mTLS gRPC server that runs on each Flight Control host.
//!
//! Layers, data flowing one way: [`server`] (gRPC, TLS, identity of the caller) → [`tasks`] (what the
//! controller may ask for; knows nothing of the network) → [`host`] (systemctl, podman, files under the
//! configured root; knows nothing of gRPC).

pub mod config;
pub mod host;
pub mod lease;
pub mod operation;
pub mod server;
pub mod tasks;

/// The agent's own version, reported in Ping and Facts.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
