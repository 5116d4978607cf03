//! Honest operations under faults: a fault ends an operation with the true exit code, record and
//! host state, and leaves the host free and safe.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use simhost::SimFleetOptions;
use simhost::testing::{TempFleet, text, wait_until};

/// Writes zeros into `path` until the filesystem under it is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 1 << 20];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_disk_that_fills_during_a_backup_ends_it_and_frees_the_host() {
    // A dump of more 1 MiB chunks than the compressor's queues hold (~12 MiB).
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        devices: 2000,
        payload_bytes: 6000,
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");
    let staging = host.layout.agent_dir().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    // Room enough for the backup's preflight (64 MiB), filled once the dump has begun.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=80m", "tmpfs"])
        .arg(&staging)
        .status()
        .unwrap();
    assert!(mounted.success(), "this test mounts a tmpfs and needs root");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(staging.clone());
    // The dump waits on the devices table while the disk is filled.
    let db = host.db().await.unwrap();
    db.batch_execute("BEGIN; LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    host.clear_calls();
    let backup = fleet
        .ferry(&["backup", "cp01"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !host.calls().iter().any(|c| c.contains("ferry-dump")) {
        assert!(
            Instant::now() < deadline,
            "the dump never started: {:?}",
            host.calls()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let filler = staging.join("filler");
    fill(&filler);
    db.batch_execute("ROLLBACK").await.unwrap();
    // The write error ends the backup at once (it hung the agent, busy, until killed by hand).
    let started = Instant::now();
    let out = backup.wait_with_output().unwrap();
    let output = text(&out);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}: {output}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(2), "{output}");
    assert!(
        output.contains("writing the dump's spool") && output.contains("No space left on device"),
        "{output}"
    );
    // The host is free and its staging space cleared: only the filler is left.
    std::fs::remove_file(&filler).unwrap();
    let left: Vec<_> = std::fs::read_dir(&staging)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in staging: {left:?}");
    let out = fleet.ferry(&["backup", "cp01"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // On record as the failure it was.
    let out = fleet
        .ferry(&["history", "--kind", "backup", "-o", "json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = doc
        .as_array()
        .or_else(|| doc["entries"].as_array())
        .cloned()
        .unwrap();
    assert!(
        entries.iter().any(|e| e["outcome"] == "failed"
            && e["error"]
                .as_str()
                .is_some_and(|t| t.contains("No space left on device"))),
        "{doc}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_refused_by_a_busy_host_names_what_to_do_about_it() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        devices: 20,
        ..Default::default()
    })
    .await;
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();
    let host = fleet.host("cp01");
    // A DBA's publication holds the host.
    let publisher = fleet
        .ferry(&["ports", "publish", "cp01", "--for", "10m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let published = || {
        [5432, 6379]
            .iter()
            .all(|port| std::net::TcpStream::connect((host.spec.address.as_str(), *port)).is_ok())
    };
    while !published() {
        assert!(Instant::now() < deadline, "never published");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = fleet.ferry(&["restore", "cp01"]).output().unwrap();
    let output = text(&out);
    assert_eq!(out.status.code(), Some(2), "{output}");
    assert!(
        output.contains("REFUSED: [cp01] task preflight: cp01 is busy: ports operation")
            && output.contains("next: `ferry ports unpublish cp01`")
            && !output.contains("archives verify"),
        "{output}"
    );
    // --check asks the agent the same question and gets the same answer.
    let out = fleet
        .ferry(&["restore", "cp01", "--check"])
        .output()
        .unwrap();
    let output = text(&out);
    assert_eq!(out.status.code(), Some(2), "{output}");
    assert!(
        output.contains("REFUSED: [cp01] task check: cp01 is busy: ports operation")
            && output.contains("next: `ferry ports unpublish cp01`"),
        "{output}"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&publisher),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = publisher.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));

    // The database down: the stage could not load the dump, so --check and the restore refuse.
    let stopped = host.systemctl(&["stop", "flightctl-db.service"]);
    assert!(stopped.status.success());
    for extra in [&["--check"][..], &[][..]] {
        let mut args = vec!["restore", "cp01"];
        args.extend_from_slice(extra);
        let out = fleet.ferry(&args).output().unwrap();
        let output = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {output}");
        assert!(
            output.contains("flightctl-db does not answer, so the dump cannot be loaded")
                && output.contains("next: `ferry facts cp01`"),
            "{args:?}: {output}"
        );
    }
    assert_eq!(host.unit_state("flightctl-api.service"), "active");
    let started = host.systemctl(&["start", "flightctl-db.service"]);
    assert!(started.status.success());

    // Staging space counts keep_free_bytes in --check exactly as in the stage.
    let config = host.layout.agent_dir().join("agent.yaml");
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{original}keep_free_bytes: 1125899906842624\n"),
    )
    .unwrap();
    simhost::fleet::kill_agent(host);
    simhost::fleet::start_agent(host).unwrap();
    for extra in [&["--check"][..], &[][..]] {
        let mut args = vec!["restore", "cp01"];
        args.extend_from_slice(extra);
        let out = fleet.ferry(&args).output().unwrap();
        let output = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {output}");
        assert!(
            output.contains("not enough space in") && output.contains("keep_free_bytes"),
            "{args:?}: {output}"
        );
    }
    std::fs::write(&config, original).unwrap();
    simhost::fleet::kill_agent(host);
    simhost::fleet::start_agent(host).unwrap();
    // Free again, the same restore goes through.
    let out = fleet.ferry(&["restore", "cp01"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Devices the live database marks awaiting reconnect.
async fn annotated(host: &simhost::SimHost) -> usize {
    let db = host.db().await.unwrap();
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM devices WHERE deleted_at IS NULL AND annotations->>'device-controller/awaitingReconnect' = 'true'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    n as usize
}

/// SIGINT ends serve with exit 0.
fn stop_cleanly(mut serve: simhost::serving::Serve) {
    serve.signal(rustix::process::Signal::INT);
    assert_eq!(
        serve.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        serve.log_text()
    );
}

/// How many archives `ferry archives list HOST` shows.
fn archives(fleet: &TempFleet, host: &str) -> usize {
    let out = fleet
        .ferry(&["archives", "list", host, "-o", "json"])
        .output()
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|d| d.as_array().map(Vec::len))
        .unwrap_or(0)
}

fn facts_json(fleet: &TempFleet, host: &str) -> serde_json::Value {
    fleet.facts(host).unwrap_or_else(|e| panic!("{e}"))
}

/// Item 1: `ferry prepare-devices` SIGKILLed after its UPDATE changed the live database, built-in and
/// external: the lapse keeps the application units stopped and says why (never started with no
/// keys), and `--resume` seeds every key and starts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_devices_killed_after_the_update_keeps_the_units_stopped_until_resumed() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 2,
        devices: 20,
        external_db: vec![1],
        ..Default::default()
    })
    .await;
    let run = async |name: &str| {
        let host = fleet.host(name);
        host.inject_fault("podman", "redis-cli --pipe", "sleep:6");
        let mut controller = fleet
            .ferry(&["prepare-devices", name, "--lease-seconds", "3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until(
            &format!("{name}: the seed"),
            Duration::from_secs(60),
            async || host.calls().iter().any(|c| c.contains("redis-cli --pipe")),
        )
        .await;
        controller.kill().unwrap();
        let _ = controller.wait();
        host.clear_faults();
        assert!(annotated(host).await > 0, "{name}: the UPDATE ran");
        // The lease lapses: the host is made safe, not freed with keyless devices.
        wait_until(
            &format!("{name}: the lapse"),
            Duration::from_secs(30),
            async || facts_json(&fleet, name)["restore"]["lapsed"].is_string(),
        )
        .await;
        let facts = facts_json(&fleet, name);
        let restore = &facts["restore"];
        assert!(
            restore["lapsed"]
                .as_str()
                .unwrap()
                .contains("application units kept stopped: devices"),
            "{name}: {restore}"
        );
        assert_eq!(restore["state"], "HOST_STATE_SWAPPED", "{name}: {restore}");
        assert_eq!(
            host.unit_state("flightctl-api.service"),
            "inactive",
            "{name}"
        );
        assert_eq!(host.unit_state("flightctl-kv.service"), "active", "{name}");
        // Another preparation is refused with the host's real state, not "unchanged".
        let out = fleet.ferry(&["prepare-devices", name]).output().unwrap();
        let output = text(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {output}");
        assert!(
            output.contains("host state: restore p")
                && output.contains("device preparation (no archive)")
                && !output.contains("unchanged"),
            "{name}: {output}"
        );
        // --resume finishes it, recorded as the device preparation it is.
        let out = fleet
            .ferry(&["restore", name, "--resume"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        let entries = ledger(&fleet, name);
        let last = entries.last().unwrap();
        assert_eq!(last["kind"], "prepare-devices", "{name}: {last}");
        assert_eq!(last["outcome"], "succeeded", "{name}: {last}");
        assert_eq!(host.unit_state("flightctl-api.service"), "active", "{name}");
        let devices = annotated(host).await;
        assert!(
            simhost::testing::awaiting_reconnect_keys(host).await >= devices,
            "{name}: every annotated device has its key"
        );
        let facts = facts_json(&fleet, name);
        assert!(facts["restore"].is_null(), "{name}: {facts}");
        assert_eq!(facts["reconnect"]["problem"], false, "{name}: {facts}");
    };
    tokio::join!(run("cp01"), run("cp02"));
}

/// Item 2: every KV restart ferry causes (a publication and its end) sets the keys of the devices
/// still awaiting reconnect again; facts names keyless devices as a problem with the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_restart_ferry_causes_keeps_the_awaiting_reconnect_keys() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        devices: 25,
        ..Default::default()
    })
    .await;
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();
    fleet.ferry_ok(&["restore", "cp01"]).unwrap();
    let host = fleet.host("cp01");
    let devices = annotated(host).await;
    assert!(devices > 0);
    let keys = simhost::testing::awaiting_reconnect_keys(host).await;
    assert!(keys >= devices, "{keys} keys for {devices} devices");

    let publisher = fleet
        .ferry(&["ports", "publish", "cp01", "--for", "10m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the publication", Duration::from_secs(30), async || {
        [5432, 6379]
            .iter()
            .all(|port| std::net::TcpStream::connect((host.spec.address.as_str(), *port)).is_ok())
    })
    .await;
    wait_until(
        "the keys after the publish restart",
        Duration::from_secs(30),
        async || simhost::testing::awaiting_reconnect_keys(host).await == devices,
    )
    .await;
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&publisher),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = publisher.wait_with_output().unwrap();
    let output = text(&out);
    assert_eq!(out.status.code(), Some(130), "{output}");
    assert!(
        output.contains(&format!(
            "{devices} awaiting-reconnect keys set again in the restarted KV"
        )),
        "{output}"
    );
    // The unpublish restarted the KV too; its reply is in the ledger.
    assert_eq!(
        simhost::testing::awaiting_reconnect_keys(host).await,
        devices,
        "after the unpublish restart"
    );
    let history = fleet
        .ferry(&["history", "cp01", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&history.stdout).contains("awaiting-reconnect keys set again"),
        "{}",
        text(&history)
    );
    let facts = facts_json(&fleet, "cp01");
    assert_eq!(facts["reconnect"]["problem"], false, "{facts}");

    // One device's key gone behind ferry's back (the KV still holds keys of devices not awaiting
    // reconnect): facts looks each key up, so it is counted missing.
    let mut kv = host.kv().await.unwrap();
    let db = host.db().await.unwrap();
    let row = db
        .query_one(
            "SELECT 'v1/' || org_id || '/device/' || name || '/awaiting-reconnect' FROM devices WHERE deleted_at IS NULL AND annotations->>'device-controller/awaitingReconnect' = 'true' ORDER BY name LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let gone: String = row.get(0);
    let _: () = redis::cmd("DEL")
        .arg(&gone)
        .query_async(&mut kv)
        .await
        .unwrap();
    let out = fleet.ferry(&["facts", "cp01"]).output().unwrap();
    assert!(
        text(&out).contains(&format!(
            "PROBLEM: {devices} devices await reconnect but the KV holds the keys of only {} of them",
            devices - 1
        )),
        "{}",
        text(&out)
    );
    // A KV emptied behind ferry's back: facts says so and names the fix.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut kv).await.unwrap();
    let out = fleet.ferry(&["facts", "cp01"]).output().unwrap();
    let output = text(&out);
    assert!(
        output.contains(&format!(
            "PROBLEM: {devices} devices await reconnect but the KV holds the keys of only 0 of them"
        )) && output.contains("next: ferry prepare-devices cp01"),
        "{output}"
    );
    fleet.ferry_ok(&["prepare-devices", "cp01"]).unwrap();
    let facts = facts_json(&fleet, "cp01");
    assert_eq!(facts["reconnect"]["problem"], false, "{facts}");
    assert_eq!(facts["reconnect"]["awaiting_devices"], devices, "{facts}");
}

fn ledger(fleet: &TempFleet, host: &str) -> Vec<serde_json::Value> {
    let out = fleet
        .ferry(&["history", host, "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Item 10: a restore SIGKILLed after it swapped the live database is recorded whole by the next
/// ferry: its archive and every task it finished, then the interruption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_restore_is_recorded_with_its_archive_and_tasks() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        devices: 10,
        ..Default::default()
    })
    .await;
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();
    let host = fleet.host("cp01");
    host.inject_fault("systemctl", "start flightctl-api", "sleep:6");
    let mut controller = fleet
        .ferry(&["restore", "cp01", "--lease-seconds", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the start step", Duration::from_secs(60), async || {
        host.calls()
            .iter()
            .any(|c| c.contains("start flightctl-api"))
    })
    .await;
    controller.kill().unwrap();
    let _ = controller.wait();
    host.clear_faults();
    // facts' text names the step that is still running (item 16).
    let out = fleet.ferry(&["facts", "cp01"]).output().unwrap();
    assert!(
        text(&out).contains("step start running now"),
        "{}",
        text(&out)
    );
    let entries = ledger(&fleet, "cp01");
    let entry = entries
        .iter()
        .rev()
        .find(|e| e["kind"] == "restore")
        .unwrap_or_else(|| panic!("{entries:?}"));
    assert_eq!(entry["outcome"], "interrupted", "{entry}");
    assert!(
        entry["archive"]["sha256"].is_string(),
        "the archive it restored: {entry}"
    );
    let tasks: Vec<(String, String)> = entry["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for done in ["preflight", "stage", "verify", "stop", "swap-db", "seed-kv"] {
        assert!(
            tasks.iter().any(|(n, o)| n == done && o == "ok"),
            "{done} ok: {tasks:?}"
        );
    }
    let (last, outcome) = tasks.last().unwrap();
    assert_eq!(outcome, "interrupted", "{tasks:?}");
    assert!(last.contains("start"), "{tasks:?}");
    // The host's unfinished restore is ended the usual way once its running step is over.
    wait_until("the step to end", Duration::from_secs(30), async || {
        facts_json(&fleet, "cp01")["restore"]["running"].is_null()
    })
    .await;
    // A step that just ended well counts as driven for a moment (the next one is due).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let out = fleet.ferry(&["rollback", "cp01"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// Items 11 and 12: the agent killed (and restarted) during stage. The restore says the agent was
/// lost and the state is unknown (exit 3), never "unchanged"; facts says the stage was interrupted
/// (not "last completed step: stage"); `--resume` undoes the partial stage and says to start again,
/// and the host is free and untouched. A Ctrl-C during stage ends the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_stage_is_reported_as_such_and_resume_undoes_it() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        devices: 40,
        payload_bytes: 4000,
        ..Default::default()
    })
    .await;
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();
    let host = fleet.host("cp01");
    // The stage pipes the dump into psql as it arrives: psql stalled, the stage is caught in the act.
    let load = "ON_ERROR_STOP=1 -q -f";
    let loads = || host.calls().iter().filter(|c| c.contains(load)).count();
    let staging_begun = async |before: usize| {
        wait_until("the stage's load", Duration::from_secs(60), async || {
            loads() > before
        })
        .await;
    };
    let before = loads();
    host.inject_fault("podman", load, "sleep:5");
    let restore = fleet
        .ferry(&["restore", "cp01", "--lease-seconds", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let staging = host.layout.agent_dir().join("staging");
    staging_begun(before).await;
    simhost::fleet::kill_agent(host);
    host.clear_faults();
    simhost::fleet::start_agent(host).unwrap();
    let out = restore.wait_with_output().unwrap();
    let output = text(&out);
    assert_eq!(out.status.code(), Some(3), "{output}");
    assert!(
        output.contains("UNREACHABLE: [cp01] task stage")
            && output.contains("host state: unknown")
            && output.contains("next: `ferry facts cp01`")
            && !output.contains("unchanged"),
        "{output}"
    );
    let facts = facts_json(&fleet, "cp01");
    let summary = facts["restore"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("stage was interrupted before the whole archive arrived")
            && !summary.contains("last completed step"),
        "{facts}"
    );
    let out = fleet
        .ferry(&["restore", "cp01", "--resume"])
        .output()
        .unwrap();
    let output = text(&out);
    assert_eq!(out.status.code(), Some(2), "{output}");
    assert!(
        output.contains("there is nothing to resume")
            && output.contains("next: `ferry restore cp01`")
            && !output.contains("staged.json")
            && !output.contains("archives verify"),
        "{output}"
    );
    assert!(facts_json(&fleet, "cp01")["restore"].is_null());
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "staging clean"
    );
    let entries = ledger(&fleet, "cp01");
    let kinds: Vec<(String, String)> = entries
        .iter()
        .filter(|e| e["kind"] == "restore")
        .map(|e| {
            (
                e["outcome"].as_str().unwrap_or_default().to_string(),
                e["error"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(kinds[0].0, "unreachable", "{kinds:?}");

    // Ctrl-C during stage: the run says interrupted; the host ends up free, nothing to resume.
    let before = loads();
    host.inject_fault("podman", load, "sleep:5");
    let restore = fleet
        .ferry(&["restore", "cp01", "--lease-seconds", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    staging_begun(before).await;
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&restore),
        rustix::process::Signal::INT,
    )
    .unwrap();
    host.clear_faults();
    let out = restore.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    // The agent sees the stream end, lets psql finish the partial input and undoes the stage
    // (drops the temporary database): seconds, longer on a loaded machine.
    wait_until(
        "the host to let the partial stage go",
        Duration::from_secs(90),
        async || {
            let restore = &facts_json(&fleet, "cp01")["restore"];
            restore.is_null()
                || (restore["running"].is_null()
                    && restore["summary"]
                        .as_str()
                        .is_some_and(|s| s.contains("stage was interrupted")))
        },
    )
    .await;
    let out = fleet
        .ferry(&["restore", "cp01", "--resume"])
        .output()
        .unwrap();
    let output = text(&out);
    assert_eq!(out.status.code(), Some(2), "{output}");
    assert!(
        !output.contains("staged.json") && !output.contains("archives verify"),
        "{output}"
    );
    let out = fleet.ferry(&["restore", "cp01"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Item 9: a host busy with another controller's operation is not a failed backup: serve tries the
/// slot again soon and sends no `backup-failed` alert; the backup runs once the host is free. And a
/// backup whose controller was SIGKILLed gives the host's lock back at once, even while its dump
/// is stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_is_retried_without_an_alert_and_an_orphaned_backup_frees_the_host() {
    use simhost::serving::{Serve, Webhook, free_port};
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        devices: 10,
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");

    // The orphan: a backup whose dump stalls, its controller killed.
    host.inject_fault("podman", "ferry-dump", "sleep:20");
    let mut backup = fleet
        .ferry(&["backup", "cp01"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the dump", Duration::from_secs(30), async || {
        host.calls().iter().any(|c| c.contains("ferry-dump"))
    })
    .await;
    backup.kill().unwrap();
    let _ = backup.wait();
    let killed = Instant::now();
    wait_until("the host to be free", Duration::from_secs(10), async || {
        let out = fleet
            .ferry(&["ping", "cp01", "-o", "json"])
            .output()
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        doc["hosts"]["cp01"]["data"]["operation"].is_null()
    })
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "freed before the stall ended"
    );
    host.clear_faults();

    // Busy with a publication when serve's slot comes.
    let publisher = fleet
        .ferry(&["ports", "publish", "cp01", "--for", "10m"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the publication", Duration::from_secs(30), async || {
        std::net::TcpStream::connect((host.spec.address.as_str(), 5432)).is_ok()
    })
    .await;
    let hooks = Webhook::start(&fleet.dir, 0);
    let path = fleet.config_path();
    let mut config = std::fs::read_to_string(&path).unwrap();
    let port = free_port();
    // A daily slot twelve hours from now: the one due at start has half a day of retries left.
    let hour = (time::OffsetDateTime::now_utc().hour() + 12) % 24;
    config.push_str(&format!(
        "serve:\n  listen: 127.0.0.1:{port}\nschedules:\n  - name: daily\n    hosts: all\n    cron: \"0 {hour} * * *\"\n    rpo: 48h\nalerts:\n  - webhook: {}\n",
        hooks.url()
    ));
    std::fs::write(&path, config).unwrap();
    let serve = Serve::start(
        &fleet.config_path(),
        &fleet.inventory_path(),
        &["--replica", "solo"],
        &fleet.dir.join("serve.log"),
    );
    // The first attempt finds the host busy and is tried again within seconds.
    wait_until("a busy attempt", Duration::from_secs(60), async || {
        serve.log_text().contains("busy")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        hooks.of("backup-failed", "cp01").is_empty(),
        "no alert for a busy host: {:?}\n{}",
        hooks.received(),
        serve.log_text()
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&publisher),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let _ = publisher.wait_with_output();
    wait_until("the retried backup", Duration::from_secs(60), async || {
        archives(&fleet, "cp01") > 0
    })
    .await;
    assert!(
        hooks.of("backup-failed", "cp01").is_empty(),
        "{:?}",
        hooks.received()
    );
    // Failure counters exist at zero for phases that never failed (item 16).
    let (code, metrics) = simhost::serving::http_get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("ferry_backup_failures_total{host=\"cp01\",phase=\"encrypt\"} 0"),
        "{metrics}"
    );
    stop_cleanly(serve);
}

/// Item 15: a host the inventory knows by another name than its agent's (`ferry_agent_name`):
/// `archives list` and `history` by the inventory name show what is filed under the agent's name,
/// and say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_commands_accept_the_inventory_name_of_a_host_known_by_its_agent_name() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 2,
        devices: 10,
        ..Default::default()
    })
    .await;
    let cp02 = fleet.host("cp02");
    let inventory = fleet.dir.join("legacy.ini");
    std::fs::write(
        &inventory,
        format!(
            "[controlplanes]\ncp-legacy ansible_host={} ferry_agent_name=cp02\n",
            cp02.spec.address
        ),
    )
    .unwrap();
    let ferry = |args: &[&str]| {
        let out = std::process::Command::new(simhost::bins::path("ferry"))
            .arg("--config")
            .arg(fleet.config_path())
            .arg("-i")
            .arg(&inventory)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            text(&out),
        )
    };
    let (code, _, output) = ferry(&["backup", "cp-legacy"]);
    assert_eq!(code, Some(0), "{output}");
    let (code, stdout, output) = ferry(&["archives", "list", "cp-legacy", "-o", "json"]);
    assert_eq!(code, Some(0), "{output}");
    let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{output}");
    assert_eq!(list[0]["host"], "cp02", "{output}");
    assert!(
        output.contains("cp-legacy is known to its agent as cp02 (ferry_agent_name)"),
        "{output}"
    );
    let (code, _, output) = ferry(&["restore", "cp-legacy", "--check"]);
    assert_eq!(code, Some(0), "{output}");
    // History by either name has both records.
    for name in ["cp-legacy", "cp02"] {
        let (code, stdout, output) = ferry(&["history", name, "-o", "json"]);
        assert_eq!(code, Some(0), "{output}");
        let entries: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let kinds: Vec<&str> = entries
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["kind"].as_str())
            .collect();
        assert!(
            kinds.contains(&"backup") && kinds.contains(&"restore-check"),
            "{name}: {kinds:?}"
        );
    }
}

/// Item 8: runs are owned by a replica instance. A replica SIGKILLed during its run and started
/// again under the same name takes the run over (it does not look like its own live run), and the
/// slot's backup is done at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_under_its_name_takes_over_what_its_killed_process_left() {
    use simhost::serving::{Serve, free_port};
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        devices: 10,
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");
    let path = fleet.config_path();
    let mut config = std::fs::read_to_string(&path).unwrap();
    config.push_str(&format!(
        "serve:\n  listen: 127.0.0.1:{}\nschedules:\n  - name: hourly\n    hosts: all\n    cron: \"0 * * * *\"\n    rpo: 2h\n",
        free_port()
    ));
    std::fs::write(&path, config).unwrap();
    host.inject_fault("podman", "ferry-dump", "sleep:30");
    let mut first = Serve::start(
        &fleet.config_path(),
        &fleet.inventory_path(),
        &["--replica", "alpha"],
        &fleet.dir.join("alpha-1.log"),
    );
    wait_until(
        "the first run's dump",
        Duration::from_secs(60),
        async || host.calls().iter().any(|c| c.contains("ferry-dump")),
    )
    .await;
    first.signal(rustix::process::Signal::KILL);
    let _ = first.wait(Duration::from_secs(10));
    host.clear_faults();
    // Once the killed process's heartbeat has expired, the name is free again.
    tokio::time::sleep(Duration::from_secs(16)).await;
    let second = Serve::start(
        &fleet.config_path(),
        &fleet.inventory_path(),
        &["--replica", "alpha"],
        &fleet.dir.join("alpha-2.log"),
    );
    wait_until(
        "the slot's backup by the restarted replica",
        Duration::from_secs(60),
        async || archives(&fleet, "cp01") > 0,
    )
    .await;
    let log = second.log_text();
    assert!(
        log.contains("stopped during a run; its run is queued again"),
        "{log}"
    );
    stop_cleanly(second);
}

/// Item 16: an agent restarted by hand (not through agent.pid) does not outlive `simfleet down`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simfleet_down_stops_an_agent_restarted_by_hand() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        devices: 5,
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");
    simhost::fleet::kill_agent(host);
    let config = host.layout.agent_dir().join("agent.yaml");
    let mut agent = std::process::Command::new(simhost::bins::path("ferry-agent"))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the hand-started agent",
        Duration::from_secs(30),
        async || {
            fleet
                .ferry(&["ping", "cp01"])
                .output()
                .unwrap()
                .status
                .success()
        },
    )
    .await;
    let out = std::process::Command::new(simhost::bins::path("simfleet"))
        .args(["down", "--dir"])
        .arg(&fleet.dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(15);
    let ended = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        ended.is_some(),
        "the hand-started agent survived simfleet down"
    );
}

/// Item 14: each refusal cause has its own next command: another host's archive names the
/// `--from` command that restores it; an archive whose stored file is gone names the archive list
/// (no catalog rebuild).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_their_own_next_command() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 2,
        devices: 5,
        ..Default::default()
    })
    .await;
    fleet.ferry_ok(&["backup", "all"]).unwrap();
    let list = |host: &str| -> Vec<serde_json::Value> {
        let out = fleet
            .ferry(&["archives", "list", host, "-o", "json"])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let cp02 = list("cp02")[0]["id"].as_str().unwrap().to_string();
    let out = fleet
        .ferry(&["restore", "cp01", "--archive", &cp02])
        .output()
        .unwrap();
    let output = text(&out);
    assert_eq!(out.status.code(), Some(2), "{output}");
    assert!(
        output.contains(&format!(
            "next: `ferry archives list cp01` lists its own archives; to restore cp02's onto it on purpose, check first: `ferry restore cp01 --from cp02 --archive {cp02} --check`"
        )),
        "{output}"
    );
    // A --from typo: no "back it up" advice for a host that does not exist.
    let out = fleet
        .ferry(&["restore", "cp01", "--from", "cp9"])
        .output()
        .unwrap();
    let output = text(&out);
    assert_eq!(out.status.code(), Some(2), "{output}");
    assert!(
        output.contains("the catalog has no archive of cp9")
            && output.contains("check the --from name")
            && !output.contains("ferry backup cp9"),
        "{output}"
    );
    let cp01 = list("cp01")[0].clone();
    let id = cp01["id"].as_str().unwrap().to_string();
    std::fs::remove_file(
        fleet
            .dir
            .join("controller/store/cp01")
            .join(cp01["name"].as_str().unwrap()),
    )
    .unwrap();
    let out = fleet
        .ferry(&["restore", "cp01", "--archive", &id])
        .output()
        .unwrap();
    let output = text(&out);
    assert_eq!(out.status.code(), Some(2), "{output}");
    assert!(
        output.contains("next: ") && !output.contains("catalog rebuild"),
        "{output}"
    );
    assert!(output.contains("missing"), "{output}");
}

