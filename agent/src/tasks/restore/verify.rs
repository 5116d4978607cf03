//! `verify`: what `stage`'s pass over the archive found (digest, every entry, manifest, metadata)
//! against the shared compatibility rules and this host; fixes the restore's plan. Nothing was
//! extracted anywhere but the restore's own directory.

use std::collections::BTreeMap;
use std::path::Path;

use ferry_archive::EntryKind;
use ferry_proto::restore::{ArchiveSide, DatabaseAccess, HostSide, incompatibilities, plan};
use ferry_proto::v1::{Component, Step};
use serde_json::json;

use super::journal::Journal;
use super::{RestoreContext, StepOutcome};
use crate::tasks::database::Endpoint;
use crate::tasks::facts::{DatabaseKind, DeploymentKind};

pub async fn run(ctx: &RestoreContext, dir: &Path, j: &mut Journal) -> Result<StepOutcome, String> {
    let facts = ctx.facts().await;
    let extract = dir.join("extract");
    // `stage` read the archive once (digest, every entry, manifest cross-check): its findings.
    let verified = super::staging::Staged::load(dir)?;
    let refuse = |why: String| Err(format!("archive refused: {why}"));
    let metadata = match verified.required() {
        Ok(m) => m.clone(),
        Err(why) => return refuse(why),
    };
    let dump = verified.has("db/dump.sql", EntryKind::File);
    if metadata.database_included != dump {
        return refuse(format!(
            "metadata says databaseIncluded={} but db/dump.sql is {}",
            metadata.database_included,
            if dump { "present" } else { "absent" }
        ));
    }
    let access = if facts.database.kind == DatabaseKind::External {
        DatabaseAccess::External
    } else {
        DatabaseAccess::Builtin
    };
    let problems = incompatibilities(
        ArchiveSide {
            version: &metadata.version,
            deployment_type: &metadata.deployment_type,
            database_included: dump,
        },
        HostSide {
            version: facts.version.as_deref(),
            podman: facts.deployment == DeploymentKind::Podman,
            database: access,
        },
        &j.components(),
    );
    if !problems.is_empty() {
        return refuse(problems.join("; "));
    }
    if j.partial {
        // A component the operator named must be there to restore, or the restore is downtime for
        // nothing.
        let missing: Vec<&str> =
            ferry_archive::absent_components(&j.components(), &verified.entries)
                .into_iter()
                .map(|c| c.name())
                .collect();
        if !missing.is_empty() {
            return refuse(format!(
                "it has no {}: --only names nothing to restore there",
                missing.join(", ")
            ));
        }
    }
    if let Some(manifest) = &verified.manifest {
        let archive_keys = std::fs::read_to_string(extract.join("config/service-config.yaml"))
            .map(|c| ferry_archive::encryption_key_ids(&c))
            .unwrap_or_default();
        let missing = ferry_proto::restore::missing_keys(
            &manifest.encryption_key_ids,
            &archive_keys,
            &facts.identity.encryption_key_ids,
            &j.components(),
        );
        if !missing.is_empty() {
            return refuse(ferry_proto::restore::missing_keys_problem(
                &missing,
                &archive_keys,
                &facts.identity.encryption_key_ids,
                &j.components(),
            ));
        }
    }
    let plan = plan(&j.components(), false, access);
    if access == DatabaseAccess::External && plan.contains(&Step::PrepareDevices) {
        // What device preparation will reach is checked now, before any change: the database the
        // restored config names when the config is restored, else the host's.
        let settings = if j.wants(Component::Config) {
            crate::tasks::facts::database_at(&extract.join("config/service-config.yaml"))
        } else {
            facts.database.clone()
        };
        Endpoint::external(&ctx.host, &settings, &j.database_override)
            .map_err(|e| format!("external database: {e}"))?
            .connect(&ctx.host)
            .await
            .map_err(|e| format!("external database: {e}"))?;
    }
    let modes: BTreeMap<String, u32> = verified
        .manifest
        .as_ref()
        .map(|m| m.entries.iter().map(|e| (e.path.clone(), e.mode)).collect())
        .unwrap_or_default();
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&modes).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    j.captured = verified
        .manifest
        .as_ref()
        .map(|m| m.captured())
        .unwrap_or_default();
    j.version = metadata.version.clone();
    j.restores_database = plan.contains(&Step::SwapDb);
    j.external_database = access == DatabaseAccess::External;
    j.set_plan(&plan);
    j.db_name = facts.database.name.clone();
    (j.temp_db, j.old_db) = super::staging::temporary_names(&j.restore_id, &j.db_name);
    Ok(StepOutcome {
        summary: format!(
            "{} entries safe, sha256 {}…, Flight Control {}, podman, database {}",
            verified.entries.len(),
            &verified.sha256[..12],
            metadata.version,
            if dump { "included" } else { "external" }
        ),
        details: json!({"entries": verified.entries.len(), "version": metadata.version}),
        skipped: false,
    })
}

/// The modes the manifest recorded, written by `verify` for `swap-files`.
pub fn manifest_modes(dir: &Path) -> Result<BTreeMap<String, u32>, String> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}
