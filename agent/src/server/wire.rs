//! Domain types to wire types, in one place.

use std::path::Path;

use ferry_proto::v1 as pb;

use crate::operation::Running;
use crate::tasks::backup::Event;
use crate::tasks::facts::{DatabaseKind, DeploymentKind, Facts};

pub(super) fn running(r: Running) -> pb::RunningOperation {
    pb::RunningOperation {
        kind: r.kind,
        id: r.id,
        started_by: r.started_by,
        started_unix: r.started_unix,
    }
}

pub(super) fn facts(f: Facts, staging_dir: &Path) -> pb::FactsReply {
    pb::FactsReply {
        host_name: f.host_name,
        os: Some(pb::OsRelease {
            id: f.os.id,
            version_id: f.os.version_id,
            pretty_name: f.os.pretty_name,
        }),
        flightctl: Some(pb::FlightctlVersion {
            version: f.version.unwrap_or_default(),
            source: f.version_source,
            detail: f.version_detail,
        }),
        deployment: Some(pb::Deployment {
            r#type: match f.deployment {
                DeploymentKind::Podman => pb::DeploymentType::Podman,
                DeploymentKind::Kubernetes => pb::DeploymentType::Kubernetes,
                DeploymentKind::Unknown => pb::DeploymentType::Unknown,
            } as i32,
            reason: f.deployment_reason,
        }),
        units: f
            .units
            .into_iter()
            .map(|u| pb::Unit {
                name: u.name,
                load_state: u.load_state,
                active_state: u.active_state,
            })
            .collect(),
        database: Some(pb::Database {
            kind: match f.database.kind {
                DatabaseKind::Builtin => pb::DatabaseKind::Builtin,
                DatabaseKind::External => pb::DatabaseKind::External,
                DatabaseKind::Unknown => pb::DatabaseKind::Unknown,
            } as i32,
            name: f.database.name,
            external_host: f.database.external_host,
            external_port: f.database.external_port.into(),
            external_name: f.database.external_name,
            sslmode: f.database.sslmode,
        }),
        containers: f
            .containers
            .into_iter()
            .map(|(name, state)| pb::Container { name, state })
            .collect(),
        staging: Some(pb::Disk {
            path: staging_dir.display().to_string(),
            free_bytes: f.staging_free,
            total_bytes: f.staging_total,
        }),
        agent_version: crate::VERSION.into(),
        restore: crate::tasks::restore::status(staging_dir).unwrap_or_default(),
        identity: Some(pb::Identity {
            base_domain: f.identity.base_domain,
            certificates: f
                .identity
                .certificates
                .into_iter()
                .map(|c| pb::Certificate {
                    path: c.path,
                    subject: c.subject,
                    issuer: c.issuer,
                    not_after: c.not_after,
                    sans: c.sans,
                })
                .collect(),
        }),
    }
}

/// Why a host refuses a second operation: names the running one.
pub(super) fn busy(host: &str, r: &Running) -> String {
    let started = time::OffsetDateTime::from_unix_timestamp(r.started_unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| r.started_unix.to_string());
    format!(
        "{host} is busy: {} operation {} started by {} at {started}; wait for it to finish",
        r.kind, r.id, r.started_by
    )
}

/// A task failure as a status, with its phase in the metadata.
pub(super) fn phase_status(phase: &str, cause: &str) -> tonic::Status {
    let mut status = tonic::Status::aborted(format!("{phase}: {cause}"));
    if let Ok(value) = phase.parse() {
        status
            .metadata_mut()
            .insert(ferry_proto::PHASE_METADATA_KEY, value);
    }
    status
}

pub(super) fn backup_event(e: Event) -> pb::BackupEvent {
    use pb::backup_event::Event as E;
    let event = match e {
        Event::Progress { phase, bytes } => E::Progress(pb::Progress {
            phase: phase.into(),
            bytes,
        }),
        Event::Data(bytes) => E::Data(bytes),
        Event::Done(t) => E::Trailer(pb::BackupTrailer {
            archive_name: t.archive_name,
            size: t.size,
            sha256: t.sha256,
            metadata_json: t.metadata_json,
            manifest_json: t.manifest_json,
            warnings: t.warnings,
        }),
    };
    pb::BackupEvent { event: Some(event) }
}

/// The operator's overrides of the external database's address, from the wire.
pub fn database_override(over: Option<&pb::DatabaseOverride>) -> crate::tasks::database::Override {
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    match over {
        None => Default::default(),
        Some(o) => crate::tasks::database::Override {
            host: text(&o.host),
            port: u16::try_from(o.port).ok().filter(|p| *p != 0),
            name: text(&o.name),
        },
    }
}
