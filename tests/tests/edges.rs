//! The edges where ferry used to break its promises: external-database hosts, `--only`, the wrong host
//! behind an address, `--check`, archive ids, and the small traps (closed pipes, bad values, typos,
//! `-o json`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use simhost::SimFleetOptions;
use simhost::testing::{TempFleet, awaiting_reconnect_keys, text, tree};

/// Runs ferry with `-o json`; returns the exit code and the one JSON document on stdout.
fn json_run(fleet: &TempFleet, args: &[&str]) -> (i32, Value) {
    let out = fleet.ferry(args).args(["-o", "json"]).output().unwrap();
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ferry {} -o json printed no single JSON document ({e}):\n{}",
            args.join(" "),
            text(&out)
        )
    });
    (out.status.code().unwrap_or(-1), doc)
}

fn run(fleet: &TempFleet, args: &[&str]) -> (i32, String) {
    let out = fleet.ferry(args).output().unwrap();
    (out.status.code().unwrap_or(-1), text(&out))
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn step_names(doc: &Value) -> Vec<String> {
    doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// The step named `name` of a restore's JSON document.
fn step<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name}: {doc}"))
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

const ANNOTATED: &str = "SELECT count(*) FROM devices WHERE annotations->>'device-controller/awaitingReconnect' = 'true'";
const ELIGIBLE: &str = "SELECT count(*) FROM devices WHERE deleted_at IS NULL AND COALESCE(status->'lifecycle'->>'status', '') NOT IN ('Decommissioned', 'Decommissioning')";
const LIVE_DEVICES: &str = "SELECT count(*) FROM devices WHERE deleted_at IS NULL";

/// Ledger entries of one kind, newest last.
fn ledger(fleet: &TempFleet, kind: &str) -> Vec<Value> {
    let (code, doc) = json_run(fleet, &["history", "--kind", kind]);
    assert_eq!(code, 0, "{doc}");
    doc.as_array().unwrap().clone()
}

#[tokio::test]
async fn external_db_host_backs_up_restores_and_prepares_devices_on_its_own_server() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        external_db: vec![0],
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");
    let db_address = host.spec.db_address.clone();
    let (code, backup) = json_run(&fleet, &["backup", "cp01"]);
    assert_eq!(code, 0, "{backup}");
    assert_eq!(
        backup["hosts"]["cp01"]["data"]["database_included"], false,
        "{backup}"
    );

    // Changes after the backup, which the restore must undo.
    let config = host.layout.host_path("/etc/flightctl/service-config.yaml");
    let pki = host.layout.host_path("/etc/flightctl/pki");
    let pam = host.layout.volumes().join("flightctl-pam-issuer-etc");
    let (config_before, pki_before, pam_before) = (read(&config), tree(&pki), tree(&pam));
    std::fs::write(
        &config,
        [config_before.as_slice(), b"# after the backup\n"].concat(),
    )
    .unwrap();
    std::fs::write(pki.join("flightctl-ui/server.crt"), "not a certificate\n").unwrap();
    std::fs::write(pam.join("userdb/passwd"), "intruder:x:0:0::/:/bin/sh\n").unwrap();
    let db = host.db().await.unwrap();
    assert_eq!(count(&db, ANNOTATED).await, 0);

    let (code, doc) = json_run(&fleet, &["restore", "cp01"]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["outcome"], "succeeded");
    assert_eq!(
        step_names(&doc),
        [
            "preflight",
            "stage",
            "verify",
            "stop",
            "swap-files",
            "prepare-devices",
            "seed-kv",
            "start",
            "health",
            "commit"
        ],
        "{doc}"
    );
    let prepared = doc["steps"][5]["summary"].as_str().unwrap();
    assert!(
        prepared.contains(&format!("{db_address}:5432/flightctl (TLS verify-full)")),
        "{prepared}"
    );
    assert_eq!(read(&config), config_before);
    assert_eq!(tree(&pki), pki_before);
    assert_eq!(tree(&pam), pam_before);
    // Device preparation happened on the external server, and the KV was seeded to match.
    let eligible = count(&db, ELIGIBLE).await;
    assert!(eligible > 0);
    assert_eq!(count(&db, ANNOTATED).await, eligible);
    assert_eq!(
        awaiting_reconnect_keys(host).await as i64,
        count(&db, LIVE_DEVICES).await
    );
    let calls = host.calls();
    let touched: Vec<&String> = calls
        .iter()
        .filter(|c| {
            (c.starts_with("podman exec") && c.contains("flightctl-db"))
                || c.contains("daemon-reload")
                || c.contains("restart")
        })
        .collect();
    assert!(
        touched.is_empty(),
        "an external-DB restore touches no flightctl-db and publishes nothing: {touched:?}"
    );
    assert_eq!(host.unit_state("flightctl-api.service"), "active");

    // Device preparation alone, after a DBA restored the external database.
    db.batch_execute(
        "UPDATE devices SET annotations = annotations - 'device-controller/awaitingReconnect'",
    )
    .await
    .unwrap();
    let mut kv = host.kv().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut kv).await.unwrap();
    let (code, doc) = json_run(&fleet, &["prepare-devices", "cp01"]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(count(&db, ANNOTATED).await, eligible);
    assert_eq!(
        awaiting_reconnect_keys(host).await as i64,
        count(&db, LIVE_DEVICES).await
    );
    // The operator's overrides reach the server too ...
    let (code, output) = run(
        &fleet,
        &[
            "prepare-devices",
            "cp01",
            "--db-host",
            &db_address,
            "--db-port",
            "5432",
            "--db-name",
            "flightctl",
        ],
    );
    assert_eq!(code, 0, "{output}");
    // ... and a wrong one is refused before any unit stops.
    host.clear_calls();
    let (code, output) = run(&fleet, &["prepare-devices", "cp01", "--db-port", "1"]);
    assert_eq!(code, 2, "{output}");
    assert!(
        output.contains("REFUSED: [cp01] task stage: external database: connecting to")
            && output.contains(":1/flightctl"),
        "{output}"
    );
    assert!(
        !host.calls().join("\n").contains("stop"),
        "{:?}",
        host.calls()
    );
    assert_eq!(host.unit_state("flightctl-api.service"), "active");
    // The server accepts TLS only: without it the agent is turned away, with the server's reason.
    let tls_config = read(&config);
    let plain = String::from_utf8(tls_config.clone())
        .unwrap()
        .replace("sslmode: verify-full", "sslmode: disable");
    std::fs::write(&config, plain).unwrap();
    let (code, output) = run(&fleet, &["prepare-devices", "cp01"]);
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("no encryption"), "{output}");
    std::fs::write(&config, tls_config).unwrap();
    // --only pki keeps the host's own pki/db: its CA pairs with the database the host's config (not
    // restored) names, so a CA the DBA added after the backup stays.
    let added = pki.join("db/next-ca.crt");
    std::fs::write(&added, "the DBA's next CA\n").unwrap();
    std::fs::set_permissions(&added, std::fs::Permissions::from_mode(0o640)).unwrap();
    let ca_before = read(&pki.join("db/ca.crt"));
    let (code, doc) = json_run(&fleet, &["restore", "cp01", "--only", "pki"]);
    assert_eq!(code, 0, "{doc}");
    let swapped = step(&doc, "swap-files");
    assert!(
        swapped["summary"]
            .as_str()
            .unwrap()
            .contains("the host's own pki/db"),
        "{swapped}"
    );
    assert_eq!(read(&added), b"the DBA's next CA\n");
    assert_eq!(
        std::fs::metadata(&added).unwrap().permissions().mode() & 0o777,
        0o640
    );
    assert_eq!(read(&pki.join("db/ca.crt")), ca_before);
    // A database-only restore has nothing to restore here, and says what to run instead.
    let (code, output) = run(&fleet, &["restore", "cp01", "--only", "db"]);
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("ferry prepare-devices"), "{output}");
}

