use std::path::PathBuf;
use std::time::Instant;

use ferry_proto::v1::{FactsReply, FactsRequest, PingReply, PingRequest, agent_server::Agent};
use tonic::{Request, Response, Status};

use super::wire;
use crate::host::Host;
use crate::operation::OperationSlot;
use crate::tasks::facts::{self, FactsSources};

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

#[tonic::async_trait]
impl Agent for AgentService {
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
        let facts = facts::gather(&FactsSources {
            host: &self.host,
            host_name: &self.host_name,
            api_url: &self.api_url,
            staging_dir: &self.staging_dir,
        })
        .await;
        Ok(Response::new(wire::facts(facts, &self.staging_dir)))
    }
}
