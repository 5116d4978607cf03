//! `ferry serve` against simulated fleets, with the clock not faked: schedules, RPO states and
//! alerts, metrics scraped by a real Prometheus, graceful stop and reload.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use ferry::catalog::Catalog;
use ferry::config::Config;
use serde_json::Value;
use simhost::SimFleetOptions;
use simhost::serving::{Prometheus, Serve, Webhook, free_port, http_get, wait_for};
use simhost::testing::{TempFleet, catalog, text};
use time::OffsetDateTime;

/// Appends `serve:`, one schedule and the alert targets to the fleet's ferry.yaml.
fn add_serve_config(fleet: &TempFleet, port: u16, schedule: &str, alerts: &str) {
    let path = fleet.config_path();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "serve:\n  listen: 127.0.0.1:{port}\nschedules:\n{schedule}alerts:\n{alerts}"
    ));
    std::fs::write(&path, text).unwrap();
}

/// `ferry status -o json`: its exit code and document.
fn status(fleet: &TempFleet) -> (i32, Value) {
    let out = fleet.ferry(&["status", "-o", "json"]).output().unwrap();
    let doc = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status JSON: {e}: {}", text(&out)));
    (out.status.code().unwrap_or(-1), doc)
}

fn host_state(doc: &Value, host: &str) -> String {
    doc["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["host"] == host)
        .map(|h| h["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_keeps_hosts_within_their_rpo_and_alerts_on_a_breach_and_its_recovery() {
    // cp02 uses an external database: its archives hold no dump and still count.
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 2,
        external_db: vec![1],
        ..Default::default()
    })
    .await;
    let hooks = Webhook::start(&fleet.dir, 0);
    let port = free_port();
    add_serve_config(
        &fleet,
        port,
        "  - name: minutely\n    hosts: controlplanes\n    cron: \"* * * * *\"\n    rpo: 2m\n    retention: {keep_last: 3, min_keep: 2}\n",
        &format!("  - webhook: {}\n", hooks.url()),
    );
    let started = OffsetDateTime::now_utc();
    let serve = Serve::start(
        &fleet.config_path(),
        &fleet.inventory_path(),
        &["--replica", "solo"],
        &fleet.dir.join("serve.log"),
    );
    let prometheus = Prometheus::start(port);
    let cat = catalog(&fleet.config_path()).await;

    // Every host gets an archive at start (its slot had no archive) and one in each minute after.
    let archives = |host: &'static str| {
        let cat = &cat;
        async move {
            let mut list: Vec<_> = cat
                .archives()
                .await
                .unwrap()
                .into_iter()
                .filter(|a| a.host == host)
                .collect();
            list.reverse();
            list
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    loop {
        let (a, b) = (archives("cp01").await, archives("cp02").await);
        if a.len() >= 2 && b.len() >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "two archives per host within 150 s: {} {}\n{}",
            a.len(),
            b.len(),
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for host in ["cp01", "cp02"] {
        let list = archives(host).await;
        assert!(list[0].created_at >= started - time::Duration::seconds(1));
        // The second one ran in a later minute slot, within the jitter (a tenth of the period).
        let (first, second) = (list[0].created_at, list[1].created_at);
        assert!(second.minute() != first.minute() || second - first >= time::Duration::minutes(1));
        assert!(
            second.second() <= 12,
            "{host}: slot run at :{}",
            second.second()
        );
    }
    let cp02 = archives("cp02").await;
    assert!(!cp02[0].database_included, "cp02's archives have no dump");

    let (code, doc) = status(&fleet);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(host_state(&doc, "cp01"), "ok", "{doc}");
    assert_eq!(host_state(&doc, "cp02"), "ok", "{doc}");
    assert_eq!(doc["replicas"][0]["id"], "solo");
    assert_eq!(doc["replicas"][0]["leader"], true);

    // The metrics pass promtool's checks.
    let (code, metrics) = http_get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    std::io::Write::write_all(promtool.stdin.as_mut().unwrap(), metrics.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}\n{metrics}",
        text(&checked)
    );
    assert!(
        metrics.contains("ferry_rpo_seconds{host=\"cp01\"} 120"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_agent_reachable{host=\"cp02\"} 1"),
        "{metrics}"
    );

    // cp01's agent stops: at-risk, then breached, one breach alert, status fails.
    simhost::fleet::stop_agent(fleet.host("cp01"));
    let mut seen = Vec::new();
    wait_for(Duration::from_secs(200), "cp01 to breach its RPO", || {
        let (_, doc) = status(&fleet);
        let state = host_state(&doc, "cp01");
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        (state == "breached").then_some(())
    });
    assert_eq!(
        seen.iter()
            .filter(|s| *s != "ok")
            .cloned()
            .collect::<Vec<_>>(),
        ["at-risk", "breached"],
        "{seen:?}"
    );
    let (code, doc) = status(&fleet);
    assert_eq!(code, 2, "status exits non-zero on a breach: {doc}");
    let cp01 = doc["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "cp01")
        .unwrap()
        .clone();
    assert_eq!(cp01["last_failure"]["phase"], "connect", "{cp01}");
    assert!(
        cp01["last_failure"]["error"]
            .as_str()
            .unwrap()
            .contains("not answering"),
        "{cp01}"
    );
    wait_for(Duration::from_secs(30), "the breach alert", || {
        (!hooks.of("rpo-breached", "cp01").is_empty()).then_some(())
    });
    let breach = &hooks.of("rpo-breached", "cp01")[0];
    assert_eq!(breach["state"], "breached");
    assert_eq!(breach["rpo_seconds"], 120);
    // Breached means older than the RPO; the payload gives the age in whole seconds.
    assert!(breach["age_seconds"].as_u64().unwrap() >= 120, "{breach}");
    assert!(!hooks.of("backup-failed", "cp01").is_empty());
    // Prometheus sees the breach.
    let result = wait_for(
        Duration::from_secs(30),
        "prometheus to see the breach",
        || {
            let r = prometheus.query("ferry_rpo_breached == 1");
            (!r.is_empty()).then_some(r)
        },
    );
    assert_eq!(result.len(), 1, "{result:?}");
    assert_eq!(result[0]["metric"]["host"], "cp01");

    // Back again: the next run succeeds and a recovery alert arrives; the breach alerted once.
    simhost::fleet::start_agent(fleet.host("cp01")).unwrap();
    wait_for(Duration::from_secs(90), "the recovery alert", || {
        (!hooks.of("rpo-recovered", "cp01").is_empty()).then_some(())
    });
    let (code, doc) = status(&fleet);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(host_state(&doc, "cp01"), "ok");
    assert_eq!(
        hooks.of("rpo-breached", "cp01").len(),
        1,
        "{:?}",
        hooks.received()
    );
    assert_eq!(hooks.of("rpo-recovered", "cp01").len(), 1);
    assert!(hooks.of("rpo-breached", "cp02").is_empty());
    let recovered = &hooks.of("rpo-recovered", "cp01")[0];
    assert_eq!(recovered["state"], "ok");

    // Retention ran after the runs: no host holds more than keep_last archives, and each deletion
    // is on the ledger.
    let deleted = cat
        .client()
        .query_one(
            "SELECT count(*) FROM archives WHERE deleted_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    for host in ["cp01", "cp02"] {
        assert!(archives(host).await.len() <= 3);
    }
    let ledger_deletes = cat
        .client()
        .query_one(
            "SELECT count(*) FROM ledger WHERE content::jsonb->>'kind' = 'archive-delete'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(ledger_deletes, deleted);
    fleet.ferry_ok(&["audit", "verify"]).unwrap();
    drop(serve);
}

/// The replica name of a run's owner (`name@pid:start`, a replica instance).
fn replica_name(owner: Option<&str>) -> Option<&str> {
    owner?.split('@').next()
}

/// Scheduled slots in the catalog: (schedule, host, slot, state, owner, attempts).
async fn slots(
    cat: &Catalog,
) -> Vec<(String, String, OffsetDateTime, String, Option<String>, i32)> {
    cat.client()
        .query(
            "SELECT schedule, host, slot, state, owner, attempts FROM scheduled_runs ORDER BY slot, host",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_one_catalog_run_each_slot_once_and_take_over_a_killed_one() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 3,
        ..Default::default()
    })
    .await;
    let shared = simhost::testing::ScratchCluster::start();
    let url = shared.url("postgres");
    add_serve_config(
        &fleet,
        free_port(),
        "  - name: minutely\n    hosts: controlplanes\n    cron: \"* * * * *\"\n    rpo: 5m\n",
        "  []\n",
    );
    // Each replica listens on its own port: the config's is overridden by a copy per replica.
    let config_for = |name: &str| {
        let path = fleet.dir.join(format!("ferry-{name}.yaml"));
        let text = std::fs::read_to_string(fleet.config_path()).unwrap();
        let text = text.replace(
            "serve:\n  listen:",
            &format!("serve:\n  listen: 127.0.0.1:{}\n  #", free_port()),
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let start = |name: &str| {
        Serve::start(
            &config_for(name),
            &fleet.inventory_path(),
            &["--catalog", &url, "--replica", name],
            &fleet.dir.join(format!("serve-{name}.log")),
        )
    };
    let mut a = start("a");
    let mut b = start("b");
    let config = Config::load(&fleet.config_path(), true)
        .unwrap()
        .with_catalog(Some(url.clone()));
    let cat = Catalog::connect(&config).await.unwrap();

    // Two full slots run with both replicas; both take a share.
    let first_slot = OffsetDateTime::now_utc()
        .replace_second(0)
        .unwrap()
        .replace_nanosecond(0)
        .unwrap()
        + time::Duration::minutes(1);
    let second_slot = first_slot + time::Duration::minutes(1);
    wait_for(
        Duration::from_secs(200),
        "two slots done by two replicas",
        || {
            let rt = tokio::runtime::Handle::current();
            let all = tokio::task::block_in_place(|| rt.block_on(slots(&cat)));
            let done = all
                .iter()
                .filter(|s| s.2 == second_slot && s.3 == "succeeded")
                .count();
            (done == 3).then_some(())
        },
    );
    let all = slots(&cat).await;
    // Owned by a replica instance (`name@pid:start`): by name, both replicas ran slots.
    let owners: BTreeSet<String> = all
        .iter()
        .filter(|s| s.3 == "succeeded")
        .filter_map(|s| s.4.as_deref()?.split('@').next().map(str::to_string))
        .collect();
    assert_eq!(
        owners,
        BTreeSet::from(["a".to_string(), "b".to_string()]),
        "{all:?}"
    );

    // A backup of cp01 stalls; its replica is SIGKILLed mid-run; the other takes it over.
    let faults = fleet.host("cp01").layout.sim().join("faults");
    std::fs::write(&faults, "podman|ferry-dump|sleep:25\n").unwrap();
    let (owner, slot) = wait_for(Duration::from_secs(90), "cp01's next run to start", || {
        let rt = tokio::runtime::Handle::current();
        let all = tokio::task::block_in_place(|| rt.block_on(slots(&cat)));
        all.iter()
            .find(|s| s.1 == "cp01" && s.3 == "running" && s.2 > second_slot)
            .map(|s| (replica_name(s.4.as_deref()).unwrap().to_string(), s.2))
    });
    std::thread::sleep(Duration::from_secs(2));
    let (killed, survivor) = if owner == "a" {
        (&mut a, "b")
    } else {
        (&mut b, "a")
    };
    killed.signal(rustix::process::Signal::KILL);
    killed.wait(Duration::from_secs(10));
    let killed_at = std::time::Instant::now();
    std::fs::remove_file(&faults).unwrap();
    wait_for(
        Duration::from_secs(30),
        "the survivor to take the run over",
        || {
            let rt = tokio::runtime::Handle::current();
            let all = tokio::task::block_in_place(|| rt.block_on(slots(&cat)));
            all.iter()
                .find(|s| s.1 == "cp01" && s.2 == slot)
                .filter(|s| {
                    replica_name(s.4.as_deref()) == Some(survivor)
                        || s.3 == "pending"
                        || s.3 == "retrying"
                })
                .map(|_| ())
        },
    );
    assert!(killed_at.elapsed() <= Duration::from_secs(30));
    wait_for(
        Duration::from_secs(120),
        "the taken-over run to succeed",
        || {
            let rt = tokio::runtime::Handle::current();
            let all = tokio::task::block_in_place(|| rt.block_on(slots(&cat)));
            all.iter()
                .find(|s| s.1 == "cp01" && s.2 == slot && s.3 == "succeeded")
                .map(|_| ())
        },
    );
    // And the survivor keeps every later slot going on its own.
    let later = slot + time::Duration::minutes(1);
    wait_for(
        Duration::from_secs(150),
        "the next slot on the survivor",
        || {
            let rt = tokio::runtime::Handle::current();
            let all = tokio::task::block_in_place(|| rt.block_on(slots(&cat)));
            let done = all
                .iter()
                .filter(|s| {
                    s.2 == later
                        && s.3 == "succeeded"
                        && replica_name(s.4.as_deref()) == Some(survivor)
                })
                .count();
            (done == 3).then_some(())
        },
    );

    // No slot ran twice and none was missed: each (host, slot) from the first full one on has
    // exactly one successful backup, by the runs' own records.
    let rows = cat
        .client()
        .query(
            "SELECT h.host, r.flags->>'slot', count(*) FILTER (WHERE h.outcome = 'ok'),
                    count(*) FILTER (WHERE h.outcome = 'interrupted')
             FROM runs r JOIN host_results h ON h.run_id = r.id
             WHERE r.kind = 'backup' GROUP BY 1, 2 ORDER BY 2, 1",
            &[],
        )
        .await
        .unwrap();
    let mut per_slot: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for r in &rows {
        let (host, slot, ok, interrupted): (String, String, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        assert!(ok <= 1, "{host} {slot} backed up {ok} times");
        if ok == 1 {
            per_slot
                .entry(slot.clone())
                .or_default()
                .insert(host.clone());
        }
        if interrupted > 0 {
            assert_eq!(host, "cp01", "only the killed run is interrupted");
        }
    }
    let mut t = first_slot;
    while t <= later {
        let key = t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        assert_eq!(
            per_slot.get(&key).map(|s| s.len()),
            Some(3),
            "slot {key}: {per_slot:?}"
        );
        t += time::Duration::minutes(1);
    }
    // The killed replica's run is closed as interrupted, naming who took over.
    let interrupted = cat
        .client()
        .query_one(
            "SELECT h.error FROM host_results h JOIN runs r ON r.id = h.run_id
             WHERE r.kind = 'backup' AND h.outcome = 'interrupted'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    assert!(
        interrupted.contains(&format!("replica {survivor} took it over")),
        "{interrupted}"
    );
    let out = fleet
        .ferry(&["--catalog", &url, "audit", "verify"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_reloads_on_sighup_stops_gracefully_and_keeps_undeliverable_alerts_visible() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        ..Default::default()
    })
    .await;
    // A stale inventory entry: cp09's address is cp01's, so the agent that answers is not cp09.
    let mut inventory = std::fs::read_to_string(fleet.inventory_path()).unwrap();
    let address = fleet.host("cp01").spec.address.clone();
    inventory = inventory.replace(
        "[controlplanes]\n",
        &format!("[controlplanes]\ncp09 ansible_host={address}\n"),
    );
    std::fs::write(fleet.inventory_path(), inventory).unwrap();
    // Alerts go to a port where nobody listens; two attempts, then undeliverable.
    let dead = free_port();
    add_serve_config(
        &fleet,
        free_port(),
        "  - name: minutely\n    hosts: controlplanes\n    cron: \"* * * * *\"\n    rpo: 10m\n",
        &format!("  - webhook: http://127.0.0.1:{dead}/hook\n    attempts: 2\n"),
    );
    let good = std::fs::read_to_string(fleet.config_path()).unwrap();
    let mut serve = Serve::start(
        &fleet.config_path(),
        &fleet.inventory_path(),
        &["--replica", "r1", "--log-format", "json", "--grace", "3"],
        &fleet.dir.join("serve.log"),
    );
    let cat = catalog(&fleet.config_path()).await;

    // cp09 fails naming the wrong host; its alert cannot be delivered and stays visible.
    wait_for(
        Duration::from_secs(60),
        "cp09's alert to be given up",
        || {
            let out = fleet.ferry(&["status"]).output().unwrap();
            let t = text(&out);
            t.contains("(backup-failed of cp09)")
                .then_some(())
                .filter(|_| t.contains("was NOT delivered"))
        },
    );
    let (code, doc) = status(&fleet);
    assert_eq!(code, 0, "cp09 is failing but not breached yet: {doc}");
    let alert = &doc["undelivered_alerts"][0];
    assert_eq!(alert["state"], "undeliverable");
    assert_eq!(alert["attempts"], 2);
    assert!(
        alert["last_error"]
            .as_str()
            .unwrap()
            .contains("onnection refused"),
        "{alert}"
    );
    let cp09 = doc["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "cp09")
        .unwrap();
    assert!(
        cp09["last_failure"]["error"]
            .as_str()
            .unwrap()
            .contains("cp01"),
        "the failure names the host that answered: {cp09}"
    );
    assert!(serve.log_text().contains("alert undeliverable"));

    // SIGHUP with a broken file keeps the running configuration; with a good one, reloads.
    std::fs::write(fleet.config_path(), good.replace("* * * * *", "* * * *")).unwrap();
    serve.signal(rustix::process::Signal::HUP);
    wait_for(Duration::from_secs(10), "the refused reload", || {
        serve.log_text().contains("reload refused").then_some(())
    });
    std::fs::write(fleet.config_path(), good.replace("rpo: 10m", "rpo: 11m")).unwrap();
    serve.signal(rustix::process::Signal::HUP);
    wait_for(Duration::from_secs(10), "the reload", || {
        serve
            .log_text()
            .contains("configuration reloaded")
            .then_some(())
    });
    let (_, doc) = status(&fleet);
    assert_eq!(doc["hosts"][0]["rpo_seconds"], 660, "{doc}");

    // The next run of cp01 stalls in its dump; SIGTERM gives it 3 s, then records it
    // interrupted and hands its slot back.
    let faults = fleet.host("cp01").layout.sim().join("faults");
    std::fs::write(&faults, "podman|ferry-dump|sleep:60\n").unwrap();
    let slot = wait_for(Duration::from_secs(90), "cp01's stalled run", || {
        let rt = tokio::runtime::Handle::current();
        let all = tokio::task::block_in_place(|| rt.block_on(slots(&cat)));
        all.iter()
            .find(|s| s.1 == "cp01" && s.3 == "running")
            .map(|s| s.2)
    });
    std::thread::sleep(Duration::from_secs(1));
    serve.signal(rustix::process::Signal::TERM);
    assert_eq!(
        serve.wait(Duration::from_secs(20)),
        Some(0),
        "{}",
        serve.log_text()
    );
    std::fs::remove_file(&faults).unwrap();
    let row = slots(&cat)
        .await
        .into_iter()
        .find(|s| s.1 == "cp01" && s.2 == slot)
        .unwrap();
    assert_eq!(
        (row.3.as_str(), row.4.as_deref()),
        ("pending", None),
        "{row:?}"
    );
    let interrupted = cat
        .client()
        .query_one(
            "SELECT h.error FROM host_results h JOIN runs r ON r.id = h.run_id
             WHERE r.kind = 'backup' AND h.host = 'cp01' AND h.outcome = 'interrupted'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    assert!(
        interrupted.contains("ferry serve stopped by SIGTERM"),
        "{interrupted}"
    );
    let (_, doc) = status(&fleet);
    assert_eq!(doc["replicas"][0]["live"], false, "{doc}");
    // Every log line is one JSON object.
    for line in serve.log_text().lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    fleet.ferry_ok(&["audit", "verify"]).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_drills_are_recorded_alerted_and_exposed_as_metrics() {
    // cp02 uses an external database: its drill checks the files of an archive without a dump.
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 2,
        external_db: vec![1],
        devices: 20,
        ..Default::default()
    })
    .await;
    fleet.ferry_ok(&["backup", "all"]).unwrap();
    let hooks = Webhook::start(&fleet.dir, 0);
    let port = free_port();
    // Backups once a year (the archives just made satisfy this year's slot), drills every minute.
    add_serve_config(
        &fleet,
        port,
        "  - name: weekly-drill\n    hosts: controlplanes\n    cron: \"0 0 1 1 *\"\n    rpo: 400d\n    drill: \"* * * * *\"\n",
        &format!("  - webhook: {}\n", hooks.url()),
    );
    // cp01's scratch load fails: its drill must fail, be alerted, and show in the metrics.
    fleet
        .host("cp01")
        .inject_fault("podman", "-d flightctl_drill_", "ERROR: simulated damage");
    let serve = Serve::start(
        &fleet.config_path(),
        &fleet.inventory_path(),
        &["--replica", "solo"],
        &fleet.dir.join("serve.log"),
    );
    let prometheus = Prometheus::start(port);
    let drills = || {
        let out = fleet
            .ferry(&["history", "--kind", "drill", "-o", "json"])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let entries = loop {
        let entries = drills();
        let hosts: BTreeSet<String> = entries
            .iter()
            .map(|e| e["target"].as_str().unwrap_or_default().to_string())
            .collect();
        if hosts.len() == 2 {
            break entries;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a drill of each host within 90 s: {entries:?}\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let of = |host: &str| {
        entries
            .iter()
            .find(|e| e["target"] == host)
            .unwrap()
            .clone()
    };
    assert_eq!(of("cp02")["outcome"], "succeeded", "{}", of("cp02"));
    assert_eq!(of("cp02")["flags"]["schedule"], "weekly-drill/drill");
    assert_eq!(of("cp01")["outcome"], "failed", "{}", of("cp01"));
    assert!(
        of("cp01")["error"]
            .as_str()
            .unwrap()
            .contains("simulated damage"),
        "{}",
        of("cp01")
    );
    // No backup ran: the year's slot was already covered.
    assert_eq!(
        catalog(&fleet.config_path())
            .await
            .archives()
            .await
            .unwrap()
            .len(),
        2
    );
    let alert = wait_for(Duration::from_secs(30), "the drill-failed alert", || {
        hooks.of("drill-failed", "cp01").first().cloned()
    });
    assert!(
        alert["error"]
            .as_str()
            .unwrap()
            .contains("simulated damage"),
        "{alert}"
    );
    assert!(hooks.of("drill-failed", "cp02").is_empty());
    // The metrics say when each host was drilled and whether it passed; Prometheus scrapes them.
    let (code, metrics) = http_get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("ferry_drill_last_passed{host=\"cp01\"} 0")
            && metrics.contains("ferry_drill_last_passed{host=\"cp02\"} 1"),
        "{metrics}"
    );
    let failed = wait_for(
        Duration::from_secs(30),
        "prometheus to see the drills",
        || {
            let r = prometheus.query("ferry_drill_last_passed == 0");
            let seen = prometheus.query("ferry_drill_last_timestamp_seconds");
            (seen.len() == 2).then_some(r)
        },
    );
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["metric"]["host"], "cp01");
    drop(serve);
}
