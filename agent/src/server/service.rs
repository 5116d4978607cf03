use std::path::PathBuf;
use std::time::Instant;

use ferry_proto::archive::Codec;
use ferry_proto::v1::{
    self as pb, BackupRequest, FactsReply, FactsRequest, PingReply, PingRequest, RestoreStepReply,
    RestoreStepRequest, StageChunk, StageReply, agent_server::Agent,
};
use sha2::{Digest, Sha256};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::{Request, Response, Status};

use super::wire;
use crate::host::Host;
use crate::operation::{OperationGuard, OperationSlot};
use crate::tasks::backup::{BackupJob, Event};
use crate::tasks::facts::{self, Facts, FactsSources};
use crate::tasks::restore;

/// The `ferry.v1.Agent` service.
pub struct AgentService {
    pub(super) host: Host,
    pub(super) host_name: String,
    pub(super) api: crate::tasks::api::Api,
    pub(super) staging_dir: PathBuf,
    pub(super) operations: OperationSlot,
    pub(super) started: Instant,
    pub(super) local_address: String,
    /// The restore holding the host's slot across its steps: (restore id, guard).
    pub(super) restore: RestoreSlot,
    pub(super) lease: crate::lease::Lease,
}

/// The restore holding the host's slot across its steps, shared with the lease watchdog.
pub type RestoreSlot = std::sync::Arc<std::sync::Mutex<Option<(String, OperationGuard)>>>;

/// The subject of the controller certificate that made the request, for logs and records.
fn caller<T>(request: &Request<T>) -> String {
    request
        .peer_certs()
        .and_then(|certs| certs.first().cloned())
        .and_then(|der| ferry_certs::CertInfo::from_der(&der).ok())
        .map(|info| info.subject)
        .unwrap_or_else(|| "unknown".into())
}

impl AgentService {
    async fn gather_facts(&self) -> Facts {
        facts::gather(&FactsSources {
            host: &self.host,
            host_name: &self.host_name,
            api: &self.api,
            staging_dir: &self.staging_dir,
        })
        .await
    }
}

impl AgentService {
    /// Holds the host's slot for restore `id` (again, if it already does).
    fn take_restore_slot(&self, id: &str, who: &str) -> Result<(), Status> {
        let mut held = self.restore.lock().unwrap_or_else(|p| p.into_inner());
        if held.as_ref().is_some_and(|(current, _)| current == id) {
            return Ok(());
        }
        let guard = self
            .operations
            .try_begin("restore", id, who)
            .map_err(|running| {
                Status::failed_precondition(wire::busy(&self.host_name, &running))
            })?;
        *held = Some((id.to_string(), guard));
        Ok(())
    }

    fn release_restore_slot(&self) {
        self.restore
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Starts a device-preparation-only run on the host's current database.
    async fn begin_prepare_only(
        &self,
        dir: &std::path::Path,
        first: &StageChunk,
    ) -> Result<(u64, String), Status> {
        let facts = self.gather_facts().await;
        let over = wire::database_override(first.database.as_ref());
        let external = match facts.database.kind {
            crate::tasks::facts::DatabaseKind::Builtin if over.is_empty() => false,
            crate::tasks::facts::DatabaseKind::Builtin => {
                return Err(wire::phase_status(
                    "stage",
                    "--db-host/--db-port/--db-name are for an external database; this host uses the built-in one (db.type: builtin)",
                ));
            }
            _ => {
                // Checked now, so a wrong address, TLS or password changes nothing.
                let refused =
                    |e: String| wire::phase_status("stage", &format!("external database: {e}"));
                crate::tasks::database::Endpoint::external(&self.host, &facts.database, &over)
                    .map_err(refused)?
                    .connect(&self.host)
                    .await
                    .map_err(refused)?;
                true
            }
        };
        let version = facts.version.clone().ok_or_else(|| {
            wire::phase_status(
                "stage",
                &format!(
                    "the Flight Control version is unknown ({})",
                    facts.version_detail
                ),
            )
        })?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| Status::internal(e.to_string()))?;
        let journal = restore::journal::Journal {
            restore_id: first.restore_id.clone(),
            plan: restore::plan(
                &[],
                true,
                if external {
                    restore::DatabaseAccess::External
                } else {
                    restore::DatabaseAccess::Builtin
                },
            ),
            components: vec!["db".into()],
            version,
            database_included: !external,
            external_database: external,
            database_override: over,
            db_name: facts.database.name.clone(),
            ..Default::default()
        };
        journal
            .save(dir)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok((0, String::new()))
    }

