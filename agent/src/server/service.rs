use std::path::PathBuf;
use std::time::Instant;

use ferry_proto::archive::Codec;
use ferry_proto::v1::{
    self as pb, BackupRequest, FactsReply, FactsRequest, PingReply, PingRequest,
    agent_server::Agent,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::wire;
use crate::host::Host;
use crate::operation::OperationSlot;
use crate::tasks::backup::{BackupJob, Event};
use crate::tasks::facts::{self, Facts, FactsSources};

/// The `ferry.v1.Agent` service.
pub struct AgentService {
    pub(super) host: Host,
    pub(super) host_name: String,
    pub(super) api_url: String,
    pub(super) staging_dir: PathBuf,
    pub(super) operations: OperationSlot,
    pub(super) started: Instant,
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
            api_url: &self.api_url,
            staging_dir: &self.staging_dir,
        })
        .await
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
