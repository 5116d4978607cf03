//! Backups: each host's archive streamed from its agent into the store, checked on arrival,
//! catalogued, and recorded through the run's [`Operation`], whatever the outcome. `ferry backup`
//! and `ferry serve` both run it.

use std::time::Instant;

use ferry_archive::{Manifest, Metadata};
use ferry_proto::v1::{self as pb, BackupRequest, backup_event::Event};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::Operation;
use crate::catalog::ledger::TaskRecord;
use crate::catalog::{ArchiveRecord, HostRecord};
use crate::dial::Dialer;
use crate::inventory::Target;
use crate::progress::HostProgress;
use crate::store::Store;
use crate::types::{Compression, Outcome};

/// Every phase a backup can stop in (the `phase` of its failures and their metrics).
pub const PHASES: [&str; 12] = [
    "connect",
    "busy",
    "preflight",
    "dump",
    "files",
    "encrypt",
    "stream",
    "transfer",
    "verify",
    "store",
    "catalog",
    "timeout",
];

/// One run's backups: each host's archive streamed into the store, catalogued, and recorded (host
/// result and ledger entry), whatever the outcome. `ferry backup` and `ferry serve` both use it.
pub struct Backups<'a> {
    pub operation: &'a Operation<'a>,
    pub dialer: &'a Dialer,
    pub store: &'a Store,
    pub compression: Compression,
    /// The operator's public keys when archives are to be encrypted.
    pub recipients: Option<Vec<String>>,
}

/// A failed backup: where and why.
struct Failure {
    phase: String,
    cause: String,
}

