use std::path::PathBuf;
use std::time::Instant;

use ferry_archive::Codec;
use ferry_proto::v1::{
    self as pb, BackupRequest, FactsReply, FactsRequest, PingReply, PingRequest, RestoreStepReply,
    RestoreStepRequest, StageChunk, StageReply, agent_server::Agent,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::{Request, Response, Status};

use super::wire;
use crate::host::Host;
use crate::operation::OperationSlot;
use crate::tasks::backup::{BackupJob, Event};
use crate::tasks::facts::{self, Facts, FactsSources};
use crate::tasks::restore;

/// The `ferry.v1.Agent` service: converts the wire to task calls and back, nothing more.
pub struct AgentService {
    pub(super) host: Host,
    pub(super) host_name: String,
    /// The common name of this agent's certificate: the name the controller files its archives under.
    pub(super) identity: String,
    pub(super) api: crate::tasks::api::Api,
    pub(super) staging_dir: PathBuf,
    pub(super) operations: OperationSlot,
    pub(super) started: Instant,
    pub(super) restores: restore::Restores,
    /// Bytes the staging filesystem keeps free (`keep_free_bytes`).
    pub(super) keep_free: u64,
    pub(super) ports: crate::tasks::ports::Ports,
}

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

/// The first message of an uploaded stream (a stage, a drill), whose id must be a valid operation id.
async fn opening<T>(
    chunks: &mut Streaming<T>,
    stream: &str,
    what: &str,
    id: fn(&T) -> &String,
) -> Result<T, Status> {
    let first = chunks
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument(format!("empty {stream} stream")))?;
    if !valid_operation_id(id(&first)) {
        return Err(Status::invalid_argument(format!(
            "{what} id {:?} must be 1-64 letters, digits, '-' or '_'",
            id(&first)
        )));
    }
    Ok(first)
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
        let first = opening(&mut chunks, "stage", "restore", |c| &c.restore_id).await?;
        let req = wire::stage_request(&first);
        let id = req.restore_id.clone();
        let (size, sha256, status) = self
            .restores
            .stage(
                req,
                first.data.clone(),
                tokio_stream::StreamExt::map(chunks, |c| c.map(|c| c.data)),
                &who,
            )
            .await
            .map_err(|f| wire::step_failure(&f))?;
        tracing::info!(caller = %who, restore = %id, size, "archive staged");
        Ok(Response::new(StageReply {
            size,
            sha256,
            status: Some(wire::restore_status(&status)),
        }))
    }

    async fn check_stage(
        &self,
        request: Request<pb::StageCheckRequest>,
    ) -> Result<Response<pb::StageCheckReply>, Status> {
        tracing::info!(caller = %caller(&request), "check stage");
        let req = request.into_inner();
        let components: Vec<pb::Component> = req
            .components
            .iter()
            .map(|c| pb::Component::try_from(*c).unwrap_or(pb::Component::Unspecified))
            .collect();
        let (refusals, removals) = self
            .restores
            .check(
                req.expected_size,
                &components,
                &req.captured,
                &req.present,
                &req.entries,
            )
            .await;
        Ok(Response::new(pb::StageCheckReply {
            refusals: refusals
                .into_iter()
                .map(|(cause, next)| pb::StageRefusal { cause, next })
                .collect(),
            removals,
        }))
    }

    async fn restore_step(
        &self,
        request: Request<RestoreStepRequest>,
    ) -> Result<Response<RestoreStepReply>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let step = pb::Step::of(req.step);
        tracing::info!(caller = %who, restore = %req.restore_id, step = step.name(), "restore step");
        match self
            .restores
            .step(&req.restore_id, step, req.lease_seconds, &who)
            .await
        {
            Ok((outcome, status)) => Ok(Response::new(RestoreStepReply {
                step: step as i32,
                summary: outcome.summary,
                skipped: outcome.skipped,
                details_json: outcome.details.to_string(),
                status: status.as_ref().map(wire::restore_status),
            })),
            Err(failure) => {
                tracing::warn!(restore = %req.restore_id, step = step.name(), error = %failure, "restore step failed");
                Err(wire::step_failure(&failure))
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
        let recipients = if req.recipients.is_empty() {
            None
        } else {
            Some(
                ferry_archive::Recipients::parse(&req.recipients)
                    .map_err(|e| wire::phase_status("preflight", &format!("encryption: {e}")))?,
            )
        };
        let guard = self
            .operations
            .try_begin("backup", &req.operation_id, &who)
            .map_err(|running| {
                let (cause, next) = self.restores.busy(&running);
                wire::busy_status(&cause, &next)
            })?;
        tracing::info!(caller = %who, operation = %req.operation_id, compression = codec.name(), encrypted = !req.recipients.is_empty(), "backup");
        let job = BackupJob {
            host: self.host.clone(),
            host_name: self.host_name.clone(),
            identity: self.identity.clone(),
            staging_dir: self.staging_dir.clone(),
            operation_id: req.operation_id.clone(),
            codec,
            facts: self.gather_facts().await,
            not_before: time::OffsetDateTime::from_unix_timestamp(req.not_before_unix)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            recipients,
            dump_process: Default::default(),
        };
        let dump_process = std::sync::Arc::clone(&job.dump_process);
        let (events_tx, mut events) = tokio::sync::mpsc::channel::<Event>(16);
        let (out, out_rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let _guard = guard;
            let task = tokio::spawn(job.run(events_tx));
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    // The controller is gone (its connection closed): the backup's lease ends now.
                    () = out.closed() => {
                        tracing::warn!("controller went away during the backup; stopping it");
                        crate::tasks::backup::stop_dump(&dump_process);
                        break;
                    }
                };
                let Some(event) = event else { break };
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

    async fn drill(
        &self,
        request: Request<Streaming<pb::DrillChunk>>,
    ) -> Result<Response<pb::DrillReply>, Status> {
        let who = caller(&request);
        let mut chunks = request.into_inner();
        let first = opening(&mut chunks, "drill", "drill", |c| &c.drill_id).await?;
        let req = wire::drill_request(&first);
        let guard = self
            .operations
            .try_begin("drill", &req.drill_id, &who)
            .map_err(|running| {
                let (cause, next) = self.restores.busy(&running);
                wire::busy_status(&cause, &next)
            })?;
        let drill = crate::tasks::drill::Drill {
            host: self.host.clone(),
            staging_dir: self.staging_dir.clone(),
            keep_free: self.keep_free,
            facts: self.gather_facts().await,
        };
        if let Some(why) = drill.refusal(&req) {
            tracing::warn!(caller = %who, drill = %req.drill_id, "drill refused: {why}");
            return Err(Status::failed_precondition(why));
        }
        tracing::info!(caller = %who, drill = %req.drill_id, "drill");
        // On its own task: the scratch database is dropped even if the controller goes away.
        let data = first.data.clone();
        let task = tokio::spawn(async move {
            let _guard = guard;
            let rest = tokio_stream::StreamExt::map(chunks, |c| c.map(|c| c.data));
            drill.run(&req, data, rest).await
        });
        let report = task
            .await
            .map_err(|e| Status::internal(format!("drill task: {e}")))?;
        tracing::info!(passed = report.failures.is_empty(), failures = ?report.failures, "drill ended");
        Ok(Response::new(wire::drill_reply(report)))
    }

    async fn publish_ports(
        &self,
        request: Request<pb::PublishPortsRequest>,
    ) -> Result<Response<pb::PublishPortsReply>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        if !valid_operation_id(&req.publication_id) {
            return Err(Status::invalid_argument(format!(
                "publication id {:?} must be 1-64 letters, digits, '-' or '_'",
                req.publication_id
            )));
        }
        let published = self
            .ports
            .publish(
                &req.publication_id,
                req.for_seconds,
                req.lease_seconds.into(),
                req.renew,
                &who,
            )
            .await
            .map_err(Status::failed_precondition)?;
        if !published.renewed {
            tracing::info!(caller = %who, publication = %req.publication_id, for_seconds = req.for_seconds, "data services published on loopback");
        }
        Ok(Response::new(pb::PublishPortsReply {
            address: published.address,
            ports: published
                .ports
                .into_iter()
                .map(|(unit, port)| pb::PublishedPort {
                    unit,
                    port: port.into(),
                })
                .collect(),
            until_unix: published.until_unix,
            renewed: published.renewed,
            kv: published.kv,
        }))
    }

    async fn unpublish_ports(
        &self,
        request: Request<pb::UnpublishPortsRequest>,
    ) -> Result<Response<pb::UnpublishPortsReply>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let why = format!("unpublished by {who} ({})", req.reason);
        let only = (!req.publication_id.is_empty()).then_some(req.publication_id.as_str());
        let summary = self
            .ports
            .unpublish(only, &why)
            .await
            .map_err(Status::internal)?;
        tracing::info!("{summary}");
        Ok(Response::new(pb::UnpublishPortsReply { summary }))
    }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        tracing::debug!(caller = %caller(&request), "ping");
        Ok(Response::new(PingReply {
            agent_version: crate::VERSION.into(),
            host_name: self.host_name.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            operation: self.operations.current().map(wire::running),
            restore: self.restores.status().as_ref().map(wire::restore_status),
            undone: self.restores.undone(),
        }))
    }

    async fn facts(&self, request: Request<FactsRequest>) -> Result<Response<FactsReply>, Status> {
        tracing::info!(caller = %caller(&request), "facts");
        let facts = self.gather_facts().await;
        // An unreachable database is a fact, not a reason to keep the operator waiting.
        let reconnect = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            crate::tasks::reconnect::standing(&self.host),
        )
        .await
        .unwrap_or_else(|_| crate::tasks::reconnect::Standing {
            unknown: "the database did not answer within 5s".into(),
            ..Default::default()
        });
        Ok(Response::new(wire::facts(
            facts,
            &self.staging_dir,
            self.restores.status(),
            reconnect,
            self.restores.undone(),
        )))
    }
}
