//! `ferry restore` against simulated hosts: the runbook end to end, and every refusal.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use simhost::SimFleetOptions;
use simhost::testing::{TempFleet, awaiting_reconnect_keys, text, tree, wait_until};

/// A digest of every row of `table`, so two states of a table compare equal only if identical.
async fn table_digest(db: &tokio_postgres::Client, table: &str, columns: &str) -> String {
    let sql = format!(
        "SELECT count(*)::text || ':' || COALESCE(md5(string_agg(r, '|' ORDER BY r)), '') FROM (SELECT ({columns})::text r FROM {table} t) x"
    );
    db.query_one(&sql, &[]).await.unwrap().get(0)
}

async fn snapshot(db: &tokio_postgres::Client) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    for table in simhost::pg::TABLES {
        out.insert(table, table_digest(db, table, "t.*").await);
    }
    out
}

fn units(fleet: &TempFleet) -> Vec<(String, String)> {
    let host = fleet.host("cp01");
    simhost::host::UNITS
        .iter()
        .map(|u| (u.to_string(), host.unit_state(u)))
        .collect()
}

#[tokio::test]
async fn restore_brings_back_the_backup_and_prepares_devices() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();
    let db = host.db().await.unwrap();
    let before = snapshot(&db).await;
    let devices_identity = "t.org_id, t.name, t.owner, t.labels, t.spec, t.alias, t.generation, t.deleted_at, t.rendered_config";
    let devices_before = table_digest(&db, "devices", devices_identity).await;
    let er_before = table_digest(
        &db,
        "enrollment_requests",
        "t.org_id, t.name, t.spec, t.status",
    )
    .await;
    let pki = host.layout.host_path("/etc/flightctl/pki");
    let config = host.layout.host_path("/etc/flightctl/service-config.yaml");
    let pki_before = tree(&pki);
    let config_before = std::fs::read(&config).unwrap();

    // Damage: devices added and deleted, a fleet edited, an enrollment request approved, a PKI file
    // overwritten.
    db.batch_execute(
        "INSERT INTO devices (org_id, name, status, annotations) VALUES ('00000000-0000-0000-0000-000000000000', 'intruder', '{}', '{}');
         DELETE FROM devices WHERE name IN ('device-000007', 'device-000008');
         UPDATE fleets SET spec = '{\"edited\": true}' WHERE name = 'fleet-1';
         UPDATE enrollment_requests SET status = '{\"approval\": {\"approved\": true}}'
             WHERE name = (SELECT name FROM enrollment_requests WHERE COALESCE(status->'approval'->>'approved','') <> 'true' ORDER BY name LIMIT 1);",
    )
    .await
    .unwrap();
    drop(db);
    std::fs::write(pki.join("flightctl-api/server.key"), "not a key").unwrap();
    assert_ne!(snapshot(&host.db().await.unwrap()).await, before);
    host.clear_calls();

    let out = fleet.ferry(&["restore", "cp01"]).output().unwrap();
    let output = text(&out);
    assert_eq!(out.status.code(), Some(0), "{output}");
    for step in [
        "stage",
        "verify",
        "load",
        "prepare-loaded",
        "stop",
        "swap-db",
        "swap-files",
        "seed-kv",
        "start",
        "health",
        "commit",
    ] {
        assert!(
            output.contains(&format!("TASK [{step}] ok")),
            "{step}: {output}"
        );
    }
    assert!(
        output.contains("devices by status after the restore: {\"AwaitingReconnect\""),
        "{output}"
    );

    let db = host.db().await.unwrap();
    let after = snapshot(&db).await;
    for table in [
        "organizations",
        "fleets",
        "template_versions",
        "repositories",
        "resource_syncs",
        "checkpoints",
        "certificate_signing_requests",
        "device_labels",
    ] {
        assert_eq!(after[table], before[table], "{table} equals the backup's");
    }
    assert_eq!(
        table_digest(&db, "devices", devices_identity).await,
        devices_before,
        "devices are the backup's"
    );
    assert_eq!(
        table_digest(
            &db,
            "enrollment_requests",
            "t.org_id, t.name, t.spec, t.status"
        )
        .await,
        er_before
    );
    assert_eq!(tree(&pki), pki_before, "PKI byte-identical with its modes");
    assert_eq!(std::fs::read(&config).unwrap(), config_before);

    // Devices: every non-decommissioned one awaits reconnect, with last_seen cleared.
    let rows = db
        .query(
            "SELECT d.name, COALESCE(d.status->'lifecycle'->>'status', ''), d.annotations->>'device-controller/awaitingReconnect',
                    d.status->'summary'->>'status', t.last_seen IS NULL
             FROM devices d JOIN device_timestamps t USING (org_id, name) WHERE d.deleted_at IS NULL",
            &[],
        )
        .await
        .unwrap();
    let mut prepared = 0;
    for row in &rows {
        let lifecycle: String = row.get(1);
        if lifecycle == "Decommissioned" || lifecycle == "Decommissioning" {
            continue;
        }
        prepared += 1;
        assert_eq!(
            row.get::<_, Option<String>>(2).as_deref(),
            Some("true"),
            "{}",
            row.get::<_, String>(0)
        );
        assert_eq!(
            row.get::<_, Option<String>>(3).as_deref(),
            Some("AwaitingReconnect")
        );
        assert!(row.get::<_, bool>(4), "last_seen cleared");
    }
    assert!(prepared > 50);
    let unannotated: i64 = db
        .query_one(
            "SELECT count(*) FROM enrollment_requests WHERE COALESCE(status->'approval'->>'approved','') <> 'true'
                 AND (annotations->>'device-controller/awaitingReconnect') IS DISTINCT FROM 'true'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        unannotated, 0,
        "every unapproved enrollment request is annotated"
    );
    let events: i64 = db
        .query_one("SELECT count(*) FROM events WHERE reason = 'SystemRestored' AND involved_object_kind = 'System' AND message LIKE 'System restored successfully. Updated % devices%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 1);

    // Once everything runs again, the KV holds exactly one key per device.
    for (unit, state) in units(&fleet) {
        assert_eq!(state, "active", "{unit}");
    }
    let device_keys: Vec<String> = db
        .query("SELECT 'v1/' || org_id || '/device/' || name || '/awaiting-reconnect' FROM devices WHERE deleted_at IS NULL", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut kv = host.kv().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("v1/*/awaiting-reconnect")
        .query_async(&mut kv)
        .await
        .unwrap();
    keys.sort();
    let mut expected = device_keys.clone();
    expected.sort();
    assert_eq!(keys, expected);

    // db and kv were restarted, never stopped; no drop-in remains; nothing extra is left behind.
    let calls = host.calls();
    for forbidden in [
        "stop flightctl-db",
        "stop flightctl-kv",
        "stop flightctl.target",
    ] {
        assert!(
            !calls.iter().any(|c| c.contains(forbidden)),
            "{forbidden}: {calls:#?}"
        );
    }
    // The window (stop → start) holds renames, the KV seed and unit calls only: no data service
    // restarts, nothing is published, and device preparation ran on the temporary database before.
    let position = |needle: &str| {
        calls
            .iter()
            .position(|c| c.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle}: {calls:#?}"))
    };
    let (stop, start) = (
        position("systemctl stop flightctl-api"),
        position("systemctl start flightctl-api"),
    );
    let prepared = calls
        .iter()
        .position(|c| c.contains("UPDATE devices SET"))
        .unwrap_or_else(|| panic!("device preparation: {calls:#?}"));
    assert!(
        calls[prepared]
            .starts_with("podman exec -i flightctl-db psql -U postgres -d flightctl_restore_")
            && prepared < stop,
        "device preparation before the stop: {calls:#?}"
    );
    for call in &calls[stop..start] {
        assert!(
            !call.contains("restart") && !call.contains("daemon-reload"),
            "no data-service restart inside the window: {call}"
        );
    }
    assert!(
        calls[stop..start]
            .iter()
            .any(|c| c.starts_with("podman exec -i flightctl-kv redis-cli --pipe")),
        "the KV is seeded inside the window: {calls:#?}"
    );
    assert!(
        !calls.iter().any(|c| c.contains("daemon-reload")),
        "no drop-in was written: {calls:#?}"
    );
    let quadlets = host.layout.host_path("/usr/share/containers/systemd");
    let dropins: Vec<_> = std::fs::read_dir(&quadlets)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "d"))
        .collect();
    assert!(dropins.is_empty(), "no drop-in remains: {dropins:?}");
    let dbs: Vec<String> = db
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'flightctl_%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        dbs.is_empty(),
        "old and temporary databases dropped: {dbs:?}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(host.layout.host_path("/etc/flightctl"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".ferry-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(
        std::fs::read_dir(host.layout.agent_dir().join("staging"))
            .unwrap()
            .count(),
        0
    );
    let catalog = simhost::testing::catalog(&fleet.config_path()).await;
    let outcome: String = catalog
        .client()
        .query_one(
            "SELECT r.outcome FROM runs r WHERE r.kind = 'restore' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(outcome, "succeeded");
}

/// Everything that proves "nothing changed": table digests, unit states, files, and no service calls.
struct Untouched {
    tables: BTreeMap<&'static str, String>,
    units: Vec<(String, String)>,
    etc: BTreeMap<String, (String, u32)>,
}

impl Untouched {
    async fn take(fleet: &TempFleet) -> Untouched {
        let host = fleet.host("cp01");
        host.clear_calls();
        Untouched {
            tables: snapshot(&host.db().await.unwrap()).await,
            units: units(fleet),
            etc: tree(&host.layout.host_path("/etc/flightctl")),
        }
    }

    async fn check(&self, fleet: &TempFleet, case: &str) {
        let host = fleet.host("cp01");
        assert_eq!(
            snapshot(&host.db().await.unwrap()).await,
            self.tables,
            "{case}: database changed"
        );
        assert_eq!(units(fleet), self.units, "{case}: unit states changed");
        assert_eq!(
            tree(&host.layout.host_path("/etc/flightctl")),
            self.etc,
            "{case}: files changed"
        );
        let changing: Vec<String> = host
            .calls()
            .into_iter()
            .filter(|c| {
                c.starts_with("systemctl")
                    && ["stop", "start", "restart", "daemon-reload"]
                        .iter()
                        .any(|v| c.contains(v))
            })
            .collect();
        assert!(changing.is_empty(), "{case}: {changing:?}");
        let dbs: i64 = host
            .db()
            .await
            .unwrap()
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname LIKE 'flightctl_%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(dbs, 0, "{case}: no temporary database");
        assert_eq!(
            std::fs::read_dir(host.layout.agent_dir().join("staging"))
                .unwrap()
                .count(),
            0,
            "{case}: staging cleaned"
        );
    }
}

/// Repacks the archive in `store/cp01/NAME` after `edit` changes its extracted tree (GNU tar), as an
/// archive made by other tools, and catalogues it; returns the new archive id.
async fn forge(fleet: &TempFleet, original: &Path, name: &str, edit: impl FnOnce(&Path)) -> i64 {
    let store = fleet.dir.join("controller/store/cp01");
    let work = fleet.dir.join(format!("forge-{name}"));
    std::fs::create_dir_all(&work).unwrap();
    assert!(
        Command::new("tar")
            .arg("-xzf")
            .arg(original)
            .arg("-C")
            .arg(&work)
            .status()
            .unwrap()
            .success()
    );
    std::fs::remove_file(work.join("ferry-manifest.json")).unwrap();
    edit(&work);
    let target = store.join(format!(
        "flightctl-backup-2030010{}T000000Z.tar.gz",
        name.len() % 10
    ));
    let entries: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        Command::new("tar")
            .arg("-czf")
            .arg(&target)
            .arg("-C")
            .arg(&work)
            .args(&entries)
            .status()
            .unwrap()
            .success()
    );
    catalogue(fleet, &target).await
}