impl Backups<'_> {
    /// Backs up one host under `limit`; a host that runs out of time is recorded like any failure.
    pub async fn backup_within(
        &self,
        target: &Target,
        bar: &HostProgress,
        limit: std::time::Duration,
    ) -> Outcome {
        let started = OffsetDateTime::now_utc();
        let outcome = match tokio::time::timeout(limit, self.backup_one(target, bar)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let cause = format!(
                    "no result within {}s (--timeout) during {}; nothing was stored",
                    limit.as_secs(),
                    bar.phase()
                );
                self.failed(target, "timeout", cause, started).await
            }
        };
        bar.finish();
        outcome
    }

    async fn backup_one(&self, target: &Target, bar: &HostProgress) -> Outcome {
        let started = OffsetDateTime::now_utc();
        let clock = Instant::now();
        self.operation.phase(&target.name, "connect");
        let conn = match self.dialer.connect(target).await {
            Ok(conn) => conn,
            Err(e) => {
                return self.unreachable(target, e, started).await;
            }
        };
        let operation_id = format!(
            "backup-{}-{}",
            self.operation.run_id(),
            sanitize(&target.name)
        );
        let result = self.receive(target, &conn, &operation_id, bar, clock).await;
        match result {
            Ok((mut record, location)) => {
                let mut note = String::new();
                let id = match self.operation.catalog().insert_archive(&record).await {
                    Ok(Some(id)) => Some(id),
                    // The archive is safe in the store; its record waits in the spool.
                    Err(e @ crate::catalog::CatalogError::Spooled { .. }) => {
                        note = format!("; {e}");
                        None
                    }
                    Ok(None) => {
                        return self
                            .failed(
                                target,
                                "catalog",
                                format!("{} is already catalogued", record.name),
                                started,
                            )
                            .await;
                    }
                    Err(e) => return self.failed(target, "catalog", e.to_string(), started).await,
                };
                record.id = id.unwrap_or(0);
                self.record(target, "ok", None, None, Some(&record), started)
                    .await;
                Outcome::Ok {
                    changed: true,
                    summary: format!(
                        "archive {} {} ({}, sha256 {}…) in {:.1}s{note}",
                        record.short_id(),
                        record.name,
                        crate::types::human_bytes(record.size as u64),
                        &record.sha256[..12],
                        clock.elapsed().as_secs_f64()
                    ),
                    data: json!({
                        "archive_id": record.short_id(), "catalog_number": id, "name": record.name, "path": location,
                        "encrypted": record.sealed.is_some(), "plain_sha256": record.sealed.as_ref().map(|s| &s.plain_sha256),
                        "size": record.size, "sha256": record.sha256,
                        "flightctl_version": record.flightctl_version,
                        "database_included": record.database_included,
                        "row_counts": record.row_counts, "warnings": record.warnings,
                    }),
                }
            }
            Err(Failure { phase, cause }) => match conn.refused() {
                Some(e) => self.unreachable(target, e, started).await,
                None => self.failed(target, &phase, cause, started).await,
            },
        }
    }

    async fn receive(
        &self,
        target: &Target,
        conn: &crate::dial::AgentConn,
        operation_id: &str,
        bar: &HostProgress,
        clock: Instant,
    ) -> Result<(ArchiveRecord, String), Failure> {
        // Names never collide: not with the store's archives, nor with the catalog's (an archive
        // made into another store, before `store:` changed).
        let in_store = self
            .store
            .next_free_second(&target.agent_name)
            .await
            .map_err(store_failure)?;
        let in_catalog = match self
            .operation
            .catalog()
            .newest_archive_time(&target.agent_name)
            .await
        {
            Ok(newest) => newest.map_or(0, |t| t.unix_timestamp() + 1),
            Err(_) => 0,
        };
        let not_before_unix = in_store.max(in_catalog);
        let request = BackupRequest {
            operation_id: operation_id.to_string(),
            compression: match self.compression {
                Compression::Gzip => pb::Compression::Gzip,
                Compression::Zstd => pb::Compression::Zstd,
            } as i32,
            not_before_unix,
            recipients: self.recipients.clone().unwrap_or_default(),
        };
        bar.update("preflight", 0);
        let mut stream = conn
            .client
            .clone()
            .backup(request)
            .await
            .map_err(|status| status_failure(&status, "preflight"))?
            .into_inner();
        let mut incoming = None;
        let mut announced = None;
        let trailer = loop {
            let message = stream.message().await.map_err(|status| {
                let mut failure = status_failure(&status, &bar.phase());
                if status
                    .metadata()
                    .get(ferry_proto::PHASE_METADATA_KEY)
                    .is_none()
                {
                    failure.phase = "transfer".into();
                    failure.cause = format!(
                        "connection to the agent lost during {}: {}",
                        bar.phase(),
                        status.message()
                    );
                }
                failure
            })?;
            let Some(event) = message.and_then(|m| m.event) else {
                return Err(Failure {
                    phase: "transfer".into(),
                    cause: "the stream ended before the archive's trailer".into(),
                });
            };
            match event {
                Event::Progress(p) => {
                    if p.phase != bar.phase() {
                        self.operation.phase(&target.name, &p.phase);
                    }
                    bar.update(&p.phase, p.bytes)
                }
                Event::ArchiveName(name) => {
                    // Filed under the name the agent's certificate proved, not the inventory's.
                    let object = self.object_name(&name);
                    incoming = Some(
                        self.store
                            .begin(&target.agent_name, &object)
                            .await
                            .map_err(store_failure)?,
                    );
                    announced = Some(name);
                }
                Event::Data(chunk) => {
                    let Some(object) = incoming.as_mut() else {
                        return Err(Failure {
                            phase: "transfer".into(),
                            cause: "the agent sent data before naming the archive (an agent older than this controller?)".into(),
                        });
                    };
                    object.write_chunk(&chunk).await.map_err(store_failure)?;
                    bar.update("transfer", object.size());
                }
                Event::Trailer(t) => break t,
            }
        };
        bar.update("commit", trailer.size);
        let verify = |cause: String| Failure {
            phase: "verify".into(),
            cause,
        };
        let Some(object) = incoming else {
            return Err(verify(
                "the agent sent a trailer but never named the archive".into(),
            ));
        };
        if announced.as_deref() != Some(trailer.archive_name.as_str()) {
            return Err(verify(format!(
                "the agent announced {:?} but its trailer names {:?}; nothing was stored",
                announced.unwrap_or_default(),
                trailer.archive_name
            )));
        }
        // An archive leaves encrypted exactly when we asked for it.
        let sealed = match (&trailer.sealed, &self.recipients) {
            (Some(s), Some(_)) => Some(s),
            (None, None) => None,
            (Some(_), None) => return Err(verify("the agent encrypted an archive ferry did not ask to encrypt".into())),
            (None, Some(_)) => return Err(verify("the agent sent an unencrypted archive although encryption is on (an agent older than this controller?); nothing was stored".into())),
        };
        let extras: Vec<(String, Vec<u8>)> = sealed
            .map(|s| {
                vec![(
                    ferry_archive::key_object_name(&trailer.archive_name),
                    s.wrapped_key.to_vec(),
                )]
            })
            .unwrap_or_default();
        let committed = object
            .commit(trailer.size, &trailer.sha256, &extras)
            .await
            .map_err(|e| match e {
                e @ crate::store::StoreError::Mismatch { .. } => verify(e.to_string()),
                e => store_failure(e),
            })?;
        let metadata: Metadata =
            serde_json::from_str(&trailer.metadata_json).map_err(|e| Failure {
                phase: "verify".into(),
                cause: format!("metadata.json: {e}"),
            })?;
        let manifest: Manifest =
            serde_json::from_str(&trailer.manifest_json).map_err(|e| Failure {
                phase: "verify".into(),
                cause: format!("ferry-manifest.json: {e}"),
            })?;
        let mut record = ArchiveRecord::described(
            &target.agent_name,
            &trailer.archive_name,
            committed.size,
            &committed.sha256,
            self.compression.name(),
            metadata,
            manifest,
        );
        record.duration_ms = Some(clock.elapsed().as_millis() as i64);
        record.run_id = Some(self.operation.run_id());
        record.warnings = json!(trailer.warnings);
        // Its first evidence: the store checked size and digest on arrival, of this version.
        let mut copy = crate::catalog::evidence::Copy::arrived(&self.store.id());
        copy.version = self
            .store
            .version(&target.agent_name, &self.object_name(&trailer.archive_name))
            .await
            .ok()
            .flatten()
            .map(|v| v.fingerprint());
        record.copies = vec![copy];
        record.sealed = sealed.map(|s| crate::catalog::SealedRecord {
            plain_size: s.plain_size as i64,
            plain_sha256: s.plain_sha256.clone(),
            key_ids: s.recipients.clone(),
        });
        Ok((record, committed.location))
    }

    /// The store object for an archive: `.age` added when it is encrypted.
    fn object_name(&self, archive: &str) -> String {
        match self.recipients {
            Some(_) => format!("{archive}{}", ferry_archive::SEALED_SUFFIX),
            None => archive.to_string(),
        }
    }

    async fn unreachable(
        &self,
        target: &Target,
        e: crate::dial::DialError,
        started: OffsetDateTime,
    ) -> Outcome {
        self.record(
            target,
            "unreachable",
            Some("connect"),
            Some(&e.to_string()),
            None,
            started,
        )
        .await;
        Outcome::Unreachable(e)
    }

    async fn failed(
        &self,
        target: &Target,
        phase: &str,
        cause: String,
        started: OffsetDateTime,
    ) -> Outcome {
        // A host busy with another operation refused the backup: nothing failed there.
        let outcome = if phase == "busy" { "refused" } else { "failed" };
        self.record(target, outcome, Some(phase), Some(&cause), None, started)
            .await;
        Outcome::Failed {
            task: format!("backup/{phase}"),
            cause,
        }
    }

    async fn record(
        &self,
        target: &Target,
        outcome: &str,
        phase: Option<&str>,
        error: Option<&str>,
        archive: Option<&ArchiveRecord>,
        started: OffsetDateTime,
    ) {
        let archive_id = archive.map(|a| a.id).filter(|id| *id > 0);
        let record = HostRecord {
            host: target.name.clone(),
            outcome: outcome.into(),
            phase: phase.map(str::to_string),
            error: error.map(str::to_string),
            archive_id,
            started,
            finished: OffsetDateTime::now_utc(),
        };
        // Named from the record itself: it holds even when the catalog took it only into the spool.
        let mut event = self.operation.event(&target.name, started);
        event.archive = archive.map_or(Value::Null, ArchiveRecord::ledger_json);
        event.finished = record.finished;
        event.outcome = if outcome == "ok" {
            "succeeded".into()
        } else {
            outcome.into()
        };
        event.error = error.map(|e| format!("{}: {e}", phase.unwrap_or("")));
        event.tasks = vec![TaskRecord {
            name: format!("backup/{}", phase.unwrap_or("all")),
            started,
            finished: record.finished,
            outcome: if outcome == "ok" {
                "ok".into()
            } else {
                outcome.into()
            },
            detail: error
                .unwrap_or("archive streamed, verified and catalogued")
                .into(),
        }];
        self.operation.host(Some(&record), &event).await;
    }
}

fn status_failure(status: &tonic::Status, default_phase: &str) -> Failure {
    let phase = status
        .metadata()
        .get(ferry_proto::PHASE_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(default_phase)
        .to_string();
    let prefix = format!("{phase}: ");
    let message = status.message();
    Failure {
        phase,
        cause: message.strip_prefix(&prefix).unwrap_or(message).to_string(),
    }
}

fn store_failure(e: crate::store::StoreError) -> Failure {
    Failure {
        phase: "store".into(),
        cause: e.to_string(),
    }
}

/// Operation ids travel to the agent: letters, digits, '-' and '_' only.
fn sanitize(host: &str) -> String {
    host.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect()
}