    /// Writes the streamed archive into `dir/archive`, checking size and digest; creates the journal.
    async fn receive_archive(
        &self,
        dir: &std::path::Path,
        first: &StageChunk,
        chunks: &mut Streaming<StageChunk>,
    ) -> Result<(u64, String), Status> {
        use tokio::io::AsyncWriteExt;
        let io = |e: std::io::Error| Status::internal(format!("staging: {e}"));
        let (free, _) = crate::tasks::facts::disk_space(&self.staging_dir);
        let needed = first
            .expected_size
            .saturating_mul(3)
            .saturating_add(64 << 20);
        if free < needed {
            return Err(wire::phase_status(
                "stage",
                &format!(
                    "not enough space in {}: {} MiB free, {} MiB needed for the archive and its extraction; nothing was changed",
                    self.staging_dir.display(),
                    free >> 20,
                    needed >> 20
                ),
            ));
        }
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(io)?;
        let part = dir.join("archive.part");
        let mut file = tokio::io::BufWriter::with_capacity(
            1 << 20,
            tokio::fs::File::create(&part).await.map_err(io)?,
        );
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut chunk = Some(first.data.clone());
        loop {
            if let Some(data) = chunk.take() {
                hasher.update(&data);
                size += data.len() as u64;
                file.write_all(&data).await.map_err(io)?;
            }
            match chunks.message().await? {
                Some(next) => chunk = Some(next.data),
                None => break,
            }
        }
        file.flush().await.map_err(io)?;
        file.into_inner().sync_all().await.map_err(io)?;
        let sha256 = ferry_proto::archive::hex(&hasher.finalize());
        if size != first.expected_size || sha256 != first.expected_sha256 {
            return Err(wire::phase_status(
                "stage",
                &format!(
                    "digest mismatch: received {size} bytes sha256 {sha256}, the catalog says {} bytes sha256 {}; nothing was changed",
                    first.expected_size, first.expected_sha256
                ),
            ));
        }
        std::fs::rename(&part, dir.join("archive")).map_err(io)?;
        let journal = restore::journal::Journal {
            restore_id: first.restore_id.clone(),
            archive_sha256: sha256.clone(),
            archive_size: size,
            keep_old_db: first.keep_old_db,
            plan: restore::plan(&first.components, false, restore::DatabaseAccess::Builtin),
            components: restore::chosen(&first.components),
            ..Default::default()
        };
        journal.save(dir).map_err(io)?;
        Ok((size, sha256))
    }
}

/// Operation ids name scratch directories: keep them to a safe alphabet.
fn valid_operation_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[tonic::async_trait]
impl Agent for AgentService {
    type BackupStream = ReceiverStream<Result<pb::BackupEvent, Status>>;

    async fn stage(
        &self,
        request: Request<Streaming<StageChunk>>,
    ) -> Result<Response<StageReply>, Status> {
        let who = caller(&request);
        let mut chunks = request.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty stage stream"))?;
        let id = first.restore_id.clone();
        if !valid_operation_id(&id) {
            return Err(Status::invalid_argument(format!(
                "restore id {id:?} must be 1-64 letters, digits, '-' or '_'"
            )));
        }
        if let Some(bad) = first
            .components
            .iter()
            .find(|c| !restore::COMPONENTS.contains(&c.as_str()))
        {
            return Err(Status::invalid_argument(format!(
                "unknown component {bad:?}; choose from {}",
                restore::COMPONENTS.join(", ")
            )));
        }
        self.take_restore_slot(&id, &who)?;
        let dir = restore::dir(&self.staging_dir, &id);
        let result = if first.prepare_only {
            self.begin_prepare_only(&dir, &first).await
        } else {
            self.receive_archive(&dir, &first, &mut chunks).await
        };
        if result.is_err() {
            // Nothing on the host changed: drop the staged bytes and free the host.
            let _ = std::fs::remove_dir_all(&dir);
            self.release_restore_slot();
        }
        let (size, sha256) = result?;
        tracing::info!(caller = %who, restore = %id, size, "archive staged");
        Ok(Response::new(StageReply { size, sha256 }))
    }