/// Puts a row for `path` into the catalog directly, as a tampered catalog or store would have it.
async fn catalogue(fleet: &TempFleet, path: &Path) -> i64 {
    let bytes = std::fs::read(path).unwrap();
    let sha = ferry_archive::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    std::fs::write(
        path.with_extension("gz.sha256"),
        format!("{sha}  {}\n", path.file_name().unwrap().to_string_lossy()),
    )
    .unwrap();
    let catalog = simhost::testing::catalog(&fleet.config_path()).await;
    catalog.client().query_one(
        "INSERT INTO archives (host, name, size, sha256, compression, flightctl_version, deployment_type, database_included, created_at)
         VALUES ('cp01', $1, $2, $3, 'gzip', 'v1.2.0', 'podman', true, now()) RETURNING id",
        &[&path.file_name().unwrap().to_string_lossy().into_owned(), &(bytes.len() as i64), &sha],
    ).await.unwrap().get(0)
}

fn gz_tar(entries: &[(&str, tar::EntryType, Option<&str>)]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (name, kind, link) in entries {
        let mut header = tar::Header::new_gnu();
        {
            let raw = header.as_old_mut();
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        header.set_entry_type(*kind);
        header.set_mode(0o600);
        header.set_size(if *kind == tar::EntryType::Regular {
            1
        } else {
            0
        });
        header.set_cksum();
        tar.extend_from_slice(header.as_bytes());
        if *kind == tar::EntryType::Regular {
            let mut block = [0u8; 512];
            block[0] = b'x';
            tar.extend_from_slice(&block);
        }
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

async fn hostile(
    fleet: &TempFleet,
    n: u8,
    entries: &[(&str, tar::EntryType, Option<&str>)],
) -> i64 {
    let path = fleet
        .dir
        .join("controller/store/cp01")
        .join(format!("flightctl-backup-2031010{n}T000000Z.tar.gz"));
    std::fs::write(&path, gz_tar(entries)).unwrap();
    catalogue(fleet, &path).await
}

fn restore(fleet: &TempFleet, args: &[&str]) -> (i32, String) {
    let out = fleet
        .ferry(&["restore", "cp01"])
        .args(args)
        .output()
        .unwrap();
    (out.status.code().unwrap(), text(&out))
}

#[tokio::test]
async fn unsafe_or_mismatched_archives_are_refused_before_anything_changes() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        ..Default::default()
    })
    .await;
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();
    let (good, good_name) = {
        let catalog = simhost::testing::catalog(&fleet.config_path()).await;
        let archive = catalog.archives().await.unwrap().remove(0);
        (archive.id, archive.name)
    };
    let store = fleet.dir.join("controller/store/cp01");
    let good_path = store.join(&good_name);

    let version = forge(&fleet, &good_path, "version", |d| {
        let m = std::fs::read_to_string(d.join("metadata.json"))
            .unwrap()
            .replace("v1.2.0", "v1.1.0");
        std::fs::write(d.join("metadata.json"), m).unwrap();
    })
    .await;
    let kube = forge(&fleet, &good_path, "kubernetes", |d| {
        let m = std::fs::read_to_string(d.join("metadata.json"))
            .unwrap()
            .replace("podman", "kubernetes");
        std::fs::write(d.join("metadata.json"), m).unwrap();
    })
    .await;
    let no_pki = forge(&fleet, &good_path, "nopki", |d| {
        std::fs::remove_dir_all(d.join("pki")).unwrap()
    })
    .await;
    let dotdot = hostile(
        &fleet,
        1,
        &[
            ("metadata.json", tar::EntryType::Regular, None),
            ("pki/../../etc/passwd", tar::EntryType::Regular, None),
        ],
    )
    .await;
    let absolute = hostile(
        &fleet,
        2,
        &[("/etc/flightctl/pki/ca.key", tar::EntryType::Regular, None)],
    )
    .await;
    let symlink = hostile(
        &fleet,
        3,
        &[
            ("pki", tar::EntryType::Directory, None),
            (
                "pki/ca.key",
                tar::EntryType::Symlink,
                Some("../../../../etc/shadow"),
            ),
        ],
    )
    .await;

    let truncated_path = store.join("flightctl-backup-20320101T000000Z.tar.gz");
    let original = std::fs::read(&good_path).unwrap();
    std::fs::write(&truncated_path, &original[..original.len() / 2]).unwrap();
    let truncated = catalogue(&fleet, &truncated_path).await;

    let before = Untouched::take(&fleet).await;
    // Entries are checked as the archive streams in (stage); what they say, once it is in (verify).
    let cases: Vec<(&str, Vec<String>, &str, &str)> = vec![
        (
            "version",
            vec!["--archive".into(), version.to_string()],
            "restore only onto the same version",
            "verify",
        ),
        (
            "deployment type",
            vec!["--archive".into(), kube.to_string()],
            "only podman to podman is supported",
            "verify",
        ),
        (
            "missing pki/",
            vec!["--archive".into(), no_pki.to_string()],
            "no pki/",
            "verify",
        ),
        (
            "..",
            vec!["--archive".into(), dotdot.to_string()],
            "'..'",
            "stage",
        ),
        (
            "absolute path",
            vec!["--archive".into(), absolute.to_string()],
            "absolute path",
            "stage",
        ),
        (
            "symlink",
            vec!["--archive".into(), symlink.to_string()],
            "symbolic link",
            "stage",
        ),
        (
            "truncated",
            vec!["--archive".into(), truncated.to_string()],
            "truncated or corrupt",
            "stage",
        ),
    ];
    for (case, args, reason, task) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, output) = restore(&fleet, &args);
        assert_eq!(code, 2, "{case}: {output}");
        assert!(
            output.contains(&format!("REFUSED: [cp01] task {task}")) && output.contains(reason),
            "{case}: {output}"
        );
        assert!(output.contains("host state: unchanged"), "{case}: {output}");
        before.check(&fleet, case).await;
    }

    // A digest mismatch: the stored archive no longer matches the catalog. The controller's proof
    // finds it before the host receives a byte, and marks it suspect.
    let mut bytes = std::fs::read(&good_path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&good_path, &bytes).unwrap();
    let (code, output) = restore(&fleet, &["--archive", &good.to_string()]);
    assert_eq!(code, 2, "{output}");
    assert!(
        output.contains("REFUSED: [cp01] task preflight: archive")
            && output.contains("is suspect (body-differs)")
            && output.contains("differs from the catalog's"),
        "{output}"
    );
    before.check(&fleet, "digest mismatch").await;
    bytes[middle] ^= 0x01;
    std::fs::write(&good_path, &bytes).unwrap();

    // Not enough disk in the staging area: a 1 MiB tmpfs over it.
    let staging = fleet.host("cp01").layout.agent_dir().join("staging");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&staging)
        .status()
        .unwrap();
    assert!(mounted.success(), "this test mounts a tmpfs and needs root");
    let (code, output) = restore(&fleet, &["--archive", &good.to_string()]);
    let _ = Command::new("umount").arg(&staging).status();
    assert_eq!(code, 2, "{output}");
    assert!(
        output.contains("REFUSED: [cp01] task preflight")
            && output.contains("not enough space in")
            && output.contains("next: `ferry facts cp01`"),
        "{output}"
    );
    before.check(&fleet, "insufficient disk").await;

    // --check runs every preflight and changes nothing.
    let (code, output) = restore(&fleet, &["--check", "--archive", &good.to_string()]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("PLAN (--check: nothing was changed)") && output.contains("  swap-db: "),
        "{output}"
    );
    before.check(&fleet, "--check").await;

    // The refusals are on record.
    let catalog = simhost::testing::catalog(&fleet.config_path()).await;
    let refused: i64 = catalog.client().query_one("SELECT count(*) FROM host_results h JOIN runs r ON r.id = h.run_id WHERE r.kind = 'restore' AND h.outcome = 'refused'", &[]).await.unwrap().get(0);
    assert_eq!(refused, cases.len() as i64 + 2);
}

