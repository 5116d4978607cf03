//! Restore: a play of small, idempotent steps driven by the controller, each recorded in a journal in
//! the staging directory. Nothing on the host changes before `verify` has checked the archive's
//! digest, every entry, its metadata, the Flight Control version and the deployment type.

mod database;
mod devices;
mod files;
pub mod journal;
mod kv;
mod ports;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_proto::archive::{EntryKind, ReadOptions, read_archive};
use serde_json::json;

use crate::host::Host;
use crate::tasks::database::Endpoint;
use crate::tasks::facts::{DatabaseKind, DeploymentKind, Facts};
use crate::tasks::units::APPLICATION_SERVICES;
use journal::Journal;

pub use ferry_proto::restore::{COMPONENTS, DatabaseAccess, STEPS, chosen, plan};

/// The directory of one restore in the staging area.
pub fn dir(staging: &Path, restore_id: &str) -> PathBuf {
    staging.join(format!("restore-{restore_id}"))
}

/// An unfinished restore in `staging` and the host's state, for facts.
pub fn status(staging: &Path) -> Option<String> {
    std::fs::read_dir(staging).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let id = name.strip_prefix("restore-")?.to_string();
        let journal = Journal::load(&e.path()).ok()?;
        Some(format!("restore {id} unfinished: {}", journal.state()))
    })
}

/// What a step reports.
#[derive(Debug, Default)]
pub struct StepOutcome {
    pub summary: String,
    pub details: serde_json::Value,
    /// Not part of this restore's plan: nothing was done.
    pub skipped: bool,
}

/// A failed step: the cause and the host's state afterwards.
#[derive(Debug, thiserror::Error)]
#[error("{cause} (host state: {state})")]
pub struct StepError {
    pub cause: String,
    pub state: String,
}

/// What the steps work with.
pub struct RestoreContext<'a> {
    pub host: &'a Host,
    pub staging_dir: &'a Path,
    pub local_address: &'a str,
    pub api: &'a crate::tasks::api::Api,
}