#[tokio::test]
async fn only_pki_leaves_config_encryption_volumes_and_database_untouched() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");
    let etc = host.layout.host_path("/etc/flightctl");
    std::fs::create_dir_all(etc.join("encryption")).unwrap();
    std::fs::write(etc.join("encryption/key"), "key-at-backup\n").unwrap();
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();

    let pki_at_backup = tree(&etc.join("pki"));
    let config = etc.join("service-config.yaml");
    let pam = host.layout.volumes().join("flightctl-pam-issuer-etc");
    std::fs::write(
        &config,
        [read(&config).as_slice(), b"# added after the backup\n"].concat(),
    )
    .unwrap();
    std::fs::write(etc.join("encryption/key"), "key-rotated-later\n").unwrap();
    std::fs::write(
        pam.join("userdb/passwd"),
        "later:x:1001:1001::/:/sbin/nologin\n",
    )
    .unwrap();
    std::fs::remove_file(etc.join("pki/flightctl-ui/server.crt")).unwrap();
    let db = host.db().await.unwrap();
    db.batch_execute("INSERT INTO organizations (id, display_name, external_id) VALUES ('11111111-1111-1111-1111-111111111111', 'after', 'after')")
        .await
        .unwrap();
    let (config_now, encryption_now, pam_now) =
        (read(&config), tree(&etc.join("encryption")), tree(&pam));

    // The plan names only what --only chose.
    let (code, check) = json_run(&fleet, &["restore", "cp01", "--only", "pki", "--check"]);
    assert_eq!(code, 0, "{check}");
    assert_eq!(check["components"], serde_json::json!(["pki"]));
    assert_eq!(
        check["plan"],
        serde_json::json!(["verify", "stop", "swap-files", "start", "health", "commit"])
    );

    host.clear_calls();
    let (code, doc) = json_run(&fleet, &["restore", "cp01", "--only", "pki"]);
    assert_eq!(code, 0, "{doc}");
    let swap = step(&doc, "swap-files");
    assert!(
        swap["summary"]
            .as_str()
            .unwrap()
            .starts_with("pki swapped (1 path)"),
        "{swap}"
    );
    assert_eq!(tree(&etc.join("pki")), pki_at_backup);
    assert_eq!(
        read(&config),
        config_now,
        "config is not part of --only pki"
    );
    assert_eq!(tree(&etc.join("encryption")), encryption_now);
    assert_eq!(tree(&pam), pam_now);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM organizations WHERE external_id = 'after'"
        )
        .await,
        1
    );
    assert!(
        !host.calls().iter().any(|c| c.contains("volume")),
        "the PAM volume is not touched: {:?}",
        host.calls()
    );
    let entry = ledger(&fleet, "restore").pop().unwrap();
    assert_eq!(
        entry["flags"]["only"],
        serde_json::json!(["pki"]),
        "{entry}"
    );

    // A rollback of a partial restore puts back exactly what it swapped.
    std::fs::write(etc.join("encryption/key"), "key-rotated-again\n").unwrap();
    let encryption_before = tree(&etc.join("encryption"));
    let pki_before = tree(&etc.join("pki"));
    host.inject_fault(
        "systemctl",
        "start flightctl-api",
        "Job for flightctl-api.service failed.",
    );
    let (code, output) = run(&fleet, &["restore", "cp01", "--only", "encryption,config"]);
    assert_eq!(code, 2, "{output}");
    host.clear_faults();
    assert_eq!(read(&etc.join("encryption/key")), b"key-at-backup\n");
    let (code, output) = run(&fleet, &["rollback", "cp01"]);
    assert_eq!(code, 0, "{output}");
    assert_eq!(tree(&etc.join("encryption")), encryption_before);
    assert_eq!(tree(&etc.join("pki")), pki_before);
    assert_eq!(read(&config), config_now);
}

