//! Archive truth: what ferry counts as a good backup is what the store can prove, and nothing
//! unproven reaches the host. A directory store and a real S3 server (encrypted), objects that go
//! missing or change behind ferry's back, a store switched without copying, a tampered and a
//! hostile dump, serve's archive check, and a drill that fails for its host's reasons.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use simhost::SimFleetOptions;
use simhost::s3::S3Server;
use simhost::serving::{Serve, Webhook, free_port, http_get, wait_for};
use simhost::testing::{TempFleet, text};

/// `ferry --config CONFIG -i INVENTORY ARGS…`, run to its end.
fn ferry(fleet: &TempFleet, config: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(simhost::bins::path("ferry"))
        .arg("--config")
        .arg(config)
        .arg("-i")
        .arg(fleet.inventory_path())
        .args(args)
        .output()
        .unwrap()
}

fn run(fleet: &TempFleet, config: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = ferry(fleet, config, args);
    (out.status.code(), text(&out))
}

fn json(fleet: &TempFleet, config: &Path, args: &[&str]) -> (Option<i32>, Value) {
    let out = ferry(fleet, config, &[args, &["-o", "json"]].concat());
    let doc = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out)));
    (out.status.code(), doc)
}

/// A config beside the fleet's: its text with `extra` appended.
fn config_with(fleet: &TempFleet, name: &str, extra: &str) -> PathBuf {
    let path = fleet.dir.join(name);
    let base = std::fs::read_to_string(fleet.config_path()).unwrap();
    std::fs::write(&path, format!("{base}{extra}")).unwrap();
    path
}

/// keep_last 1, min_keep 1, on a schedule that does not fire during a test.
const YEARLY: &str = "schedules:\n  - name: nightly\n    hosts: controlplanes\n    cron: \"0 3 1 1 *\"\n    rpo: 400d\n    retention: {keep_last: 1, min_keep: 1}\n";

/// One archive as `archives list -o json` shows it.
#[derive(Debug, Clone)]
struct Listed {
    id: String,
    name: String,
    object: String,
    state: String,
    reason: Option<String>,
}

/// `host`'s archives, newest first.
fn listed(fleet: &TempFleet, config: &Path, host: &str) -> Vec<Listed> {
    let (code, doc) = json(fleet, config, &["archives", "list"]);
    assert_eq!(code, Some(0), "{doc}");
    doc.as_array()
        .unwrap()
        .iter()
        .filter(|a| a["host"] == host)
        .map(|a| {
            let name = a["name"].as_str().unwrap().to_string();
            Listed {
                id: a["id"].as_str().unwrap().to_string(),
                object: if a["sealed"].is_null() {
                    name.clone()
                } else {
                    format!("{name}.age")
                },
                name,
                state: a["state"].as_str().unwrap().to_string(),
                reason: a["reason"].as_str().map(str::to_string),
            }
        })
        .collect()
}

fn backup(fleet: &TempFleet, config: &Path, pattern: &str) {
    let (code, out) = run(fleet, config, &["backup", pattern]);
    assert_eq!(code, Some(0), "{out}");
}

/// The archives of `host` that `archive-delete` ledger entries name.
fn deleted_on_record(fleet: &TempFleet, config: &Path, host: &str) -> Vec<String> {
    let (_, doc) = json(fleet, config, &["history", "--kind", "archive-delete"]);
    doc.as_array()
        .or_else(|| doc["entries"].as_array())
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["archive"]["source_host"] == host)
        .map(|e| e["archive"]["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn host_status<'a>(doc: &'a Value, host: &str) -> &'a Value {
    doc["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .unwrap_or_else(|| panic!("{host} not in {doc}"))
}

/// A small fleet: cp01, and with two hosts cp02 on an external database.
async fn small_fleet(hosts: usize) -> TempFleet {
    TempFleet::up(SimFleetOptions {
        hosts,
        external_db: if hosts > 1 { vec![1] } else { Vec::new() },
        devices: 20,
        ..Default::default()
    })
    .await
}

/// Where the archives are, to change them behind ferry's back.
enum Objects<'a> {
    Dir(PathBuf),
    Bucket(&'a S3Server, &'a str),
}

impl Objects<'_> {
    fn remove(&self, host: &str, object: &str) {
        match self {
            Objects::Dir(root) => std::fs::remove_file(root.join(host).join(object)).unwrap(),
            Objects::Bucket(s3, prefix) => s3.rm(&format!("{prefix}/{host}/{object}")),
        }
    }

    fn exists(&self, host: &str, object: &str) -> bool {
        match self {
            Objects::Dir(root) => root.join(host).join(object).exists(),
            Objects::Bucket(s3, prefix) => s3
                .ls(&format!("{prefix}/{host}/"))
                .contains_key(&format!("{prefix}/{host}/{object}")),
        }
    }

    /// One bit flipped in the middle: the same size, other bytes.
    fn flip_bit(&self, host: &str, object: &str) {
        match self {
            Objects::Dir(root) => {
                let path = root.join(host).join(object);
                let mut bytes = std::fs::read(&path).unwrap();
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x01;
                std::fs::write(&path, &bytes).unwrap();
            }
            Objects::Bucket(s3, prefix) => {
                let key = format!("{prefix}/{host}/{object}");
                let mut bytes = s3.get(&key);
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x01;
                s3.put(&key, &bytes);
            }
        }
    }
}

