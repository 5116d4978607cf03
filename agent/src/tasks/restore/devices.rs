//! Device preparation after a restore (docs/upstream-contract.md §6): devices marked awaiting
//! reconnect, unapproved enrollment requests annotated, a SystemRestored event, and the list of KV keys
//! to seed. One statement, so it is atomic whichever way it reaches the database: `psql` inside the DB
//! container (the loaded temporary database, or the live built-in one) or a connection to an external
//! database.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::host::Host;
use crate::tasks::database::error_text;

/// What preparation changed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Prepared {
    pub devices: u64,
    pub enrollment_requests: u64,
    pub keys: usize,
    pub organizations: usize,
}

/// The statement's answer: the counts and the keys, as one JSON document.
#[derive(Deserialize)]
struct Answer {
    #[serde(flatten)]
    prepared: Prepared,
    key_list: Vec<String>,
}

/// Every non-deleted device of every organization gets a key, decommissioned ones included (upstream).
/// The event counts the devices whose timestamps were reset, as upstream's does.
const PREPARE: &str = r#"
WITH updated AS (
    UPDATE devices SET
        annotations = COALESCE(annotations, '{}'::jsonb) || '{"device-controller/awaitingReconnect": "true"}'::jsonb,
        status = jsonb_set(jsonb_set(COALESCE(status, '{}'::jsonb), '{summary}',
                     '{"status": "AwaitingReconnect", "info": "Device has not reconnected since restore to confirm its current state."}'::jsonb),
                 '{updated}', '{"status": "Unknown"}'::jsonb),
        resource_version = COALESCE(resource_version, 0) + 1
    WHERE deleted_at IS NULL
      AND COALESCE(status->'lifecycle'->>'status', '') NOT IN ('Decommissioned', 'Decommissioning')
      AND (annotations->>'device-controller/awaitingReconnect') IS DISTINCT FROM 'true'
    RETURNING org_id, name),
stamps AS (
    UPDATE device_timestamps t SET last_seen = NULL FROM updated u
    WHERE t.org_id = u.org_id AND t.name = u.name RETURNING 1),
requests AS (
    UPDATE enrollment_requests SET
        annotations = COALESCE(annotations, '{}'::jsonb) || '{"device-controller/awaitingReconnect": "true"}'::jsonb,
        resource_version = COALESCE(resource_version, 0) + 1
    WHERE deleted_at IS NULL
      AND COALESCE(status->'approval'->>'approved', '') <> 'true'
      AND (annotations->>'device-controller/awaitingReconnect') IS DISTINCT FROM 'true'
    RETURNING 1),
event AS (
    INSERT INTO events (org_id, name, reason, source_component, actor, type, message, details,
                        involved_object_name, involved_object_kind)
    SELECT '00000000-0000-0000-0000-000000000000', gen_random_uuid()::text, 'SystemRestored', '', '', 'Normal',
           format('System restored successfully. Updated %s devices for post-restoration preparation.',
                  (SELECT count(*) FROM stamps)),
           '{}'::jsonb, 'database', 'System'
    RETURNING 1),
keys AS (
    SELECT o.id::text AS org, d.name FROM organizations o JOIN devices d ON d.org_id = o.id
    WHERE d.deleted_at IS NULL)
SELECT json_build_object(
    'devices', (SELECT count(*) FROM stamps),
    'enrollment_requests', (SELECT count(*) FROM requests),
    'keys', (SELECT count(*) FROM keys),
    'organizations', (SELECT count(DISTINCT org) FROM keys),
    'events', (SELECT count(*) FROM event),
    'key_list', (SELECT COALESCE(json_agg('v1/' || org || '/device/' || name || '/awaiting-reconnect'
                                          ORDER BY org, name), '[]'::json) FROM keys))::text"#;

/// Prepares devices in database `db` of the DB container (as `postgres`, over its socket: nothing
/// is published); writes the KV keys to `keys_file`.
pub async fn prepare_in_container(
    host: &Host,
    db: &str,
    keys_file: &Path,
) -> Result<Prepared, String> {
    let out = super::database::psql(host, db, PREPARE)
        .await
        .map_err(|e| format!("device preparation in {db}: {e}"))?;
    record(out.trim(), keys_file)
}

/// Prepares devices as the application user on `client` (an external database).
pub async fn prepare(
    client: &mut tokio_postgres::Client,
    keys_file: &Path,
) -> Result<Prepared, String> {
    let row = client
        .query_one(PREPARE, &[])
        .await
        .map_err(|e| format!("device preparation: {}", error_text(&e)))?;
    record(&row.get::<_, String>(0), keys_file)
}

fn record(answer: &str, keys_file: &Path) -> Result<Prepared, String> {
    let answer: Answer = serde_json::from_str(answer)
        .map_err(|e| format!("device preparation answered unexpectedly ({e}): {answer:.200}"))?;
    let mut keys = answer.key_list.join("\n");
    keys.push('\n');
    std::fs::write(keys_file, keys).map_err(|e| format!("{}: {e}", keys_file.display()))?;
    Ok(answer.prepared)
}

/// `prepare-loaded`: device preparation in the loaded temporary database, before the units stop.
pub(super) async fn prepare_loaded(
    host: &crate::host::Host,
    dir: &std::path::Path,
    j: &mut super::journal::Journal,
) -> Result<super::StepOutcome, String> {
    let started = std::time::Instant::now();
    let prepared = prepare_in_container(host, &j.temp_db, &dir.join("kv-keys.txt")).await?;
    j.kv_keys = prepared.keys;
    Ok(prepared_outcome(
        &prepared,
        &format!(
            "{} inside flightctl-db in {:.1}s, before the units stop",
            j.temp_db,
            started.elapsed().as_secs_f64()
        ),
    ))
}

/// `prepare-devices`: device preparation in the live database (external, or prepared in place).
pub(super) async fn prepare_devices(
    ctx: &super::RestoreContext,
    dir: &std::path::Path,
    j: &mut super::journal::Journal,
) -> Result<super::StepOutcome, String> {
    let host = &ctx.host;
    let keys = dir.join("kv-keys.txt");
    let (prepared, place) = if j.external_database {
        let endpoint = external_database(ctx, j)?;
        let mut client = endpoint.connect(host).await?;
        (prepare(&mut client, &keys).await?, endpoint.describe())
    } else {
        let prepared = prepare_in_container(host, &j.db_name, &keys).await?;
        (prepared, format!("{} inside flightctl-db", j.db_name))
    };
    j.kv_keys = prepared.keys;
    Ok(prepared_outcome(&prepared, &place))
}

/// The external database the host's (restored) config names, with the operator's overrides.
pub(super) fn external_database(
    ctx: &super::RestoreContext,
    j: &super::journal::Journal,
) -> Result<crate::tasks::database::Endpoint, String> {
    let db = crate::tasks::facts::database(&ctx.host);
    crate::tasks::database::Endpoint::external(&ctx.host, &db, &j.database_override)
        .map_err(|e| format!("external database: {e}"))
}

/// A device preparation's report: its counts, where it ran.
fn prepared_outcome(prepared: &Prepared, place: &str) -> super::StepOutcome {
    super::StepOutcome {
        summary: format!(
            "updated {} devices, {} enrollment requests on {place}; {} awaiting-reconnect keys across {} organizations; SystemRestored event written",
            prepared.devices, prepared.enrollment_requests, prepared.keys, prepared.organizations
        ),
        details: serde_json::to_value(prepared).unwrap_or_default(),
        skipped: false,
    }
}
