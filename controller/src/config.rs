//! The controller's configuration (`ferry.yaml`, from `--config` or `FERRY_CONFIG`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::store::StoreLocation;

/// Default location of the controller configuration.
pub const DEFAULT_CONFIG: &str = "/etc/ferry/ferry.yaml";

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    tls: Option<RawTls>,
    store: Option<String>,
    store_credentials: Option<crate::store::Credentials>,
    encryption: Option<Encryption>,
    catalog: Option<String>,
    forks: Option<usize>,
    timeout_seconds: Option<u64>,
    connect_timeout_seconds: Option<u64>,
    inventory: Option<OneOrMany>,
    serve: Option<Serve>,
    #[serde(default)]
    schedules: Vec<crate::schedule::RawSchedule>,
    #[serde(default)]
    alerts: Vec<Alert>,
}

/// `serve:` — what `ferry serve` listens on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serve {
    /// Address of `/metrics` (and `/healthz`).
    pub listen: std::net::SocketAddr,
    /// How often the leader checks that each host's newest good archive is still in the store
    /// (a HEAD or stat): `1h` unless set.
    pub archive_check: Option<String>,
    /// MiB of archives the leader re-hashes per day, oldest evidence first (default 10240; 0 turns
    /// deep verification off).
    pub verify_mib_per_day: Option<u64>,
}

impl Serve {
    /// The presence check's period.
    pub fn archive_check(&self) -> std::time::Duration {
        self.archive_check
            .as_deref()
            .and_then(|t| crate::schedule::Span::parse(t).ok())
            .map_or(std::time::Duration::from_secs(3600), |s| s.0)
    }

    /// Bytes deep-verified per day.
    pub fn verify_bytes_per_day(&self) -> u64 {
        self.verify_mib_per_day
            .unwrap_or(10_240)
            .saturating_mul(1 << 20)
    }
}

/// One `alerts:` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// An http:// or https:// URL that takes a JSON POST.
    #[serde(deserialize_with = "webhook_url")]
    pub webhook: String,
    /// Delivery attempts before the alert is marked undeliverable (default 8, over about four
    /// minutes).
    pub attempts: Option<u32>,
}

fn webhook_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error;
    let text = String::deserialize(d)?;
    match text.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
            Ok(text)
        }
        _ => Err(D::Error::custom(format!(
            "{text:?} is not an http:// or https:// URL"
        ))),
    }
}

/// `encryption:` — archives leave each host encrypted with age.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    /// age X25519 public keys (`age1…`): every archive's key is wrapped for each. All an agent sees.
    pub recipients: Vec<String>,
    /// An age identity file (private key) on the controller, for restore, verify, export and
    /// rotation. Never sent anywhere.
    pub identity: Option<PathBuf>,
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
    pub store: StoreLocation,
    pub encryption: Option<Encryption>,
    /// `postgres://…` of a shared catalog; None means ferry's private cluster in the state dir.
    pub catalog: Option<String>,
    pub forks: usize,
    pub timeout_seconds: u64,
    pub connect_timeout_seconds: u64,
    /// Inventory sources used when the command line names none.
    pub inventory: Vec<PathBuf>,
    pub serve: Option<Serve>,
    pub schedules: Vec<crate::schedule::Schedule>,
    pub alerts: Vec<Alert>,
    /// The file this came from and its text, to point at a line when a setting is wrong.
    pub source: Option<(PathBuf, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {}", at(.path, .source.location().map(|l| l.line())), strip_location(.source))]
    Parse {
        path: PathBuf,
        source: serde_norway::Error,
    },
    #[error("{path}: {key} must be at least 1")]
    Zero { path: PathBuf, key: &'static str },
    #[error("{}: {message}", at(.path, *.line))]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
}

/// `FILE:LINE`, or `FILE` when the line is not known.
fn at(path: &Path, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{}:{line}", path.display()),
        None => path.display().to_string(),
    }
}

