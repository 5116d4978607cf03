//! Domain types to wire types, in one place.

use std::path::Path;

use ferry_proto::v1 as pb;

use crate::operation::Running;
use crate::tasks::backup::Event;
use crate::tasks::facts::{DatabaseKind, DeploymentKind, Facts};
use crate::tasks::restore;

pub(super) fn running(r: Running) -> pb::RunningOperation {
    pb::RunningOperation {
        kind: r.kind,
        id: r.id,
        started_by: r.started_by,
        started_unix: r.started_unix,
    }
}

pub(super) fn facts(
    f: Facts,
    staging_dir: &Path,
    restore: Option<restore::Status>,
    reconnect: crate::tasks::reconnect::Standing,
    undone: String,
) -> pb::FactsReply {
    pb::FactsReply {
        undone,
        reconnect: Some(pb::Reconnect {
            awaiting_devices: reconnect.awaiting,
            kv_keys: reconnect.keyed,
            unknown: reconnect.unknown,
        }),
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
        restore: restore.as_ref().map(restore_status),
        identity: Some(pb::Identity {
            base_domain: f.identity.base_domain,
            encryption_key_ids: f.identity.encryption_key_ids,
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

/// A refusal's text with the commands that end it.
pub(super) fn with_next(cause: &str, next: &[String]) -> String {
    if next.is_empty() {
        return cause.to_string();
    }
    let commands: Vec<String> = next.iter().map(|n| format!("`{n}`")).collect();
    format!("{cause}; next: {}", commands.join(" or "))
}

pub(super) fn restore_status(s: &restore::Status) -> pb::RestoreStatus {
    pb::RestoreStatus {
        restore_id: s.restore_id.clone(),
        state: s.state as i32,
        last_done: s.last_done as i32,
        plan: s.plan.iter().map(|p| *p as i32).collect(),
        components: s.components.iter().map(|c| *c as i32).collect(),
        published: s.published,
        lapsed: s.lapsed.clone().unwrap_or_default(),
        running: s.running.unwrap_or(pb::Step::Unspecified) as i32,
        idle_seconds: s.idle.as_secs(),
        summary: s.summary.clone(),
        archive_sha256: s.archive_sha256.clone(),
    }
}

/// A failed stage or step as a status whose details carry the typed [`pb::StepFailure`].
pub(super) fn step_failure(f: &restore::StepFailure) -> tonic::Status {
    use prost::Message;
    let failure = pb::StepFailure {
        step: f.step as i32,
        cause: f.cause.clone(),
        status: f.status.as_deref().map(restore_status),
        next: f.next.clone(),
        refused: f.refused,
    };
    let code = if f.refused {
        tonic::Code::FailedPrecondition
    } else {
        tonic::Code::Aborted
    };
    tonic::Status::with_details(
        code,
        format!("{}: {}", f.step.name(), with_next(&f.cause, &f.next)),
        failure.encode_to_vec().into(),
    )
}

/// The first stage chunk as the task's request.
pub(super) fn stage_request(first: &pb::StageChunk) -> restore::StageRequest {
    restore::StageRequest {
        restore_id: first.restore_id.clone(),
        expected_sha256: first.expected_sha256.clone(),
        expected_size: first.expected_size,
        keep_old_db: first.keep_old_db,
        components: first
            .components
            .iter()
            .map(|c| pb::Component::try_from(*c).unwrap_or(pb::Component::Unspecified))
            .collect(),
        prepare_only: first.prepare_only,
        database_override: database_override(first.database.as_ref()),
        lease_seconds: first.lease_seconds,
    }
}

/// A task failure as a status, with its phase in the metadata.
/// The host is busy with another operation: refused in phase `busy`, so a scheduler can tell it
/// from a failure and try again later.
pub(super) fn busy_status(cause: &str, next: &[String]) -> tonic::Status {
    let mut status = tonic::Status::failed_precondition(with_next(cause, next));
    if let Ok(value) = "busy".parse() {
        status
            .metadata_mut()
            .insert(ferry_proto::PHASE_METADATA_KEY, value);
    }
    status
}

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
        Event::Started(name) => E::ArchiveName(name),
        Event::Data(bytes) => E::Data(bytes),
        Event::Done(t) => E::Trailer(pb::BackupTrailer {
            archive_name: t.archive_name,
            size: t.size,
            sha256: t.sha256,
            metadata_json: t.metadata_json,
            manifest_json: t.manifest_json,
            warnings: t.warnings,
            sealed: t.sealed.map(|s| pb::Sealed {
                plain_size: s.plain_size,
                plain_sha256: s.plain_sha256,
                wrapped_key: s.wrapped_key.into(),
                recipients: s.recipients,
            }),
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

pub fn drill_request(first: &pb::DrillChunk) -> crate::tasks::drill::DrillRequest {
    crate::tasks::drill::DrillRequest {
        drill_id: first.drill_id.clone(),
        expected_sha256: first.expected_sha256.clone(),
        expected_size: first.expected_size,
        database_included: first.database_included,
    }
}

pub fn drill_reply(report: crate::tasks::drill::Report) -> pb::DrillReply {
    pb::DrillReply {
        passed: report.failures.is_empty(),
        failures: report.failures,
        tables: report
            .tables
            .into_iter()
            .map(|t| pb::TableCount {
                table: t.table,
                expected: t.expected,
                restored: t.restored.map_or(-1, |n| n as i64),
            })
            .collect(),
        files_checked: report.files_checked as u32,
        phases: report
            .phases
            .into_iter()
            .map(|p| pb::DrillPhase {
                name: p.name.into(),
                seconds: p.seconds,
                ok: p.ok,
                summary: p.summary,
            })
            .collect(),
        devices_prepared: report.devices_prepared,
        scratch_database: report.scratch_database,
        notes: report.notes,
        environment: report.environment,
    }
}
