//! Ending a restore that will not finish: `rollback` returns the host to exactly its pre-restore
//! state; a lapsed lease makes the host safe without the controller.

use std::path::Path;

use ferry_proto::v1::Step;

use super::journal::Journal;
use super::{RestoreContext, StepOutcome, database, files, kv};
use crate::tasks::{ports, reconnect};

/// Returns the host to its pre-restore state: nothing published, the previous database and files
/// back in place, the application units that were running started again. Then forgets the restore.
pub async fn rollback(
    ctx: &RestoreContext,
    dir: &Path,
    j: &Journal,
) -> Result<StepOutcome, String> {
    let host = &ctx.host;
    if j.committing {
        return Err(format!(
            "the restore was committing (its pre-restore copies are being dropped): it can only be finished; run `ferry restore {} --resume`",
            ctx.host_name
        ));
    }
    if j.is_done(Step::Stop) || !j.stopped_units.is_empty() {
        // Units that `start` brought up run on the restored data: stopped before it is undone.
        super::units::stop_application_units(host).await?;
    }
    if j.published() || (j.is_done(Step::Publish) && !j.is_done(Step::Unpublish)) {
        ports::unpublish(host, &j.dropins).await?;
    }
    let keys = dir.join("kv-keys.txt");
    // The restore's keys go with the restored database; a database that stays (prepared in place,
    // or external) keeps its devices awaiting reconnect, and their keys are set again below.
    let unseeded = if j.restores_database && j.began(Step::SeedKv) && keys.is_file() {
        let password = kv::password(host).await?;
        kv::unseed(host, &password, &keys).await?
    } else {
        0
    };
    if j.restores_database && !j.temp_db.is_empty() {
        database::restore_previous(host, &j.db_name, &j.temp_db, &j.old_db).await?;
    }
    files::restore_old(j)?;
    let pam = dir.join("pam-issuer-etc.old.tar");
    if pam.is_file() {
        // Its only pre-restore copy is in the restore's directory: kept, with the units stopped,
        // until a rollback puts it back.
        host.podman()
            .volume_import("flightctl-pam-issuer-etc", &pam)
            .await
            .map_err(|e| {
                format!(
                    "the PAM issuer volume could not be put back: {e}; its pre-restore copy {} is kept and the application units stay stopped: fix the cause, then run `ferry rollback {}` again",
                    pam.display(),
                    ctx.host_name
                )
            })?;
    }
    let names: Vec<&str> = j.stopped_units.iter().map(String::as_str).collect();
    host.systemd()
        .control("start", &names)
        .await
        .map_err(|e| e.to_string())?;
    let reseeded = if j.began(Step::SeedKv) || j.began(Step::PrepareDevices) {
        reconnect::reseed(host, &j.database_override).await?
    } else {
        0
    };
    std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let database = if j.restores_database {
        "previous database and files in place"
    } else {
        "previous files in place"
    };
    let prepared = if !j.restores_database && j.began(Step::PrepareDevices) {
        format!(
            "; device preparation in the live database is not undone{}: its {reseeded} devices awaiting reconnect have their KV keys and clear as they check in",
            if j.external_database {
                " (the external database belongs to its DBA)"
            } else {
                ""
            }
        )
    } else if reseeded > 0 {
        format!("; {reseeded} awaiting-reconnect keys of the previous database's devices set again")
    } else {
        String::new()
    };
    let unseeded = if unseeded > 0 {
        format!(", {unseeded} awaiting-reconnect keys the restore seeded removed")
    } else {
        String::new()
    };
    Ok(StepOutcome {
        summary: format!(
            "rolled back from after {}: {database}, {} application units started{unseeded}{prepared}",
            j.last_done().name(),
            names.len()
        ),
        ..Default::default()
    })
}

/// The controller's lease lapsed. Before the live data was swapped the restore is undone and the
/// host freed; after it, nothing stays published, the data services are restarted, and the
/// application units stay stopped (the documented state after a failed restore) until `--resume`
/// or `ferry rollback`. Returns what was done.
pub async fn lapse(ctx: &RestoreContext, dir: &Path) -> Result<String, String> {
    let mut j = Journal::load(dir).map_err(|e| e.to_string())?;
    if j.committing {
        let note = format!(
            "the controller's lease lapsed while the restore was committing: the restored control plane runs; `ferry restore {} --resume` finishes the commit",
            ctx.host_name
        );
        j.lapsed = Some(note.clone());
        j.save(dir).map_err(|e| e.to_string())?;
        return Ok(note);
    }
    if !j.live_changed() {
        rollback(ctx, dir, &j).await?;
        return Ok(
            "lease lapsed before the live data changed: temporary database dropped, staging cleared, application units running, host free"
                .into(),
        );
    }
    // Restarting the data services is only needed to take a published port away; otherwise it would
    // only lose the KV's awaiting-reconnect keys.
    if j.published() || (j.is_done(Step::Publish) && !j.is_done(Step::Unpublish)) {
        ports::unpublish(&ctx.host, &j.dropins).await?;
    }
    // Record what the lapse did, so --resume republishes if devices were not prepared yet.
    if j.is_done(Step::Publish) && !j.is_done(Step::Unpublish) {
        if j.is_done(Step::PrepareDevices) {
            j.mark_done(Step::Unpublish);
        } else {
            j.unmark(Step::Publish);
        }
    }
    j.dropins.clear();
    let when = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let units = if j.is_done(Step::Start) {
        "application units running on the restored data"
    } else if !j.swapped() && !j.is_done(Step::SeedKv) {
        "application units kept stopped: devices were marked awaiting reconnect in the live database and their KV keys are not all seeded"
    } else if !j.swapped() {
        "application units kept stopped: devices prepared and their KV keys seeded; `--resume` starts them"
    } else {
        "application units kept stopped with the restored data in place"
    };
    let services = if j.external_database {
        "flightctl-kv running (the database is external)"
    } else {
        "flightctl-db and flightctl-kv running"
    };
    let note = format!(
        "the controller's lease lapsed at {when}: nothing published, {services}; {units}; next: `ferry restore {host} --resume` or `ferry rollback {host}`",
        host = ctx.host_name
    );
    j.lapsed = Some(note.clone());
    j.save(dir).map_err(|e| e.to_string())?;
    Ok(note)
}
