//! `health`: the API is ready and reports the archive's version; the KV holds one key per device.

use std::time::{Duration, Instant};

use ferry_proto::v1::Step;
use serde_json::json;

use super::journal::Journal;
use super::{RestoreContext, StepOutcome, database, kv};

pub async fn run(ctx: &RestoreContext, j: &Journal) -> Result<StepOutcome, String> {
    let host = &ctx.host;
    let ca = host.path("/etc/flightctl/pki/ca.crt");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match crate::tasks::api::ready(&ctx.api, &ca).await {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => {
                return Err(format!("the API is not ready: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    let version = crate::tasks::api::read_version(&ctx.api, &ca)
        .await
        .map_err(|e| e.to_string())?;
    if version != j.version {
        return Err(format!(
            "the API reports {version}, the archive is {}",
            j.version
        ));
    }
    let password = kv::password(host).await?;
    let keys = kv::count(host, &password).await?;
    if j.is_done(Step::SeedKv) && keys != j.kv_keys {
        return Err(format!(
            "the KV holds {keys} awaiting-reconnect keys, expected {}",
            j.kv_keys
        ));
    }
    let statuses = if j.external_database && j.plan().contains(&Step::PrepareDevices) {
        let client = super::devices::external_database(ctx, j)?
            .connect(host)
            .await?;
        let row = client
            .query_one(database::DEVICE_STATUSES, &[])
            .await
            .map_err(|e| crate::tasks::database::error_text(&e))?;
        row.get::<_, serde_json::Value>(0)
    } else if !j.external_database {
        database::device_statuses(host, &j.db_name).await?
    } else {
        json!({})
    };
    Ok(StepOutcome {
        summary: format!(
            "API ready at {version}; {keys} awaiting-reconnect keys; devices by status {statuses}"
        ),
        details: json!({"version": version, "kv_keys": keys, "devices_by_status": statuses}),
        skipped: false,
    })
}
