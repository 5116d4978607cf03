//! Retention and the archive lifecycle: archives spread over more than a year, the exact set GFS
//! keeps, min_keep, pins, the newest verified archive, an archive a running restore uses, inventory
//! overrides, and one ledger entry per deletion.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferry::catalog::Operator;
use ferry_archive::{Metadata, archive_name, sidecar_line};
use serde_json::Value;
use sha2::{Digest, Sha256};
use simhost::testing::text;
use time::OffsetDateTime;
use time::macros::datetime;

/// Writes an upstream-format archive of `host` created at `t` into the store, with its sidecar
/// (a wrong one when `good_sidecar` is false). Returns its sha256.
fn put_archive(store: &Path, host: &str, t: OffsetDateTime, good_sidecar: bool) -> String {
    let dir = store.join(host);
    std::fs::create_dir_all(&dir).unwrap();
    let name = archive_name(t, "tar.gz");
    let metadata = Metadata {
        timestamp: Metadata::go_timestamp(t),
        version: "v1.2.0".into(),
        deployment_type: "podman".into(),
        database_included: true,
    }
    .to_json();
    let mut bytes = Vec::new();
    {
        let gz = flate2::write::GzEncoder::new(&mut bytes, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_size(metadata.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, "metadata.json", metadata.as_bytes())
            .unwrap();
        tar.into_inner().unwrap().finish().unwrap();
    }
    let sha = ferry_archive::hex(&Sha256::digest(&bytes));
    std::fs::write(dir.join(&name), &bytes).unwrap();
    let recorded = if good_sidecar {
        sha.clone()
    } else {
        "0".repeat(64)
    };
    let mut f = std::fs::File::create(dir.join(format!("{name}.sha256"))).unwrap();
    f.write_all(sidecar_line(&recorded, &name).as_bytes())
        .unwrap();
    sha
}

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    store: PathBuf,
    state: PathBuf,
}

impl Setup {
    fn ferry(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(simhost::bins::path("ferry"));
        cmd.arg("--config").arg(&self.config).args(args);
        cmd
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = ferry::catalog::embedded::PrivateCluster::new(&self.state).stop();
    }
}

fn setup() -> Setup {
    let dir = simhost::testing::temp_dir("ferry-retention-");
    let store = dir.path().join("store");
    let state = dir.path().join("controller");
    // cp02 keeps only its newest archive, by inventory vars over the schedule's policy.
    std::fs::write(
        dir.path().join("inventory.ini"),
        "[controlplanes]\ncp01 ansible_host=127.0.0.1 ferry_port=1\ncp02 ansible_host=127.0.0.1 ferry_port=1 \
         ferry_retention_keep_last=1 ferry_retention_keep_daily=0 ferry_retention_keep_weekly=0 \
         ferry_retention_keep_monthly=0 ferry_retention_keep_yearly=0 ferry_retention_min_keep=0\n",
    )
    .unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {}\nstore: {}\ninventory: inventory.ini\nschedules:\n  - name: gfs\n    hosts: controlplanes\n    cron: \"0 2 * * *\"\n    rpo: 36h\n    retention: {{keep_last: 2, keep_daily: 3, keep_weekly: 2, keep_monthly: 3, keep_yearly: 2, min_keep: 3}}\n",
            state.display(),
            store.display()
        ),
    )
    .unwrap();
    Setup {
        _dir: dir,
        config,
        store,
        state,
    }
}