/// From the trial: `prepare-devices` killed during its stage (before it recorded anything) holds
/// the host only for its own `--lease-seconds`, and the refusal meanwhile says what holds it and
/// names `ferry ping`, not a resume that cannot work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_devices_cut_off_in_its_stage_frees_the_host_within_its_lease() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        devices: 5,
        external_db: vec![0],
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");
    let secret = "flightctl-postgresql-user-password";
    host.inject_fault("podman", secret, "sleep:8");
    let mut controller = fleet
        .ferry(&["prepare-devices", "cp01", "--lease-seconds", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the stage's secret read",
        Duration::from_secs(30),
        async || host.calls().iter().any(|c| c.contains(secret)),
    )
    .await;
    controller.kill().unwrap();
    let _ = controller.wait();
    host.clear_faults();
    let out = fleet.ferry(&["prepare-devices", "cp01"]).output().unwrap();
    let output = text(&out);
    if out.status.code() == Some(2) {
        assert!(
            !output.contains("--resume") && output.contains("ferry ping cp01"),
            "{output}"
        );
    }
    let cut = Instant::now();
    wait_until("the host to be free", Duration::from_secs(20), async || {
        let out = fleet
            .ferry(&["ping", "cp01", "-o", "json"])
            .output()
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        doc["hosts"]["cp01"]["data"]["operation"].is_null()
    })
    .await;
    assert!(cut.elapsed() < Duration::from_secs(20));
    let out = fleet.ferry(&["prepare-devices", "cp01"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
