//! Device preparation after a restore (docs/upstream-contract.md §6), in one transaction as the
//! application user:
//! devices marked awaiting reconnect, unapproved enrollment requests annotated, a SystemRestored event,
//! and the list of KV keys to seed.

use std::path::Path;

use serde::Serialize;

use crate::tasks::database::error_text;

/// What preparation changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Prepared {
    pub devices: u64,
    pub enrollment_requests: u64,
    pub keys: usize,
    pub organizations: usize,
}

const DEVICES: &str = r#"
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
    RETURNING org_id, name)
UPDATE device_timestamps t SET last_seen = NULL FROM updated u WHERE t.org_id = u.org_id AND t.name = u.name"#;

const ENROLLMENT_REQUESTS: &str = r#"
UPDATE enrollment_requests SET
    annotations = COALESCE(annotations, '{}'::jsonb) || '{"device-controller/awaitingReconnect": "true"}'::jsonb,
    resource_version = COALESCE(resource_version, 0) + 1
WHERE deleted_at IS NULL
  AND COALESCE(status->'approval'->>'approved', '') <> 'true'
  AND (annotations->>'device-controller/awaitingReconnect') IS DISTINCT FROM 'true'"#;

/// Every non-deleted device of every organization gets a key, decommissioned ones included (upstream).
const KEYS: &str = "SELECT o.id::text, d.name FROM organizations o JOIN devices d ON d.org_id = o.id WHERE d.deleted_at IS NULL ORDER BY 1, 2";

const EVENT: &str = r#"
INSERT INTO events (org_id, name, reason, source_component, actor, type, message, details,
                    involved_object_name, involved_object_kind)
VALUES ('00000000-0000-0000-0000-000000000000', gen_random_uuid()::text, 'SystemRestored', '', '', 'Normal',
        $1, '{}'::jsonb, 'database', 'System')"#;

/// The KV key that tells the server a device must confirm its state.
pub fn awaiting_key(org: &str, device: &str) -> String {
    format!("v1/{org}/device/{device}/awaiting-reconnect")
}

/// Prepares devices as the application user on `client`; writes the KV keys to `keys_file`.
pub async fn prepare(
    client: &mut tokio_postgres::Client,
    keys_file: &Path,
) -> Result<Prepared, String> {
    let tx = client.transaction().await.map_err(|e| error_text(&e))?;
    let devices = tx
        .execute(DEVICES, &[])
        .await
        .map_err(|e| format!("devices: {}", error_text(&e)))?;
    let enrollment_requests = tx
        .execute(ENROLLMENT_REQUESTS, &[])
        .await
        .map_err(|e| format!("enrollment requests: {}", error_text(&e)))?;
    let rows = tx
        .query(KEYS, &[])
        .await
        .map_err(|e| format!("listing devices: {}", error_text(&e)))?;
    let message = format!(
        "System restored successfully. Updated {devices} devices for post-restoration preparation."
    );
    tx.execute(EVENT, &[&message])
        .await
        .map_err(|e| format!("SystemRestored event: {}", error_text(&e)))?;
    let mut keys = String::new();
    let mut orgs = std::collections::BTreeSet::new();
    for row in &rows {
        let org: String = row.get(0);
        let name: String = row.get(1);
        keys.push_str(&awaiting_key(&org, &name));
        keys.push('\n');
        orgs.insert(org);
    }
    std::fs::write(keys_file, keys).map_err(|e| format!("{}: {e}", keys_file.display()))?;
    tx.commit()
        .await
        .map_err(|e| format!("commit: {}", error_text(&e)))?;
    Ok(Prepared {
        devices,
        enrollment_requests,
        keys: rows.len(),
        organizations: orgs.len(),
    })
}
