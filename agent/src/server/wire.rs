//! Domain types to wire types, in one place.

use std::path::Path;

use ferry_proto::v1 as pb;

use crate::operation::Running;
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
    }
}
