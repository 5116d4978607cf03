//! The simulated host's database: Flight Control's tables (docs/upstream-contract.md §6.1) and
//! realistic seed rows.

/// Roles and the `flightctl` database, as the db-users-init job leaves them. `{app}`, `{migrator}` and
/// `{admin}` are replaced with the passwords from the podman secrets.
pub const ROLES: &str = r#"
CREATE ROLE admin LOGIN SUPERUSER CREATEDB CREATEROLE PASSWORD '{admin}';
CREATE ROLE flightctl_app LOGIN PASSWORD '{app}';
CREATE ROLE flightctl_migrator LOGIN PASSWORD '{migrator}';
CREATE DATABASE flightctl;
GRANT ALL ON DATABASE flightctl TO flightctl_migrator;
GRANT CONNECT ON DATABASE flightctl TO flightctl_app;
"#;

/// The schema the db-migrate job creates, trimmed to what backup and restore touch.
pub const SCHEMA: &str = r#"
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE organizations (
    id uuid PRIMARY KEY,
    display_name text,
    external_id text,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now()
);
CREATE UNIQUE INDEX org_external_id_idx ON organizations (external_id) WHERE external_id <> '';

CREATE TABLE devices (
    org_id uuid NOT NULL REFERENCES organizations(id),
    name text NOT NULL,
    owner text,
    labels jsonb,
    annotations jsonb,
    generation bigint,
    resource_version bigint,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now(),
    deleted_at timestamptz,
    alias text,
    spec jsonb,
    status jsonb,
    service_conditions jsonb,
    rendered_config jsonb,
    render_timestamp timestamptz,
    rendered_applications jsonb,
    PRIMARY KEY (org_id, name)
);
CREATE INDEX owner_idx ON devices (owner);
CREATE INDEX idx_devices_deleted_at ON devices (deleted_at);
CREATE INDEX idx_device_labels ON devices USING gin (labels);
CREATE INDEX idx_device_annotations ON devices USING gin (annotations);
CREATE INDEX device_alias_gin ON devices USING gin (alias gin_trgm_ops);

CREATE TABLE device_timestamps (
    org_id uuid NOT NULL,
    name text NOT NULL,
    last_seen timestamptz,
    PRIMARY KEY (org_id, name),
    FOREIGN KEY (org_id, name) REFERENCES devices (org_id, name) ON DELETE CASCADE
);

CREATE TABLE device_labels (
    org_id uuid NOT NULL,
    device_name text NOT NULL,
    label_key text NOT NULL,
    label_value text,
    PRIMARY KEY (org_id, device_name, label_key),
    FOREIGN KEY (org_id, device_name) REFERENCES devices (org_id, name) ON DELETE CASCADE
);

CREATE FUNCTION create_device_timestamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO device_timestamps (org_id, name) VALUES (NEW.org_id, NEW.name) ON CONFLICT DO NOTHING;
    RETURN NEW;
END $$;
CREATE TRIGGER device_after_insert AFTER INSERT ON devices
    FOR EACH ROW EXECUTE FUNCTION create_device_timestamp();

CREATE FUNCTION sync_device_labels() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM device_labels WHERE org_id = NEW.org_id AND device_name = NEW.name;
    INSERT INTO device_labels (org_id, device_name, label_key, label_value)
        SELECT NEW.org_id, NEW.name, key, value FROM jsonb_each_text(COALESCE(NEW.labels, '{}'::jsonb));
    RETURN NEW;
END $$;
CREATE TRIGGER device_labels_insert AFTER INSERT ON devices
    FOR EACH ROW EXECUTE FUNCTION sync_device_labels();
CREATE TRIGGER device_labels_update AFTER UPDATE OF labels ON devices
    FOR EACH ROW EXECUTE FUNCTION sync_device_labels();

CREATE TABLE enrollment_requests (LIKE devices INCLUDING DEFAULTS EXCLUDING INDEXES);
ALTER TABLE enrollment_requests DROP COLUMN alias, DROP COLUMN service_conditions,
    DROP COLUMN rendered_config, DROP COLUMN render_timestamp, DROP COLUMN rendered_applications;
ALTER TABLE enrollment_requests ADD PRIMARY KEY (org_id, name);

CREATE TABLE certificate_signing_requests (LIKE enrollment_requests INCLUDING DEFAULTS);
ALTER TABLE certificate_signing_requests ADD PRIMARY KEY (org_id, name);
CREATE TABLE fleets (LIKE enrollment_requests INCLUDING DEFAULTS);
ALTER TABLE fleets ADD PRIMARY KEY (org_id, name);
CREATE TABLE repositories (LIKE enrollment_requests INCLUDING DEFAULTS);
ALTER TABLE repositories ADD PRIMARY KEY (org_id, name);
CREATE TABLE resource_syncs (LIKE enrollment_requests INCLUDING DEFAULTS);
ALTER TABLE resource_syncs ADD PRIMARY KEY (org_id, name);

