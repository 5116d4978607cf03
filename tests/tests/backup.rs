//! `ferry backup` into the store and catalog, against simulated hosts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferry::config::Config;
use serde_json::Value;
use simhost::SimFleetOptions;
use simhost::testing::{Proxy, ScratchCluster, TempFleet, catalog, text};

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                out.extend(files_under(&entry.path()));
            } else {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

async fn source_counts(fleet: &TempFleet, host: &str) -> Vec<(String, i64)> {
    let db = fleet.host(host).db().await.unwrap();
    let mut counts = Vec::new();
    for table in simhost::pg::TABLES {
        let row = db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap();
        counts.push((table.to_string(), row.get(0)));
    }
    counts
}

#[tokio::test]
async fn fleet_backup_lands_in_the_store_and_catalog_in_upstream_format() {
    let fleet = TempFleet::up(SimFleetOptions {
        external_db: vec![2],
        ..Default::default()
    })
    .await;
    let out = fleet
        .ferry(&["backup", "all", "--forks", "3"])
        .output()
        .unwrap();
    let output = text(&out);
    assert_eq!(out.status.code(), Some(0), "{output}");
    assert!(
        output.contains("[WARNING] [cp03] External database (db.type: external)"),
        "{output}"
    );
    assert!(output.contains("cp01 : ok=1   changed=1"), "{output}");

    let store = fleet.dir.join("controller/store");
    let cat = catalog(&fleet.config_path()).await;
    let archives = cat.archives().await.unwrap();
    assert_eq!(archives.len(), 3);
    let scratch = ScratchCluster::start();
    for host in ["cp01", "cp02", "cp03"] {
        let dir = store.join(host);
        assert_eq!(mode(&dir), 0o700);
        let files = files_under(&dir);
        assert_eq!(
            files.len(),
            2,
            "{host}: archive and sidecar only: {files:?}"
        );
        let archive = files
            .iter()
            .find(|f| f.extension().is_some_and(|e| e == "gz"))
            .unwrap();
        let name = archive.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("flightctl-backup-") && name.ends_with("Z.tar.gz"),
            "{name}"
        );
        for f in &files {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
        let check = Command::new("sha256sum")
            .arg("-c")
            .arg(format!("{name}.sha256"))
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(check.status.success(), "sha256sum -c: {}", text(&check));

        let listing = Command::new("tar")
            .arg("-tzf")
            .arg(archive)
            .output()
            .unwrap();
        assert!(listing.status.success());
        let entries: Vec<String> = String::from_utf8_lossy(&listing.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        for expected in [
            "metadata.json",
            "config/",
            "config/service-config.yaml",
            "pki/",
            "pki/ca.crt",
            "pki/ca.key",
            "pki/flightctl-api/client-signer.key",
            "volumes/pam-issuer-etc.tar",
            "ferry-manifest.json",
        ] {
            assert!(
                entries.iter().any(|e| e == expected),
                "{host}: {expected} missing from {entries:?}"
            );
        }
        assert!(
            entries
                .iter()
                .all(|e| !e.starts_with('/') && !e.starts_with("./") && !e.contains(".."))
        );
        let has_dump = entries.iter().any(|e| e == "db/dump.sql");

        let metadata = Command::new("tar")
            .arg("-xzOf")
            .arg(archive)
            .arg("metadata.json")
            .output()
            .unwrap();
        let metadata: Value = serde_json::from_slice(&metadata.stdout).unwrap();
        let keys: Vec<&String> = metadata.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["databaseIncluded", "deploymentType", "timestamp", "version"]
        );
        assert!(metadata["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(metadata["version"], "v1.2.0");
        assert_eq!(metadata["deploymentType"], "podman");
        assert!(metadata["databaseIncluded"].is_boolean());

        let record = archives.iter().find(|a| a.host == host).unwrap();
        assert_eq!(record.name, name);
        assert_eq!(
            record.size as u64,
            std::fs::metadata(archive).unwrap().len()
        );
        let sidecar = std::fs::read_to_string(dir.join(format!("{name}.sha256"))).unwrap();
        assert_eq!(sidecar, format!("{}  {name}\n", record.sha256));
        assert_eq!(record.flightctl_version, "v1.2.0");
        assert_eq!(record.compression, "gzip");

        if host == "cp03" {
            assert!(!has_dump, "external-DB host has no dump");
            assert_eq!(metadata["databaseIncluded"], false);
            assert!(!record.database_included);
            assert!(
                record.warnings[0]
                    .as_str()
                    .unwrap()
                    .contains("External database")
            );
            continue;
        }
        assert!(has_dump && metadata["databaseIncluded"] == true && record.database_included);
        // The dump loads into a fresh PostgreSQL with the source's row counts.
        let db = format!("restored_{host}");
        assert!(
            scratch
                .psql("postgres")
                .arg("-c")
                .arg(format!("CREATE DATABASE {db}"))
                .status()
                .unwrap()
                .success()
        );
        for role in ["flightctl_app", "flightctl_migrator", "admin"] {
            let _ = scratch
                .psql("postgres")
                .arg("-c")
                .arg(format!("CREATE ROLE {role}"))
                .output();
        }
        let dump = Command::new("tar")
            .arg("-xzOf")
            .arg(archive)
            .arg("db/dump.sql")
            .output()
            .unwrap()
            .stdout;
        let mut load = scratch
            .psql(&db)
            .args(["-v", "ON_ERROR_STOP=1", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(load.stdin.as_mut().unwrap(), &dump).unwrap();
        drop(load.stdin.take());
        let loaded = load.wait_with_output().unwrap();
        assert!(
            loaded.status.success(),
            "{}",
            String::from_utf8_lossy(&loaded.stderr)
        );
        for (table, expected) in source_counts(&fleet, host).await {
            let out = scratch
                .psql(&db)
                .args(["-tAc", &format!("SELECT count(*) FROM {table}")])
                .output()
                .unwrap();
            let restored: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            assert_eq!(restored, expected, "{host}.{table}");
            assert_eq!(
                record.row_counts[&table].as_i64(),
                Some(expected),
                "catalog row count {host}.{table}"
            );
        }
    }

    // The catalog outlives the controller, and its private cluster restarts on demand.
    let config = Config::load(&fleet.config_path(), true).unwrap();
    ferry::catalog::embedded::PrivateCluster::new(&config.state_dir)
        .stop()
        .unwrap();
    let listed = fleet
        .ferry(&["archives", "list", "-o", "json"])
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);

    // The store alone rebuilds the catalog: a fresh state dir, the same store.
    let rebuilt_config = fleet.dir.join("rebuilt.yaml");
    std::fs::write(
        &rebuilt_config,
        format!(
            "state_dir: {}\nstore: {}\ntls:\n  ca: {}\n  cert: {}\n  key: {}\n",
            fleet.dir.join("rebuilt").display(),
            store.display(),
            fleet.dir.join("controller/pki/ca.crt").display(),
            fleet
                .dir
                .join("controller/pki/operators/controller.crt")
                .display(),
            fleet
                .dir
                .join("controller/pki/operators/controller.key")
                .display()
        ),
    )
    .unwrap();
    let ferry2 = |args: &[&str]| {
        Command::new(simhost::bins::path("ferry"))
            .arg("--config")
            .arg(&rebuilt_config)
            .args(args)
            .output()
            .unwrap()
    };
    let empty: Value =
        serde_json::from_slice(&ferry2(&["archives", "list", "-o", "json"]).stdout).unwrap();
    assert_eq!(empty.as_array().unwrap().len(), 0);
    let rebuild = ferry2(&["catalog", "rebuild"]);
    assert!(rebuild.status.success(), "{}", text(&rebuild));
    let rebuilt = catalog(&rebuilt_config).await.archives().await.unwrap();
    let key = |a: &ferry::catalog::ArchiveRecord| {
        (
            a.host.clone(),
            a.name.clone(),
            a.sha256.clone(),
            a.size,
            a.database_included,
            a.row_counts.to_string(),
        )
    };
    let mut before: Vec<_> = archives.iter().map(key).collect();
    let mut after: Vec<_> = rebuilt.iter().map(key).collect();
    before.sort();
    after.sort();
    assert_eq!(before, after);
    ferry::catalog::embedded::PrivateCluster::new(&fleet.dir.join("rebuilt"))
        .stop()
        .unwrap();

    // verify: clean, then a flipped byte is caught against catalog and sidecar.
    let ok = fleet
        .ferry(&["archives", "verify", "--all"])
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let cp01 = archives.iter().find(|a| a.host == "cp01").unwrap();
    let path = store.join("cp01").join(&cp01.name);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let bad = fleet
        .ferry(&["archives", "verify", &cp01.id.to_string()])
        .output()
        .unwrap();
    let report = text(&bad);
    assert_eq!(bad.status.code(), Some(2), "{report}");
    assert!(
        report.contains("differs from the catalog's")
            && report.contains("differs from the sidecar's"),
        "{report}"
    );
    let all = fleet
        .ferry(&["archives", "verify", "--all"])
        .output()
        .unwrap();
    assert_eq!(all.status.code(), Some(2));
    assert!(text(&all).contains("3 archive(s) verified, 1 with problems"));

    // export copies a good archive with its sidecar, and refuses a damaged one.
    let cp02 = archives.iter().find(|a| a.host == "cp02").unwrap();
    let export_dir = fleet.dir.join("exported");
    let exported = fleet
        .ferry(&["archives", "export", &cp02.id.to_string()])
        .arg(&export_dir)
        .output()
        .unwrap();
    assert!(exported.status.success(), "{}", text(&exported));
    let check = Command::new("sha256sum")
        .arg("-c")
        .arg(format!("{}.sha256", cp02.name))
        .current_dir(export_dir.join("cp02"))
        .output()
        .unwrap();
    assert!(check.status.success());
    let damaged_dir = fleet.dir.join("exported-damaged");
    let refused = fleet
        .ferry(&["archives", "export", &cp01.id.to_string()])
        .arg(&damaged_dir)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("not exported"),
        "{}",
        text(&refused)
    );
    assert!(
        files_under(&damaged_dir).is_empty(),
        "nothing partial exported"
    );
}

async fn host_results(fleet: &TempFleet) -> Vec<(String, Option<String>, Option<String>)> {
    let cat = catalog(&fleet.config_path()).await;
    cat.client()
        .query(
            "SELECT outcome, phase, error FROM host_results WHERE host = 'cp01' ORDER BY run_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn proxied_inventory(fleet: &TempFleet, proxy: &Proxy) -> PathBuf {
    let path = fleet.dir.join("proxied.ini");
    std::fs::write(
        &path,
        format!(
            "cp01 ansible_host={} ferry_port={}\n",
            proxy.addr.ip(),
            proxy.addr.port()
        ),
    )
    .unwrap();
    path
}

fn spawn_backup(fleet: &TempFleet, inventory: &Path) -> std::process::Child {
    Command::new(simhost::bins::path("ferry"))
        .arg("--config")
        .arg(fleet.config_path())
        .arg("-i")
        .arg(inventory)
        .args(["backup", "cp01"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn store_files(fleet: &TempFleet) -> Vec<PathBuf> {
    files_under(&fleet.dir.join("controller/store"))
}

/// The interrupted backup failed in its transfer phase, and the store holds nothing of it.
fn assert_failed_in_transfer_leaving_nothing(fleet: &TempFleet, backup: std::process::Child) {
    let out = backup.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("FAILED: [cp01] task backup/transfer"),
        "{}",
        text(&out)
    );
    let left = store_files(fleet);
    assert!(left.is_empty(), "nothing left in the store: {left:?}");
}

/// Holds an exclusive lock on `devices`, as a long migration would: pg_dump waits for it, so the
/// backup stays mid-stream (its first entries already sent) until the lock is released.
async fn hold_devices_lock(fleet: &TempFleet) -> tokio_postgres::Client {
    let db = fleet.host("cp01").db().await.unwrap();
    db.batch_execute("BEGIN; LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    db
}

/// Waits until the controller is writing a partial object into the store.
async fn wait_for_partial_object(fleet: &TempFleet) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let files = store_files(fleet);
        if files
            .iter()
            .any(|f| f.file_name().unwrap().to_string_lossy().ends_with(".part"))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no partial object appeared: {files:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

// Multi-threaded: the proxy must keep running while the test blocks on child processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_transfers_leave_nothing_and_a_busy_host_refuses_a_second_backup() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");
    let agent: std::net::SocketAddr =
        format!("{}:{}", host.spec.address, simhost::fleet::AGENT_PORT)
            .parse()
            .unwrap();

    // 1. The network fails mid-stream, through a proxy we can cut.
    let lock = hold_devices_lock(&fleet).await;
    let proxy = Proxy::start(&format!("{}:0", host.spec.address), agent, 1 << 30).await;
    let backup = spawn_backup(&fleet, &proxied_inventory(&fleet, &proxy));
    wait_for_partial_object(&fleet).await;
    // 2. Meanwhile the host is busy: a second backup is refused, naming the running one.
    let second = fleet.ferry(&["backup", "cp01"]).output().unwrap();
    let refusal = text(&second);
    assert_eq!(second.status.code(), Some(2), "{refusal}");
    assert!(
        refusal.contains("cp01 is busy: backup operation backup-")
            && refusal.contains("started by"),
        "{refusal}"
    );
    proxy.cut();
    assert_failed_in_transfer_leaving_nothing(&fleet, backup);
    lock.batch_execute("ROLLBACK").await.unwrap();

    // 3. The agent dies mid-stream.
    let lock = hold_devices_lock(&fleet).await;
    let backup = spawn_backup(&fleet, &fleet.inventory_path());
    wait_for_partial_object(&fleet).await;
    simhost::fleet::kill_agent(host);
    assert_failed_in_transfer_leaving_nothing(&fleet, backup);
    lock.batch_execute("ROLLBACK").await.unwrap();

    let results = host_results(&fleet).await;
    // The busy host refused the second backup (recorded so), the others failed in transfer.
    let failed: Vec<_> = results
        .iter()
        .filter(|r| r.0 == "failed" || (r.0 == "refused" && r.1.as_deref() == Some("busy")))
        .collect();
    assert_eq!(failed.len(), 3, "{results:?}");
    let phases = |phase: &str| {
        failed
            .iter()
            .filter(|r| r.1.as_deref() == Some(phase))
            .count()
    };
    // A busy host is its own phase: serve retries it without an alert.
    assert_eq!((phases("busy"), phases("transfer")), (1, 2), "{results:?}");
    assert!(
        failed
            .iter()
            .any(|r| r.2.as_deref().unwrap().contains("cp01 is busy"))
    );

    // 4. A restarted agent cleans its scratch, and a rerun succeeds.
    simhost::fleet::start_agent(host).unwrap();
    let staging = host.layout.agent_dir().join("staging");
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "stale scratch removed"
    );
    let rerun = fleet.ferry(&["backup", "cp01"]).output().unwrap();
    assert_eq!(rerun.status.code(), Some(0), "{}", text(&rerun));
    assert_eq!(store_files(&fleet).len(), 2);
    assert_eq!(host_results(&fleet).await.last().unwrap().0, "ok");
}

/// A 1 MiB tmpfs, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: &Path) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a 1 MiB tmpfs as the store and needs root: {}",
            text(&out)
        );
        SmallDisk(path.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

#[tokio::test]
async fn a_full_store_fails_cleanly_and_keeps_nothing() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        devices: 4000,
        payload_bytes: 1024,
        ..Default::default()
    })
    .await;
    let disk = SmallDisk::mount(&fleet.dir.join("small-store"));
    let config = fleet.dir.join("small.yaml");
    let base = std::fs::read_to_string(fleet.config_path()).unwrap();
    std::fs::write(&config, format!("{base}store: {}\n", disk.0.display())).unwrap();
    let out = Command::new(simhost::bins::path("ferry"))
        .arg("--config")
        .arg(&config)
        .arg("-i")
        .arg(fleet.inventory_path())
        .args(["backup", "cp01"])
        .output()
        .unwrap();
    let output = text(&out);
    assert_eq!(out.status.code(), Some(2), "{output}");
    assert!(
        output.contains("FAILED: [cp01] task backup/store") && output.contains("store is full"),
        "{output}"
    );
    assert!(
        files_under(&disk.0).is_empty(),
        "nothing partial: {:?}",
        files_under(&disk.0)
    );
    let results = host_results(&fleet).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].0, "failed");
    assert_eq!(results[0].1.as_deref(), Some("store"));
    // The agent cleaned up too, and is free for the next operation.
    let staging = fleet.host("cp01").layout.agent_dir().join("staging");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    let ping = fleet
        .ferry(&["ping", "all", "-o", "json"])
        .output()
        .unwrap();
    let ping: Value = serde_json::from_slice(&ping.stdout).unwrap();
    assert!(ping["hosts"]["cp01"]["data"]["operation"].is_null());
}

#[tokio::test]
async fn serial_batches_stop_when_a_batch_crosses_the_failure_budget() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 3,
        devices: 5,
        ..Default::default()
    })
    .await;
    fleet.host("cp02").inject_fault(
        "podman",
        "ferry-dump",
        "pg_dump: error: connection to server lost",
    );
    let out = fleet
        .ferry(&[
            "backup",
            "all",
            "--serial",
            "2",
            "--max-fail-percentage",
            "0",
        ])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(2), "{printed}");
    assert!(
        printed.contains("batch 1/2: cp01, cp02 — 1 failed"),
        "{printed}"
    );
    assert!(
        printed.contains(
            "STOPPED: the play stopped after batch 1/2: 1 of 2 hosts failed or were unreachable (50%), more than --max-fail-percentage 0; not run: cp03"
        ),
        "{printed}"
    );
    // cp01 ran and stored its archive; cp03 was never contacted.
    let stored = |h: &str| {
        std::fs::read_dir(fleet.dir.join("controller/store").join(h))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(stored("cp01") > 0);
    assert_eq!(stored("cp03"), 0);
    assert!(
        !fleet
            .host("cp03")
            .calls()
            .iter()
            .any(|c| c.contains("ferry-dump")),
        "cp03 was not backed up"
    );
    // The same budget in JSON; a bad --serial is refused before anything runs.
    fleet.host("cp02").clear_faults();
    let out = fleet
        .ferry(&["backup", "all", "--serial", "0", "--list-hosts"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is not a batch size"), "{}", text(&out));
    let out = fleet
        .ferry(&["backup", "all", "--serial", "1,50%", "-o", "json"])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["batches"].as_array().unwrap().len(), 3, "{doc}");
    assert_eq!(doc["batches"][0]["hosts"], serde_json::json!(["cp01"]));
    assert_eq!(doc["stopped"], Value::Null);
    assert_eq!(doc["exit_code"], 0, "{doc}");
}