/// The parser's message without its own "at line L column C" (the line is already in front).
fn strip_location(e: &serde_norway::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

impl Config {
    /// Loads `path`; a missing default config file means "all defaults".
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let mut text = None;
        let raw: RawConfig = match std::fs::read_to_string(path) {
            Ok(t) => {
                let raw = serde_norway::from_str(&t).map_err(|source| ConfigError::Parse {
                    path: path.to_path_buf(),
                    source,
                })?;
                text = Some(t);
                raw
            }
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
        let mut names = std::collections::BTreeSet::new();
        let mut schedules = Vec::with_capacity(raw.schedules.len());
        for schedule in &raw.schedules {
            let invalid = |key: &str, message: String| ConfigError::Invalid {
                path: path.to_path_buf(),
                line: text
                    .as_deref()
                    .and_then(|t| line_of(t, &schedule.name, key)),
                message,
            };
            if !names.insert(schedule.name.clone()) {
                return Err(invalid(
                    "name",
                    format!("two schedules are named {:?}", schedule.name),
                ));
            }
            schedules.push(
                crate::schedule::Schedule::from_raw(schedule.clone())
                    .map_err(|(key, message)| invalid(key, message))?,
            );
        }
        if let Some(alert) = raw.alerts.iter().find(|a| a.attempts == Some(0)) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: text.as_deref().and_then(|t| {
                    t.lines()
                        .position(|l| l.contains(&alert.webhook))
                        .map(|i| i + 1)
                }),
                message: format!("alerts: {}: attempts must be at least 1", alert.webhook),
            });
        }
        let base = path.parent().unwrap_or(Path::new("/"));
        let key_line = |key: &str| {
            text.as_deref().and_then(|t| {
                t.lines()
                    .position(|l| l.starts_with(&format!("{key}:")))
                    .map(|i| i + 1)
            })
        };
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: key_line(key),
            message: format!("{key}: {message}"),
        };
        if let Some(t) = raw.serve.as_ref().and_then(|s| s.archive_check.as_deref()) {
            crate::schedule::Span::parse(t).map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                // The key's own line under `serve:`.
                line: text.as_deref().and_then(|t| {
                    t.lines()
                        .position(|l| l.trim_start().starts_with("archive_check:"))
                        .map(|i| i + 1)
                }),
                message: format!("serve: archive_check: {e}"),
            })?;
        }
        let store = match &raw.store {
            Some(text) => Some(StoreLocation::parse(text, base).map_err(|e| invalid("store", e))?),
            None => None,
        };
        if raw.store_credentials.is_some() && !matches!(store, Some(StoreLocation::S3(_))) {
            return Err(invalid(
                "store_credentials",
                "credentials are for an s3:// store; `store:` is a directory".into(),
            ));
        }
        if let Some(encryption) = &raw.encryption {
            ferry_archive::Recipients::parse(&encryption.recipients)
                .map_err(|e| invalid("encryption", format!("recipients: {e}")))?;
        }
        let mut config = Self::from_raw(raw, base);
        config.schedules = schedules;
        config.source = text.map(|t| (path.to_path_buf(), t));
        Ok(config)
    }

    /// The configuration with the command line's `--catalog`, when given.
    pub fn with_catalog(mut self, catalog: Option<String>) -> Self {
        if catalog.is_some() {
            self.catalog = catalog;
        }
        self
    }

    /// `FILE:LINE` of a top-level `key` (`catalog`, `serve`), or `FILE` when it is not written.
    pub fn key_at(&self, key: &str) -> String {
        match &self.source {
            Some((path, text)) => at(
                path,
                text.lines()
                    .position(|l| l.starts_with(&format!("{key}:")))
                    .map(|i| i + 1),
            ),
            None => "(no configuration file)".into(),
        }
    }

    /// `FILE:LINE` of `key` in the schedule named `schedule` (or of the schedule itself), for
    /// messages about settings that are well-formed but wrong for this fleet.
    pub fn schedule_at(&self, schedule: &str, key: &str) -> String {
        match &self.source {
            Some((path, text)) => at(path, line_of(text, schedule, key)),
            None => "(no configuration file)".into(),
        }
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
            store: match raw.store.as_deref().map(|t| StoreLocation::parse(t, base)) {
                Some(Ok(StoreLocation::S3(mut s3))) => {
                    s3.credentials = raw.store_credentials;
                    StoreLocation::S3(s3)
                }
                Some(Ok(dir)) => dir,
                // Refused with its line by `load`; unreachable from a loaded file.
                Some(Err(_)) | None => StoreLocation::Dir(state_dir.join("store")),
            },
            encryption: raw.encryption.map(|e| Encryption {
                identity: e.identity.map(abs),
                ..e
            }),
            catalog: raw.catalog,
            forks: raw.forks.unwrap_or(5),
            timeout_seconds: raw.timeout_seconds.unwrap_or(300),
            connect_timeout_seconds: raw.connect_timeout_seconds.unwrap_or(5),
            inventory: match raw.inventory {
                None => Vec::new(),
                Some(OneOrMany::One(p)) => vec![abs(p)],
                Some(OneOrMany::Many(ps)) => ps.into_iter().map(abs).collect(),
            },
            serve: raw.serve,
            schedules: Vec::new(),
            alerts: raw.alerts,
            source: None,
            state_dir,
        }
    }

    /// Where the fleet CA lives.
    pub fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }
}

/// The line of `key:` within the `schedules:` entry named `name` (1-based), else of the entry.
fn line_of(text: &str, name: &str, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let field = |line: &str, key: &str| -> Option<String> {
        let rest = line.trim_start().trim_start_matches("- ").trim_start();
        let value = rest.strip_prefix(key)?.trim_start().strip_prefix(':')?;
        Some(
            value
                .trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_string(),
        )
    };
    let start = lines
        .iter()
        .position(|l| field(l, "name").as_deref() == Some(name))?;
    let indent = |l: &str| l.len() - l.trim_start().trim_start_matches("- ").len();
    let item_indent = indent(lines[start]);
    // The entry runs until the next line at its indent that starts a new item or leaves the list.
    let entry_start = (0..=start)
        .rev()
        .find(|&i| lines[i].trim_start().starts_with("- "))
        .unwrap_or(start);
    let mut i = entry_start;
    while i < lines.len() {
        let line = lines[i];
        if i > entry_start && !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            if line.trim_start().starts_with("- ") && indent(line) <= item_indent {
                break;
            }
            if indent(line) < item_indent {
                break;
            }
        }
        if field(line, key).is_some() {
            return Some(i + 1);
        }
        i += 1;
    }
    Some(start + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "store: /x\nschedules:\n  - name: nightly\n    hosts: all\n    cron: \"0 2 * * *\"\n  - name: hourly\n    cron: \"0 * * * *\"\n    hosts: lab\n";

    #[test]
    fn lines_of_schedule_keys() {
        assert_eq!(line_of(TEXT, "nightly", "hosts"), Some(4));
        assert_eq!(line_of(TEXT, "hourly", "hosts"), Some(8));
        assert_eq!(line_of(TEXT, "hourly", "rpo"), Some(6));
        assert_eq!(line_of(TEXT, "nope", "rpo"), None);
    }
}
