//! Every operation leaves a record, whatever ends it: a timeout, an unreachable host, SIGINT, a
//! catalog that goes down mid-run, a controller killed outright. And the safety refusals that go with
//! them: a rollback while the restore runs, a failure inside the window, a disagreeing sidecar.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use simhost::SimFleetOptions;
use simhost::testing::{TempFleet, awaiting_reconnect_keys, text, wait_until};

fn json(fleet: &TempFleet, args: &[&str]) -> Value {
    let out = fleet.ferry(args).args(["-o", "json"]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out)))
}

/// The newest ledger entry of `kind` for `target`.
fn last_entry(fleet: &TempFleet, kind: &str, target: &str) -> Value {
    let entries = json(fleet, &["history", "--kind", kind]);
    entries
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["target"] == target)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} entry for {target}: {entries}"))
}

async fn host_results(fleet: &TempFleet, kind: &str) -> Vec<(String, String, Option<String>)> {
    let config = ferry::config::Config::load(&fleet.config_path(), true).unwrap();
    let catalog = ferry::catalog::Catalog::connect(&config).await.unwrap();
    catalog
        .client()
        .query(
            "SELECT h.host, h.outcome, h.phase FROM host_results h JOIN runs r ON r.id = h.run_id WHERE r.kind = $1 ORDER BY r.id, h.host",
            &[&kind],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn store_leftovers(fleet: &TempFleet) -> Vec<String> {
    let mut left = Vec::new();
    let store = fleet.dir.join("controller/store");
    for host in std::fs::read_dir(&store).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(host.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                left.push(name);
            }
        }
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_unreachable_hosts_and_sigint_are_on_record() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 2,
        devices: 20,
        ..Default::default()
    })
    .await;
    let (cp01, cp02) = (fleet.host("cp01"), fleet.host("cp02"));

    // A backup that runs out of --timeout.
    cp01.inject_fault("podman", "ferry-dump", "sleep:8");
    let out = fleet
        .ferry(&["backup", "cp01", "--timeout", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--timeout"), "{}", text(&out));
    cp01.clear_faults();
    let entry = last_entry(&fleet, "backup", "cp01");
    assert_eq!(entry["outcome"], "failed");
    assert!(
        entry["error"].as_str().unwrap().starts_with("timeout:"),
        "{entry}"
    );
    assert!(host_results(&fleet, "backup").await.contains(&(
        "cp01".into(),
        "failed".into(),
        Some("timeout".into())
    )));
    assert!(
        store_leftovers(&fleet).is_empty(),
        "{:?}",
        store_leftovers(&fleet)
    );
    // The agent ends its side when it next tries to send, and frees the host.
    let cp01_staging = cp01.layout.agent_dir().join("staging");
    wait_until(
        "the agent to end the abandoned backup",
        Duration::from_secs(30),
        async || std::fs::read_dir(&cp01_staging).unwrap().count() == 0,
    )
    .await;

    // A restore aimed at a host whose agent is down.
    fleet.ferry_ok(&["backup", "all"]).unwrap();
    simhost::fleet::stop_agent(cp02);
    let out = fleet.ferry(&["restore", "cp02"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let entry = last_entry(&fleet, "restore", "cp02");
    assert_eq!(entry["outcome"], "unreachable", "{entry}");
    assert!(
        host_results(&fleet, "restore")
            .await
            .iter()
            .any(|(h, o, _)| h == "cp02" && o == "unreachable")
    );
    simhost::fleet::start_agent(cp02).unwrap();

    // SIGINT while the dump loads: recorded as interrupted; the agent finishes the load, then its
    // lease undoes the restore, which changed nothing live.
    cp01.inject_fault("podman", "ON_ERROR_STOP=1 -q -f", "sleep:3");
    let restore = fleet
        .ferry(&["restore", "cp01", "--lease-seconds", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        "the load (during stage)",
        Duration::from_secs(30),
        async || {
            cp01.calls()
                .iter()
                .any(|c| c.contains("ON_ERROR_STOP=1 -q -f"))
        },
    )
    .await;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(restore.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = restore.wait_with_output().unwrap();
    cp01.clear_faults();
    assert_eq!(out.status.code(), Some(130));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "next: `ferry facts cp01` shows where it stopped; then `ferry restore cp01 --resume` or `ferry rollback cp01`"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entry = last_entry(&fleet, "restore", "cp01");
    assert_eq!(entry["outcome"], "interrupted", "{entry}");
    assert!(
        entry["error"].as_str().unwrap().contains("SIGINT"),
        "{entry}"
    );
    // The record names the archive and keeps the timeline up to the interruption.
    assert_eq!(entry["archive"]["source_host"], "cp01", "{entry}");
    assert_eq!(
        entry["archive"]["sha256"].as_str().unwrap().len(),
        64,
        "{entry}"
    );
    let tasks: Vec<(&str, &str)> = entry["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        tasks,
        // The dump loads as the archive streams in: the stage was running.
        [("preflight", "ok"), ("stage", "interrupted")],
        "{entry}"
    );
    assert!(
        host_results(&fleet, "restore")
            .await
            .iter()
            .any(|(h, o, _)| h == "cp01" && o == "interrupted")
    );
    let staging = cp01.layout.agent_dir().join("staging");
    wait_until(
        "the lease to free the host",
        Duration::from_secs(30),
        async || {
            std::fs::read_dir(&staging).unwrap().count() == 0
                && cp01.unit_state("flightctl-api.service") == "active"
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_that_goes_down_and_a_killed_controller_lose_no_record() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 2,
        devices: 20,
        ..Default::default()
    })
    .await;
    fleet.ferry_ok(&["ping", "all"]).unwrap();
    let controller = fleet.dir.join("controller");

    // The catalog stops while both hosts dump: the archives land, their records wait in the spool.
    for h in ["cp01", "cp02"] {
        fleet
            .host(h)
            .inject_fault("podman", "ferry-dump", "sleep:3");
    }
    let backup = fleet
        .ferry(&["backup", "all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("both dumps", Duration::from_secs(30), async || {
        ["cp01", "cp02"].iter().all(|h| {
            fleet
                .host(h)
                .calls()
                .iter()
                .any(|c| c.contains("ferry-dump"))
        })
    })
    .await;
    ferry::catalog::embedded::PrivateCluster::new(&controller)
        .stop()
        .unwrap();
    let out = backup.wait_with_output().unwrap();
    for h in ["cp01", "cp02"] {
        fleet.host(h).clear_faults();
    }
    assert!(
        text(&out).contains("written when the catalog is back"),
        "{}",
        text(&out)
    );
    let spooled = std::fs::read_dir(controller.join("spool")).unwrap().count();
    assert!(
        spooled >= 4,
        "archive, host result and ledger entry per host: {spooled}"
    );
    // The next command starts the catalog again and writes them.
    let archives = json(&fleet, &["archives", "list"]);
    assert_eq!(archives.as_array().unwrap().len(), 2, "{archives}");
    for h in ["cp01", "cp02"] {
        let entry = last_entry(&fleet, "backup", h);
        assert_eq!(entry["outcome"], "succeeded");
        // Spooled entries name their archive as the catalog later holds it.
        let archive = archives
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["host"] == h)
            .unwrap();
        assert_eq!(entry["archive"]["sha256"], archive["sha256"], "{entry}");
    }
    assert_eq!(
        std::fs::read_dir(controller.join("spool")).unwrap().count(),
        0
    );
    let results = host_results(&fleet, "backup").await;
    assert_eq!(
        results.iter().filter(|(_, o, _)| o == "ok").count(),
        2,
        "{results:?}"
    );
    let verified = Command::new(simhost::bins::path("ferry"))
        .arg("--config")
        .arg(fleet.config_path())
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", text(&verified));

    // A controller killed outright mid-backup: the next ferry marks its run interrupted, and its
    // partial object is gone.
    fleet
        .host("cp01")
        .inject_fault("podman", "ferry-dump", "sleep:4");
    let mut backup = fleet
        .ferry(&["backup", "cp01"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the dump", Duration::from_secs(30), async || {
        fleet
            .host("cp01")
            .calls()
            .iter()
            .filter(|c| c.contains("ferry-dump"))
            .count()
            >= 2
    })
    .await;
    backup.kill().unwrap();
    let _ = backup.wait();
    fleet.host("cp01").clear_faults();
    let entry = last_entry(&fleet, "backup", "cp01");
    assert_eq!(entry["outcome"], "interrupted", "{entry}");
    assert!(
        entry["error"]
            .as_str()
            .unwrap()
            .contains("ended before the run did"),
        "{entry}"
    );
    // The next command that opens the store removes the dead controller's partial object.
    json(&fleet, &["archives", "list"]);
    assert!(
        store_leftovers(&fleet).is_empty(),
        "{:?}",
        store_leftovers(&fleet)
    );
    let staging = fleet.host("cp01").layout.agent_dir().join("staging");
    wait_until(
        "the agent to drop its scratch",
        Duration::from_secs(30),
        async || std::fs::read_dir(&staging).unwrap().count() == 0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_waits_for_a_running_restore_and_a_failure_in_the_window_is_rolled_back() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        devices: 20,
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();

    // A rollback while the restore runs is refused, naming it; the restore completes.
    host.inject_fault("podman", "ON_ERROR_STOP=1 -q -f", "sleep:8");
    let restore = fleet
        .ferry(&["restore", "cp01", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the load (during stage)",
        Duration::from_secs(30),
        async || {
            host.calls()
                .iter()
                .any(|c| c.contains("ON_ERROR_STOP=1 -q -f"))
        },
    )
    .await;
    let rollback = fleet.ferry(&["rollback", "cp01"]).output().unwrap();
    assert_eq!(rollback.status.code(), Some(2), "{}", text(&rollback));
    // The dump loads as the archive streams in (stage).
    assert!(
        text(&rollback).contains("is still running (its step stage is running now)"),
        "{}",
        text(&rollback)
    );
    // So is a second driver of the same restore (a --resume sent while the step still runs).
    let resume = fleet
        .ferry(&["restore", "cp01", "--resume"])
        .output()
        .unwrap();
    assert_eq!(resume.status.code(), Some(2), "{}", text(&resume));
    assert!(
        text(&resume).contains("is running its step stage now"),
        "{}",
        text(&resume)
    );
    let out = restore.wait_with_output().unwrap();
    host.clear_faults();
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["outcome"], "succeeded");
    // Typed steps and host state in the document.
    let names: Vec<&str> = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names[..3], ["preflight", "stage", "verify"]);
    assert_eq!(doc["host_status"]["state"], "HOST_STATE_STARTED", "{doc}");

    // A KV seed that fails inside the window leaves the swapped state, nothing published and no
    // data service restarted; rollback then restores the rest.
    host.clear_calls();
    host.inject_fault("podman", "redis-cli --pipe", "Error: KV refused the pipe");
    let doc: Value = serde_json::from_slice(
        &fleet
            .ferry(&["restore", "cp01", "-o", "json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    host.clear_faults();
    assert_eq!(doc["outcome"], "failed", "{doc}");
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("KV refused the pipe"),
        "{doc}"
    );
    assert_eq!(doc["host_status"]["state"], "HOST_STATE_SWAPPED", "{doc}");
    assert_eq!(doc["host_status"]["published"], false, "{doc}");
    assert!(
        !host.calls().iter().any(|c| c.contains("restart")),
        "{:#?}",
        host.calls()
    );
    fleet.ferry_ok(&["rollback", "cp01"]).unwrap();
    assert_eq!(host.unit_state("flightctl-api.service"), "active");

    // A rollback after `start` stops the units running on the restored data before it undoes it,
    // and takes back the awaiting-reconnect keys the restore seeded.
    let mut kv = host.kv().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut kv).await.unwrap();
    host.inject_fault("podman", "json_object_agg", "health check refused");
    let out = fleet.ferry(&["restore", "cp01"]).output().unwrap();
    host.clear_faults();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("task health"), "{}", text(&out));
    assert_eq!(host.unit_state("flightctl-api.service"), "active");
    assert!(awaiting_reconnect_keys(host).await > 0);
    host.clear_calls();
    let out = fleet.ferry(&["rollback", "cp01"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("awaiting-reconnect keys the restore seeded removed"),
        "{}",
        text(&out)
    );
    let calls = host.calls();
    let stop = calls
        .iter()
        .position(|c| c.starts_with("systemctl stop") && c.contains("flightctl-api.service"));
    let rename = calls.iter().position(|c| c.contains("RENAME TO"));
    assert!(
        matches!((stop, rename), (Some(s), Some(r)) if s < r),
        "units stop before the database is renamed back: {calls:#?}"
    );
    assert_eq!(host.unit_state("flightctl-api.service"), "active");
    // The restore's keys went with its database; the previous database's devices that still await
    // a reconnect (from the restore before) have theirs again.
    let annotated: i64 = host
        .db()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM devices WHERE deleted_at IS NULL AND annotations->>'device-controller/awaitingReconnect' = 'true'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(awaiting_reconnect_keys(host).await, annotated as usize);
    // Its record names the archive and the restore it found.
    let entry = last_entry(&fleet, "rollback", "cp01");
    assert_eq!(entry["archive"]["source_host"], "cp01", "{entry}");
    assert_eq!(entry["tasks"][0]["name"], "found", "{entry}");
    assert!(
        entry["tasks"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("last completed step: start"),
        "{entry}"
    );

    // An archive whose sidecar disagrees: refused by restore and verify, unless trusted, on record.
    let list = json(&fleet, &["archives", "list"]);
    let archive = &list[0];
    let id = archive["id"].as_str().unwrap();
    let sidecar = fleet
        .dir
        .join("controller/store/cp01")
        .join(format!("{}.sha256", archive["name"].as_str().unwrap()));
    std::fs::write(&sidecar, format!("{}  x\n", "1".repeat(64))).unwrap();
    let out = fleet.ferry(&["archives", "verify", id]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&"1".repeat(64))
            && text(&out).contains(archive["sha256"].as_str().unwrap())
    );
    let out = fleet
        .ferry(&["restore", "cp01", "--archive", id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--trust-archive-digest"),
        "{}",
        text(&out)
    );
    let out = fleet
        .ferry(&["restore", "cp01", "--archive", id, "--trust-archive-digest"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let entry = last_entry(&fleet, "restore", "cp01");
    assert_eq!(entry["outcome"], "succeeded");
    assert_eq!(entry["flags"]["trust_archive_digest"], true, "{entry}");
    // A rebuilt catalog marks it suspect.
    let rebuilt = fleet.fresh_catalog_config("rebuilt");
    let out = Command::new(simhost::bins::path("ferry"))
        .args([
            "--config",
            rebuilt.to_str().unwrap(),
            "catalog",
            "rebuild",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        doc["archives"][0]["suspect"]
            .as_str()
            .unwrap()
            .contains("sidecar says"),
        "{doc}"
    );
    let on_rebuilt = |args: &[&str]| {
        Command::new(simhost::bins::path("ferry"))
            .args(["--config", rebuilt.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let listed = text(&on_rebuilt(&["archives", "list"]));
    assert!(listed.contains("SUSPECT"), "{listed}");
    // Once the sidecar is put right, verify finds them agreeing and lifts the mark, on record.
    std::fs::write(
        &sidecar,
        format!(
            "{}  {}\n",
            archive["sha256"].as_str().unwrap(),
            archive["name"].as_str().unwrap()
        ),
    )
    .unwrap();
    let out = on_rebuilt(&["archives", "verify", id]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("the suspect mark"), "{}", text(&out));
    let listed = text(&on_rebuilt(&["archives", "list"]));
    assert!(!listed.contains("SUSPECT"), "{listed}");
}