#[tokio::test]
async fn an_address_that_reaches_another_host_is_refused_before_any_call() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 2,
        ..Default::default()
    })
    .await;
    let (cp01, cp02) = (fleet.host("cp01"), fleet.host("cp02"));
    let inventory = fleet.dir.join("swapped.ini");
    std::fs::write(
        &inventory,
        format!(
            "[controlplanes]\ncp01 ansible_host={b} ferry_port=7482\nalias ansible_host={b} ferry_port=7482 ferry_agent_name=cp02\n",
            b = cp02.spec.address
        ),
    )
    .unwrap();
    let ferry = |args: &[&str]| {
        let out = Command::new(simhost::bins::path("ferry"))
            .arg("--config")
            .arg(fleet.config_path())
            .arg("-i")
            .arg(&inventory)
            .args(args)
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), text(&out))
    };
    let agent_log = || std::fs::read_to_string(cp02.layout.agent_dir().join("agent.log")).unwrap();
    let log_before = agent_log().lines().count();
    cp02.clear_calls();

    let (code, output) = ferry(&["ping", "cp01"]);
    assert_eq!(code, 3, "{output}");
    assert!(
        output.contains("is \"cp02\", not \"cp01\""),
        "both names are in the message: {output}"
    );
    let (code, output) = ferry(&["backup", "cp01"]);
    assert_eq!(code, 3, "{output}");
    let (code, output) = ferry(&["restore", "cp01", "--check"]);
    assert_eq!(code, 3, "{output}");
    assert!(output.contains("not \"cp01\""), "{output}");
    // Nothing reached cp02: no call in its log, no tool run, nothing filed for cp01.
    let calls_logged = agent_log()
        .lines()
        .skip(log_before)
        .filter(|l| l.contains("caller"))
        .count();
    assert_eq!(calls_logged, 0, "{}", agent_log());
    assert!(cp02.calls().is_empty(), "{:?}", cp02.calls());
    assert!(!fleet.dir.join("controller/store/cp01").exists());
    // The refusals are on record.
    let unreachable = ledger(&fleet, "restore-check");
    assert_eq!(unreachable.last().unwrap()["outcome"], "unreachable");

    // A host known under another name is bound by ferry_agent_name.
    let (code, output) = ferry(&["ping", "alias"]);
    assert_eq!(code, 0, "{output}");
    // The right address works as before.
    let (code, output) = run(&fleet, &["ping", "cp01"]);
    assert_eq!(code, 0, "{output}");
    let _ = cp01;
}