/// The scenario the issue names, on any store: the newest archive goes missing, then (with more
/// archives) the newest is damaged. Verify records it, retention keeps the intact one and never
/// counts the bad ones, status names the bad one and is not ok, and a plain restore picks the
/// newest good archive and says what it skipped. `damaged` is the reason a flipped bit gives.
fn newest_missing_then_damaged(fleet: &TempFleet, config: &Path, objects: &Objects, damaged: &str) {
    for _ in 0..3 {
        backup(fleet, config, "all");
    }
    let list = listed(fleet, config, "cp01");
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(list.iter().all(|a| a.state == "good"), "{list:?}");
    let (a3, a2, a1) = (&list[0], &list[1], &list[2]);

    // The newest goes missing (a lifecycle rule, an operator's rm).
    objects.remove("cp01", &a3.object);
    let (code, out) = run(fleet, config, &["archives", "verify", "--all"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains(&format!("archive {} {}: missing", a3.id, a3.name)),
        "{out}"
    );
    let (code, out) = run(fleet, config, &["archives", "prune", "cp01"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 archive(s) deleted"), "{out}");
    assert_eq!(
        deleted_on_record(fleet, config, "cp01"),
        vec![a1.id.clone()]
    );
    assert!(
        objects.exists("cp01", &a2.object),
        "the intact archive was deleted"
    );
    assert!(!objects.exists("cp01", &a1.object));
    let now = listed(fleet, config, "cp01");
    let missing = now.iter().find(|a| a.id == a3.id).unwrap();
    assert_eq!(missing.state, "missing");

    let (code, doc) = json(fleet, config, &["status"]);
    assert_eq!(code, Some(2), "{doc}");
    let cp01 = host_status(&doc, "cp01");
    assert_ne!(cp01["state"], "ok", "{cp01}");
    assert_eq!(cp01["archive_problem"]["id"], a3.id.as_str(), "{cp01}");
    assert_eq!(cp01["last_success"]["id"], a2.id.as_str(), "{cp01}");
    // The external-database host lost nothing: no problem there.
    let cp02 = host_status(&doc, "cp02");
    assert_eq!(cp02["state"], "ok", "{cp02}");
    assert!(cp02["archive_problem"].is_null(), "{cp02}");
    let (code, out) = run(fleet, config, &["status"]);
    assert_eq!(code, Some(2));
    assert!(
        out.contains(&format!("its newest archive {} ", a3.id)),
        "{out}"
    );

    let (code, out) = run(fleet, config, &["restore", "cp01", "--check"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("skipped archive {} ({})", a3.id, a3.name))
            && out.contains("missing from the store")
            && out.contains(&format!("from archive {}", a2.id)),
        "{out}"
    );

    // Two more; the newest is damaged (one bit).
    backup(fleet, config, "cp01");
    backup(fleet, config, "cp01");
    let list = listed(fleet, config, "cp01");
    let (a5, a4) = (&list[0], &list[1]);
    objects.flip_bit("cp01", &a5.object);
    let (code, out) = run(fleet, config, &["archives", "verify", "--all"]);
    assert_eq!(code, Some(2), "{out}");
    let now = listed(fleet, config, "cp01");
    let bad = now.iter().find(|a| a.id == a5.id).unwrap();
    assert_eq!(
        (bad.state.as_str(), bad.reason.as_deref()),
        ("suspect", Some(damaged)),
        "{out}"
    );
    let (code, out) = run(fleet, config, &["archives", "prune", "cp01"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 archive(s) deleted"), "{out}");
    assert_eq!(
        deleted_on_record(fleet, config, "cp01").len(),
        2,
        "only a1 and a2 are ever deleted"
    );
    assert!(deleted_on_record(fleet, config, "cp01").contains(&a2.id));
    assert!(objects.exists("cp01", &a4.object));
    assert!(
        objects.exists("cp01", &a5.object),
        "retention deleted the suspect one"
    );

    let (code, doc) = json(fleet, config, &["status"]);
    assert_eq!(code, Some(2), "{doc}");
    let cp01 = host_status(&doc, "cp01");
    assert_eq!(cp01["archive_problem"]["id"], a5.id.as_str(), "{cp01}");
    assert_eq!(cp01["last_success"]["id"], a4.id.as_str(), "{cp01}");

    let (code, out) = run(fleet, config, &["restore", "cp01"]);
    assert_eq!(code, Some(0), "{out}");
    let restored = out.clone();
    // Damaged again behind ferry's back, with nothing run since: the proof finds it, records it,
    // and a plain restore goes on with the next good archive, saying so.
    backup(fleet, config, "cp01");
    let a6 = listed(fleet, config, "cp01").remove(0);
    objects.flip_bit("cp01", &a6.object);
    let (code, out) = run(fleet, config, &["restore", "cp01", "--check"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("skipped archive {} ({})", a6.id, a6.name))
            && out.contains("trying the next good archive")
            && out.contains(&format!("from archive {}", a4.id)),
        "{out}"
    );
    let now = listed(fleet, config, "cp01");
    assert_eq!(now[0].state, "suspect");
    let out = restored;
    assert!(
        out.contains(&format!("skipped archive {}", a5.id))
            && out.contains(&format!("suspect: {damaged}"))
            && out.contains(&format!("restore cp01 from archive {}", a4.id)),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_store_never_counts_a_missing_or_damaged_archive() {
    let fleet = small_fleet(2).await;
    let config = config_with(&fleet, "truth.yaml", YEARLY);
    let objects = Objects::Dir(fleet.dir.join("controller/store"));
    newest_missing_then_damaged(&fleet, &config, &objects, "body-differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_bucket_never_counts_a_missing_or_damaged_archive() {
    let s3 = S3Server::start("ferry-truth");
    let fleet = small_fleet(2).await;
    let identity = fleet.dir.join("archive-key.txt");
    let out = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&identity)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = String::from_utf8(
        std::process::Command::new("age-keygen")
            .arg("-y")
            .arg(&identity)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let config = config_with(
        &fleet,
        "truth.yaml",
        &format!(
            "{}encryption:\n  recipients: [\"{}\"]\n  identity: {}\n{YEARLY}",
            s3.config("site1"),
            public.trim(),
            identity.display()
        ),
    );
    let objects = Objects::Bucket(&s3, "site1");
    // A flipped bit in the ciphertext fails authentication.
    newest_missing_then_damaged(&fleet, &config, &objects, "auth-failed");
    // A private key that is not there is said at backup time, not found at 3 a.m.
    let missing = fleet.dir.join("no-such-key.txt");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &identity.display().to_string(),
        &missing.display().to_string(),
    );
    let keyless = fleet.dir.join("keyless.yaml");
    std::fs::write(&keyless, text).unwrap();
    let (code, out) = run(&fleet, &keyless, &["backup", "cp01"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "encryption.identity ({}) cannot be read",
            missing.display()
        )),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_switched_without_copying_deletes_nothing_and_switching_back_restores_all() {
    let s3 = S3Server::start("ferry-switch");
    let fleet = small_fleet(1).await;
    let dir_config = config_with(&fleet, "dir.yaml", YEARLY);
    for _ in 0..3 {
        backup(&fleet, &dir_config, "cp01");
    }
    let before = listed(&fleet, &dir_config, "cp01");
    assert_eq!(before.len(), 3);
    let store = fleet.dir.join("controller/store/cp01");
    let files = || std::fs::read_dir(&store).unwrap().count();
    assert_eq!(files(), 6);

    // `store:` now names an empty bucket; nothing was copied.
    let port = free_port();
    let bucket_config = config_with(
        &fleet,
        "bucket.yaml",
        &format!(
            "{}serve:\n  listen: 127.0.0.1:{port}\nschedules:\n  - name: minutely\n    hosts: controlplanes\n    cron: \"* * * * *\"\n    rpo: 1h\n    retention: {{keep_last: 1, min_keep: 1}}\n",
            s3.config("switched")
        ),
    );
    let (code, out) = run(&fleet, &bucket_config, &["archives", "prune"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0 archive(s) deleted"), "{out}");
    assert!(out.contains("recorded in another store"), "{out}");
    let (code, out) = run(&fleet, &bucket_config, &["archives", "verify", "--all"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("3 in other stores skipped"), "{out}");
    let elsewhere = listed(&fleet, &bucket_config, "cp01");
    assert!(
        elsewhere.iter().all(|a| a.state == "elsewhere"),
        "{elsewhere:?}"
    );
    // Status counts what the configured store holds: nothing good there, so breached, and why.
    let (code, doc) = json(&fleet, &bucket_config, &["status"]);
    assert_eq!(code, Some(2), "{doc}");
    let cp01 = host_status(&doc, "cp01");
    assert_eq!(cp01["state"], "breached", "{cp01}");
    assert!(
        cp01["archive_problem"]["state"]
            .as_str()
            .unwrap()
            .starts_with("in another store"),
        "{cp01}"
    );
    let (code, out) = run(&fleet, &bucket_config, &["restore", "cp01"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("set `store:` to that store"), "{out}");
    // A restore of one of them names the store that holds it.
    let (code, out) = run(
        &fleet,
        &bucket_config,
        &["restore", "cp01", "--archive", &before[0].id],
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("not in the configured store"), "{out}");

    // serve on the bucket for one slot: it backs up into the bucket and prunes nothing elsewhere.
    let mut serve = Serve::start(
        &bucket_config,
        &fleet.inventory_path(),
        &["--replica", "switch"],
        &fleet.dir.join("serve.log"),
    );
    wait_for(
        Duration::from_secs(90),
        "a scheduled backup in the bucket",
        || (listed(&fleet, &bucket_config, "cp01").len() == 4).then_some(()),
    );
    // Its retention runs after the run: give it the moment, then stop.
    std::thread::sleep(Duration::from_secs(3));
    serve.signal(rustix::process::Signal::TERM);
    assert_eq!(
        serve.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        serve.log_text()
    );
    assert!(deleted_on_record(&fleet, &bucket_config, "cp01").is_empty());
    assert_eq!(files(), 6, "an archive in the directory was touched");
    assert!(
        !serve.log_text().contains("archive pruned"),
        "{}",
        serve.log_text()
    );

    // Back to the directory: every archive is there, good, and restores.
    let back = listed(&fleet, &dir_config, "cp01");
    assert_eq!(back.len(), 4);
    assert_eq!(back[0].state, "elsewhere", "the bucket's archive: {back:?}");
    for a in &before {
        let now = back.iter().find(|b| b.id == a.id).unwrap();
        assert_eq!(now.state, "good", "{now:?}");
        let (code, out) = run(
            &fleet,
            &dir_config,
            &["restore", "cp01", "--archive", &a.id],
        );
        assert_eq!(code, Some(0), "{out}");
    }

    // An archive an earlier ferry wrongly marked deleted is re-linked by a rebuild of the store.
    let catalog = simhost::testing::catalog(&dir_config).await;
    catalog
        .client()
        .batch_execute(&format!(
            "DELETE FROM archive_copies WHERE archive_id = (SELECT id FROM archives WHERE sha256 LIKE '{0}%');
             UPDATE archives SET deleted_at = now(), deleted_reason = 'retention' WHERE sha256 LIKE '{0}%'",
            before[1].id
        ))
        .await
        .unwrap();
    let (code, out) = run(
        &fleet,
        &dir_config,
        &["restore", "cp01", "--archive", &before[1].id],
    );
    assert_eq!(code, Some(2), "{out}");
    let (code, out) = run(&fleet, &dir_config, &["catalog", "rebuild"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("relinked: [cp01] archive {}", before[1].id))
            && out.contains("1 relinked"),
        "{out}"
    );
    let (code, out) = run(
        &fleet,
        &dir_config,
        &["restore", "cp01", "--archive", &before[1].id],
    );
    assert_eq!(code, Some(0), "{out}");
}

/// The archive at `path` with `line` inserted after the first line of its dump, gzipped again to
/// exactly `size` bytes when given (the gzip header's comment pads it).
fn with_dump_line(path: &Path, line: &str, size: Option<usize>) -> Vec<u8> {
    let mut tar_bytes = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut tar_bytes)
        .unwrap();
    // As a hostile agent would make it: the manifest describes the dump it carries.
    let mut entries = Vec::new();
    for entry in tar::Archive::new(&tar_bytes[..]).entries().unwrap() {
        let mut entry = entry.unwrap();
        let entry_path = entry.path().unwrap().to_string_lossy().into_owned();
        let header = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if entry_path == "db/dump.sql" {
            let at = data.iter().position(|&b| b == b'\n').unwrap() + 1;
            data.splice(at..at, line.bytes());
        }
        entries.push((entry_path, header, data));
    }
    let dump = entries
        .iter()
        .find(|e| e.0 == "db/dump.sql")
        .unwrap()
        .2
        .clone();
    let mut rebuilt = tar::Builder::new(Vec::new());
    for (entry_path, mut header, mut data) in entries {
        if entry_path == ferry_archive::MANIFEST_NAME {
            let mut manifest: ferry_archive::Manifest = serde_json::from_slice(&data).unwrap();
            for e in manifest
                .entries
                .iter_mut()
                .filter(|e| e.path == "db/dump.sql")
            {
                e.size = dump.len() as u64;
                e.sha256 = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&dump));
            }
            data = serde_json::to_vec(&manifest).unwrap();
        }
        header.set_size(data.len() as u64);
        header.set_cksum();
        rebuilt.append(&header, &data[..]).unwrap();
    }
    let tar_bytes = rebuilt.into_inner().unwrap();
    let gzip = |comment: Option<Vec<u8>>| {
        let mut builder = flate2::GzBuilder::new();
        if let Some(c) = comment {
            builder = builder.comment(c);
        }
        let mut gz = builder.write(Vec::new(), flate2::Compression::best());
        gz.write_all(&tar_bytes).unwrap();
        gz.finish().unwrap()
    };
    let plain = gzip(None);
    let Some(size) = size else { return plain };
    // The comment costs its bytes and a NUL.
    assert!(plain.len() < size, "the tampered archive is larger");
    let padded = gzip(Some(vec![b'x'; size - plain.len() - 1]));
    assert_eq!(padded.len(), size);
    padded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_hostile_dump_never_runs() {
    let fleet = small_fleet(1).await;
    let config = fleet.config_path();
    backup(&fleet, &config, "cp01");
    let good = listed(&fleet, &config, "cp01").remove(0);
    let store = fleet.dir.join("controller/store/cp01");
    let path = store.join(&good.object);
    let original = std::fs::read(&path).unwrap();
    // A file anyone may create: were the meta-command run, it would be there.
    let marker = std::env::temp_dir().join(format!("ferry-owned-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let hostile_line = format!("\\! touch {}\n", marker.display());
    let host = fleet.host("cp01");
    let loads = || -> Vec<String> {
        host.calls()
            .into_iter()
            .filter(|c| c.contains("ON_ERROR_STOP=1 -q -f"))
            .collect()
    };
    let devices = async || -> i64 {
        let db = host.db().await.unwrap();
        db.query_one("SELECT count(*) FROM devices", &[])
            .await
            .unwrap()
            .get(0)
    };
    let live_devices = devices().await;

    // Replaced behind ferry's back by one of the same size whose dump differs.
    let tampered = with_dump_line(&path, &hostile_line, Some(original.len()));
    std::fs::write(&path, &tampered).unwrap();
    host.clear_calls();
    let (code, out) = run(&fleet, &config, &["restore", "cp01", "--archive", &good.id]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("body-differs") && out.contains("task preflight"),
        "{out}"
    );
    let (code, out) = run(&fleet, &config, &["drill", "cp01", "--archive", &good.id]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("the drill was not started"), "{out}");
    assert!(loads().is_empty(), "a load ran: {:?}", loads());
    assert!(!marker.exists());
    let now = listed(&fleet, &config, "cp01").remove(0);
    assert_eq!(
        (now.state.as_str(), now.reason.as_deref()),
        ("suspect", Some("body-differs"))
    );
    std::fs::write(&path, &original).unwrap();

    // A hostile host or catalog: the same dump catalogued with a digest that agrees.
    let hostile = with_dump_line(&path, &hostile_line, None);
    let t = ferry_archive::archive_time(&good.name).unwrap() + time::Duration::seconds(1);
    let name = ferry_archive::archive_name(t, "tar.gz");
    std::fs::write(store.join(&name), &hostile).unwrap();
    let sha = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&hostile));
    std::fs::write(
        store.join(format!("{name}.sha256")),
        ferry_archive::sidecar_line(&sha, &name),
    )
    .unwrap();
    let (code, out) = run(&fleet, &config, &["catalog", "rebuild"]);
    assert_eq!(code, Some(0), "{out}");
    let id = &sha[..12];
    host.clear_calls();
    let (code, out) = run(&fleet, &config, &["restore", "cp01", "--archive", id]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("psql meta-command `\\!` refused") && out.contains("task stage"),
        "{out}"
    );
    let (code, out) = run(&fleet, &config, &["drill", "cp01", "--archive", id]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("psql meta-command `\\!` refused"), "{out}");
    assert!(!marker.exists(), "the dump's meta-command ran");
    assert_eq!(devices().await, live_devices);
    // Nothing left behind: no temporary or scratch database, the host free for a good restore.
    let db = host.db().await.unwrap();
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE '%\\_restore\\_%' OR datname LIKE '%\\_drill\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    // The original bytes back: a restore that names it proves it again, and restores.
    let (code, out) = run(&fleet, &config, &["restore", "cp01", "--archive", &good.id]);
    assert_eq!(code, Some(0), "{out}");
    let now = listed(&fleet, &config, "cp01");
    assert_eq!(now.iter().find(|a| a.id == good.id).unwrap().state, "good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_finds_a_missing_archive_and_alerts_once() {
    let fleet = small_fleet(1).await;
    let hooks = Webhook::start(&fleet.dir, 0);
    let port = free_port();
    let config = config_with(
        &fleet,
        "serve.yaml",
        &format!(
            "serve:\n  listen: 127.0.0.1:{port}\n  archive_check: 2s\n{YEARLY}alerts:\n  - webhook: {}\n",
            hooks.url()
        ),
    );
    // A typo'd period stops serve before it starts, naming the line.
    let typo = config_with(
        &fleet,
        "typo.yaml",
        "serve:\n  listen: 127.0.0.1:1\n  archive_check: 2x\n",
    );
    let mut bad = Serve::start(
        &typo,
        &fleet.inventory_path(),
        &[],
        &fleet.dir.join("typo.log"),
    );
    assert_eq!(bad.wait(Duration::from_secs(30)), Some(1));
    assert!(
        bad.log_text().contains("typo.yaml:") && bad.log_text().contains("archive_check: \"2x\""),
        "{}",
        bad.log_text()
    );
    backup(&fleet, &config, "cp01");
    backup(&fleet, &config, "cp01");
    let serve = Serve::start(
        &config,
        &fleet.inventory_path(),
        &["--replica", "watch"],
        &fleet.dir.join("serve.log"),
    );
    let metric = |state: &str| -> Option<f64> {
        let (_, body) = http_get(port, "/metrics").ok()?;
        body.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "ferry_archive_problems{{host=\"cp01\",state=\"{state}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    wait_for(
        Duration::from_secs(30),
        "the archive problems metric",
        || (metric("missing") == Some(0.0)).then_some(()),
    );
    let newest = listed(&fleet, &config, "cp01").remove(0);
    std::fs::remove_file(fleet.dir.join("controller/store/cp01").join(&newest.object)).unwrap();
    wait_for(
        Duration::from_secs(30),
        "ferry_archive_problems to count it",
        || (metric("missing") == Some(1.0)).then_some(()),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while hooks.of("archive-missing", "cp01").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no archive-missing alert within 30 s: {:?}\n{}",
            hooks.received(),
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Three more periods: still one alert, the state recorded by the check.
    std::thread::sleep(Duration::from_secs(7));
    let alerts = hooks.of("archive-missing", "cp01");
    assert_eq!(alerts.len(), 1, "{alerts:?}\n{}", serve.log_text());
    assert_eq!(alerts[0]["archive"]["id"], newest.id.as_str());
    let now = listed(&fleet, &config, "cp01");
    assert_eq!(now[0].state, "missing");
    assert_eq!(now[1].state, "good", "the older one is still there");
    let (code, doc) = json(&fleet, &config, &["status"]);
    assert_eq!(code, Some(2), "{doc}");
    assert_eq!(
        host_status(&doc, "cp01")["archive_problem"]["id"],
        newest.id.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_that_cannot_create_its_database_blames_the_host_not_the_archive() {
    let fleet = small_fleet(1).await;
    let config = fleet.config_path();
    backup(&fleet, &config, "cp01");
    let archive = listed(&fleet, &config, "cp01").remove(0);
    let host = fleet.host("cp01");
    host.inject_fault(
        "podman",
        "CREATE DATABASE",
        "ERROR:  could not create directory \"base/98765\": No space left on device",
    );
    let (code, out) = run(&fleet, &config, &["drill", "cp01"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("drill/environment")
            && out.contains("No space left on device")
            && out.contains(&format!("this says nothing about archive {}", archive.id))
            && !out.contains("does not restore"),
        "{out}"
    );
    let (_, doc) = json(&fleet, &config, &["archives", "show", &archive.id]);
    assert_eq!(doc["state"], "good", "{doc}");
    assert!(doc["drilled_at"].is_null(), "{doc}");
    // On record as a failed drill run, not as a drill of the archive.
    let (_, history) = json(&fleet, &config, &["history", "--kind", "drill"]);
    let entries = history
        .as_array()
        .or_else(|| history["entries"].as_array())
        .cloned()
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["outcome"], "failed");
    // The host put right, the same archive drills and is verified by restore.
    host.clear_faults();
    let (code, out) = run(&fleet, &config, &["drill", "cp01"]);
    assert_eq!(code, Some(0), "{out}");
    let (_, doc) = json(&fleet, &config, &["archives", "show", &archive.id]);
    assert!(doc["drilled_at"].is_string(), "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_cut_during_the_proof_blames_nothing_and_sends_nothing() {
    let s3 = S3Server::start("ferry-cut");
    let fleet = small_fleet(1).await;
    let direct = config_with(&fleet, "direct.yaml", &s3.config("cut"));
    backup(&fleet, &direct, "cp01");
    let archive = listed(&fleet, &direct, "cp01").remove(0);
    // The same bucket through a slow link, cut while the controller reads the archive to prove it.
    let proxy = simhost::testing::Proxy::start(
        "127.0.0.1:0",
        format!("127.0.0.1:{}", s3.port).parse().unwrap(),
        16 << 10,
    )
    .await;
    let slow = config_with(
        &fleet,
        "slow.yaml",
        &s3.config("cut")
            .replace(&s3.endpoint(), &format!("http://{}", proxy.addr)),
    );
    let host = fleet.host("cp01");
    host.clear_calls();
    let restore = std::process::Command::new(simhost::bins::path("ferry"))
        .arg("--config")
        .arg(&slow)
        .arg("-i")
        .arg(fleet.inventory_path())
        .args(["restore", "cp01"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    proxy.wait_for(12 << 10).await;
    proxy.cut();
    let out = restore.wait_with_output().unwrap();
    let output = text(&out);
    assert_eq!(out.status.code(), Some(2), "{output}");
    assert!(
        output.contains("REFUSED: [cp01] task preflight") && output.contains("broke"),
        "{output}"
    );
    // Nothing reached the host, and the archive is as good as it was: the link failed, not it.
    let loads: Vec<String> = host
        .calls()
        .into_iter()
        .filter(|c| c.contains("ON_ERROR_STOP=1 -q -f"))
        .collect();
    assert!(loads.is_empty(), "{loads:?}");
    let now = listed(&fleet, &direct, "cp01").remove(0);
    assert_eq!(
        (now.id.as_str(), now.state.as_str()),
        (archive.id.as_str(), "good")
    );
    let (code, out) = run(&fleet, &direct, &["restore", "cp01"]);
    assert_eq!(code, Some(0), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_reproves_what_changed_and_copy_checks_the_source_sidecar() {
    let fleet = small_fleet(1).await;
    let config = config_with(&fleet, "truth.yaml", YEARLY);
    for _ in 0..3 {
        backup(&fleet, &config, "cp01");
    }
    let list = listed(&fleet, &config, "cp01");
    let (a3, a2, a1) = (&list[0], &list[1], &list[2]);
    let objects = Objects::Dir(fleet.dir.join("controller/store"));
    // The newest damaged behind ferry's back, nothing verified since: it is no longer the version
    // proven on arrival, so retention reads it again before trusting it, in the dry run as in the
    // real one.
    objects.flip_bit("cp01", &a3.object);
    let (code, doc) = json(&fleet, &config, &["archives", "prune", "cp01", "--dry-run"]);
    assert_eq!(code, Some(0), "{doc}");
    let plan = doc["hosts"][0]["archives"].as_array().unwrap().clone();
    let verdict = |id: &str| plan.iter().find(|a| a["id"] == id).unwrap().clone();
    assert_eq!(verdict(&a3.id)["keep"], true);
    assert!(
        verdict(&a3.id)["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("suspect: body-differs"),
        "{doc}"
    );
    assert!(
        verdict(&a2.id)["reasons"]
            .as_array()
            .unwrap()
            .contains(&Value::from("newest verified")),
        "{doc}"
    );
    assert_eq!(verdict(&a1.id)["keep"], false);
    let (code, out) = run(&fleet, &config, &["archives", "prune", "cp01"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        deleted_on_record(&fleet, &config, "cp01"),
        vec![a1.id.clone()]
    );
    assert!(objects.exists("cp01", &a2.object) && objects.exists("cp01", &a3.object));

    // A copy reads the body whole, but good also needs the sidecar: one that is gone stays a
    // finding, at the source; the destination's copy, sidecar written by ferry, is good.
    let sidecar = fleet
        .dir
        .join("controller/store/cp01")
        .join(format!("{}.sha256", a2.object));
    std::fs::remove_file(&sidecar).unwrap();
    let offsite = fleet.dir.join("offsite");
    let (code, out) = run(
        &fleet,
        &config,
        &[
            "archives",
            "copy",
            "--all",
            "--to",
            offsite.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(2), "the damaged a3 is not copied: {out}");
    assert!(
        out.contains(&format!("copied: [cp01] archive {}", a2.id)),
        "{out}"
    );
    let now = listed(&fleet, &config, "cp01");
    let a2_now = now.iter().find(|a| a.id == a2.id).unwrap();
    assert_eq!(
        (a2_now.state.as_str(), a2_now.reason.as_deref()),
        ("suspect", Some("sidecar-differs"))
    );
    let (_, shown) = json(&fleet, &config, &["archives", "show", &a2.id]);
    let copies = shown["copies"].as_array().unwrap();
    assert!(
        copies
            .iter()
            .any(|c| c["store"].as_str().unwrap().ends_with("/offsite") && c["state"] == "good"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_catalogued_before_stores_were_recorded_are_linked_by_what_the_store_lists() {
    let fleet = small_fleet(1).await;
    let config = fleet.config_path();
    backup(&fleet, &config, "cp01");
    backup(&fleet, &config, "cp01");
    let list = listed(&fleet, &config, "cp01");
    let (newer, older) = (&list[0], &list[1]);
    // As an upgraded catalog has them: no copy recorded anywhere.
    let catalog = simhost::testing::catalog(&config).await;
    catalog
        .client()
        .batch_execute("DELETE FROM archive_copies; UPDATE archives SET stores_known = false")
        .await
        .unwrap();
    // Behind ferry's back, the newer one grew a byte.
    let path = fleet.dir.join("controller/store/cp01").join(&newer.object);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.push(0);
    std::fs::write(&path, &bytes).unwrap();
    let (code, out) = run(&fleet, &config, &["archives", "list"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("2 archive(s) catalogued before stores were recorded"),
        "{out}"
    );
    let now = listed(&fleet, &config, "cp01");
    let of = |id: &str| now.iter().find(|a| a.id == id).unwrap().clone();
    assert_eq!(of(&older.id).state, "good");
    assert_eq!(
        (
            of(&newer.id).state.as_str(),
            of(&newer.id).reason.as_deref()
        ),
        ("suspect", Some("body-differs"))
    );
    // Linked once: the next command finds nothing left to link.
    let (_, out) = run(&fleet, &config, &["archives", "list"]);
    assert!(
        !out.contains("catalogued before stores were recorded"),
        "{out}"
    );
}