/// Database, unit states and /etc/flightctl, to compare a host before and after.
async fn host_state(
    fleet: &TempFleet,
) -> (
    BTreeMap<&'static str, String>,
    Vec<(String, String)>,
    BTreeMap<String, (String, u32)>,
) {
    let host = fleet.host("cp01");
    (
        snapshot(&host.db().await.unwrap()).await,
        units(fleet),
        tree(&host.layout.host_path("/etc/flightctl")),
    )
}

async fn damage(fleet: &TempFleet, n: usize) {
    let host = fleet.host("cp01");
    host.db().await.unwrap().batch_execute(&format!(
        "INSERT INTO devices (org_id, name, status, annotations) VALUES ('00000000-0000-0000-0000-000000000000', 'intruder-{n}', '{{}}', '{{}}');
         UPDATE fleets SET spec = '{{\"damage\": {n}}}' WHERE name = 'fleet-2';"
    )).await.unwrap();
    std::fs::write(
        host.layout
            .host_path("/etc/flightctl/pki/flightctl-ui/server.key"),
        format!("damaged {n}"),
    )
    .unwrap();
}

#[tokio::test]
async fn failures_name_their_step_and_resume_or_rollback_recover() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();
    let backup_fleets = table_digest(&host.db().await.unwrap(), "fleets", "t.*").await;
    let cases = [
        (
            "swap-db",
            "podman",
            "ALTER DATABASE",
            "ERROR:  simulated: could not rename database",
        ),
        (
            "seed-kv",
            "podman",
            "exec -i flightctl-kv",
            "Error: can only create exec sessions on running containers: container state improper",
        ),
        (
            "start",
            "systemctl",
            "start flightctl-api.service",
            "Job for flightctl-api.service failed because the control process exited with error code.",
        ),
    ];
    for (n, (step, tool, needle, message)) in cases.iter().enumerate() {
        damage(&fleet, n).await;
        let before = host_state(&fleet).await;

        // The failure names the step; rollback returns exactly the pre-restore state.
        host.inject_fault(tool, needle, message);
        let (code, output) = restore(&fleet, &[]);
        assert_eq!(code, 2, "{step}: {output}");
        assert!(
            output.contains(&format!("FAILED: [cp01] task {step}:")),
            "{step}: {output}"
        );
        assert!(
            output.contains("host state: restore ")
                && output.contains("unfinished: last completed step:")
                && output.contains("--resume")
                && output.contains("ferry rollback cp01"),
            "{output}"
        );
        host.clear_faults();
        let busy = fleet.ferry(&["backup", "cp01"]).output().unwrap();
        assert!(
            text(&busy).contains("cp01 holds an abandoned restore")
                && text(&busy).contains("`ferry restore cp01 --resume` or `ferry rollback cp01`"),
            "a host mid-restore refuses other work and says what ends it: {}",
            text(&busy)
        );
        let rollback = fleet.ferry(&["rollback", "cp01"]).output().unwrap();
        assert!(rollback.status.success(), "{step}: {}", text(&rollback));
        assert_eq!(
            host_state(&fleet).await,
            before,
            "{step}: rollback restores the pre-restore state exactly"
        );
        let dbs: i64 = host
            .db()
            .await
            .unwrap()
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname LIKE 'flightctl_%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(dbs, 0, "{step}: no leftover databases");

        // Failing again, then --resume completes the restore.
        host.inject_fault(tool, needle, message);
        let (code, output) = restore(&fleet, &[]);
        assert_eq!(code, 2, "{step}: {output}");
        host.clear_faults();
        let (code, output) = restore(&fleet, &["--resume"]);
        assert_eq!(code, 0, "{step}: {output}");
        assert!(output.contains(&format!("TASK [{step}] ok")), "{output}");
        let db = host.db().await.unwrap();
        assert_eq!(
            table_digest(&db, "fleets", "t.*").await,
            backup_fleets,
            "{step}: restored"
        );
        let intruders: i64 = db
            .query_one(
                "SELECT count(*) FROM devices WHERE name LIKE 'intruder%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(intruders, 0);
        for (unit, state) in units(&fleet) {
            assert_eq!(state, "active", "{step}: {unit}");
        }
    }
    let rollback = fleet.ferry(&["rollback", "cp01"]).output().unwrap();
    assert_eq!(
        rollback.status.code(),
        Some(2),
        "nothing to roll back: {}",
        text(&rollback)
    );
}

