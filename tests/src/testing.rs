//! Helpers for tests: fleets and hosts that clean up after themselves.

use std::ops::Deref;

use crate::{SimFleet, SimFleetOptions, SimHost, SimHostSpec};

/// A simulated fleet in a temporary directory, stopped and removed on drop.
pub struct TempFleet {
    fleet: SimFleet,
    _dir: tempfile::TempDir,
}

impl TempFleet {
    pub async fn up(options: SimFleetOptions) -> TempFleet {
        let dir = tempfile::Builder::new()
            .prefix("ferry-fleet-")
            .tempdir()
            .expect("temp dir");
        let fleet = SimFleet::up(dir.path(), &options)
            .await
            .expect("simulated fleet");
        TempFleet { fleet, _dir: dir }
    }
}

impl Deref for TempFleet {
    type Target = SimFleet;
    fn deref(&self) -> &SimFleet {
        &self.fleet
    }
}

impl Drop for TempFleet {
    fn drop(&mut self) {
        self.fleet.down();
    }
}

/// One simulated host (no agent), started, in a temporary directory; stopped on drop.
pub struct TempHost {
    pub host: SimHost,
    _dir: tempfile::TempDir,
}

impl TempHost {
    /// `address` must be unique among concurrently running tests.
    pub async fn up(name: &str, address: &str, external_db: bool) -> TempHost {
        let dir = tempfile::Builder::new()
            .prefix("ferry-host-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let spec = SimHostSpec {
            name: name.into(),
            address: address.into(),
            version: "v1.2.0".into(),
            external_db,
            devices: 30,
            payload_bytes: 0,
        };
        let host = SimHost::create(&dir.path().join(name), &spec)
            .await
            .expect("simulated host");
        host.start().expect("start simulated host");
        host.clear_calls();
        TempHost { host, _dir: dir }
    }
}

impl Deref for TempHost {
    type Target = SimHost;
    fn deref(&self) -> &SimHost {
        &self.host
    }
}

impl Drop for TempHost {
    fn drop(&mut self) {
        self.host.stop();
    }
}