#[tokio::test]
async fn check_rereads_the_stored_archive_and_is_recorded_as_a_check() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 2,
        ..Default::default()
    })
    .await;
    fleet.ferry_ok(&["backup", "all"]).unwrap();
    let (_, list) = json_run(&fleet, &["archives", "list", "cp01"]);
    let archive = &list[0];
    let id = archive["id"].as_str().unwrap().to_string();
    let stored = fleet
        .dir
        .join("controller/store/cp01")
        .join(archive["name"].as_str().unwrap());

    let (code, doc) = json_run(&fleet, &["restore", "cp01", "--check", "--archive", &id]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["kind"], "restore-check");
    assert_eq!(doc["outcome"], "checked");
    // The shape of every fleet command's document.
    assert_eq!(doc["hosts"]["cp01"]["status"], "ok", "{doc}");
    assert_eq!(doc["recap"]["cp01"]["ok"], 1, "{doc}");
    assert_eq!(doc["recap"]["cp01"]["changed"], 0, "{doc}");
    assert_eq!(doc["identity_changes"]["cross_host"], false);

    // A flipped byte (sidecar and catalog untouched) is found on the controller.
    let mut bytes = read(&stored);
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&stored, &bytes).unwrap();
    let (code, output) = run(&fleet, &["restore", "cp01", "--check", "--archive", &id]);
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("REFUSED: [cp01] task check"), "{output}");
    bytes[middle] ^= 0x40;
    std::fs::write(&stored, &bytes).unwrap();
    // A sidecar that disagrees is refused by the check and by the real run.
    let sidecar = stored.with_file_name(format!("{}.sha256", archive["name"].as_str().unwrap()));
    let good_sidecar = read(&sidecar);
    std::fs::write(&sidecar, format!("{}  x\n", "0".repeat(64))).unwrap();
    let (code, output) = run(&fleet, &["restore", "cp01", "--check", "--archive", &id]);
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("sidecar"), "{output}");
    let (code, output) = run(&fleet, &["restore", "cp01", "--archive", &id]);
    assert_eq!(code, 2, "{output}");
    assert!(
        output.contains(&format!(
            "REFUSED: [cp01] task preflight: archive {id} is suspect (sidecar-differs): the .sha256 sidecar"
        )),
        "{output}"
    );
    std::fs::write(&sidecar, good_sidecar).unwrap();
    // An archive gone from the store.
    let aside = stored.with_extension("aside");
    std::fs::rename(&stored, &aside).unwrap();
    let (code, output) = run(&fleet, &["restore", "cp01", "--check", "--archive", &id]);
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("is missing from the store"), "{output}");
    std::fs::rename(&aside, &stored).unwrap();
    // Recorded missing, it is not picked again until a verify finds it back.
    let (code, output) = run(&fleet, &["restore", "cp01", "--check"]);
    assert_eq!(code, 2, "{output}");
    assert!(
        output.contains(&format!("skipped archive {id}"))
            && output.contains("archives verify --all"),
        "{output}"
    );
    let (code, output) = run(&fleet, &["archives", "verify", &id]);
    assert_eq!(code, 0, "{output}");

    // --from shows whose identity the host takes.
    let (code, doc) = json_run(&fleet, &["restore", "cp02", "--from", "cp01", "--check"]);
    assert_eq!(code, 0, "{doc}");
    let changes = &doc["identity_changes"];
    assert_eq!(changes["source_host"], "cp01");
    assert_eq!(changes["base_domain"]["host"], "cp02.example.com");
    assert_eq!(changes["base_domain"]["archive"], "cp01.example.com");
    assert!(
        changes["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["path"] == "flightctl-api/server.crt"),
        "{changes}"
    );
    let (_, output) = run(&fleet, &["restore", "cp02", "--from", "cp01", "--check"]);
    assert!(
        output.contains("IDENTITY CHANGES") && output.contains("baseDomain"),
        "{output}"
    );

    // Checks are on record as checks, never as restores.
    let checks = ledger(&fleet, "restore-check");
    assert_eq!(checks.len(), 7, "{checks:?}");
    assert_eq!(
        checks.iter().filter(|c| c["outcome"] == "checked").count(),
        3
    );
    assert!(
        ledger(&fleet, "restore")
            .iter()
            .all(|r| r["outcome"] == "refused"),
        "the only real restore was the refused one"
    );
    let (code, output) = run(
        &fleet,
        &["history", "--kind", "restore-check", "--outcome", "checked"],
    );
    assert_eq!(code, 0);
    assert!(output.contains("restore-check"), "{output}");
}

