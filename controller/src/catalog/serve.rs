//! What `ferry serve` keeps in the catalog: its replicas, one row per scheduled slot and host (the
//! unit of work a replica claims), per-host RPO and reachability, and webhook alerts. Every claim is
//! a conditional UPDATE, so two replicas sharing a catalog never both run the same slot.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;

use super::{Catalog, CatalogError};

/// A replica whose heartbeat is older than this is gone; its runs are taken over.
pub const REPLICA_EXPIRY: Duration = Duration::from_secs(15);

/// Advisory lock key of the leader (the replica that evaluates RPOs and probes agents).
const LEADER_LOCK: i64 = 7_482_002;
/// Advisory lock class of a host being backed up by some replica.
const HOST_LOCK_CLASS: i32 = 7_482_100;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Replica {
    pub id: String,
    pub controller_host: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub heartbeat_at: OffsetDateTime,
    pub leader: bool,
    pub live: bool,
}

/// A scheduled slot of one host, due to run.
#[derive(Debug, Clone)]
pub struct DueRun {
    pub id: i64,
    pub schedule: String,
    pub host: String,
    pub slot: OffsetDateTime,
    pub preferred: Option<String>,
    /// Due for a while: any replica may take it, not only the preferred one.
    pub late: bool,
}

/// A run a gone replica left unfinished.
#[derive(Debug, Clone)]
pub struct Abandoned {
    pub id: i64,
    pub owner: String,
    pub run_id: Option<i64>,
    pub host: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HostState {
    #[serde(with = "time::serde::rfc3339")]
    pub tracked_since: OffsetDateTime,
    pub rpo_state: Option<String>,
    pub reachable: Option<bool>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub reachable_checked_at: Option<OffsetDateTime>,
    pub reach_error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GoodArchive {
    pub id: String,
    pub name: String,
    pub size: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub duration_ms: Option<i64>,
}

/// A host's newest archive, when no store holds a good copy of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ArchiveProblem {
    pub id: String,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Its copies' states: "missing", "suspect (body-differs)", …
    pub state: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LastFailure {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub outcome: String,
    pub phase: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AlertRow {
    pub id: i64,
    pub kind: String,
    pub host: String,
    pub url: String,
    pub payload: Value,
    pub state: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Replica `replica` in this process: the owner of the runs it claims.
fn instance(replica: &str) -> String {
    format!("{replica}@{}", crate::process::this_process())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Catalog {
    /// Claims replica name `id` for this process; refused (the live one it belongs to is
    /// returned) while another process holds it: stopped, or silent past the expiry, it is free.
    pub async fn register_replica(
        &self,
        id: &str,
        host: &str,
    ) -> Result<Option<Replica>, CatalogError> {
        let claimed = self
            .execute(
                "INSERT INTO serve_replicas (id, controller_host, process) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET controller_host = $2, process = $3, started_at = now(),
                     heartbeat_at = now(), stopped_at = NULL, leader = false
                 WHERE serve_replicas.stopped_at IS NOT NULL
                    OR serve_replicas.heartbeat_at <= now() - make_interval(secs => $4)",
                &[&id, &host, &crate::process::this_process(), &secs(REPLICA_EXPIRY)],
            )
            .await?;
        if claimed == 1 {
            return Ok(None);
        }
        // Its holder ran on this machine and its process is gone (killed, and restarted by
        // systemd before the heartbeat expired): the name is free now, not in 15 s.
        let holder = self
            .client()
            .query_opt(
                "SELECT COALESCE(process, '') FROM serve_replicas WHERE id = $1 AND controller_host = $2",
                &[&id, &host],
            )
            .await?;
        if let Some(process) = holder.map(|r| r.get::<_, String>(0))
            && !crate::process::alive(&process)
        {
            let taken = self
                .execute(
                    "UPDATE serve_replicas SET process = $3, started_at = now(), heartbeat_at = now(),
                         stopped_at = NULL, leader = false
                     WHERE id = $1 AND controller_host = $2 AND COALESCE(process, '') = $4",
                    &[&id, &host, &crate::process::this_process(), &process],
                )
                .await?;
            if taken == 1 {
                return Ok(None);
            }
        }
        Ok(self.replicas().await?.into_iter().find(|r| r.id == id))
    }

    /// This process's heartbeat under its replica name (another process that took the name over
    /// is not touched).
    pub async fn heartbeat(&self, id: &str, leader: bool) -> Result<(), CatalogError> {
        self.execute(
            "UPDATE serve_replicas SET heartbeat_at = now(), leader = $2, stopped_at = NULL
                 WHERE id = $1 AND process = $3",
            &[&id, &leader, &crate::process::this_process()],
        )
        .await?;
        Ok(())
    }

    pub async fn replica_stopped(&self, id: &str) -> Result<(), CatalogError> {
        self.execute(
            "UPDATE serve_replicas SET stopped_at = now(), leader = false WHERE id = $1 AND process = $2",
            &[&id, &crate::process::this_process()],
        )
        .await?;
        Ok(())
    }

    /// Every replica seen in the last day, live ones first.
    pub async fn replicas(&self) -> Result<Vec<Replica>, CatalogError> {
        let rows = self
            .client()
            .query(
                "SELECT id, controller_host, started_at, heartbeat_at, leader,
                        stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $1) AS live
                 FROM serve_replicas WHERE heartbeat_at > now() - interval '1 day'
                 ORDER BY live DESC, id",
                &[&secs(REPLICA_EXPIRY)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Replica {
                id: r.get(0),
                controller_host: r.get(1),
                started_at: r.get(2),
                heartbeat_at: r.get(3),
                leader: r.get::<_, bool>(4) && r.get::<_, bool>(5),
                live: r.get(5),
            })
            .collect())
    }

    /// Takes the leader's advisory lock if it is free. Held by this connection until it ends, so a
    /// killed leader frees it at once.
    pub async fn try_lead(&self) -> Result<bool, CatalogError> {
        let row = self
            .client()
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
            .await?;
        Ok(row.get(0))
    }

    /// Takes the cross-replica lock of a host being backed up; false if another replica holds it.
    pub async fn try_lock_host(&self, host: &str) -> Result<bool, CatalogError> {
        let row = self
            .client()
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&HOST_LOCK_CLASS, &host],
            )
            .await?;
        Ok(row.get(0))
    }

    pub async fn unlock_host(&self, host: &str) -> Result<(), CatalogError> {
        self.execute(
            "SELECT pg_advisory_unlock($1, hashtext($2))",
            &[&HOST_LOCK_CLASS, &host],
        )
        .await?;
        Ok(())
    }

    /// Records a slot of `schedule` on `host` (once, whichever replica gets there first) and
    /// supersedes that host's older slots still waiting. `satisfied` records a slot a newer
    /// archive already covers, so nothing runs.
    pub async fn plan_slot(
        &self,
        schedule: &str,
        host: &str,
        slot: OffsetDateTime,
        due_at: OffsetDateTime,
        preferred: Option<&str>,
        satisfied: bool,
    ) -> Result<bool, CatalogError> {
        let state = if satisfied { "satisfied" } else { "pending" };
        let inserted = self
            .client()
            .execute(
                "INSERT INTO scheduled_runs (schedule, host, slot, due_at, preferred, state)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (schedule, host, slot) DO NOTHING",
                &[&schedule, &host, &slot, &due_at, &preferred, &state],
            )
            .await?;
        if inserted == 1 {
            self
                .execute(
                    "UPDATE scheduled_runs SET state = 'superseded', updated_at = now(),
                         error = 'a newer slot of the schedule came due first'
                     WHERE schedule = $1 AND host = $2 AND slot < $3 AND state IN ('pending', 'retrying')",
                    &[&schedule, &host, &slot],
                )
                .await?;
        }
        Ok(inserted == 1)
    }

    /// The newest slot recorded for each (schedule, host).
    pub async fn latest_slots(
        &self,
    ) -> Result<BTreeMap<(String, String), OffsetDateTime>, CatalogError> {
        let rows = self
            .client()
            .query(
                "SELECT schedule, host, max(slot) FROM scheduled_runs GROUP BY schedule, host",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect())
    }

    /// Slots due now, oldest first.
    pub async fn due_runs(&self, limit: i64, grace: Duration) -> Result<Vec<DueRun>, CatalogError> {
        let rows = self
            .client()
            .query(
                "SELECT id, schedule, host, slot, preferred, due_at <= now() - make_interval(secs => $2)
                 FROM scheduled_runs WHERE state IN ('pending', 'retrying') AND due_at <= now()
                 ORDER BY due_at, id LIMIT $1",
                &[&limit, &secs(grace)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| DueRun {
                id: r.get(0),
                schedule: r.get(1),
                host: r.get(2),
                slot: r.get(3),
                preferred: r.get(4),
                late: r.get(5),
            })
            .collect())
    }

    /// Claims a due slot for replica `replica` in this process (runs are owned by a replica
    /// instance, `name@pid:start`: a replica restarted under its name does not inherit, and so
    /// hide, what its previous process left running); None if another replica claimed it first.
    /// Returns the attempt number this claim starts.
    pub async fn claim_run(&self, id: i64, replica: &str) -> Result<Option<i32>, CatalogError> {
        let row = self
            .client()
            .query_opt(
                "UPDATE scheduled_runs SET state = 'running', owner = $2, attempts = attempts + 1, updated_at = now()
                 WHERE id = $1 AND state IN ('pending', 'retrying') RETURNING attempts",
                &[&id, &instance(replica)],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Hands a claimed slot back unstarted (its host was busy), due again after `delay`.
    pub async fn postpone_run(&self, id: i64, delay: Duration) -> Result<(), CatalogError> {
        self.execute(
            "UPDATE scheduled_runs SET state = 'pending', owner = NULL, attempts = attempts - 1,
                     due_at = now() + make_interval(secs => $2), updated_at = now()
                 WHERE id = $1 AND state = 'running'",
            &[&id, &secs(delay)],
        )
        .await?;
        Ok(())
    }

    /// How many hosts of one scheduled slot are running, across replicas.
    pub async fn running_in_slot(
        &self,
        schedule: &str,
        slot: OffsetDateTime,
    ) -> Result<i64, CatalogError> {
        let row = self
            .client()
            .query_one(
                "SELECT count(*) FROM scheduled_runs WHERE schedule = $1 AND slot = $2 AND state = 'running'",
                &[&schedule, &slot],
            )
            .await?;
        Ok(row.get(0))
    }

    pub async fn run_started(&self, id: i64, run_id: i64) -> Result<(), CatalogError> {
        self.execute(
            "UPDATE scheduled_runs SET run_id = $2, updated_at = now() WHERE id = $1",
            &[&id, &run_id],
        )
        .await?;
        Ok(())
    }

    /// Ends an attempt: `succeeded` or `failed`, or `retrying` again after `retry_in`.
    pub async fn run_finished(
        &self,
        id: i64,
        archive_id: Option<i64>,
        failure: Option<(&str, &str)>,
        retry_in: Option<Duration>,
    ) -> Result<(), CatalogError> {
        let state = match (failure, retry_in) {
            (None, _) => "succeeded",
            (Some(_), Some(_)) => "retrying",
            (Some(_), None) => "failed",
        };
        let (phase, error) = failure.unzip();
        self
            .execute(
                "UPDATE scheduled_runs SET state = $2, archive_id = $3, phase = $4, error = $5,
                     owner = CASE WHEN $2 = 'retrying' THEN NULL ELSE owner END,
                     due_at = CASE WHEN $2 = 'retrying' THEN now() + make_interval(secs => $6) ELSE due_at END,
                     updated_at = now()
                 WHERE id = $1",
                &[&id, &state, &archive_id, &phase, &error, &retry_in.map_or(0.0, secs)],
            )
            .await?;
        Ok(())
    }

    /// (hosts, hosts that failed at least once) of one scheduled slot.
    pub async fn slot_failures(
        &self,
        schedule: &str,
        slot: OffsetDateTime,
    ) -> Result<(i64, i64), CatalogError> {
        let row = self
            .client()
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE state IN ('failed', 'retrying')
                     OR (state = 'running' AND attempts > 1))
                 FROM scheduled_runs WHERE schedule = $1 AND slot = $2 AND state NOT IN ('satisfied', 'superseded')",
                &[&schedule, &slot],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Skips the hosts of a slot not started yet (its failure budget is spent).
    pub async fn skip_rest_of_slot(
        &self,
        schedule: &str,
        slot: OffsetDateTime,
        why: &str,
    ) -> Result<u64, CatalogError> {
        Ok(self
            .client()
            .execute(
                "UPDATE scheduled_runs SET state = 'skipped', error = $3, updated_at = now()
                 WHERE schedule = $1 AND slot = $2 AND state = 'pending'",
                &[&schedule, &slot, &why],
            )
            .await?)
    }

    /// Hands back the runs of replicas that are gone (heartbeat too old), so a live one retries
    /// them; returns what was taken over.
    pub async fn take_over_abandoned(&self, me: &str) -> Result<Vec<Abandoned>, CatalogError> {
        let rows = self
            .client()
            .query(
                "WITH gone AS (
                     SELECT s.id, s.owner FROM scheduled_runs s
                     WHERE s.state = 'running' AND s.owner IS NOT NULL AND s.owner <> $1
                       AND NOT EXISTS (SELECT 1 FROM serve_replicas r
                                       WHERE r.id || '@' || r.process = s.owner AND r.stopped_at IS NULL
                                       AND r.heartbeat_at > now() - make_interval(secs => $2))
                     FOR UPDATE SKIP LOCKED)
                 UPDATE scheduled_runs s SET state = 'pending', owner = NULL, due_at = now(), updated_at = now(),
                     error = 'replica ' || gone.owner || ' stopped during this run; taken over by ' || $1
                 FROM gone WHERE s.id = gone.id
                 RETURNING s.id, gone.owner, s.run_id, s.host",
                &[&instance(me), &secs(REPLICA_EXPIRY)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Abandoned {
                id: r.get(0),
                owner: r.get::<_, Option<String>>(1).unwrap_or_default(),
                run_id: r.get(2),
                host: r.get(3),
            })
            .collect())
    }

    /// This replica stops: its unfinished runs go back to the queue for another replica (or the
    /// next start).
    pub async fn release_runs(&self, me: &str, why: &str) -> Result<u64, CatalogError> {
        Ok(self
            .client()
            .execute(
                "UPDATE scheduled_runs SET state = 'pending', owner = NULL, error = $2, updated_at = now()
                 WHERE owner = $1 AND state = 'running'",
                &[&instance(me), &why],
            )
            .await?)
    }

    /// Forgets scheduled slots and delivered alerts that ended more than `keep` ago (runs, host
    /// results and the ledger keep their history); returns how many rows went.
    pub async fn housekeep(&self, keep: Duration) -> Result<u64, CatalogError> {
        let slots = self
            .client()
            .execute(
                "DELETE FROM scheduled_runs WHERE state IN ('succeeded', 'failed', 'skipped', 'superseded', 'satisfied')
                 AND updated_at < now() - make_interval(secs => $1)",
                &[&secs(keep)],
            )
            .await?;
        let alerts = self
            .client()
            .execute(
                "DELETE FROM alerts WHERE state = 'delivered' AND delivered_at < now() - make_interval(secs => $1)",
                &[&secs(keep)],
            )
            .await?;
        Ok(slots + alerts)
    }

    /// Scheduled slots by state (for metrics).
    pub async fn scheduled_counts(&self) -> Result<BTreeMap<String, i64>, CatalogError> {
        let rows = self
            .client()
            .query(
                "SELECT state, count(*) FROM scheduled_runs GROUP BY state",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Slots waiting past their due time.
    pub async fn queue_length(&self) -> Result<i64, CatalogError> {
        let row = self
            .client()
            .query_one(
                "SELECT count(*) FROM scheduled_runs WHERE state IN ('pending', 'retrying') AND due_at <= now()",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// The next time each host has a slot waiting.
    pub async fn next_due(&self) -> Result<BTreeMap<String, OffsetDateTime>, CatalogError> {
        let rows = self
            .client()
            .query(
                "SELECT host, min(due_at) FROM scheduled_runs WHERE state IN ('pending', 'retrying', 'running') GROUP BY host",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn track_hosts(&self, hosts: &[String]) -> Result<(), CatalogError> {
        self.execute(
            "INSERT INTO host_status (host) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
            &[&hosts],
        )
        .await?;
        Ok(())
    }

    pub async fn host_states(&self) -> Result<BTreeMap<String, HostState>, CatalogError> {
        let rows = self
            .client()
            .query(
                "SELECT host, tracked_since, rpo_state, reachable, reachable_checked_at, reach_error FROM host_status",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    HostState {
                        tracked_since: r.get(1),
                        rpo_state: r.get(2),
                        reachable: r.get(3),
                        reachable_checked_at: r.get(4),
                        reach_error: r.get(5),
                    },
                )
            })
            .collect())
    }

    pub async fn set_reachable(
        &self,
        host: &str,
        reachable: bool,
        error: Option<&str>,
    ) -> Result<(), CatalogError> {
        self
            .execute(
                "INSERT INTO host_status (host, reachable, reachable_checked_at, reach_error) VALUES ($1, $2, now(), $3)
                 ON CONFLICT (host) DO UPDATE SET reachable = $2, reachable_checked_at = now(), reach_error = $3",
                &[&host, &reachable, &error],
            )
            .await?;
        Ok(())
    }

    /// Moves a host to `state`. Entering `breached` queues an `rpo-breached` alert for every URL,
    /// leaving it an `rpo-recovered` one, in the same statement, so a transition alerts exactly
    /// once. Returns the previous state when it changed.
    pub async fn rpo_transition(
        &self,
        host: &str,
        state: &str,
        payload: &Value,
        urls: &[String],
    ) -> Result<Option<Option<String>>, CatalogError> {
        let row = self
            .client()
            .query_opt(
                "WITH o AS (SELECT host, rpo_state AS old FROM host_status WHERE host = $1 FOR UPDATE),
                 t AS (UPDATE host_status h SET rpo_state = $2, rpo_state_since = now() FROM o
                       WHERE h.host = o.host AND o.old IS DISTINCT FROM $2 RETURNING o.old),
                 a AS (INSERT INTO alerts (kind, host, url, payload)
                       SELECT k.kind, $1, u, jsonb_set($3::jsonb, '{kind}', to_jsonb(k.kind))
                       FROM t, unnest($4::text[]) u,
                            LATERAL (SELECT CASE WHEN $2 = 'breached' THEN 'rpo-breached' ELSE 'rpo-recovered' END AS kind) k
                       WHERE $2 = 'breached' OR t.old = 'breached'
                       RETURNING 1)
                 SELECT old, (SELECT count(*) FROM a) FROM t",
                &[&host, &state, payload, &urls],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn enqueue_alert(
        &self,
        kind: &str,
        host: &str,
        payload: &Value,
        urls: &[String],
    ) -> Result<(), CatalogError> {
        self
            .execute(
                "INSERT INTO alerts (kind, host, url, payload) SELECT $1, $2, u, $3 FROM unnest($4::text[]) u",
                &[&kind, &host, payload, &urls],
            )
            .await?;
        Ok(())
    }

    /// Takes the next alert due for delivery. It stays pending but is pushed `lease` into the
    /// future, so a replica that dies while sending it leaves it to another.
    pub async fn next_alert(&self, lease: Duration) -> Result<Option<AlertRow>, CatalogError> {
        let row = self
            .client()
            .query_opt(
                "UPDATE alerts SET attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => $1)
                 WHERE id = (SELECT id FROM alerts WHERE state = 'pending' AND next_attempt_at <= now()
                             ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
                 RETURNING id, kind, host, url, payload, state, attempts, max_attempts, last_error, created_at",
                &[&secs(lease)],
            )
            .await?;
        Ok(row.as_ref().map(alert_from_row))
    }

    /// An alert attempt ended: delivered, due again after `retry_in`, or given up.
    pub async fn alert_attempted(
        &self,
        id: i64,
        error: Option<&str>,
        retry_in: Option<Duration>,
        max_attempts: i32,
    ) -> Result<(), CatalogError> {
        let state = match (error, retry_in) {
            (None, _) => "delivered",
            (Some(_), Some(_)) => "pending",
            (Some(_), None) => "undeliverable",
        };
        self.execute(
            "UPDATE alerts SET state = $2, last_error = $3,
                     delivered_at = CASE WHEN $2 = 'delivered' THEN now() END,
                     next_attempt_at = now() + make_interval(secs => $4), max_attempts = $5
                 WHERE id = $1",
            &[
                &id,
                &state,
                &error,
                &retry_in.map_or(0.0, secs),
                &max_attempts,
            ],
        )
        .await?;
        Ok(())
    }

    /// Alerts not delivered (yet): retrying after a failure, or given up.
    pub async fn undelivered_alerts(&self) -> Result<Vec<AlertRow>, CatalogError> {
        let rows = self
            .client()
            .query(
                "SELECT id, kind, host, url, payload, state, attempts, max_attempts, last_error, created_at
                 FROM alerts WHERE state = 'undeliverable' OR (state = 'pending' AND attempts > 0)
                 ORDER BY id",
                &[],
            )
            .await?;
        Ok(rows.iter().map(alert_from_row).collect())
    }

    /// Each host's newest archive that can be restored (in the store, not suspect).
    pub async fn newest_good_archives(
        &self,
        store: &str,
    ) -> Result<BTreeMap<String, GoodArchive>, CatalogError> {
        let rows = self
            .client()
            .query(
                "SELECT DISTINCT ON (host) host, sha256, name, size, created_at, duration_ms FROM archives a
                 WHERE deleted_at IS NULL
                   AND EXISTS (SELECT 1 FROM archive_copies c WHERE c.archive_id = a.id AND c.store = $1 AND c.state = 'good')
                 ORDER BY host, created_at DESC, id DESC",
                &[&store],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let sha: String = r.get(1);
                (
                    r.get(0),
                    GoodArchive {
                        id: super::short_id(&sha).to_string(),
                        name: r.get(2),
                        size: r.get(3),
                        created_at: r.get(4),
                        duration_ms: r.get(5),
                    },
                )
            })
            .collect())
    }

    /// Each host's newest archive when `store` holds no good copy of it and it is newer than the
    /// host's newest good one there: what ferry status names as the archive that went missing, bad,
    /// or elsewhere.
    pub async fn newest_archive_problems(
        &self,
        store: &str,
    ) -> Result<BTreeMap<String, ArchiveProblem>, CatalogError> {
        let rows = self
            .client()
            .query(
                "SELECT DISTINCT ON (host) host, sha256, name, created_at,
                        coalesce((SELECT c.state || coalesce(' (' || c.reason || ')', '') FROM archive_copies c
                                  WHERE c.archive_id = a.id AND c.store = $1),
                                 (SELECT 'in another store (' || string_agg(c.store, ', ') || ')' FROM archive_copies c
                                  WHERE c.archive_id = a.id),
                                 'with no store recorded')
                 FROM archives a
                 WHERE deleted_at IS NULL
                   AND NOT EXISTS (SELECT 1 FROM archive_copies c WHERE c.archive_id = a.id AND c.store = $1 AND c.state = 'good')
                   AND created_at > coalesce((SELECT max(g.created_at) FROM archives g
                        WHERE g.host = a.host AND g.deleted_at IS NULL
                          AND EXISTS (SELECT 1 FROM archive_copies c
                                      WHERE c.archive_id = g.id AND c.store = $1 AND c.state = 'good')),
                        '-infinity')
                 ORDER BY host, created_at DESC, id DESC",
                &[&store],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let sha: String = r.get(1);
                (
                    r.get(0),
                    ArchiveProblem {
                        id: super::short_id(&sha).to_string(),
                        name: r.get(2),
                        created_at: r.get(3),
                        state: r.get(4),
                    },
                )
            })
            .collect())
    }

    /// Each host's most recent backup that did not succeed.
    pub async fn last_backup_failures(
        &self,
    ) -> Result<BTreeMap<String, LastFailure>, CatalogError> {
        let rows = self
            .client()
            .query(
                "SELECT DISTINCT ON (h.host) h.host, h.finished_at, h.outcome, h.phase, h.error
                 FROM host_results h JOIN runs r ON r.id = h.run_id
                 WHERE r.kind = 'backup' AND h.outcome <> 'ok' ORDER BY h.host, h.finished_at DESC",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    LastFailure {
                        at: r.get(1),
                        outcome: r.get(2),
                        phase: r.get(3),
                        error: r.get(4),
                    },
                )
            })
            .collect())
    }

    /// Each host's most recent drill: when it ended and whether the archive restored.
    pub async fn last_drills(&self) -> Result<Vec<(String, OffsetDateTime, bool)>, CatalogError> {
        let rows = self
            .client()
            .query(
                "SELECT DISTINCT ON (h.host) h.host, h.finished_at, h.outcome = 'ok'
                 FROM host_results h JOIN runs r ON r.id = h.run_id
                 WHERE r.kind = 'drill' ORDER BY h.host, h.finished_at DESC",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Failed backups by host and phase (a counter: host results are never deleted).
    pub async fn backup_failures_by_phase(
        &self,
    ) -> Result<Vec<(String, String, i64)>, CatalogError> {
        let rows = self
            .client()
            .query(
                "SELECT h.host, COALESCE(h.phase, 'unknown'), count(*) FROM host_results h JOIN runs r ON r.id = h.run_id
                 WHERE r.kind = 'backup' AND h.outcome <> 'ok' GROUP BY 1, 2 ORDER BY 1, 2",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// (archives, bytes) in the store, by the catalog.
    pub async fn store_totals(&self) -> Result<(i64, i64), CatalogError> {
        let row = self
            .client()
            .query_one(
                "SELECT count(*), COALESCE(sum(size), 0)::bigint FROM archives WHERE deleted_at IS NULL",
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }
}

fn alert_from_row(r: &tokio_postgres::Row) -> AlertRow {
    AlertRow {
        id: r.get(0),
        kind: r.get(1),
        host: r.get(2),
        url: r.get(3),
        payload: r.get(4),
        state: r.get(5),
        attempts: r.get(6),
        max_attempts: r.get(7),
        last_error: r.get(8),
        created_at: r.get(9),
    }
}
