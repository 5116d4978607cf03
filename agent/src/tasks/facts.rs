//! Facts: what this host is, read the way upstream's tools read it.

use std::path::Path;

use crate::host::Host;
use crate::host::systemd::UnitState;

/// How the deployment was detected (docs/upstream-contract.md §5.4: upstream's Detector, plus an
/// installed quadlet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentKind {
    Podman,
    Kubernetes,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    Builtin,
    External,
    Unknown,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OsRelease {
    pub id: String,
    pub version_id: String,
    pub pretty_name: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Database {
    pub kind: DatabaseKind,
    pub name: String,
    /// `db.external.*` of service-config.yaml (external databases only).
    pub external_host: String,
    pub external_port: u16,
    pub external_name: String,
    pub sslmode: String,
    pub client_cert_auth: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Facts {
    pub host_name: String,
    pub os: OsRelease,
    /// The server version, or None with the reason in `version_detail`.
    pub version: Option<String>,
    pub version_source: String,
    pub version_detail: String,
    pub deployment: DeploymentKind,
    pub deployment_reason: String,
    /// Units the host has (not-found units are left out).
    pub units: Vec<UnitState>,
    pub database: Database,
    /// (container, state) where state is podman's State.Status or "missing".
    pub containers: Vec<(String, String)>,
    pub staging_free: u64,
    pub staging_total: u64,
    pub identity: Identity,
}

/// What makes this control plane this one: its base domain and its certificates.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Identity {
    pub base_domain: String,
    /// Encryption key ids the host's service-config.yaml declares (v1.3+).
    pub encryption_key_ids: Vec<String>,
    pub certificates: Vec<Certificate>,
}

/// One certificate under /etc/flightctl/pki.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Certificate {
    /// Relative to /etc/flightctl/pki.
    pub path: String,
    pub subject: String,
    pub issuer: String,
    pub not_after: String,
    pub sans: Vec<String>,
}

/// Where facts are read from.
pub struct FactsSources<'a> {
    pub host: &'a Host,
    pub host_name: &'a str,
    pub api: &'a crate::tasks::api::Api,
    pub staging_dir: &'a Path,
}

/// Gathers every fact. A fact that cannot be read is reported as unknown with its reason, never fatal:
/// facts are what an operator looks at when something is wrong.
pub async fn gather(src: &FactsSources<'_>) -> Facts {
    let host = src.host;
    let units = match host.systemd().states(&super::units::all_known()).await {
        Ok(states) => states.into_iter().filter(UnitState::is_present).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "reading unit states");
            Vec::new()
        }
    };
    let (deployment, deployment_reason) = detect_deployment(host).await;
    let (version, version_source, version_detail) = read_version(host, src.api).await;
    let mut containers = Vec::new();
    for name in ["flightctl-db", "flightctl-kv"] {
        let state = match host.podman().container_state(name).await {
            Ok(Some(state)) => state,
            Ok(None) => "missing".to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        containers.push((name.to_string(), state));
    }
    let (staging_free, staging_total) = disk_space(src.staging_dir);
    Facts {
        host_name: src.host_name.to_string(),
        os: read_os_release(&host.path("/etc/os-release")),
        version,
        version_source,
        version_detail,
        deployment,
        deployment_reason,
        units,
        database: database(host),
        containers,
        staging_free,
        staging_total,
        identity: identity(host),
    }
}

fn identity(host: &Host) -> Identity {
    let config = std::fs::read_to_string(host.path("/etc/flightctl/service-config.yaml"))
        .unwrap_or_default();
    let pki = host.path("/etc/flightctl/pki");
    let mut certificates = Vec::new();
    let mut dirs = vec![pki.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "crt") {
                let relative = path.strip_prefix(&pki).unwrap_or(&path);
                let pem = std::fs::read(&path).unwrap_or_default();
                if let Some(info) = ferry_certs::certificates_in_pem(&pem).into_iter().next() {
                    certificates.push(Certificate {
                        path: relative.display().to_string(),
                        subject: info.subject,
                        issuer: info.issuer,
                        not_after: info.not_after,
                        sans: info.sans,
                    });
                }
            }
        }
    }
    certificates.sort();
    Identity {
        base_domain: ferry_archive::base_domain(&config),
        encryption_key_ids: ferry_archive::encryption_key_ids(&config),
        certificates,
    }
}

/// The server's version from its API; if the API does not answer, from the tag of the API quadlet's
/// image (set by the RPM build). Returns (version, source, why the API did not answer).
async fn read_version(host: &Host, api: &super::api::Api) -> (Option<String>, String, String) {
    let ca = host.path("/etc/flightctl/pki/ca.crt");
    let api_source = format!("api {}/api/version", api.url.trim_end_matches('/'));
    let api_error = match super::api::read_version(api, &ca).await {
        Ok(v) => return (Some(v), api_source, String::new()),
        Err(e) => e.to_string(),
    };
    let quadlet = "/usr/share/containers/systemd/flightctl-api.container";
    let tag = std::fs::read_to_string(host.path(quadlet))
        .ok()
        .and_then(|text| image_tag_version(&text));
    match tag {
        Some(v) => (Some(v), format!("image tag in {quadlet}"), api_error),
        None => (None, api_source, api_error),
    }
}

/// `Image=quay.io/flightctl/flightctl-api:v1.2.0` → `v1.2.0`, if the tag looks like a version.
fn image_tag_version(quadlet: &str) -> Option<String> {
    let image = quadlet
        .lines()
        .find_map(|l| l.trim().strip_prefix("Image="))?;
    let (_, tag) = image.rsplit_once(':')?;
    let digits = tag.strip_prefix('v').unwrap_or(tag);
    let mut parts = digits.split('.');
    let numeric =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (numeric(parts.next()) && numeric(parts.next())).then(|| tag.to_string())
}

