//! Evidence per archive and store: the catalog says what an archive *should* be (size, sha256);
//! each copy row says what its bytes in one store were last *found* to be, by what and when. An
//! archive counts as good (for restore, drills, retention and the RPO) only where a copy says so.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{ArchiveRecord, Catalog, CatalogError};

/// What a copy's bytes were last found to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Hashed equal to the catalog (at arrival, by a verify, a restore, a drill, an export or a copy).
    Good,
    /// Read, and not what the catalog says: see [`Reason`].
    Suspect,
    /// Not in the store.
    Missing,
}

/// Why a copy is suspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The stored bytes hash to something else than the catalog's digest (or have another size).
    BodyDiffers,
    /// The body is the catalog's, its `.sha256` sidecar is missing or says otherwise.
    SidecarDiffers,
    /// An encrypted archive whose key or chunks do not authenticate.
    AuthFailed,
    /// The store answered, but the bytes could not be read to their end.
    Unreadable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BodyDiffers => "body-differs",
            Reason::SidecarDiffers => "sidecar-differs",
            Reason::AuthFailed => "auth-failed",
            Reason::Unreadable => "unreadable",
        }
    }
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Good => "good",
            State::Suspect => "suspect",
            State::Missing => "missing",
        }
    }
}

/// What read or looked at the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Arrival,
    Verify,
    Restore,
    /// `ferry restore --check`.
    Check,
    Drill,
    Export,
    Copy,
    /// serve's housekeeping: a presence check (HEAD or stat) or a deep verify.
    Housekeeping,
    /// Retention's presence check of what it keeps, before it deletes anything.
    Retention,
    Rebuild,
    /// Catalogued before stores were recorded; found by listing the store.
    Legacy,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Arrival => "arrival",
            Source::Verify => "verify",
            Source::Restore => "restore",
            Source::Check => "check",
            Source::Drill => "drill",
            Source::Export => "export",
            Source::Copy => "copy",
            Source::Housekeeping => "housekeeping",
            Source::Retention => "retention",
            Source::Rebuild => "rebuild",
            Source::Legacy => "legacy",
        }
    }
}

/// One copy of an archive in one store, with its evidence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Copy {
    /// The store's id: its directory or `s3://bucket/prefix` ([`crate::store::Store::id`]).
    pub store: String,
    pub state: State,
    pub reason: Option<Reason>,
    /// The finding in words (digests, the error).
    pub detail: Option<String>,
    pub evidence: Source,
    /// The object version its last proof read (see [`crate::store::Version::fingerprint`]).
    #[serde(default)]
    pub version: Option<String>,
    /// Since when the copy is in this state.
    #[serde(with = "time::serde::rfc3339")]
    pub state_at: OffsetDateTime,
    /// When its bytes were last hashed equal to the catalog.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub proven_at: Option<OffsetDateTime>,
    /// When it was last seen present (a presence check or any read).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub seen_at: Option<OffsetDateTime>,
}

impl Copy {
    /// A copy that just arrived whole (its size and digest matched on the way in).
    pub fn arrived(store: &str) -> Copy {
        let now = OffsetDateTime::now_utc();
        Copy {
            store: store.to_string(),
            state: State::Good,
            reason: None,
            detail: None,
            evidence: Source::Arrival,
            version: None,
            state_at: now,
            proven_at: Some(now),
            seen_at: Some(now),
        }
    }

