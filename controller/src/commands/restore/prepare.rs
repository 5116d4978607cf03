//! `ferry prepare-devices HOST`: device preparation alone, on the host's current database (after a
//! DBA-led database restore, or to finish a partial one); on an external database, at the address its
//! service-config.yaml names unless `--db-host/--db-port/--db-name` say otherwise.

use ferry_proto::v1::{DatabaseOverride, StageChunk};
use serde_json::json;
use time::OffsetDateTime;

use crate::cli::{GlobalArgs, PrepareDevicesArgs};
use crate::config::Config;
use crate::types::OperationKind;

pub async fn prepare_devices(
    config: &Config,
    global: &GlobalArgs,
    host: &str,
    args: &PrepareDevicesArgs,
) -> i32 {
    let flags = json!({"db_host": args.db_host, "db_port": args.db_port, "db_name": args.db_name,
                       "lease_seconds": args.lease_seconds});
    let opened = match crate::selection::open(config, global, host).await {
        Ok(opened) => opened,
        Err(stop) => return stop.say(),
    };
    let (play, conn) = match super::begin(
        &opened,
        (OperationKind::PrepareDevices, "prepare-devices"),
        flags,
    )
    .await
    {
        Ok(begun) => begun,
        Err(stop) => return stop.say(),
    };
    let restore_id = format!(
        "p{}-{}",
        play.run_id,
        OffsetDateTime::now_utc().unix_timestamp()
    );
    play.header(&format!("prepare devices on {host}"));
    let first = StageChunk {
        restore_id: restore_id.clone(),
        prepare_only: true,
        // The lease holds from the stage on: a controller lost during it frees the host as soon.
        lease_seconds: args.lease_seconds,
        database: Some(DatabaseOverride {
            host: args.db_host.clone().unwrap_or_default(),
            port: args.db_port.map(u32::from).unwrap_or_default(),
            name: args.db_name.clone().unwrap_or_default(),
        }),
        ..Default::default()
    };
    let begun = conn
        .client
        .clone()
        .stage(tokio_stream::iter(vec![first]))
        .await;
    if let Err(status) = begun {
        if let Some(e) = conn.transport_error(&status) {
            return play.lost("stage", &e.to_string(), &[]).await;
        }
        // The host's own answer: what holds it (an unfinished restore is its state) and what to do.
        let failure = super::step_failure(&status);
        let cause = failure
            .as_ref()
            .map(|f| f.cause.clone())
            .unwrap_or_else(|| status.message().trim_start_matches("stage: ").to_string());
        let next = match failure.as_ref().filter(|f| !f.next.is_empty()) {
            Some(f) => format!("`{}`", f.next.join("` or `")),
            None => format!("`ferry facts {host}` shows the host's database settings"),
        };
        return match failure.as_ref().and_then(|f| f.status.as_ref()) {
            Some(held) => play.refuse_in("stage", &cause, &held.summary, &next).await,
            None => play.refuse("stage", &cause, &next).await,
        };
    }
    super::steps(&play, &conn, &restore_id, args.lease_seconds).await
}
