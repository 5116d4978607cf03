//! simhost: a faithful stand-in for a Flight Control control-plane host (RHEL + podman quadlets).
//!
//! Each simulated host is a directory with a host root (`/etc/flightctl`, quadlets, `os-release`), a real
//! PostgreSQL cluster and a real Redis, and `systemctl` / `podman` stand-ins that `ferry-agent` calls
//! exactly as it would call the real tools. What bites in production is modelled: the data services are
//! reachable from the host only through a `PublishPort` drop-in (after daemon-reload and a restart), a KV
//! restart loses every key, unknown units fail as systemctl fails, and the API is ready only while it
//! reaches the database.

pub mod bench;
pub mod bench_fleet;
pub mod bins;
pub mod encryption;
pub mod fleet;
pub mod host;
pub mod layout;
pub mod pg;
pub mod s3;
pub mod serving;
pub mod standins;
pub mod state;
pub mod testing;
pub mod webhook;

pub use fleet::{SimFleet, SimFleetOptions};
pub use host::{SimHost, SimHostSpec};
