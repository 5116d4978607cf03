//! Versioned catalog schema. Each migration runs once, in order, in a transaction.

/// (version, SQL). Append only: never edit a released migration.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE runs (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    pattern text NOT NULL,
    operator text NOT NULL,
    operator_fingerprint text NOT NULL,
    os_user text NOT NULL,
    controller_host text NOT NULL,
    flags jsonb NOT NULL DEFAULT '{}',
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome text
);
CREATE TABLE archives (
    id bigserial PRIMARY KEY,
    host text NOT NULL,
    name text NOT NULL,
    size bigint NOT NULL,
    sha256 text NOT NULL,
    compression text NOT NULL,
    flightctl_version text NOT NULL,
    deployment_type text NOT NULL,
    database_included boolean NOT NULL,
    created_at timestamptz NOT NULL,
    duration_ms bigint,
    row_counts jsonb NOT NULL DEFAULT '{}',
    warnings jsonb NOT NULL DEFAULT '[]',
    source_facts jsonb NOT NULL DEFAULT '{}',
    run_id bigint REFERENCES runs(id),
    pinned boolean NOT NULL DEFAULT false,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (host, name)
);
CREATE TABLE host_results (
    run_id bigint NOT NULL REFERENCES runs(id),
    host text NOT NULL,
    outcome text NOT NULL,
    phase text,
    error text,
    archive_id bigint REFERENCES archives(id),
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    PRIMARY KEY (run_id, host)
);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE ledger (
    seq bigint PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    content text NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL
);
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit ledger is append-only';
END $$;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
-- ferry appends as a role that may only read and insert; where the catalog's owner cannot create
-- roles (a shared catalog), the trigger alone guards the table.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ferry_ledger_writer') THEN
        CREATE ROLE ferry_ledger_writer NOLOGIN;
    END IF;
    GRANT SELECT, INSERT ON ledger TO ferry_ledger_writer;
    GRANT ferry_ledger_writer TO CURRENT_USER;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'ferry_ledger_writer not created: %', SQLERRM;
END $$;
"#,
    ),
    (
        3,
        r#"
-- Why an archive cannot be trusted as it is (its sidecar disagrees with it), or NULL.
ALTER TABLE archives ADD COLUMN suspect text;
-- The controller process that runs a run (pid:start time), to tell a killed one from a live one.
ALTER TABLE runs ADD COLUMN controller_process text;
"#,
    ),
    (
        4,
        r#"
-- Archives are deleted from the store but never from the catalog: history and ledger outlive them.
ALTER TABLE archives ADD COLUMN deleted_at timestamptz;
ALTER TABLE archives ADD COLUMN deleted_reason text;
-- When the archive's digest was last proven (on arrival, by `archives verify`).
ALTER TABLE archives ADD COLUMN verified_at timestamptz;
UPDATE archives SET verified_at = recorded_at WHERE suspect IS NULL;
-- The archive a restore works with, so retention never deletes it under the restore.
ALTER TABLE runs ADD COLUMN archive_id bigint;
-- `ferry serve` replicas sharing this catalog.
CREATE TABLE serve_replicas (
    id text PRIMARY KEY,
    controller_host text NOT NULL,
    process text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    leader boolean NOT NULL DEFAULT false,
    stopped_at timestamptz
);
-- One row per (schedule, host, cron slot): claimed by exactly one replica at a time.
CREATE TABLE scheduled_runs (
    id bigserial PRIMARY KEY,
    schedule text NOT NULL,
    host text NOT NULL,
    slot timestamptz NOT NULL,
    due_at timestamptz NOT NULL,
    preferred text,
    state text NOT NULL DEFAULT 'pending',
    owner text,
    attempts int NOT NULL DEFAULT 0,
    run_id bigint,
    archive_id bigint,
    phase text,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (schedule, host, slot)
);
CREATE INDEX scheduled_runs_due ON scheduled_runs (state, due_at);
-- What status and metrics read at every scrape: each host's newest live archive, its last failure.
CREATE INDEX archives_live ON archives (host, created_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX host_results_failures ON host_results (host, finished_at DESC) WHERE outcome <> 'ok';
-- What serve tracks per host between runs.
CREATE TABLE host_status (
    host text PRIMARY KEY,
    tracked_since timestamptz NOT NULL DEFAULT now(),
    rpo_state text,
    rpo_state_since timestamptz,
    reachable boolean,
    reachable_checked_at timestamptz,
    reach_error text
);
-- Webhook alerts: kept after delivery, and kept when undeliverable.
CREATE TABLE alerts (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    host text NOT NULL,
    url text NOT NULL,
    payload jsonb NOT NULL,
    state text NOT NULL DEFAULT 'pending',
    attempts int NOT NULL DEFAULT 0,
    max_attempts int NOT NULL DEFAULT 8,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);
"#,
    ),
    (
        5,
        r#"
-- Encrypted archives: size and sha256 stay the stored object's (the ciphertext); these are the
-- upstream archive's, and the public keys its key is wrapped for.
ALTER TABLE archives ADD COLUMN plain_size bigint, ADD COLUMN plain_sha256 text, ADD COLUMN key_ids text[];
-- Off-site copies: where each archive also is, with the digest checked on arrival.
CREATE TABLE archive_copies (
    archive_id bigint NOT NULL REFERENCES archives(id),
    store text NOT NULL,
    size bigint NOT NULL,
    sha256 text NOT NULL,
    copied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (archive_id, store)
);
"#,
    ),
    (
        6,
        r#"
-- Drills: an archive restored into a scratch database and checked. The archive's drilled_at is its
-- newest passing drill ("verified by restore").
CREATE TABLE drills (
    id bigserial PRIMARY KEY,
    archive_id bigint NOT NULL REFERENCES archives(id),
    ran_on text NOT NULL,
    run_id bigint,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    passed boolean NOT NULL,
    failures text[] NOT NULL,
    detail jsonb NOT NULL
);
CREATE INDEX drills_archive ON drills (archive_id, finished_at DESC);
ALTER TABLE archives ADD COLUMN drilled_at timestamptz;
-- v1.3: the encryption key ids the archive's database uses (its enc:v1:<keyid>: values).
ALTER TABLE archives ADD COLUMN db_key_ids text[];
"#,
    ),
    (
        7,
        r#"
-- Evidence per archive and store: every copy, the first one included, with the state its bytes
-- were last found in (good: hashed equal to the catalog; suspect, with a reason; missing), what
-- found it and when. An archive counts as good only where a copy says so.
ALTER TABLE archive_copies
    ADD COLUMN state text NOT NULL DEFAULT 'good',
    ADD COLUMN reason text,
    ADD COLUMN detail text,
    ADD COLUMN evidence text NOT NULL DEFAULT 'copy',
    ADD COLUMN state_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN proven_at timestamptz,
    ADD COLUMN seen_at timestamptz,
    -- The object version the last proof read (inode/size/mtime, or ETag): a presence check that
    -- finds another one knows the copy changed since it was proven.
    ADD COLUMN version text;
UPDATE archive_copies SET state_at = copied_at, proven_at = copied_at;
-- Archives catalogued before stores were recorded: the store that holds them is found by listing
-- it (the next ferry that opens a store), never assumed.
ALTER TABLE archives ADD COLUMN stores_known boolean NOT NULL DEFAULT true;
UPDATE archives SET stores_known = false;
CREATE INDEX archive_copies_store ON archive_copies (store, state);
"#,
    ),
];

/// Applies every migration not yet applied; concurrent ferry processes serialise on an advisory lock.
pub async fn apply(client: &mut tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(7482001);
         CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
    }
    tx.commit().await
}