/// `archives prune --dry-run -o json`: each host's archives by short id, kept or not, with reasons.
fn dry_run(s: &Setup) -> Vec<(String, String, bool, Vec<String>)> {
    let out = s
        .ferry(&["archives", "prune", "--dry-run", "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["dry_run"], true);
    let mut rows = Vec::new();
    for host in doc["hosts"].as_array().unwrap() {
        for a in host["archives"].as_array().unwrap() {
            rows.push((
                host["host"].as_str().unwrap().to_string(),
                a["id"].as_str().unwrap().to_string(),
                a["keep"].as_bool().unwrap(),
                a["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect(),
            ));
        }
    }
    rows
}

fn deleted_ids(rows: &[(String, String, bool, Vec<String>)]) -> BTreeSet<String> {
    rows.iter().filter(|r| !r.2).map(|r| r.1.clone()).collect()
}

#[tokio::test]
async fn retention_keeps_what_gfs_min_keep_pins_and_protections_say_and_ledgers_each_deletion() {
    let s = setup();
    // cp01: twelve archives over seventeen months (UTC).
    let times = [
        datetime!(2025-06-15 02:00 UTC), // a1
        datetime!(2025-10-01 02:00 UTC), // a2
        datetime!(2025-11-20 02:00 UTC), // a3
        datetime!(2026-08-10 02:00 UTC), // a4
        datetime!(2026-10-31 02:00 UTC), // a5
        datetime!(2026-11-15 02:00 UTC), // a6
        datetime!(2026-11-23 02:00 UTC), // a7
        datetime!(2026-11-28 02:00 UTC), // a8
        datetime!(2026-11-29 02:00 UTC), // a9
        datetime!(2026-11-29 14:00 UTC), // a10
        datetime!(2026-11-30 02:00 UTC), // a11
        datetime!(2026-11-30 14:00 UTC), // a12
    ];
    let a: Vec<String> = times
        .iter()
        .map(|t| put_archive(&s.store, "cp01", *t, true)[..12].to_string())
        .collect();
    // cp02: three, the newest with a sidecar that disagrees (suspect: never counted).
    let b: Vec<String> = [
        (datetime!(2026-11-28 03:00 UTC), true),
        (datetime!(2026-11-29 03:00 UTC), true),
        (datetime!(2026-11-30 03:00 UTC), false),
    ]
    .iter()
    .map(|(t, ok)| put_archive(&s.store, "cp02", *t, *ok)[..12].to_string())
    .collect();
    let out = s.ferry(&["catalog", "rebuild"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let rows = dry_run(&s);
    let reasons = |id: &str| -> Vec<String> {
        rows.iter()
            .find(|r| r.1 == id)
            .map(|r| r.3.clone())
            .unwrap_or_else(|| panic!("{id} not in the plan"))
    };
    // restic's meaning: last 2; the newest of each of the last 3 days, 2 ISO weeks, 3 months and
    // 2 years that have archives; plus the newest 3.
    assert_eq!(
        reasons(&a[11]),
        [
            "last",
            "daily",
            "weekly",
            "monthly",
            "yearly",
            "min_keep",
            "newest verified"
        ]
    );
    assert_eq!(reasons(&a[10]), ["last", "min_keep"]);
    assert_eq!(reasons(&a[9]), ["daily", "weekly", "min_keep"]);
    assert_eq!(reasons(&a[7]), ["daily"]);
    assert_eq!(reasons(&a[4]), ["monthly"]);
    assert_eq!(reasons(&a[3]), ["monthly"]);
    assert_eq!(reasons(&a[2]), ["yearly"]);
    // A suspect archive is never counted (nor deleted): the last good one is b[1].
    assert_eq!(
        reasons(&b[2]),
        ["suspect: sidecar-differs: not counted, left alone"]
    );
    assert_eq!(reasons(&b[1]), ["last", "newest verified"]);
    let expected: BTreeSet<String> = [&a[0], &a[1], &a[5], &a[6], &a[8], &b[0]]
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(deleted_ids(&rows), expected);
    // A dry run changes nothing.
    assert_eq!(std::fs::read_dir(s.store.join("cp01")).unwrap().count(), 24);

    // A pin, and a restore in progress with a1, take those two out of the plan.
    let out = s.ferry(&["archives", "pin", &a[1]]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let catalog = simhost::testing::catalog(&s.config).await;
    let restore_run = catalog
        .start_run(
            "restore",
            "cp01",
            &Operator::default(),
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    let a1 = catalog.resolve(&a[0]).await.unwrap();
    catalog.run_uses_archive(restore_run, a1.id).await.unwrap();
    let rows = dry_run(&s);
    assert_eq!(
        reasons(&a[1]).len(),
        0,
        "the first plan had no reason for a2"
    );
    let now_reasons = |id: &str| rows.iter().find(|r| r.1 == id).unwrap().3.clone();
    assert_eq!(now_reasons(&a[1]), ["pinned"]);
    assert_eq!(
        now_reasons(&a[0]),
        [format!("in use by restore run {restore_run}")]
    );
    let expected: BTreeSet<String> = [&a[5], &a[6], &a[8], &b[0]].into_iter().cloned().collect();
    assert_eq!(deleted_ids(&rows), expected);

    // Prune for real: exactly those go, from the store and the list; their records stay.
    let out = s.ferry(&["archives", "prune"]).output().unwrap();
    let output = text(&out);
    assert_eq!(out.status.code(), Some(0), "{output}");
    assert!(output.contains("4 archive(s) deleted"), "{output}");
    for id in &expected {
        let shown = s.ferry(&["archives", "show", id]).output().unwrap();
        assert!(text(&shown).contains("DELETED:"), "{}", text(&shown));
    }
    let listed = s
        .ferry(&["archives", "list", "-o", "json"])
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let listed: BTreeSet<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    assert!(listed.is_disjoint(&expected));
    assert_eq!(listed.len(), 15 - 4);
    assert_eq!(
        std::fs::read_dir(s.store.join("cp01")).unwrap().count(),
        2 * (12 - 3)
    );
    assert_eq!(
        std::fs::read_dir(s.store.join("cp02")).unwrap().count(),
        2 * 2
    );
    // A second prune finds nothing more to delete.
    assert!(deleted_ids(&dry_run(&s)).is_empty());

    // By hand: a pinned archive and the newest verified one are refused; another goes.
    let out = s.ferry(&["archives", "delete", &a[1]]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("is pinned; nothing was deleted"),
        "{}",
        text(&out)
    );
    let out = s.ferry(&["archives", "delete", &b[1]]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("newest verified archive; nothing was deleted"),
        "{}",
        text(&out)
    );
    let out = s.ferry(&["archives", "delete", &a[0]]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "in use by the restore run");
    assert!(
        text(&out).contains("is in use by restore run"),
        "{}",
        text(&out)
    );
    let out = s.ferry(&["archives", "delete", &a[2]]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Deleting it again is an error naming when it went.
    let out = s.ferry(&["archives", "delete", &a[2]]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("was deleted from the store at"),
        "{}",
        text(&out)
    );

    // One ledger entry per deletion, the chain intact.
    let out = s
        .ferry(&["history", "--kind", "archive-delete", "-o", "json"])
        .output()
        .unwrap();
    let history: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut targets: Vec<String> = history
        .as_array()
        .or_else(|| history["entries"].as_array())
        .unwrap()
        .iter()
        .map(|e| e["archive"]["id"].as_str().unwrap().to_string())
        .collect();
    targets.sort();
    let mut want: Vec<String> = expected.iter().cloned().chain([a[2].clone()]).collect();
    want.sort();
    assert_eq!(targets, want);
    let out = s.ferry(&["audit", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
