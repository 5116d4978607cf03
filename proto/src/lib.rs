//! The contract both sides of ferry agree on.
//!
//! `v1` is the gRPC service between the controller and `ferry-agent`; `restore` holds the runbook
//! rules both sides apply. The archive format is `ferry-archive`'s. The agent and the controller
//! depend on these crates and never on each other.

/// Generated gRPC types and stubs for package `ferry.v1`.
pub mod v1 {
    tonic::include_proto!("ferry.v1");
}

/// The TCP port `ferry-agent` listens on unless configured otherwise. No Flight Control service uses it.
pub const DEFAULT_AGENT_PORT: u16 = 7482;

/// gRPC metadata key carrying the phase an agent task failed in.
pub const PHASE_METADATA_KEY: &str = "ferry-phase";

pub mod restore;
