//! The audit ledger: every operation recorded with who, what, when and how; filters; tamper detection;
//! an independent verifier of the export.

use std::process::{Command, Stdio};

use ferry::catalog::Catalog;
use serde_json::Value;
use simhost::SimFleetOptions;
use simhost::testing::{TempFleet, text};

fn history(fleet: &TempFleet, args: &[&str]) -> Vec<Value> {
    let out = fleet
        .ferry(&["history", "-o", "json"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn verify(fleet: &TempFleet) -> (i32, String) {
    let out = fleet.ferry(&["audit", "verify"]).output().unwrap();
    (out.status.code().unwrap(), text(&out))
}

/// Runs the independent Python implementation of docs/audit.md on `ferry audit export`.
fn python_verify(fleet: &TempFleet) -> (bool, String) {
    let export = fleet.ferry(&["audit", "export"]).output().unwrap();
    assert!(export.status.success());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/verify_ledger.py");
    let mut py = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(py.stdin.as_mut().unwrap(), &export.stdout).unwrap();
    drop(py.stdin.take());
    let out = py.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn tamper(catalog: &Catalog, sql: &str) {
    // An attacker with the database's superuser: triggers off, then edit.
    catalog
        .client()
        .batch_execute(&format!(
            "ALTER TABLE ledger DISABLE TRIGGER ALL; {sql}; ALTER TABLE ledger ENABLE TRIGGER ALL;"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn every_operation_is_on_a_verifiable_append_only_ledger() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");
    let catalog = simhost::testing::catalog(&fleet.config_path()).await;

    // A backup, a succeeded restore, a refused restore (version mismatch), a failed restore and its rollback.
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();
    let archive = catalog.archives().await.unwrap().remove(0);
    assert!(
        fleet
            .ferry(&["restore", "cp01"])
            .output()
            .unwrap()
            .status
            .success()
    );
    catalog
        .client()
        .execute(
            "UPDATE archives SET flightctl_version = 'v1.1.0' WHERE id = $1",
            &[&archive.id],
        )
        .await
        .unwrap();
    let refused = fleet.ferry(&["restore", "cp01"]).output().unwrap();
    assert!(text(&refused).contains("REFUSED"), "{}", text(&refused));
    catalog
        .client()
        .execute(
            "UPDATE archives SET flightctl_version = 'v1.2.0' WHERE id = $1",
            &[&archive.id],
        )
        .await
        .unwrap();
    host.inject_fault(
        "systemctl",
        "start flightctl-api.service",
        "Job for flightctl-api.service failed.",
    );
    let failed = fleet.ferry(&["restore", "cp01"]).output().unwrap();
    assert_eq!(failed.status.code(), Some(2), "{}", text(&failed));
    host.clear_faults();
    assert!(
        fleet
            .ferry(&["rollback", "cp01"])
            .output()
            .unwrap()
            .status
            .success()
    );

    let all = history(&fleet, &[]);
    let ops: Vec<(String, String)> = all
        .iter()
        .filter(|e| e["kind"] != "certificate-issue")
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("backup", "succeeded"),
        ("restore", "succeeded"),
        ("restore", "refused"),
        ("restore", "failed"),
        ("rollback", "rolled back"),
    ]
    .iter()
    .map(|(k, o)| (k.to_string(), o.to_string()))
    .collect();
    assert_eq!(ops, expected);
    assert_eq!(
        all.iter()
            .filter(|e| e["kind"] == "certificate-issue")
            .count(),
        3,
        "CA, operator and agent certificates"
    );
    for e in all.iter().filter(|e| e["kind"] != "certificate-issue") {
        assert_eq!(e["target"], "cp01");
        assert!(
            e["operator"]["subject"]
                .as_str()
                .unwrap()
                .contains("CN=controller"),
            "{e}"
        );
        assert_eq!(e["operator"]["fingerprint"].as_str().unwrap().len(), 64);
        assert!(!e["operator"]["os_user"].as_str().unwrap().is_empty());
        assert!(
            !e["operator"]["controller_host"]
                .as_str()
                .unwrap()
                .is_empty()
        );
        assert!(e["started"].as_str().unwrap() <= e["finished"].as_str().unwrap());
        assert!(
            !e["tasks"].as_array().unwrap().is_empty(),
            "task timeline: {e}"
        );
        if e["kind"] != "rollback" {
            assert_eq!(e["archive"]["sha256"], archive.sha256.as_str(), "{e}");
            assert_eq!(e["archive"]["source_host"], "cp01");
        }
    }
    let restored = &all
        .iter()
        .find(|e| e["kind"] == "restore" && e["outcome"] == "succeeded")
        .unwrap();
    let names: Vec<&str> = restored["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "preflight",
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
            "commit"
        ]
    );
    let refused_entry = all.iter().find(|e| e["outcome"] == "refused").unwrap();
    assert!(
        refused_entry["error"]
            .as_str()
            .unwrap()
            .contains("same version"),
        "{refused_entry}"
    );
    let failed_entry = all.iter().find(|e| e["outcome"] == "failed").unwrap();
    let last_task = failed_entry["tasks"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (
            last_task["name"].as_str().unwrap(),
            last_task["outcome"].as_str().unwrap()
        ),
        ("start", "failed")
    );

    // Filters.
    assert_eq!(history(&fleet, &["--kind", "restore"]).len(), 3);
    assert_eq!(history(&fleet, &["--outcome", "failed"]).len(), 1);
    assert_eq!(
        history(&fleet, &["--kind", "restore", "--outcome", "refused"]).len(),
        1
    );
    assert_eq!(history(&fleet, &["cp0*", "--kind", "backup"]).len(), 1);
    assert_eq!(history(&fleet, &["nope*"]).len(), 0);
    assert_eq!(history(&fleet, &["--since", "2999-01-01"]).len(), 0);
    assert_eq!(history(&fleet, &["--until", "2000-01-01"]).len(), 0);
    let csv = fleet
        .ferry(&["history", "--kind", "restore", "-o", "csv"])
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&csv.stdout).into_owned();
    assert!(
        csv.starts_with("id,started,finished,kind,target,outcome,operator"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 4);
    let id = failed_entry["id"].as_i64().unwrap().to_string();
    let show = fleet.ferry(&["history", "show", &id]).output().unwrap();
    let show = text(&show);
    assert!(
        show.contains("restore of cp01 — failed")
            && show.contains("tasks:")
            && show.contains(" start "),
        "{show}"
    );

    // The chain verifies, here and independently.
    assert_eq!(verify(&fleet).0, 0);
    let (ok, report) = python_verify(&fleet);
    assert!(ok, "{report}");
    assert!(
        report.starts_with(&format!("OK {} entries", all.len())),
        "{report}"
    );

    // Append-only: no plain UPDATE or DELETE, and the writer role may only insert.
    let update = catalog
        .client()
        .batch_execute("UPDATE ledger SET content = content WHERE seq = 1")
        .await
        .unwrap_err();
    assert!(
        update
            .as_db_error()
            .unwrap()
            .message()
            .contains("append-only")
    );
    let role = catalog.client().batch_execute("BEGIN; SET LOCAL ROLE ferry_ledger_writer; ALTER TABLE ledger DISABLE TRIGGER ALL; ROLLBACK").await;
    let role = role.expect_err("the writer role cannot lift the guard");
    assert!(
        role.as_db_error()
            .unwrap()
            .message()
            .contains("must be owner"),
        "{role}"
    );
    let _ = catalog.client().batch_execute("ROLLBACK").await;

    // Entries outlive their archives.
    catalog
        .client()
        .batch_execute(
            "UPDATE host_results SET archive_id = NULL; DELETE FROM archive_copies; DELETE FROM archives",
        )
        .await
        .unwrap();
    std::fs::remove_dir_all(fleet.dir.join("controller/store")).unwrap();
    assert_eq!(
        history(&fleet, &["--kind", "backup"])[0]["archive"]["sha256"],
        archive.sha256.as_str()
    );
    assert_eq!(verify(&fleet).0, 0);

    // Tampering: an edited field, a deleted entry, two entries swapped; each named exactly.
    let seq = failed_entry["id"].as_i64().unwrap();
    let original: String = catalog
        .client()
        .query_one("SELECT content FROM ledger WHERE seq = $1", &[&seq])
        .await
        .unwrap()
        .get(0);
    tamper(&catalog, &format!("UPDATE ledger SET content = replace(content, '\"outcome\":\"failed\"', '\"outcome\":\"succeeded\"') WHERE seq = {seq}")).await;
    let (code, report) = verify(&fleet);
    assert_eq!(code, 2, "{report}");
    assert!(
        report.contains(&format!("entry #{seq} was edited")),
        "{report}"
    );
    assert!(
        !python_verify(&fleet).0,
        "the independent verifier sees it too"
    );
    // history shows the edited row marked, not as if it were true.
    let edited: Vec<Value> = history(&fleet, &[])
        .into_iter()
        .filter(|e| e["id"] == seq)
        .collect();
    assert_eq!(edited[0]["verified"], false, "{edited:?}");
    assert_eq!(edited[0]["outcome"], "succeeded");
    let out = fleet.ferry(&["history"]).output().unwrap();
    let listing = text(&out);
    assert!(
        listing
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{seq} "))
                && l.contains("succeeded [FAILS VERIFY]"))
            && listing.contains("fail the ledger's hash chain"),
        "{listing}"
    );
    tamper(
        &catalog,
        &format!(
            "UPDATE ledger SET content = '{}' WHERE seq = {seq}",
            original.replace('\'', "''")
        ),
    )
    .await;
    assert_eq!(verify(&fleet).0, 0);

    tamper(&catalog, "CREATE TEMP TABLE saved AS SELECT * FROM ledger WHERE seq = 4; DELETE FROM ledger WHERE seq = 4").await;
    let (code, report) = verify(&fleet);
    assert_eq!(code, 2);
    assert!(report.contains("entry #4 is missing"), "{report}");
    tamper(&catalog, "INSERT INTO ledger SELECT * FROM saved").await;
    assert_eq!(verify(&fleet).0, 0);

    tamper(&catalog, "UPDATE ledger SET seq = -6 WHERE seq = 6; UPDATE ledger SET seq = 6 WHERE seq = 7; UPDATE ledger SET seq = 7 WHERE seq = -6").await;
    let (code, report) = verify(&fleet);
    assert_eq!(code, 2);
    assert!(
        report.contains("entry at position #6 was recorded as #7"),
        "{report}"
    );
}