    async fn restore_step(
        &self,
        request: Request<RestoreStepRequest>,
    ) -> Result<Response<RestoreStepReply>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        self.take_restore_slot(&req.restore_id, &who)?;
        tracing::info!(caller = %who, restore = %req.restore_id, step = %req.step, "restore step");
        let ctx = restore::RestoreContext {
            host: &self.host,
            staging_dir: &self.staging_dir,
            local_address: &self.local_address,
            api: &self.api,
        };
        let lease = std::time::Duration::from_secs(match req.lease_seconds {
            0 => 60,
            n => n.into(),
        });
        let running = self.lease.step_begins(&req.restore_id, &req.step, lease);
        let result = ctx
            .run(&req.restore_id, &req.step, async || {
                self.gather_facts().await
            })
            .await;
        drop(running);
        match result {
            Ok(outcome) => {
                if req.step == "commit" || req.step == "rollback" {
                    self.lease.disarm();
                    self.release_restore_slot();
                }
                Ok(Response::new(RestoreStepReply {
                    step: req.step,
                    summary: outcome.summary,
                    skipped: outcome.skipped,
                    details_json: outcome.details.to_string(),
                }))
            }
            Err(e) => {
                tracing::warn!(restore = %req.restore_id, step = %req.step, error = %e, "restore step failed");
                if req.step == "verify" {
                    // A refused archive changed nothing: clean up and free the host.
                    let _ =
                        std::fs::remove_dir_all(restore::dir(&self.staging_dir, &req.restore_id));
                    self.release_restore_slot();
                }
                Err(wire::phase_status(&req.step, &e.to_string()))
            }
        }
    }

    async fn backup(
        &self,
        request: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        if !valid_operation_id(&req.operation_id) {
            return Err(Status::invalid_argument(format!(
                "operation id {:?} must be 1-64 letters, digits, '-' or '_'",
                req.operation_id
            )));
        }
        let codec = match pb::Compression::try_from(req.compression) {
            Ok(pb::Compression::Zstd) => Codec::Zstd,
            _ => Codec::Gzip,
        };
        let guard = self
            .operations
            .try_begin("backup", &req.operation_id, &who)
            .map_err(|running| {
                Status::failed_precondition(wire::busy(&self.host_name, &running))
            })?;
        tracing::info!(caller = %who, operation = %req.operation_id, compression = codec.name(), "backup");
        let job = BackupJob {
            host: self.host.clone(),
            host_name: self.host_name.clone(),
            staging_dir: self.staging_dir.clone(),
            operation_id: req.operation_id.clone(),
            codec,
            facts: self.gather_facts().await,
            not_before: time::OffsetDateTime::from_unix_timestamp(req.not_before_unix)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        };
        let (events_tx, mut events) = tokio::sync::mpsc::channel::<Event>(16);
        let (out, out_rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let _guard = guard;
            let task = tokio::spawn(job.run(events_tx));
            while let Some(event) = events.recv().await {
                if out.send(Ok(wire::backup_event(event))).await.is_err() {
                    tracing::warn!("controller went away during the backup");
                    break;
                }
            }
            // Dropping the receiver makes the task's next send fail, so it stops and cleans up.
            drop(events);
            match task.await {
                Ok(Ok(())) => tracing::info!("backup streamed"),
                Ok(Err(e)) => {
                    tracing::warn!(phase = e.phase, error = %e.cause, "backup failed");
                    let _ = out.send(Err(wire::phase_status(e.phase, &e.cause))).await;
                }
                Err(e) => {
                    let _ = out
                        .send(Err(Status::internal(format!("backup task: {e}"))))
                        .await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        tracing::debug!(caller = %caller(&request), "ping");
        Ok(Response::new(PingReply {
            agent_version: crate::VERSION.into(),
            host_name: self.host_name.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            operation: self.operations.current().map(wire::running),
        }))
    }

    async fn facts(&self, request: Request<FactsRequest>) -> Result<Response<FactsReply>, Status> {
        tracing::info!(caller = %caller(&request), "facts");
        let facts = self.gather_facts().await;
        Ok(Response::new(wire::facts(facts, &self.staging_dir)))
    }
}
