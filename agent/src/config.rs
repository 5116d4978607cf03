//! `/etc/ferry/agent.yaml`: where the agent listens, its certificates, and how it reaches the host.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The agent's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Address and port to serve gRPC on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    pub tls: TlsPaths,
    /// Prefix under which host paths (`/etc/flightctl`, quadlet dirs, ...) are found.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    #[serde(default = "default_systemctl")]
    pub systemctl: PathBuf,
    #[serde(default = "default_podman")]
    pub podman: PathBuf,
    /// Where archives are staged on the host.
    #[serde(default = "default_staging")]
    pub staging_dir: PathBuf,
    /// The host's loopback address: published ports bind here and the agent dials it.
    #[serde(default = "default_local_address")]
    pub local_address: String,
    /// Flight Control API base URL; default `https://<local_address>:3443`.
    #[serde(default)]
    pub api_url: Option<String>,
    /// The name the API's certificate must carry, when it is not the URL's host (for example the
    /// host's `api.<baseDomain>` while `api_url` dials the loopback address).
    #[serde(default)]
    pub api_server_name: Option<String>,
    /// Host name reported to the controller; default the kernel's host name.
    #[serde(default)]
    pub host_name: Option<String>,
    /// Bytes the staging filesystem keeps free: a restore or drill that would leave less is refused
    /// before it receives anything. Default 256 MiB.
    #[serde(default = "default_keep_free")]
    pub keep_free_bytes: u64,
}

fn default_keep_free() -> u64 {
    256 << 20
}

/// The agent's server certificate, key, and the fleet CA that signs controller certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_norway::Error,
    },
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_norway::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn tls_files(&self) -> ferry_certs::tls::TlsFiles {
        ferry_certs::tls::TlsFiles {
            ca: self.tls.ca.clone(),
            cert: self.tls.cert.clone(),
            key: self.tls.key.clone(),
        }
    }

    pub fn api(&self) -> crate::tasks::api::Api {
        crate::tasks::api::Api {
            url: self
                .api_url
                .clone()
                .unwrap_or_else(|| format!("https://{}:3443", self.local_address)),
            server_name: self.api_server_name.clone(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], ferry_proto::DEFAULT_AGENT_PORT))
}
fn default_root() -> PathBuf {
    PathBuf::from("/")
}
fn default_systemctl() -> PathBuf {
    PathBuf::from("/usr/bin/systemctl")
}
fn default_podman() -> PathBuf {
    PathBuf::from("/usr/bin/podman")
}
fn default_staging() -> PathBuf {
    PathBuf::from("/var/lib/ferry-agent/staging")
}
fn default_local_address() -> String {
    "127.0.0.1".to_string()
}