async fn detect_deployment(host: &Host) -> (DeploymentKind, String) {
    let podman = host
        .systemd()
        .is_active("flightctl-api.service")
        .await
        .unwrap_or(false);
    let kubeconfig = std::env::var_os("KUBECONFIG")
        .map(|p| Path::new(&p).is_file())
        .unwrap_or(false)
        || host.path("/root/.kube/config").is_file();
    match (podman, kubeconfig) {
        (true, true) => (
            DeploymentKind::Unknown,
            "both flightctl-api.service is active and a kubeconfig exists".into(),
        ),
        (true, false) => (
            DeploymentKind::Podman,
            "systemctl is-active flightctl-api.service".into(),
        ),
        (false, true) => (DeploymentKind::Kubernetes, "kubeconfig present".into()),
        (false, false) => {
            // Upstream gives up here; an installed quadlet still says "podman" while the API is down.
            if host
                .path("/usr/share/containers/systemd/flightctl-api.container")
                .is_file()
            {
                (
                    DeploymentKind::Podman,
                    "flightctl-api quadlet installed (flightctl-api.service not active)".into(),
                )
            } else {
                (
                    DeploymentKind::Unknown,
                    "flightctl-api.service is not active and no kubeconfig was found".into(),
                )
            }
        }
    }
}

/// Reads `db.type`, `db.name` and `db.external.*` from service-config.yaml, as upstream's backup does.
/// The database settings of the host's service-config.yaml, read as upstream's tools read them.
pub fn database(host: &Host) -> Database {
    read_database(&host.path("/etc/flightctl/service-config.yaml"))
}

/// The database settings of a service-config.yaml elsewhere (an archive's, before it is restored).
pub fn database_at(path: &Path) -> Database {
    read_database(path)
}

fn read_database(path: &Path) -> Database {
    let unknown = Database {
        kind: DatabaseKind::Unknown,
        name: "flightctl".into(),
        external_host: String::new(),
        external_port: 0,
        external_name: String::new(),
        sslmode: String::new(),
        client_cert_auth: false,
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return unknown;
    };
    let Ok(doc) = serde_norway::from_str::<serde_norway::Value>(&text) else {
        return unknown;
    };
    let db = &doc["db"];
    let kind = match db["type"].as_str().map(|t| t.trim().to_lowercase()) {
        Some(t) if t == "external" => DatabaseKind::External,
        _ => DatabaseKind::Builtin,
    };
    let name = db["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or("flightctl")
        .to_string();
    let external = &db["external"];
    let text = |v: &serde_norway::Value| v.as_str().unwrap_or_default().trim().to_string();
    Database {
        kind,
        external_host: text(&external["hostname"]),
        external_port: external["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_default(),
        external_name: match text(&external["name"]) {
            n if n.is_empty() => name.clone(),
            n => n,
        },
        sslmode: text(&external["sslmode"]).to_lowercase(),
        client_cert_auth: external["useClientCertAuth"].as_bool().unwrap_or(false),
        name,
    }
}

fn read_os_release(path: &Path) -> OsRelease {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut os = OsRelease::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_string();
        match key.trim() {
            "ID" => os.id = value,
            "VERSION_ID" => os.version_id = value,
            "PRETTY_NAME" => os.pretty_name = value,
            _ => {}
        }
    }
    os
}

/// (free, total) bytes of the filesystem holding `dir`; zeros if it cannot be read.
pub fn disk_space(dir: &Path) -> (u64, u64) {
    match rustix::fs::statvfs(dir) {
        Ok(st) => (
            st.f_bavail.saturating_mul(st.f_frsize),
            st.f_blocks.saturating_mul(st.f_frsize),
        ),
        Err(_) => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_database_is_read_from_service_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("service-config.yaml");
        std::fs::write(
            &path,
            "global:\n  baseDomain: x\ndb:\n  type: External\n  name: fc\n  external:\n    hostname: db.example.com\n    port: 5433\n",
        )
        .unwrap();
        let db = read_database(&path);
        assert_eq!(db.kind, DatabaseKind::External);
        assert_eq!(db.name, "fc");
        assert_eq!(db.external_host, "db.example.com");
        assert_eq!(db.external_port, 5433);
    }

    #[test]
    fn builtin_database_is_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("service-config.yaml");
        std::fs::write(&path, "global:\n  baseDomain: x\n").unwrap();
        let db = read_database(&path);
        assert_eq!(db.kind, DatabaseKind::Builtin);
        assert_eq!(db.name, "flightctl");
        assert_eq!(
            read_database(&dir.path().join("missing")).kind,
            DatabaseKind::Unknown
        );
    }

    #[test]
    fn version_from_the_api_image_tag() {
        let q = "[Container]\nContainerName=flightctl-api\nImage=quay.io/flightctl/flightctl-api:v1.2.0\n";
        assert_eq!(image_tag_version(q).as_deref(), Some("v1.2.0"));
        assert_eq!(
            image_tag_version("Image=quay.io/flightctl/flightctl-api:latest\n"),
            None
        );
        assert_eq!(image_tag_version("Image=localhost:5000/api\n"), None);
    }

    #[test]
    fn os_release_fields_are_unquoted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("os-release");
        std::fs::write(&path, "NAME=\"Red Hat Enterprise Linux\"\nID=\"rhel\"\nVERSION_ID=\"9.4\"\nPRETTY_NAME=\"Red Hat Enterprise Linux 9.4 (Plow)\"\n").unwrap();
        let os = read_os_release(&path);
        assert_eq!(os.id, "rhel");
        assert_eq!(os.version_id, "9.4");
        assert_eq!(os.pretty_name, "Red Hat Enterprise Linux 9.4 (Plow)");
    }
}
