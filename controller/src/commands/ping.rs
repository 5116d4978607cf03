//! `ferry ping PATTERN`

use ferry_proto::v1::{PingReply, PingRequest};
use serde_json::json;

use crate::cli::GlobalArgs;
use crate::config::Config;
use crate::report::Outcome;

pub async fn run(config: &Config, global: &GlobalArgs, pattern: &str) -> i32 {
    crate::selection::call_all(
        config,
        global,
        pattern,
        "ping",
        |mut client| async move { client.ping(PingRequest {}).await },
        pong,
    )
    .await
}

fn pong(r: PingReply) -> Outcome {
    let busy = r
        .operation
        .as_ref()
        .map(|op| format!("busy: {} {} by {}", op.kind, op.id, op.started_by))
        .unwrap_or_else(|| "idle".into());
    Outcome::Ok {
        changed: false,
        summary: format!(
            "pong from {} (ferry-agent {}, up {}s, {busy})",
            r.host_name, r.agent_version, r.uptime_seconds
        ),
        data: json!({
            "agent_version": r.agent_version,
            "host_name": r.host_name,
            "uptime_seconds": r.uptime_seconds,
            "operation": r.operation.map(|op| json!({
                "kind": op.kind, "id": op.id,
                "started_by": op.started_by, "started_unix": op.started_unix,
            })),
        }),
    }
}