#[tokio::test]
async fn archive_ids_survive_a_catalog_rebuild_and_exports_do_not_collide() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 2,
        devices: 10,
        ..Default::default()
    })
    .await;
    // Twice in a row: the second backup of each host lands within the same second.
    fleet.ferry_ok(&["backup", "all"]).unwrap();
    fleet.ferry_ok(&["backup", "all"]).unwrap();
    let (_, before) = json_run(&fleet, &["archives", "list"]);
    let before = before.as_array().unwrap().clone();
    assert_eq!(before.len(), 4);
    for host in ["cp01", "cp02"] {
        let names: std::collections::BTreeSet<&str> = before
            .iter()
            .filter(|a| a["host"] == host)
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{host}: {names:?}");
    }

    // A fresh catalog rebuilt from the same store gives the same ids.
    let rebuilt = fleet.fresh_catalog_config("rebuilt");
    let with = |args: &[&str]| {
        let out = Command::new(simhost::bins::path("ferry"))
            .arg("--config")
            .arg(&rebuilt)
            .args(args)
            .args(["-o", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    // Catalogued in the reverse order, so the catalog numbers differ.
    let rebuild = with(&["catalog", "rebuild"]);
    assert_eq!(rebuild["added"], 4, "{rebuild}");
    let after = with(&["archives", "list"]);
    let ids = |list: &[Value]| {
        let mut v: Vec<(String, String)> = list
            .iter()
            .map(|a| {
                (
                    a["name"].as_str().unwrap().to_string(),
                    a["id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(after.as_array().unwrap()), ids(&before));
    for a in &before {
        let id = a["id"].as_str().unwrap();
        let shown = with(&["archives", "show", &id[..8]]);
        assert_eq!(shown["sha256"], a["sha256"]);
    }
    let (code, output) = run(&fleet, &["archives", "show", "abc"]);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("at least 4 hex digits"), "{output}");

    // Two hosts' archives exported into one directory do not collide.
    let out_dir = fleet.dir.join("exported");
    for a in &before {
        let (code, doc) = json_run(
            &fleet,
            &[
                "archives",
                "export",
                a["id"].as_str().unwrap(),
                out_dir.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{doc}");
    }
    for host in ["cp01", "cp02"] {
        let check = Command::new("sh")
            .arg("-c")
            .arg("sha256sum -c *.sha256")
            .current_dir(out_dir.join(host))
            .output()
            .unwrap();
        assert!(check.status.success(), "{}", text(&check));
        assert_eq!(
            String::from_utf8_lossy(&check.stdout)
                .matches(": OK")
                .count(),
            2
        );
    }
}

#[tokio::test]
async fn closed_pipes_bad_values_and_typos_fail_cleanly() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 2,
        devices: 10,
        ..Default::default()
    })
    .await;
    fleet.ferry_ok(&["backup", "all"]).unwrap();

    // A reader that goes away: output ends quietly and the operation completes.
    let closed = |args: &[&str]| {
        let mut child = fleet
            .ferry(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        child.wait().unwrap().code()
    };
    assert_eq!(closed(&["history"]), Some(0));
    assert_eq!(closed(&["archives", "list", "-o", "json"]), Some(0));
    assert_eq!(closed(&["restore", "cp01"]), Some(0));
    let restored = ledger(&fleet, "restore");
    assert_eq!(restored.last().unwrap()["outcome"], "succeeded");
    assert_eq!(
        fleet.host("cp01").unit_state("flightctl-api.service"),
        "active"
    );
    let staging = fleet.host("cp01").layout.agent_dir().join("staging");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);

    // Nonsensical values and typos are refused, naming the valid ones.
    for (args, expect) in [
        (
            vec!["certs", "issue-operator", "bob", "--days", "0"],
            "0 is not in 1..=36500",
        ),
        (vec!["ping", "all", "--timeout", "0"], "0 is not in 1.."),
        (
            vec!["history", "--outcome", "rolledback"],
            "possible values",
        ),
        (vec!["history", "--kind", "restores"], "possible values"),
    ] {
        let (code, output) = run(&fleet, &args);
        assert_eq!(code, 1, "{args:?}: {output}");
        assert!(output.contains(expect), "{args:?}: {output}");
    }
    // archives list takes an inventory pattern: a group, an exclusion, and a typo.
    let (_, all) = json_run(&fleet, &["archives", "list", "controlplanes:!cp02"]);
    assert!(
        all.as_array().unwrap().iter().all(|a| a["host"] == "cp01")
            && !all.as_array().unwrap().is_empty(),
        "{all}"
    );
    let (code, output) = run(&fleet, &["archives", "list", "controlplane"]);
    assert_eq!(code, 4, "{output}");
    assert!(output.contains("matches no host or group"), "{output}");

    // An expired operator certificate: exit 1 with its dates, nothing contacted.
    let pki = fleet.dir.join("controller/pki");
    let ca = ferry_certs::Authority::load(&pki).unwrap();
    let mut spec = ferry_certs::LeafSpec::new("expired", ferry_certs::Role::Controller, vec![], 30);
    spec.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(60);
    spec.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    ca.issue(&spec)
        .unwrap()
        .write(&pki.join("operators"), "expired")
        .unwrap();
    let expired_config = fleet.dir.join("expired.yaml");
    std::fs::write(
        &expired_config,
        format!(
            "state_dir: {s}\ntls:\n  cert: {s}/pki/operators/expired.crt\n  key: {s}/pki/operators/expired.key\n",
            s = fleet.dir.join("controller").display()
        ),
    )
    .unwrap();
    let out = Command::new(simhost::bins::path("ferry"))
        .arg("--config")
        .arg(&expired_config)
        .arg("-i")
        .arg(fleet.inventory_path())
        .args(["ping", "all"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("has expired: valid from") && text(&out).contains("CN=expired"),
        "{}",
        text(&out)
    );

    // The independent ledger verifier reads a file, and refuses empty input.
    let export = fleet.ferry(&["audit", "export"]).output().unwrap();
    let exported = fleet.dir.join("ledger.jsonl");
    std::fs::write(&exported, &export.stdout).unwrap();
    let verifier = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/verify_ledger.py");
    let ok = Command::new("python3")
        .arg(&verifier)
        .arg(&exported)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(!text(&ok).contains("OK 0 entries"), "{}", text(&ok));
    let empty = fleet.dir.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let refused = Command::new("python3")
        .arg(&verifier)
        .arg(&empty)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));

    // The agent's log is plain text when it is not a terminal.
    let log =
        std::fs::read_to_string(fleet.host("cp01").layout.agent_dir().join("agent.log")).unwrap();
    assert!(
        log.contains("restore step") && !log.contains('\u{1b}'),
        "{log}"
    );
}

#[tokio::test]
async fn every_command_prints_one_json_document() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        devices: 10,
        ..Default::default()
    })
    .await;
    let (code, _) = json_run(&fleet, &["backup", "cp01"]);
    assert_eq!(code, 0);
    let (_, list) = json_run(&fleet, &["archives", "list"]);
    let id = list[0]["id"].as_str().unwrap().to_string();
    let export_dir = fleet.dir.join("json-export");
    let agent_cert = fleet.dir.join("controller/pki/operators/controller.crt");
    for (args, want_code) in [
        (vec!["ping", "all"], 0),
        (vec!["facts", "all"], 0),
        (vec!["restore", "cp01", "--check"], 0),
        (vec!["restore", "cp01"], 0),
        (vec!["rollback", "cp01"], 2),
        (vec!["prepare-devices", "cp01"], 0),
        (vec!["archives", "list"], 0),
        (vec!["archives", "show", &id], 0),
        (vec!["archives", "verify", &id], 0),
        (
            vec!["archives", "export", &id, export_dir.to_str().unwrap()],
            0,
        ),
        (vec!["catalog", "rebuild"], 0),
        (vec!["history"], 0),
        (vec!["history", "show", "1"], 0),
        (vec!["audit", "verify"], 0),
        (vec!["audit", "export"], 0),
        (vec!["certs", "show", agent_cert.to_str().unwrap()], 0),
        (
            vec!["certs", "issue-agent", "cp09", "--san", "127.0.0.9"],
            0,
        ),
        // Errors are documents too.
        (vec!["restore", "nosuchhost"], 4),
        (vec!["archives", "show", "ffffffff"], 1),
        (vec!["history", "--outcome", "nope"], 1),
        (vec!["ping", "all", "--forks", "0"], 1),
    ] {
        let (code, doc) = json_run(&fleet, &args);
        assert_eq!(code, want_code, "{args:?}: {doc}");
        if code != 0 {
            assert!(
                doc["error"].is_string() || doc["outcome"].is_string(),
                "{args:?}: {doc}"
            );
        }
    }
    let (_, restore) = json_run(&fleet, &["restore", "cp01"]);
    for step in restore["steps"].as_array().unwrap() {
        assert!(
            step["name"].is_string() && step["outcome"] == "ok" && step["seconds"].is_number(),
            "{step}"
        );
    }
    assert_eq!(restore["host_state"], "restored and healthy");
    // A bad configuration file too.
    let bad = fleet.dir.join("bad.yaml");
    std::fs::write(&bad, "forks: 0\n").unwrap();
    let out = Command::new(simhost::bins::path("ferry"))
        .args([
            "--config",
            bad.to_str().unwrap(),
            "-o",
            "json",
            "ping",
            "all",
        ])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("forks must be at least 1"),
        "{doc}"
    );
}
