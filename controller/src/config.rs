//! The controller's configuration (`ferry.yaml`, from `--config` or `FERRY_CONFIG`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default location of the controller configuration.
pub const DEFAULT_CONFIG: &str = "/etc/ferry/ferry.yaml";

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    tls: Option<RawTls>,
    store: Option<PathBuf>,
    catalog: Option<String>,
    forks: Option<usize>,
    timeout_seconds: Option<u64>,
    connect_timeout_seconds: Option<u64>,
    inventory: Option<OneOrMany>,
}

/// `inventory: PATH` or `inventory: [PATH, …]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// The controller's settings, with defaults filled in and relative paths made absolute.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub tls: ferry_certs::tls::TlsFiles,
    pub store: PathBuf,
    /// `postgres://…` of a shared catalog; None means ferry's private cluster in the state dir.
    pub catalog: Option<String>,
    pub forks: usize,
    pub timeout_seconds: u64,
    pub connect_timeout_seconds: u64,
    /// Inventory sources used when the command line names none.
    pub inventory: Vec<PathBuf>,
}

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
    #[error("{path}: {key} must be at least 1")]
    Zero { path: PathBuf, key: &'static str },
}

impl Config {
    /// Loads `path`; a missing default config file means "all defaults".
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let raw = match std::fs::read_to_string(path) {
            Ok(text) => serde_norway::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => RawConfig::default(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        for (key, value) in [
            ("forks", raw.forks.map(|f| f as u64)),
            ("timeout_seconds", raw.timeout_seconds),
            ("connect_timeout_seconds", raw.connect_timeout_seconds),
        ] {
            if value == Some(0) {
                return Err(ConfigError::Zero {
                    path: path.to_path_buf(),
                    key,
                });
            }
        }
        let base = path.parent().unwrap_or(Path::new("/"));
        Ok(Self::from_raw(raw, base))
    }

    fn from_raw(raw: RawConfig, base: &Path) -> Self {
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let state_dir = abs(raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/ferry")));
        let tls = raw.tls.unwrap_or_default();
        let pki = state_dir.join("pki");
        Config {
            tls: ferry_certs::tls::TlsFiles {
                ca: tls.ca.map(abs).unwrap_or_else(|| pki.join("ca.crt")),
                cert: tls
                    .cert
                    .map(abs)
                    .unwrap_or_else(|| pki.join("operators/controller.crt")),
                key: tls
                    .key
                    .map(abs)
                    .unwrap_or_else(|| pki.join("operators/controller.key")),
            },
            store: raw
                .store
                .map(abs)
                .unwrap_or_else(|| state_dir.join("store")),
            catalog: raw.catalog,
            forks: raw.forks.unwrap_or(5),
            timeout_seconds: raw.timeout_seconds.unwrap_or(300),
            connect_timeout_seconds: raw.connect_timeout_seconds.unwrap_or(5),
            inventory: match raw.inventory {
                None => Vec::new(),
                Some(OneOrMany::One(p)) => vec![abs(p)],
                Some(OneOrMany::Many(ps)) => ps.into_iter().map(abs).collect(),
            },
            state_dir,
        }
    }

    /// Where the fleet CA lives.
    pub fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }
}