impl RestoreContext<'_> {
    /// Runs `step` of restore `id` unless the journal says it is done.
    pub async fn run(
        &self,
        id: &str,
        step: &str,
        facts: impl AsyncFnOnce() -> Facts,
    ) -> Result<StepOutcome, StepError> {
        let dir = dir(self.staging_dir, id);
        let mut journal = Journal::load(&dir).map_err(|e| StepError {
            cause: format!("no staged restore {id}: {e}; stage the archive first"),
            state: "nothing changed".into(),
        })?;
        if step == "rollback" {
            let result = self.rollback(&dir, &journal).await;
            return match result {
                Ok(outcome) => Ok(outcome),
                Err(cause) => Err(StepError {
                    cause,
                    state: journal.state(),
                }),
            };
        }
        if !STEPS.contains(&step) {
            return Err(StepError {
                cause: format!("unknown step {step:?}"),
                state: journal.state(),
            });
        }
        if !journal.plan.iter().any(|s| s == step) {
            return Ok(StepOutcome {
                summary: "skipped: not part of this restore".into(),
                details: json!({}),
                skipped: true,
            });
        }
        if let Some(missing) = journal
            .plan
            .iter()
            .take_while(|s| *s != step)
            .find(|s| !journal.is_done(s))
        {
            return Err(StepError {
                cause: format!("step {step} needs {missing} first"),
                state: journal.state(),
            });
        }
        if journal.is_done(step) {
            return Ok(StepOutcome {
                skipped: false,
                summary: "already done".into(),
                details: json!({}),
            });
        }
        let result = self.step(&dir, &mut journal, step, facts).await;
        match result {
            Ok(outcome) => {
                if step != "commit" {
                    journal.done.push(step.to_string());
                    journal.save(&dir).map_err(|e| StepError {
                        cause: e.to_string(),
                        state: journal.state(),
                    })?;
                }
                Ok(outcome)
            }
            Err(cause) => {
                let _ = journal.save(&dir);
                Err(StepError {
                    cause,
                    state: journal.state(),
                })
            }
        }
    }

    async fn step(
        &self,
        dir: &Path,
        j: &mut Journal,
        step: &str,
        facts: impl AsyncFnOnce() -> Facts,
    ) -> Result<StepOutcome, String> {
        let host = self.host;
        let extract = dir.join("extract");
        match step {
            "verify" => self.verify(dir, j, facts().await).await,
            "load" => {
                let started = Instant::now();
                database::load(host, &j.temp_db, &extract.join("db/dump.sql")).await?;
                Ok(summary(&format!(
                    "dump loaded into {} in {:.1}s while the control plane kept running",
                    j.temp_db,
                    started.elapsed().as_secs_f64()
                )))
            }
            "stop" => {
                let states = host
                    .systemd()
                    .states(APPLICATION_SERVICES)
                    .await
                    .map_err(|e| e.to_string())?;
                let present: Vec<String> = states
                    .iter()
                    .filter(|s| s.is_present())
                    .map(|s| s.name.clone())
                    .collect();
                if j.stopped_units.is_empty() {
                    j.stopped_units = states
                        .iter()
                        .filter(|s| s.active_state == "active")
                        .map(|s| s.name.clone())
                        .collect();
                    j.save(dir).map_err(|e| e.to_string())?;
                }
                let names: Vec<&str> = present.iter().map(String::as_str).collect();
                control_units(host, "stop", &names).await?;
                Ok(summary(&format!(
                    "stopped {} application units (flightctl-db and flightctl-kv keep running)",
                    names.len()
                )))
            }
            "swap-db" => {
                database::swap(host, &j.db_name, &j.temp_db, &j.old_db).await?;
                Ok(summary(&format!(
                    "{} is the restored database; the previous one is kept as {}",
                    j.db_name, j.old_db
                )))
            }
            "swap-files" => {
                let modes = manifest_modes(&dir.join("manifest.json"))?;
                let mut swapped = files::swap(j, dir, &extract, |p| host.path(p), &modes)?;
                let mut warnings = Vec::new();
                let pam = extract.join("volumes/pam-issuer-etc.tar");
                if j.components.iter().any(|c| c == "volumes") && pam.is_file() {
                    // Kept from the first attempt: a resumed step must not save the restored
                    // volume as the pre-restore one.
                    let old = dir.join("pam-issuer-etc.old.tar");
                    if !old.is_file() {
                        let _ = host
                            .podman()
                            .volume_export("flightctl-pam-issuer-etc", &old)
                            .await;
                    }
                    if let Err(e) = host
                        .podman()
                        .volume_import("flightctl-pam-issuer-etc", &pam)
                        .await
                    {
                        warnings.push(format!(
                            "PAM issuer volume not restored (as upstream, not fatal): {e}"
                        ));
                    } else {
                        swapped.push("volumes");
                    }
                }
                Ok(StepOutcome {
                    skipped: false,
                    summary: format!(
                        "{} swapped ({} paths{}); pre-restore copies kept until commit",
                        swapped.join(", "),
                        j.swapped.len(),
                        if swapped.contains(&"volumes") {
                            " and the PAM issuer volume"
                        } else {
                            ""
                        }
                    ),
                    details: json!({"warnings": warnings, "components": swapped}),
                })
            }
            "publish" => {
                let dropin = ports::publish(host, self.local_address).await?;
                if !j.dropins.contains(&dropin) {
                    j.dropins.push(dropin);
                }
                Ok(summary(&format!(
                    "flightctl-db published on {}:5432 only",
                    self.local_address
                )))
            }
            "prepare-devices" => {
                let endpoint = self.endpoint(j)?;
                let mut client = endpoint.connect(host).await?;
                let prepared = devices::prepare(&mut client, &dir.join("kv-keys.txt")).await?;
                j.kv_keys = prepared.keys;
                Ok(StepOutcome {
                    skipped: false,
                    summary: format!(
                        "updated {} devices, {} enrollment requests on {}; {} awaiting-reconnect keys across {} organizations; SystemRestored event written",
                        prepared.devices,
                        prepared.enrollment_requests,
                        endpoint.describe(),
                        prepared.keys,
                        prepared.organizations
                    ),
                    details: serde_json::to_value(&prepared).unwrap_or_default(),
                })
            }
            "unpublish" => {
                if j.dropins.is_empty() {
                    return Ok(summary("nothing was published"));
                }
                ports::unpublish(host, &j.dropins).await?;
                Ok(summary(
                    "drop-ins removed; flightctl-db and flightctl-kv restarted; nothing published",
                ))
            }
            "seed-kv" => {
                if !dir.join("kv-keys.txt").is_file() {
                    return Ok(summary("no devices were prepared: nothing to seed"));
                }
                let password = host
                    .podman()
                    .secret("flightctl-kv-password")
                    .await
                    .map_err(|e| e.to_string())?;
                let n = kv::seed(host, &password, &dir.join("kv-keys.txt")).await?;
                Ok(summary(&format!(
                    "{n} awaiting-reconnect keys seeded after the KV's last restart"
                )))
            }
            "start" => {
                let names: Vec<&str> = j.stopped_units.iter().map(String::as_str).collect();
                control_units(host, "start", &names).await?;
                Ok(summary(&format!(
                    "started {} application units",
                    names.len()
                )))
            }
            "health" => self.health(j).await,
            "commit" => {
                if j.is_done("swap-db") && !j.keep_old_db {
                    database::drop_database(host, &j.old_db).await?;
                }
                files::drop_old(j);
                let kept = if j.keep_old_db {
                    format!("; previous database kept as {}", j.old_db)
                } else {
                    String::new()
                };
                std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                Ok(summary(&format!(
                    "restore committed; pre-restore copies removed{kept}"
                )))
            }
            other => Err(format!("unknown step {other}")),
        }
    }

    /// Reads the staged archive once: digest, every entry, manifest, metadata; then checks it against
    /// the host. Extracts into the restore's directory, never onto the host.
    async fn verify(
        &self,
        dir: &Path,
        j: &mut Journal,
        facts: Facts,
    ) -> Result<StepOutcome, String> {
        let archive = dir.join("archive");
        let extract = dir.join("extract");
        let _ = std::fs::remove_dir_all(&extract);
        let expected = j.archive_sha256.clone();
        let target = extract.clone();
        let verified = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&archive)?;
            read_archive(
                std::io::BufReader::new(file),
                &ReadOptions {
                    extract_to: Some(&target),
                    expected_sha256: Some(&expected),
                    keep: None,
                },
            )
            .map_err(std::io::Error::other)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| {
            let _ = std::fs::remove_dir_all(&extract);
            format!("archive refused: {e}")
        })?;
        let refuse = |why: String| {
            let _ = std::fs::remove_dir_all(&extract);
            Err(format!("archive refused: {why}"))
        };
        let Some(metadata) = verified.metadata else {
            return refuse("no metadata.json".into());
        };
        let host_version = facts.version.clone().unwrap_or_default();
        if metadata.version != host_version {
            return refuse(format!(
                "it was made on Flight Control {}, this host runs {}; restore only onto the same version",
                metadata.version,
                if host_version.is_empty() {
                    format!("an unknown version ({})", facts.version_detail)
                } else {
                    host_version
                }
            ));
        }
        if metadata.deployment_type != "podman" || facts.deployment != DeploymentKind::Podman {
            return refuse(format!(
                "deployment type {} in the archive, {:?} on this host; cross-deployment restore is not supported",
                metadata.deployment_type, facts.deployment
            ));
        }
        let has = |path: &str, kind: EntryKind| {
            verified
                .entries
                .iter()
                .any(|e| e.path == path && e.kind == kind)
        };
        if !has("pki", EntryKind::Dir) {
            return refuse(
                "it has no pki/: restoring without the CA would force every device to re-enroll"
                    .into(),
            );
        }
        if !has("config/service-config.yaml", EntryKind::File) {
            return refuse("it has no config/service-config.yaml".into());
        }
        let dump = has("db/dump.sql", EntryKind::File);
        if metadata.database_included != dump {
            return refuse(format!(
                "metadata says databaseIncluded={} but db/dump.sql is {}",
                metadata.database_included,
                if dump { "present" } else { "absent" }
            ));
        }
        let external = facts.database.kind == DatabaseKind::External;
        let wants = |c: &str| j.components.iter().any(|x| x == c);
        if dump && external && wants("db") {
            return refuse(
                "it holds a database dump but this host uses an external database (db.type: external); restore the other components with --only, and the database with your DBA's tooling"
                    .into(),
            );
        }
        if !dump && !external && (wants("db") || wants("config")) {
            return refuse(
                "it was made on an external-database host (no db/dump.sql) but this host uses the built-in database; restoring its config would point this host at that database"
                    .into(),
            );
        }
        if !dump && j.components == ["db"] {
            return refuse(
                "it holds no database (external database): --only db has nothing to restore; after your DBA restored the database, run `ferry prepare-devices HOST`"
                    .into(),
            );
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
        j.version = metadata.version.clone();
        j.database_included = dump;
        j.external_database = external;
        if external {
            // What device preparation will reach is checked now, before any change.
            let endpoint = Endpoint::external(self.host, &facts.database, &j.database_override)
                .map_err(|e| format!("external database: {e}"))?;
            endpoint
                .connect(self.host)
                .await
                .map_err(|e| format!("external database: {e}"))?;
        }
        j.plan = plan(
            &j.components,
            false,
            if external {
                DatabaseAccess::External
            } else {
                DatabaseAccess::Builtin
            },
        );
        j.db_name = facts.database.name.clone();
        // 8 hex of the restore id's digest, as upstream's 4 random bytes: unique per restore.
        let digest = <sha2::Sha256 as sha2::Digest>::digest(j.restore_id.as_bytes());
        let tag = ferry_proto::archive::hex(&digest[..4]);
        j.temp_db = format!("{}_restore_{tag}", j.db_name);
        j.old_db = format!("{}_old_{tag}", j.db_name);
        Ok(StepOutcome {
            skipped: false,
            summary: format!(
                "{} entries safe, sha256 {}…, Flight Control {}, podman, database {}",
                verified.entries.len(),
                &verified.sha256[..12],
                metadata.version,
                if dump { "included" } else { "external" }
            ),
            details: json!({"entries": verified.entries.len(), "version": metadata.version}),
        })
    }

    /// Where device preparation connects: the external database of the host's config, or the
    /// built-in one on the port `publish` opened.
    fn endpoint(&self, j: &Journal) -> Result<Endpoint, String> {
        if j.external_database {
            let db = crate::tasks::facts::database(self.host);
            Endpoint::external(self.host, &db, &j.database_override)
                .map_err(|e| format!("external database: {e}"))
        } else {
            Ok(Endpoint::published(self.local_address, &j.db_name))
        }
    }

    /// The controller's lease lapsed: nothing stays published and the data services are restarted.
    /// Before the swap the restore is reverted entirely; after it the application units stay stopped
    /// (the documented state after a failed restore) until `--resume` or `ferry rollback`.
    pub async fn lapse(&self, id: &str) -> Result<String, String> {
        let dir = dir(self.staging_dir, id);
        let mut j = Journal::load(&dir).map_err(|e| e.to_string())?;
        if !j.swapped() {
            self.rollback(&dir, &j).await?;
            return Ok(
                "lease lapsed before the swap: restore reverted, application units started".into(),
            );
        }
        ports::unpublish(self.host, &j.dropins).await?;
        // Record what the lapse did, so --resume republishes if devices were not prepared yet.
        if j.is_done("publish") && !j.is_done("unpublish") {
            if j.is_done("prepare-devices") {
                j.done.push("unpublish".into());
            } else {
                j.done.retain(|s| s != "publish");
            }
        }
        j.dropins.clear();
        let when = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let note = format!(
            "the controller's lease lapsed at {when}: drop-ins removed and flightctl-db/flightctl-kv restarted; application units kept stopped with the restored data in place; next: `ferry restore HOST --resume` or `ferry rollback HOST`"
        );
        j.lapsed = Some(note.clone());
        j.save(&dir).map_err(|e| e.to_string())?;
        Ok(note)
    }

    /// Returns the host to its pre-restore state: nothing published, the previous database and files
    /// back in place, the application units that were running started again. Then forgets the restore.
    async fn rollback(&self, dir: &Path, j: &Journal) -> Result<StepOutcome, String> {
        let host = self.host;
        let published = j.dropins.iter().any(|d| d.exists());
        if published || (j.is_done("publish") && !j.is_done("unpublish")) {
            ports::unpublish(host, &j.dropins).await?;
        }
        if j.database_included && !j.temp_db.is_empty() {
            database::restore_previous(host, &j.db_name, &j.temp_db, &j.old_db).await?;
        }
        files::restore_old(j)?;
        let pam = dir.join("pam-issuer-etc.old.tar");
        if pam.is_file() {
            let _ = host
                .podman()
                .volume_import("flightctl-pam-issuer-etc", &pam)
                .await;
        }
        let names: Vec<&str> = j.stopped_units.iter().map(String::as_str).collect();
        host.systemd()
            .control("start", &names)
            .await
            .map_err(|e| e.to_string())?;
        std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(summary(&format!(
            "rolled back from after {}: previous database and files in place, {} application units started",
            j.done.last().map(String::as_str).unwrap_or("stage"),
            names.len()
        )))
    }

    /// The API is ready and reports the archive's version; the KV holds one key per device.
    async fn health(&self, j: &Journal) -> Result<StepOutcome, String> {
        let host = self.host;
        let ca = host.path("/etc/flightctl/pki/ca.crt");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match crate::tasks::api::ready(self.api, &ca).await {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("the API is not ready: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        let version = crate::tasks::api::read_version(self.api, &ca)
            .await
            .map_err(|e| e.to_string())?;
        if version != j.version {
            return Err(format!(
                "the API reports {version}, the archive is {}",
                j.version
            ));
        }
        let password = host
            .podman()
            .secret("flightctl-kv-password")
            .await
            .map_err(|e| e.to_string())?;
        let keys = kv::count(host, &password).await?;
        if j.is_done("seed-kv") && keys != j.kv_keys {
            return Err(format!(
                "the KV holds {keys} awaiting-reconnect keys, expected {}",
                j.kv_keys
            ));
        }
        let statuses = if j.database_included {
            database::device_statuses(host, &j.db_name).await?
        } else {
            json!({})
        };
        Ok(StepOutcome {
            skipped: false,
            summary: format!(
                "API ready at {version}; {keys} awaiting-reconnect keys; devices by status {statuses}"
            ),
            details: json!({"version": version, "kv_keys": keys, "devices_by_status": statuses}),
        })
    }
}

/// `systemctl start|stop UNITS`, then confirms every unit is active (start) or not (stop).
async fn control_units(host: &Host, verb: &str, names: &[&str]) -> Result<(), String> {
    host.systemd()
        .control(verb, names)
        .await
        .map_err(|e| e.to_string())?;
    let after = host
        .systemd()
        .states(names)
        .await
        .map_err(|e| e.to_string())?;
    let wrong = after
        .iter()
        .find(|s| (s.active_state == "active") != (verb == "start"));
    match wrong {
        Some(unit) => Err(format!(
            "{} is {} after {verb}",
            unit.name, unit.active_state
        )),
        None => Ok(()),
    }
}

fn summary(text: &str) -> StepOutcome {
    StepOutcome {
        skipped: false,
        summary: text.into(),
        details: json!({}),
    }
}

fn manifest_modes(path: &Path) -> Result<BTreeMap<String, u32>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}