fn spawn_restore(fleet: &TempFleet) -> std::process::Child {
    fleet
        .ferry(&["restore", "cp01", "--lease-seconds", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_leaves_nothing_published_and_is_reported() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();
    damage(&fleet, 1).await;
    let dropin = host
        .layout
        .quadlet("flightctl-db.service")
        .with_extension("container.d")
        .join("10-ferry-publish-port.conf");

    // 1. The controller dies after the swap, with units stopped, while the KV is seeded. The step
    // it was waiting for still runs to its end; then the lease lapses. Nothing was published, so
    // the data services are not restarted (that would only lose the seeded keys).
    host.inject_fault("podman", "redis-cli --pipe", "sleep:6");
    let mut controller = spawn_restore(&fleet);
    wait_until(
        "the KV seed to start",
        std::time::Duration::from_secs(30),
        async || host.calls().iter().any(|c| c.contains("redis-cli --pipe")),
    )
    .await;
    assert_eq!(host.unit_state("flightctl-api.service"), "inactive");
    controller.kill().unwrap();
    let _ = controller.wait();
    host.clear_faults();
    let killed_at = host.calls().len();
    wait_until(
        "the lease to lapse",
        std::time::Duration::from_secs(30),
        async || {
            fleet
                .facts("cp01")
                .is_ok_and(|f| f["restore"]["lapsed"].is_string())
        },
    )
    .await;
    assert!(!dropin.exists());
    assert!(
        !host.calls()[killed_at..]
            .iter()
            .any(|c| c.contains("restart")),
        "{:#?}",
        host.calls()
    );
    assert_eq!(host.unit_state("flightctl-db.service"), "active");
    assert_eq!(host.unit_state("flightctl-kv.service"), "active");
    assert_eq!(
        host.unit_state("flightctl-api.service"),
        "inactive",
        "application units stay stopped after the swap"
    );
    assert!(
        std::net::TcpStream::connect((host.spec.address.as_str(), 5432)).is_err(),
        "nothing published"
    );
    let facts = fleet.facts("cp01").unwrap();
    let restore_status = &facts["restore"];
    assert_eq!(
        restore_status["state"], "HOST_STATE_SWAPPED",
        "{restore_status}"
    );
    assert_eq!(restore_status["published"], false, "{restore_status}");
    let state = restore_status["summary"].as_str().unwrap().to_string();
    assert!(
        state.contains("unfinished")
            && state.contains("lease lapsed")
            && state.contains("application units kept stopped"),
        "{state}"
    );
    let (code, output) = restore(&fleet, &["--resume"]);
    assert_eq!(code, 0, "{output}");
    assert_eq!(host.unit_state("flightctl-api.service"), "active");

    // 2. The controller dies before the swap (while the dump loads): the agent reverts the restore
    // on its own.
    damage(&fleet, 2).await;
    let before = host_state(&fleet).await;
    host.inject_fault("podman", "ON_ERROR_STOP=1 -q -f", "sleep:4");
    let mut controller = spawn_restore(&fleet);
    wait_until(
        "the load to start",
        std::time::Duration::from_secs(30),
        async || {
            host.calls()
                .iter()
                .any(|c| c.contains("ON_ERROR_STOP=1 -q -f"))
        },
    )
    .await;
    controller.kill().unwrap();
    let _ = controller.wait();
    host.clear_faults();
    wait_until(
        "the restore to be reverted",
        std::time::Duration::from_secs(30),
        async || {
            fleet.facts("cp01").is_ok_and(|f| f["restore"].is_null())
                && host.unit_state("flightctl-api.service") == "active"
        },
    )
    .await;
    assert_eq!(
        host_state(&fleet).await,
        before,
        "reverted to the pre-restore state"
    );
}

#[tokio::test]
async fn partial_restores_device_preparation_alone_and_cross_host() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 2,
        ..Default::default()
    })
    .await;
    let cp01 = fleet.host("cp01");
    let cp02 = fleet.host("cp02");
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();
    let pki = |h: &simhost::SimHost| tree(&h.layout.host_path("/etc/flightctl/pki"));
    let fleets_backup = table_digest(&cp01.db().await.unwrap(), "fleets", "t.*").await;
    let pki_backup = pki(cp01);

    // --only pki: the PKI comes back; the database stays as it is, with no device preparation.
    damage(&fleet, 1).await;
    let db_damaged = snapshot(&cp01.db().await.unwrap()).await;
    let (code, output) = restore(&fleet, &["--only", "pki"]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("TASK [swap-files] ok")
            && !output.contains("TASK [load]")
            && !output.contains("TASK [prepare-loaded]")
            && !output.contains("TASK [prepare-devices]"),
        "{output}"
    );
    assert_eq!(pki(cp01), pki_backup);
    assert_eq!(
        snapshot(&cp01.db().await.unwrap()).await,
        db_damaged,
        "database untouched"
    );

    // --db-only: the database and device preparation; the files stay as they are.
    damage(&fleet, 2).await;
    let pki_damaged = pki(cp01);
    let (code, output) = restore(&fleet, &["--db-only"]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("TASK [prepare-loaded] ok") && !output.contains("TASK [swap-files]"),
        "{output}"
    );
    let db = cp01.db().await.unwrap();
    assert_eq!(table_digest(&db, "fleets", "t.*").await, fleets_backup);
    let intruders: i64 = db
        .query_one(
            "SELECT count(*) FROM devices WHERE name LIKE 'intruder%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(intruders, 0);
    assert_eq!(pki(cp01), pki_damaged, "files untouched");
    let devices: i64 = db
        .query_one("SELECT count(*) FROM devices WHERE deleted_at IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(awaiting_reconnect_keys(cp01).await, devices as usize);

    // prepare-devices alone, on a host that was never restored.
    let db2 = cp02.db().await.unwrap();
    let unprepared = "SELECT count(*) FROM devices WHERE deleted_at IS NULL
        AND COALESCE(status->'lifecycle'->>'status','') NOT IN ('Decommissioned','Decommissioning')
        AND (annotations->>'device-controller/awaitingReconnect') IS DISTINCT FROM 'true'";
    assert!(
        db2.query_one(unprepared, &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            > 0
    );
    let out = fleet.ferry(&["prepare-devices", "cp02"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("TASK [prepare-devices] ok: updated"),
        "{}",
        text(&out)
    );
    let db2 = cp02.db().await.unwrap();
    assert_eq!(
        db2.query_one(unprepared, &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0
    );
    let events: i64 = db2
        .query_one(
            "SELECT count(*) FROM events WHERE reason = 'SystemRestored'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 1);
    let devices2: i64 = db2
        .query_one("SELECT count(*) FROM devices WHERE deleted_at IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(awaiting_reconnect_keys(cp02).await, devices2 as usize);
    assert_eq!(cp02.unit_state("flightctl-api.service"), "active");

    // Cross-host: cp01's archive onto cp02, only when asked for explicitly.
    let id = {
        let catalog = simhost::testing::catalog(&fleet.config_path()).await;
        catalog
            .archives()
            .await
            .unwrap()
            .into_iter()
            .find(|a| a.host == "cp01")
            .unwrap()
            .short_id()
            .to_string()
    };
    let refused = fleet
        .ferry(&["restore", "cp02", "--archive", &id])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused).contains(&format!(
            "`ferry restore cp02 --from cp01 --archive {id} --check`"
        )),
        "{}",
        text(&refused)
    );
    let out = fleet
        .ferry(&["restore", "cp02", "--from", "cp01"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        table_digest(&cp02.db().await.unwrap(), "fleets", "t.*").await,
        fleets_backup
    );
    assert_eq!(pki(cp02), pki_backup, "cp01's PKI now on cp02");
    assert_eq!(cp02.unit_state("flightctl-api.service"), "active");
}

/// Item 4: a full restore of a ferry archive makes the host's config exactly the archive's: a
/// `conf.d` that was absent when the backup ran is removed (listed by --check, kept aside until
/// commit, put back by rollback). An upstream archive, which never carries conf.d, leaves it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restore_removes_config_the_archive_lacks_and_rollback_puts_it_back() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        devices: 10,
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");
    let confd = host.layout.host_path("/etc/flightctl/conf.d");
    let _ = std::fs::remove_dir_all(&confd);
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();
    let archive_path = std::fs::read_dir(fleet.dir.join("controller/store/cp01"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .unwrap();
    let bad = confd.join("99-bad-override.yaml");
    let plant = || {
        std::fs::create_dir_all(&confd).unwrap();
        std::fs::write(&bad, "api:\n  baseUrl: https://wrong.example\n").unwrap();
    };
    plant();

    let (code, output) = restore(&fleet, &["--check"]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("REMOVES (the archive's backup found none of these")
            && output.contains("  /etc/flightctl/conf.d/99-bad-override.yaml"),
        "{output}"
    );
    assert!(bad.is_file(), "--check changes nothing");

    // A restore that fails after swap-files: the file is aside, and rollback puts it back.
    host.inject_fault(
        "systemctl",
        "start flightctl-api",
        "Job for flightctl-api.service failed",
    );
    let (code, output) = restore(&fleet, &[]);
    assert_ne!(code, 0, "{output}");
    assert!(!bad.exists(), "removed by swap-files: {output}");
    host.clear_faults();
    let out = fleet.ferry(&["rollback", "cp01"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&bad).unwrap(),
        "api:\n  baseUrl: https://wrong.example\n",
        "rollback puts it back"
    );

    let (code, output) = restore(&fleet, &[]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output
            .contains("removed (the archive's backup found none; kept aside until commit): conf.d"),
        "{output}"
    );
    assert!(
        !confd.exists(),
        "the restored tree is exactly the archive's"
    );
    let leftovers: Vec<String> = std::fs::read_dir(host.layout.host_path("/etc/flightctl"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("ferry-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "commit dropped the copies: {leftovers:?}"
    );

    // An upstream archive (no manifest) never carries conf.d: the host's stays.
    plant();
    let upstream = forge(&fleet, &archive_path, "upstream", |_| {}).await;
    let (code, output) = restore(&fleet, &["--archive", &upstream.to_string()]);
    assert_eq!(code, 0, "{output}");
    assert!(bad.is_file(), "upstream leaves conf.d alone: {output}");

    // A conf.d the backup captured: a file added after it is listed, the captured one is not.
    std::fs::remove_file(&bad).unwrap();
    std::fs::write(confd.join("10-base.yaml"), "api: {}\n").unwrap();
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();
    std::fs::write(confd.join("99-late.yaml"), "api: {}\n").unwrap();
    let (code, output) = restore(&fleet, &["--check"]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("  /etc/flightctl/conf.d/99-late.yaml")
            && !output.contains("  /etc/flightctl/conf.d/10-base.yaml"),
        "{output}"
    );
}

/// The PAM issuer volume is swapped only once its pre-restore copy is saved, and a rollback that
/// cannot put that copy back keeps it, with the units stopped, until a rollback can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pam_volume_is_swapped_only_with_its_copy_saved_and_a_rollback_puts_it_back_or_says_why()
 {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        ..Default::default()
    })
    .await;
    let cp01 = fleet.host("cp01");
    let pam = cp01.layout.volumes().join("flightctl-pam-issuer-etc");
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();
    let backed_up = tree(&pam);
    std::fs::write(
        pam.join("userdb/passwd"),
        "admin:x:1000:1000::/home/admin:/sbin/nologin\nlater:x:1001:1001::/home/later:/sbin/nologin\n",
    )
    .unwrap();
    let live = tree(&pam);
    assert_ne!(live, backed_up);

    // Its copy cannot be saved: the volume is left as it is, and the restore says so.
    cp01.clear_calls();
    cp01.inject_fault("podman", "volume export", "no space left on device");
    let (code, output) = restore(&fleet, &["--only", "volumes"]);
    cp01.clear_faults();
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("PAM issuer volume not restored")
            && output.contains("pre-restore copy could not be saved")
            && output.contains("no space left on device"),
        "{output}"
    );
    assert_eq!(tree(&pam), live, "the volume is left as it was");
    assert!(
        !cp01.calls().iter().any(|c| c.contains("volume import")),
        "nothing was imported: {:?}",
        cp01.calls()
    );

    // Swapped, then the restore fails; its rollback cannot import the copy at first.
    cp01.inject_fault("systemctl", "start flightctl-api", "unit failed to start");
    let (code, output) = restore(&fleet, &["--only", "volumes"]);
    cp01.clear_faults();
    assert_eq!(code, 2, "{output}");
    assert_eq!(tree(&pam), backed_up, "swapped before the failure");
    cp01.inject_fault("podman", "volume import", "volume is being used");
    let refused = fleet.ferry(&["rollback", "cp01"]).output().unwrap();
    cp01.clear_faults();
    let said = text(&refused);
    assert_ne!(refused.status.code(), Some(0), "{said}");
    assert!(
        said.contains("the PAM issuer volume could not be put back")
            && said.contains("volume is being used")
            && said.contains("ferry rollback cp01"),
        "{said}"
    );
    assert_ne!(cp01.unit_state("flightctl-api.service"), "active", "{said}");

    let rolled_back = fleet.ferry(&["rollback", "cp01"]).output().unwrap();
    assert_eq!(rolled_back.status.code(), Some(0), "{}", text(&rolled_back));
    assert_eq!(tree(&pam), live, "the pre-restore volume is back");
    assert_eq!(cp01.unit_state("flightctl-api.service"), "active");
}
