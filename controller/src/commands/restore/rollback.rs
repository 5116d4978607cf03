//! `ferry rollback HOST`: returns a host with an unfinished restore to exactly its pre-restore state.

use ferry_proto::v1::{PingRequest, RestoreStepRequest, Step};
use serde_json::json;
use time::OffsetDateTime;

use super::play::Ending;
use crate::cli::GlobalArgs;
use crate::config::Config;
use crate::types::OperationKind;

pub async fn rollback(config: &Config, global: &GlobalArgs, host: &str) -> i32 {
    let opened = match crate::selection::open(config, global, host).await {
        Ok(opened) => opened,
        Err(stop) => return stop.say(),
    };
    let (play, conn) =
        match super::begin(&opened, (OperationKind::Rollback, "rollback"), json!({})).await {
            Ok(begun) => begun,
            Err(stop) => return stop.say(),
        };
    let started = OffsetDateTime::now_utc();
    let (operation, restore, undone) = match conn.client.clone().ping(PingRequest {}).await {
        Ok(r) => {
            let r = r.into_inner();
            (r.operation, r.restore, r.undone)
        }
        Err(status) => {
            let cause = conn.failure_text(&status);
            return play
                .lost("rollback", &cause, &[format!("ferry rollback {host}")])
                .await;
        }
    };
    let Some(op) = operation.filter(|op| op.kind == "restore") else {
        return play
            .refuse(
                "rollback",
                &super::nothing_unfinished(host, "to roll back", &undone),
                &format!("`ferry facts {host}` shows the host's state"),
            )
            .await;
    };
    play.header(&format!("roll back restore {} on {host}", op.id));
    super::found(&play, restore.as_ref()).await;
    let request = RestoreStepRequest {
        restore_id: op.id.clone(),
        step: Step::Rollback as i32,
        lease_seconds: 0,
    };
    match conn.client.clone().restore_step(request).await {
        Ok(reply) => {
            play.task("rollback", started, "ok", &reply.into_inner().summary);
            play.succeed(Ending::RolledBack, "pre-restore state").await
        }
        Err(status) => match super::step_failure(&status) {
            Some(failure) if failure.refused => {
                let state = failure
                    .status
                    .map(|s| s.summary)
                    .unwrap_or_else(|| "unknown".into());
                play.refuse_in("rollback", &failure.cause, &state, "").await
            }
            Some(failure) => {
                let state = failure
                    .status
                    .map(|s| s.summary)
                    .unwrap_or_else(|| "unknown".into());
                play.fail("rollback", &failure.cause, &state, &failure.next)
                    .await
            }
            None => {
                let cause = conn.failure_text(&status);
                play.lost("rollback", &cause, &[format!("ferry rollback {host}")])
                    .await
            }
        },
    }
}
