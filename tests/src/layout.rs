//! Where everything of one simulated host lives, under its directory.

use std::path::{Path, PathBuf};

/// Paths of one simulated host.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Self {
        Layout {
            dir: dir.to_path_buf(),
        }
    }
    /// The host root the agent is configured with.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    pub fn host_path(&self, absolute: &str) -> PathBuf {
        self.root().join(absolute.trim_start_matches('/'))
    }
    /// Wrapper scripts named `systemctl` and `podman`.
    pub fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }
    /// Simulator state: not part of the host, never read by the agent.
    pub fn sim(&self) -> PathBuf {
        self.dir.join("sim")
    }
    pub fn spec_file(&self) -> PathBuf {
        self.sim().join("host.json")
    }
    pub fn units_file(&self) -> PathBuf {
        self.sim().join("units.json")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.sim().join("lock")
    }
    /// Every systemctl and podman invocation, one line each.
    pub fn calls_log(&self) -> PathBuf {
        self.sim().join("calls.log")
    }
    pub fn secrets(&self) -> PathBuf {
        self.sim().join("secrets")
    }
    pub fn volumes(&self) -> PathBuf {
        self.sim().join("volumes")
    }
    pub fn pg_data(&self) -> PathBuf {
        self.sim().join("pg/data")
    }
    /// The DB container's socket directory: "inside the container".
    pub fn pg_socket_dir(&self) -> PathBuf {
        self.sim().join("pg/run")
    }
    /// An external database's TLS certificate and key (the server's, not the host's).
    pub fn pg_tls_dir(&self) -> PathBuf {
        self.sim().join("pg/tls")
    }
    pub fn kv_dir(&self) -> PathBuf {
        self.sim().join("kv")
    }
    pub fn kv_socket(&self) -> PathBuf {
        self.kv_dir().join("redis.sock")
    }
    /// Injected faults, one per line: `TOOL|SUBSTRING|MESSAGE` (see `state::fault`).
    pub fn faults(&self) -> PathBuf {
        self.sim().join("faults")
    }
    pub fn logs(&self) -> PathBuf {
        self.sim().join("logs")
    }
    pub fn pid_file(&self, unit: &str) -> PathBuf {
        self.sim().join(format!("{unit}.pid"))
    }
    pub fn agent_dir(&self) -> PathBuf {
        self.dir.join("agent")
    }
    pub fn quadlet(&self, unit: &str) -> PathBuf {
        self.host_path(&quadlet_source(unit))
    }
}

/// The quadlet a unit is generated from, as systemd reports it in `SourcePath`.
pub fn quadlet_source(unit: &str) -> String {
    let base = unit.trim_end_matches(".service");
    format!("/usr/share/containers/systemd/{base}.container")
}