    /// "good (proven 3h ago by verify)", "suspect: body-differs (…)", "missing since …".
    pub fn describe(&self, now: OffsetDateTime) -> String {
        let by = self.evidence.as_str();
        match self.state {
            State::Good => match self.proven_at {
                Some(t) => format!("good (proven {} ago by {by})", ago(now, t)),
                None => format!("good ({by})"),
            },
            State::Suspect => format!(
                "SUSPECT: {} (found {} ago by {by}{})",
                self.reason.map_or("unknown", Reason::as_str),
                ago(now, self.state_at),
                self.detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
            State::Missing => format!(
                "MISSING from the store (found {} ago by {by})",
                ago(now, self.state_at)
            ),
        }
    }
}

/// A duration for people: 45s, 12m, 3h, 2d.
pub fn ago(now: OffsetDateTime, then: OffsetDateTime) -> String {
    let s = (now - then).whole_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// What one look at a copy found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Its bytes hashed equal to the catalog (and the sidecar agrees); the object version read,
    /// when known.
    Good(Option<String>),
    /// Present, the size the catalog says, the version last proven (or none recorded): not hashed.
    Present,
    /// Present, but not the version last proven: rewritten or replaced since, to be proven again.
    Changed,
    Suspect(Reason, String),
    Missing(String),
}

impl Finding {
    pub fn state(&self) -> Option<State> {
        match self {
            Finding::Good(_) => Some(State::Good),
            Finding::Present | Finding::Changed => None,
            Finding::Suspect(..) => Some(State::Suspect),
            Finding::Missing(_) => Some(State::Missing),
        }
    }
}

/// Where an archive stands in one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Good,
    Suspect(Reason),
    Missing,
    /// Recorded only in other stores (they are named).
    Elsewhere(Vec<String>),
    /// Catalogued before stores were recorded, and not found in this one.
    Unrecorded,
}

impl Standing {
    pub fn is_good(&self) -> bool {
        *self == Standing::Good
    }

    /// A word for tables and JSON: good, suspect, missing, elsewhere, unrecorded.
    pub fn word(&self) -> &'static str {
        match self {
            Standing::Good => "good",
            Standing::Suspect(_) => "suspect",
            Standing::Missing => "missing",
            Standing::Elsewhere(_) => "elsewhere",
            Standing::Unrecorded => "unrecorded",
        }
    }

    /// Why an archive in this standing is not used, for people.
    pub fn why_not(&self) -> String {
        match self {
            Standing::Good => "good".into(),
            Standing::Suspect(r) => format!("suspect: {}", r.as_str()),
            Standing::Missing => "missing from the store".into(),
            Standing::Elsewhere(stores) => format!(
                "recorded in another store ({}), not the configured one",
                stores.join(", ")
            ),
            Standing::Unrecorded => {
                "not found in the configured store and no store recorded for it".into()
            }
        }
    }
}

impl ArchiveRecord {
    /// Its copy in store `store`, if one is recorded.
    pub fn copy_in(&self, store: &str) -> Option<&Copy> {
        self.copies.iter().find(|c| c.store == store)
    }

    /// Where it stands in store `store`.
    pub fn standing(&self, store: &str) -> Standing {
        match self.copy_in(store) {
            Some(c) => match c.state {
                State::Good => Standing::Good,
                State::Suspect => Standing::Suspect(c.reason.unwrap_or(Reason::Unreadable)),
                State::Missing => Standing::Missing,
            },
            None if self.copies.is_empty() => Standing::Unrecorded,
            None => Standing::Elsewhere(self.copies.iter().map(|c| c.store.clone()).collect()),
        }
    }

    /// Whether any store holds a copy last found good.
    pub fn good_anywhere(&self) -> bool {
        self.copies.iter().any(|c| c.state == State::Good)
    }
}

/// An archive passed over when choosing "the newest good one", and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub archive: ArchiveRecord,
    pub standing: Standing,
}

impl Skipped {
    pub fn describe(&self) -> String {
        format!(
            "skipped archive {} ({}): {}",
            self.archive.short_id(),
            self.archive.name,
            self.standing.why_not()
        )
    }
}

/// The newest of `host`'s archives (newest first in `archives`) that is good in `store`, and the
/// newer ones passed over.
pub fn newest_good(
    archives: &[ArchiveRecord],
    host: &str,
    store: &str,
) -> (Option<ArchiveRecord>, Vec<Skipped>) {
    let mut skipped = Vec::new();
    for a in archives.iter().filter(|a| a.host == host) {
        let standing = a.standing(store);
        if standing.is_good() {
            return (Some(a.clone()), skipped);
        }
        skipped.push(Skipped {
            archive: a.clone(),
            standing,
        });
    }
    (None, skipped)
}

