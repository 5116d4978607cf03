//! Devices awaiting reconnect and their KV keys. After a restore every device is annotated
//! `awaitingReconnect` and needs its key in the KV until it checks in; the KV keeps nothing across a
//! restart, so after every KV restart ferry causes (a publication, its end, a lapse, a rollback) the
//! keys of the devices still annotated in the live database are set again.

use std::time::{Duration, Instant};

use crate::host::Host;
use crate::tasks::database::{Endpoint, Override, error_text};
use crate::tasks::facts::DatabaseKind;
use crate::tasks::restore::{database, kv};

/// The key of every device the live database still marks awaiting reconnect, one per line.
const ANNOTATED: &str = "SELECT COALESCE(string_agg('v1/' || org_id || '/device/' || name || '/awaiting-reconnect', E'\\n' ORDER BY org_id, name), '') FROM devices WHERE deleted_at IS NULL AND annotations->>'device-controller/awaitingReconnect' = 'true'";

/// The live database's annotated devices' keys: the built-in database through psql in its
/// container, an external one as the application user.
pub async fn annotated_keys(host: &Host, over: &Override) -> Result<Vec<String>, String> {
    let db = crate::tasks::facts::database(host);
    let text = if db.kind == DatabaseKind::External || over.host.is_some() {
        let client = Endpoint::external(host, &db, over)?.connect(host).await?;
        let row = client
            .query_one(ANNOTATED, &[])
            .await
            .map_err(|e| format!("devices awaiting reconnect: {}", error_text(&e)))?;
        row.get::<_, String>(0)
    } else {
        database::psql(host, &db.name, ANNOTATED)
            .await
            .map_err(|e| format!("devices awaiting reconnect: {e}"))?
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect())
}

/// Sets the key of every annotated device again (no flush: keys already there stay). The KV may
/// still be starting after its restart: tried for up to 30 s. Returns how many keys were set.
pub async fn reseed(host: &Host, over: &Override) -> Result<usize, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match reseed_once(host, over).await {
            Ok(n) => return Ok(n),
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "re-seeding the awaiting-reconnect keys after the KV restart: {e}"
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

async fn reseed_once(host: &Host, over: &Override) -> Result<usize, String> {
    let keys = annotated_keys(host, over).await?;
    if keys.is_empty() {
        return Ok(0);
    }
    let password = kv::password(host).await?;
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    kv::set(host, &password, &keys).await?;
    Ok(keys.len())
}

/// What facts report: the devices awaiting reconnect, and how many of their keys the KV holds.
#[derive(Debug, Clone, Default)]
pub struct Standing {
    pub awaiting: u64,
    /// Of those devices' keys, how many the KV holds (each one looked up).
    pub keyed: u64,
    /// Why it could not be read (empty: read).
    pub unknown: String,
}

pub async fn standing(host: &Host) -> Standing {
    let keys = match annotated_keys(host, &Override::default()).await {
        Ok(keys) => keys,
        Err(e) => {
            return Standing {
                unknown: e,
                ..Default::default()
            };
        }
    };
    if keys.is_empty() {
        return Standing::default();
    }
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let keyed = match kv::password(host).await {
        Ok(password) => kv::existing(host, &password, &keys).await,
        Err(e) => Err(e),
    };
    match keyed {
        Ok(n) => Standing {
            awaiting: keys.len() as u64,
            keyed: n as u64,
            unknown: String::new(),
        },
        Err(e) => Standing {
            awaiting: keys.len() as u64,
            keyed: 0,
            unknown: format!("the KV's keys: {e}"),
        },
    }
}

/// After ferry restarted the KV: the annotated devices' keys set again, in words for the reply
/// (empty when no device awaits a reconnect). A failure is reported, not fatal: the restart itself
/// did what it was for.
pub async fn after_kv_restart(host: &Host) -> String {
    match reseed(host, &Override::default()).await {
        Ok(0) => String::new(),
        Ok(n) => format!(
            "{n} awaiting-reconnect keys set again in the restarted KV (devices still awaiting reconnect)"
        ),
        Err(e) => {
            tracing::error!(error = %e, "the KV restarted without its awaiting-reconnect keys");
            format!(
                "{e}; devices awaiting reconnect have no KV key: `ferry prepare-devices` seeds them"
            )
        }
    }
}