CREATE TABLE template_versions (LIKE enrollment_requests INCLUDING DEFAULTS);
ALTER TABLE template_versions ADD COLUMN fleet_name text NOT NULL;
ALTER TABLE template_versions ADD PRIMARY KEY (org_id, name, fleet_name);
ALTER TABLE template_versions ADD FOREIGN KEY (org_id, fleet_name)
    REFERENCES fleets (org_id, name) ON DELETE CASCADE;

CREATE TABLE events (
    org_id uuid NOT NULL REFERENCES organizations(id),
    name text NOT NULL,
    owner text,
    labels jsonb,
    annotations jsonb,
    generation bigint,
    resource_version bigint,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now(),
    deleted_at timestamptz,
    reason text,
    source_component text,
    actor text,
    type text,
    message text,
    details jsonb,
    involved_object_name text,
    involved_object_kind text,
    PRIMARY KEY (org_id, name)
);
CREATE INDEX idx_involved_object ON events (involved_object_kind, involved_object_name);

CREATE TABLE checkpoints (
    consumer text NOT NULL,
    key text NOT NULL,
    value bytea,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now(),
    deleted_at timestamptz,
    PRIMARY KEY (consumer, key)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO flightctl_app;
GRANT ALL ON ALL TABLES IN SCHEMA public TO flightctl_migrator;
"#;

/// Three organizations (the default one first).
pub const ORGS: [&str; 3] = [
    "00000000-0000-0000-0000-000000000000",
    "6c2f7a1e-3f57-4a0b-9d6a-0e2d5c9b1a01",
    "b91e4d8a-77c3-4f1e-8e2b-5a6c7d8e9f02",
];

/// Seed rows: `{devices}` devices spread over three organizations, with the JSON Flight Control keeps.
/// Every 50th device is decommissioned, every 53rd has no lifecycle status, every 97th is soft-deleted;
/// `{devices}/10 + 3` enrollment requests, every third approved; three fleets and a template version per org.
pub const SEED: &str = r#"
INSERT INTO organizations (id, display_name, external_id) VALUES
    ('00000000-0000-0000-0000-000000000000', 'Default', 'default'),
    ('6c2f7a1e-3f57-4a0b-9d6a-0e2d5c9b1a01', 'Plant North', 'plant-north'),
    ('b91e4d8a-77c3-4f1e-8e2b-5a6c7d8e9f02', 'Plant South', 'plant-south');

INSERT INTO fleets (org_id, name, labels, annotations, generation, resource_version, spec, status)
SELECT o.id, 'fleet-' || f, jsonb_build_object('tier', CASE f WHEN 1 THEN 'prod' ELSE 'edge' END),
       jsonb_build_object('fleet-controller/templateVersion', 'fleet-' || f || '-v3'), 3, 7,
       jsonb_build_object('selector', jsonb_build_object('matchLabels', jsonb_build_object('fleet', 'fleet-' || f)),
                          'template', jsonb_build_object('spec', jsonb_build_object('os', jsonb_build_object('image', 'quay.io/acme/os:9.4')))),
       jsonb_build_object('conditions', jsonb_build_array(jsonb_build_object('type', 'Valid', 'status', 'True')))
FROM organizations o, generate_series(1, 3) f;

INSERT INTO template_versions (org_id, name, fleet_name, generation, resource_version, spec, status)
SELECT org_id, name || '-v3', name, 1, 1, spec, '{}'::jsonb FROM fleets;

INSERT INTO devices (org_id, name, owner, labels, annotations, generation, resource_version, alias, spec, status,
                     service_conditions, rendered_config, render_timestamp, rendered_applications, deleted_at)
SELECT (ARRAY['00000000-0000-0000-0000-000000000000',
              '6c2f7a1e-3f57-4a0b-9d6a-0e2d5c9b1a01',
              'b91e4d8a-77c3-4f1e-8e2b-5a6c7d8e9f02']::uuid[])[1 + i % 3],
       'device-' || lpad(i::text, 6, '0'),
       'Fleet/fleet-' || (1 + i % 3),
       jsonb_build_object('fleet', 'fleet-' || (1 + i % 3), 'site', 'site-' || (i % 17), 'region', 'eu'),
       jsonb_build_object('device-controller/renderedVersion', (1 + i % 7)::text,
                          'fleet-controller/templateVersion', 'fleet-' || (1 + i % 3) || '-v3',
                          'device-controller/renderedSpecHash', md5(i::text)),
       2, 10 + i % 5,
       'line-' || (i % 40) || '-cell-' || i,
       jsonb_build_object('os', jsonb_build_object('image', 'quay.io/acme/os:9.4'),
                          'config', jsonb_build_array(jsonb_build_object('name', 'motd', 'inline',
                               jsonb_build_array(jsonb_build_object('path', '/etc/motd', 'content', 'welcome ' || i))))),
       jsonb_strip_nulls(jsonb_build_object(
           'summary', jsonb_build_object('status', CASE WHEN i % 11 = 0 THEN 'Degraded' ELSE 'Online' END, 'info', ''),
           'updated', jsonb_build_object('status', 'UpToDate', 'info', 'up to date'),
           'config', jsonb_build_object('renderedVersion', (1 + i % 7)::text),
           'lifecycle', CASE WHEN i % 53 = 0 THEN NULL
                             WHEN i % 50 = 0 THEN jsonb_build_object('status', 'Decommissioned', 'info', '')
                             ELSE jsonb_build_object('status', 'Enrolled', 'info', '') END,
           'applicationsSummary', jsonb_build_object('status', 'Healthy', 'info', ''),
           'systemInfo', jsonb_build_object('architecture', 'amd64', 'bootID', md5('boot' || i),
                                            'operatingSystem', 'linux'),
           'os', jsonb_build_object('image', 'quay.io/acme/os:9.4'),
           'integrity', jsonb_build_object('status', 'Verified'),
           'resources', jsonb_build_object('cpu', 'Healthy', 'memory', 'Healthy', 'disk', 'Healthy'),
           'conditions', jsonb_build_array(jsonb_build_object('type', 'Updating', 'status', 'False')),
           'applications', '[]'::jsonb)),
       jsonb_build_object('conditions', '[]'::jsonb),
       jsonb_build_object('ignition', jsonb_build_object('version', '3.4.0'), 'payload', {payload}),
       now() - (i || ' minutes')::interval,
       '[]'::jsonb,
       CASE WHEN i % 97 = 0 THEN now() - interval '1 day' END
FROM generate_series(1, {devices}) i;

UPDATE device_timestamps SET last_seen = now() - random() * interval '10 minutes';

INSERT INTO enrollment_requests (org_id, name, labels, annotations, generation, resource_version, spec, status)
SELECT '00000000-0000-0000-0000-000000000000', 'er-' || md5('er' || i),
       jsonb_build_object('site', 'site-' || i), '{}'::jsonb, 1, 3,
       jsonb_build_object('csr', 'LS0tLS1CRUdJTiBDRVJUSUZJQ0FURSBSRVFVRVNULS0tLS0=', 'knownRenderedVersion', (i % 4)::text),
       CASE WHEN i % 3 = 0
            THEN jsonb_build_object('approval', jsonb_build_object('approved', true, 'approvedBy', 'admin'))
            ELSE jsonb_build_object('conditions', '[]'::jsonb) END
FROM generate_series(1, {devices} / 10 + 3) i;

INSERT INTO repositories (org_id, name, generation, resource_version, spec, status)
VALUES ('00000000-0000-0000-0000-000000000000', 'acme-config', 1, 1,
        '{"url": "https://git.example.com/acme/config.git", "type": "git"}', '{}');

INSERT INTO events (org_id, name, reason, source_component, actor, type, message, details,
                    involved_object_name, involved_object_kind)
SELECT '00000000-0000-0000-0000-000000000000', md5('ev' || i), 'ResourceUpdated', 'flightctl-api', 'user:admin',
       'Normal', 'Device was updated successfully.', '{}'::jsonb, 'device-' || lpad(i::text, 6, '0'), 'Device'
FROM generate_series(1, 20) i;

INSERT INTO checkpoints (consumer, key, value) VALUES ('fleet-rollout', 'last', '\x00');
"#;

/// The seed SQL for `devices` devices, each with about `payload_bytes` of rendered config.
pub fn seed_sql(devices: usize, payload_bytes: usize) -> String {
    let payload = if payload_bytes == 0 {
        "'\"\"'::jsonb".to_string()
    } else {
        // Hex digests compress about 2:1, like real rendered configs, unlike a repeated string.
        format!(
            "(SELECT to_jsonb(string_agg(md5(i::text || ':' || j), '')) FROM generate_series(1, {}) j)",
            payload_bytes.div_ceil(32)
        )
    };
    SEED.replace("{devices}", &devices.to_string())
        .replace("{payload}", &payload)
}

/// The main tables backup and restore care about, for row-count comparisons.
pub const TABLES: [&str; 12] = [
    "organizations",
    "devices",
    "device_timestamps",
    "device_labels",
    "enrollment_requests",
    "certificate_signing_requests",
    "fleets",
    "template_versions",
    "repositories",
    "resource_syncs",
    "events",
    "checkpoints",
];