impl Catalog {
    /// Records what a look at archive `id`'s copy in `store` found; returns the state it had
    /// before (None when no copy was recorded there). A presence check changes no state.
    pub async fn record_finding(
        &self,
        id: i64,
        store: &str,
        finding: &Finding,
        by: Source,
    ) -> Result<Option<State>, CatalogError> {
        let (state, reason, detail) = match finding {
            Finding::Good(_) => ("good", None, None),
            Finding::Changed => return Ok(None),
            Finding::Present => {
                let row = self
                    .client()
                    .query_opt(
                        "UPDATE archive_copies SET seen_at = now() WHERE archive_id = $1 AND store = $2
                         RETURNING state",
                        &[&id, &store],
                    )
                    .await?;
                return Ok(row.and_then(|r| parse_state(&r.get::<_, String>(0))));
            }
            Finding::Suspect(reason, detail) => {
                ("suspect", Some(reason.as_str()), Some(detail.as_str()))
            }
            Finding::Missing(detail) => ("missing", None, Some(detail.as_str())),
        };
        let good = state == "good";
        let version = match finding {
            Finding::Good(v) => v.clone(),
            _ => None,
        };
        // The old state is read under the row's lock, so of two concurrent findings exactly one
        // sees the transition (an alert is sent once).
        let updated = self
            .client()
            .query_opt(
                "WITH old AS (SELECT state FROM archive_copies WHERE archive_id = $1 AND store = $2 FOR UPDATE)
                 UPDATE archive_copies c SET state = $3, reason = $4, detail = $5, evidence = $6,
                     state_at = CASE WHEN c.state = $3 AND c.reason IS NOT DISTINCT FROM $4 THEN c.state_at ELSE now() END,
                     proven_at = CASE WHEN $7 THEN now() ELSE c.proven_at END,
                     seen_at = CASE WHEN $3 <> 'missing' THEN now() ELSE c.seen_at END,
                     version = CASE WHEN $7 THEN $8 ELSE c.version END
                 FROM old WHERE c.archive_id = $1 AND c.store = $2 RETURNING old.state",
                &[&id, &store, &state, &reason, &detail, &by.as_str(), &good, &version],
            )
            .await?;
        if let Some(row) = updated {
            return Ok(parse_state(&row.get::<_, String>(0)));
        }
        self.client()
            .execute(
                "INSERT INTO archive_copies (archive_id, store, size, sha256, state, reason, detail, evidence,
                                             state_at, proven_at, seen_at, version)
                 SELECT a.id, $2, a.size, a.sha256, $3, $4, $5, $6, now(),
                        CASE WHEN $7 THEN now() END, CASE WHEN $3 <> 'missing' THEN now() END, $8
                 FROM archives a WHERE a.id = $1
                 ON CONFLICT (archive_id, store) DO NOTHING",
                &[&id, &store, &state, &reason, &detail, &by.as_str(), &good, &version],
            )
            .await?;
        Ok(None)
    }

    /// Removes archive `id`'s copy in `store` (it was deleted there); the archive itself is marked
    /// deleted when no copy is left. False when no copy was recorded there.
    pub async fn remove_copy(
        &self,
        id: i64,
        store: &str,
        reason: &str,
    ) -> Result<bool, CatalogError> {
        let row = self
            .client()
            .query_one(
                "WITH gone AS (DELETE FROM archive_copies WHERE archive_id = $1 AND store = $2 RETURNING 1),
                 last AS (
                     UPDATE archives SET deleted_at = now(), deleted_reason = $3
                     WHERE id = $1 AND deleted_at IS NULL AND EXISTS (SELECT 1 FROM gone)
                       AND NOT EXISTS (SELECT 1 FROM archive_copies WHERE archive_id = $1 AND store <> $2)
                     RETURNING 1)
                 SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM last)",
                &[&id, &store, &reason],
            )
            .await?;
        Ok(row.get::<_, i64>(0) > 0)
    }

    /// Whether some archive was catalogued before stores were recorded and is not linked yet.
    pub async fn has_unrecorded(&self) -> Result<bool, CatalogError> {
        let row = self
            .client()
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM archives WHERE NOT stores_known)",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Links archives catalogued before stores were recorded to `store` where `listed` (its
    /// (host, object) → size) has them; returns how many. Their state is what the catalog last knew
    /// (proven on arrival or by a verify, or its sidecar suspect), and suspect when the listed size
    /// is not the catalog's.
    pub async fn adopt_unrecorded(
        &self,
        store: &str,
        listed: &std::collections::BTreeMap<(String, String), u64>,
    ) -> Result<u64, CatalogError> {
        let rows = self
            .client()
            .query(
                "SELECT id, host, name, plain_sha256 IS NOT NULL, suspect FROM archives WHERE NOT stores_known",
                &[],
            )
            .await?;
        let mut adopted = 0;
        for r in &rows {
            let (id, host, name): (i64, String, String) = (r.get(0), r.get(1), r.get(2));
            let object = if r.get::<_, bool>(3) {
                format!("{name}{}", ferry_archive::SEALED_SUFFIX)
            } else {
                name
            };
            let Some(&size) = listed.get(&(host, object)) else {
                continue;
            };
            let size = size as i64;
            let sidecar: Option<String> = r.get(4);
            self.client()
                .execute(
                    "WITH a AS (SELECT *, CASE WHEN size <> $4 THEN 'body-differs'
                                              WHEN $3::text IS NOT NULL THEN 'sidecar-differs' END AS why
                                FROM archives WHERE id = $1),
                     link AS (
                         INSERT INTO archive_copies (archive_id, store, size, sha256, state, reason, detail, evidence, state_at, proven_at, seen_at)
                         SELECT id, $2, size, sha256, CASE WHEN why IS NULL THEN 'good' ELSE 'suspect' END, why,
                                CASE WHEN why = 'body-differs' THEN 'listed at ' || $4 || ' bytes, the catalog says ' || size
                                     ELSE $3 END,
                                $5, coalesce(verified_at, recorded_at), CASE WHEN why IS NULL THEN verified_at END, now()
                         FROM a
                         ON CONFLICT (archive_id, store) DO NOTHING)
                     UPDATE archives SET stores_known = true, deleted_at = NULL, deleted_reason = NULL WHERE id = $1",
                    &[&id, &store, &sidecar, &size, &Source::Legacy.as_str()],
                )
                .await?;
            adopted += 1;
        }
        Ok(adopted)
    }

    /// Re-links an archive `catalog rebuild` found in `store`: its copy there is recorded (found
    /// good by the rebuild's read, or suspect), and a deletion mark the catalog holds against it
    /// is lifted. True when it was marked deleted.
    pub async fn relink(
        &self,
        id: i64,
        store: &str,
        finding: &Finding,
    ) -> Result<bool, CatalogError> {
        let was_deleted = self
            .client()
            .query_opt(
                "SELECT deleted_at IS NOT NULL FROM archives WHERE id = $1",
                &[&id],
            )
            .await?
            .is_some_and(|r| r.get(0));
        self.client()
            .execute(
                "UPDATE archives SET deleted_at = NULL, deleted_reason = NULL, stores_known = true WHERE id = $1",
                &[&id],
            )
            .await?;
        self.record_finding(id, store, finding, Source::Rebuild)
            .await?;
        Ok(was_deleted)
    }

    /// Each archive's copy problems: (host, state) → count, for copies not good, of archives not
    /// deleted. Serve's metrics read it at each scrape.
    pub async fn archive_problems(&self) -> Result<Vec<(String, String, i64)>, CatalogError> {
        let rows = self
            .client()
            .query(
                "SELECT a.host, c.state, count(*) FROM archive_copies c JOIN archives a ON a.id = c.archive_id
                 WHERE a.deleted_at IS NULL AND c.state <> 'good' GROUP BY a.host, c.state ORDER BY 1, 2",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }
}

fn parse_state(s: &str) -> Option<State> {
    match s {
        "good" => Some(State::Good),
        "suspect" => Some(State::Suspect),
        "missing" => Some(State::Missing),
        _ => None,
    }
}

/// The copies column of an archive row: a JSON array built by the query.
pub(super) fn copies_from_json(v: Option<serde_json::Value>) -> Vec<Copy> {
    v.and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

/// The SQL expression that yields an archive row's copies as JSON (for [`copies_from_json`]).
pub(super) const COPIES_JSON: &str = "(SELECT jsonb_agg(jsonb_build_object(
        'store', c.store, 'state', c.state, 'reason', c.reason, 'detail', c.detail, 'evidence', c.evidence,
        'state_at', to_char(c.state_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
        'proven_at', to_char(c.proven_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
        'seen_at', to_char(c.seen_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
        'version', c.version) ORDER BY c.store)
     FROM archive_copies c WHERE c.archive_id = archives.id)";
