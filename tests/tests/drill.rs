//! Drills: an archive restored into a scratch database inside the DB container, prepared, counted
//! and checked, without touching the live control plane (row counts and the stand-ins' call log
//! say so); a damaged dump fails and names its table; `--on` drills on a sandbox; the catalog,
//! `archives list` and the ledger record it; the edges (typos, another host's archive, a full disk,
//! an agent killed mid-drill) change nothing.

use std::io::Read;
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};
use simhost::SimFleetOptions;
use simhost::SimHost;
use simhost::fleet::{kill_agent, start_agent};
use simhost::testing::{TempFleet, text};

fn json(fleet: &TempFleet, args: &[&str]) -> (Option<i32>, Value) {
    let out = fleet.ferry(args).args(["-o", "json"]).output().unwrap();
    let doc = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out)));
    (out.status.code(), doc)
}

fn run(fleet: &TempFleet, args: &[&str]) -> (Option<i32>, String) {
    let out = fleet.ferry(args).output().unwrap();
    (out.status.code(), text(&out))
}

/// What a drill must leave as it was: every table of the live database, and the units.
async fn live(host: &SimHost) -> (Vec<String>, Vec<(String, String)>) {
    let db = host.db().await.unwrap();
    let mut tables = Vec::new();
    for table in simhost::pg::TABLES {
        let sql = format!(
            "SELECT count(*)::text || ':' || COALESCE(md5(string_agg(r, '|' ORDER BY r)), '') FROM (SELECT (t.*)::text r FROM {table} t) x"
        );
        tables.push(db.query_one(&sql, &[]).await.unwrap().get(0));
    }
    let units = simhost::host::UNITS
        .iter()
        .map(|u| (u.to_string(), host.unit_state(u)))
        .collect();
    (tables, units)
}

/// Calls a drill may make on a host: container inspections, facts, and psql on the scratch
/// database or the maintenance database. Nothing that stops, restarts or publishes.
fn assert_drill_calls_only(host: &SimHost, what: &str) {
    for call in host.calls() {
        assert!(
            !call.starts_with("systemctl start")
                && !call.starts_with("systemctl stop")
                && !call.starts_with("systemctl restart")
                && !call.contains("daemon-reload")
                && !call.contains("RENAME")
                && !call.contains("redis-cli --pipe"),
            "{what}: a drill touched the live plane: {call}"
        );
        if call.contains(" psql ") {
            assert!(
                call.contains("-d postgres ") || call.contains("-d flightctl_drill_"),
                "{what}: psql outside the scratch database: {call}"
            );
        }
    }
}

async fn scratch_databases(host: &SimHost) -> i64 {
    host.db()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE '%\\_drill\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn staging_drills(host: &SimHost) -> usize {
    std::fs::read_dir(host.layout.agent_dir().join("staging"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("drill-"))
                .count()
        })
        .unwrap_or(0)
}

fn history(fleet: &TempFleet) -> Vec<Value> {
    let (code, doc) = json(fleet, &["history", "--kind", "drill"]);
    assert_eq!(code, Some(0), "{doc}");
    doc.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_prove_archives_restore_without_touching_the_live_plane() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 3,
        external_db: vec![2],
        devices: 40,
        ..Default::default()
    })
    .await;
    fleet.ferry_ok(&["backup", "all"]).unwrap();
    let before: Vec<_> = {
        let mut v = Vec::new();
        for h in &fleet.hosts {
            v.push(live(h).await);
            h.clear_calls();
        }
        v
    };

    // Every host drills its newest archive on itself; the external-DB host has no dump to load.
    let (code, doc) = json(&fleet, &["drill", "all"]);
    assert_eq!(code, Some(0), "{doc}");
    for name in ["cp01", "cp02"] {
        let data = &doc["hosts"][name]["data"];
        assert_eq!(data["passed"], true, "{data}");
        let tables = data["tables"].as_array().unwrap();
        assert!(tables.len() >= 10, "{data}");
        for t in tables {
            assert_eq!(t["restored"], t["expected"], "{t}");
        }
        assert!(
            tables
                .iter()
                .any(|t| t["table"] == "devices" && t["expected"].as_u64().unwrap() >= 40),
            "{data}"
        );
        assert!(data["devices_prepared"].as_u64().unwrap() > 0, "{data}");
        assert!(data["files_checked"].as_u64().unwrap() >= 12, "{data}");
        let phases: Vec<&str> = data["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            phases,
            ["load", "verify", "count", "prepare", "files", "drop"]
        );
    }
    let cp03 = &doc["hosts"]["cp03"]["data"];
    assert_eq!(cp03["passed"], true, "{cp03}");
    assert!(cp03["tables"].as_array().unwrap().is_empty(), "{cp03}");
    assert!(
        cp03["notes"][0]
            .as_str()
            .unwrap()
            .contains("holds no database"),
        "{cp03}"
    );
    // The live control planes are exactly as they were; nothing is left behind.
    for (host, before) in fleet.hosts.iter().zip(&before) {
        let name = &host.spec.name;
        assert_eq!(&live(host).await, before, "{name}: live data and units");
        assert_drill_calls_only(host, name);
        assert_eq!(staging_drills(host), 0, "{name}");
    }
    for host in &fleet.hosts[..2] {
        assert_eq!(scratch_databases(host).await, 0);
        assert!(
            host.calls()
                .iter()
                .any(|c| c.contains("-d flightctl_drill_") && c.contains("awaitingReconnect")),
            "device preparation ran on the scratch database"
        );
    }

    // Recorded: verified by restore in the catalog and the list, and one ledger entry per host.
    let (_, list) = json(&fleet, &["archives", "list"]);
    for a in list.as_array().unwrap() {
        assert!(a["drilled_at"].is_string(), "{a}");
    }
    let (code, listing) = run(&fleet, &["archives", "list"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        listing.matches("(verified by restore ").count(),
        3,
        "{listing}"
    );
    let entries = history(&fleet);
    assert_eq!(entries.len(), 3, "{entries:?}");
    for e in &entries {
        assert_eq!(e["outcome"], "succeeded", "{e}");
        assert!(
            e["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"] == "drill/files" && t["outcome"] == "ok"),
            "{e}"
        );
    }

    // --on: cp01's archive on cp02's DB container; cp01 is not contacted, cp02's live data stays.
    for h in &fleet.hosts {
        h.clear_calls();
    }
    let cp02_before = live(fleet.host("cp02")).await;
    let (code, output) = run(&fleet, &["drill", "cp01", "--on", "cp02"]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("restores on cp02"), "{output}");
    assert!(fleet.host("cp01").calls().is_empty());
    assert_drill_calls_only(fleet.host("cp02"), "sandbox");
    assert!(
        fleet
            .host("cp02")
            .calls()
            .iter()
            .any(|c| c.contains("-d flightctl_drill_")),
        "the drill ran on cp02"
    );
    assert_eq!(live(fleet.host("cp02")).await, cp02_before);
    let newest = history(&fleet).last().cloned().unwrap();
    assert_eq!(newest["target"], "cp01", "{newest}");
    assert_eq!(newest["flags"]["on"], "cp02", "{newest}");

    // Edges: a typo'd pattern and sandbox contact nothing; another host's archive is refused.
    let (code, output) = run(&fleet, &["drill", "cp0l"]);
    assert_eq!(code, Some(4), "{output}");
    let (code, output) = run(&fleet, &["drill", "cp01", "--on", "sandbox9"]);
    assert_eq!(code, Some(4), "{output}");
    assert!(output.contains("--on sandbox9"), "{output}");
    let cp02_archive = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["host"] == "cp02")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, output) = run(&fleet, &["drill", "cp01", "--archive", &cp02_archive]);
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains(&format!("archive {cp02_archive} is of cp02, not cp01")),
        "{output}"
    );

    // The external-DB host cannot hold a scratch copy of a built-in host's dump: refused, named.
    let (code, output) = run(&fleet, &["drill", "cp01", "--on", "cp03"]);
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains("cp03 uses an external database") && output.contains("--on HOST"),
        "{output}"
    );
}

/// Rewrites `archive` (tar.gz) with `edit` applied to db/dump.sql and the manifest's entry for it
/// updated, so the archive is internally consistent: only loading it shows the damage.
fn damaged(archive: &Path, edit: impl Fn(&str) -> String) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut tar = tar::Archive::new(flate2::read::MultiGzDecoder::new(
        std::fs::File::open(archive).unwrap(),
    ));
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        entries.push((header, path, data));
    }
    let dump = entries
        .iter_mut()
        .find(|(_, p, _)| p == "db/dump.sql")
        .unwrap();
    dump.2 = edit(&String::from_utf8(dump.2.clone()).unwrap()).into_bytes();
    let (size, sha) = (dump.2.len(), ferry_archive::hex(&Sha256::digest(&dump.2)));
    let manifest = entries
        .iter_mut()
        .find(|(_, p, _)| p == "ferry-manifest.json")
        .unwrap();
    let mut doc: Value = serde_json::from_slice(&manifest.2).unwrap();
    for e in doc["entries"].as_array_mut().unwrap() {
        if e["path"] == "db/dump.sql" {
            e["size"] = size.into();
            e["sha256"] = sha.clone().into();
        }
    }
    manifest.2 = serde_json::to_vec_pretty(&doc).unwrap();
    let mut out = Vec::new();
    {
        let gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        for (mut header, path, data) in entries {
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append_data(&mut header, path, &data[..]).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_dump_fails_its_drill_naming_the_table_and_a_killed_drill_leaves_nothing() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        devices: 20,
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();
    let folder = fleet.dir.join("controller/store/cp01");
    let original = std::fs::read_dir(&folder)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "gz"))
        .unwrap();
    // Two damaged copies with valid gzip and digests: SQL that fails (a table's CREATE gone), and
    // valid SQL that loses a table's rows (one no foreign key needs).
    let no_create = damaged(&original, |sql| {
        let start = sql.find("CREATE TABLE public.fleets (").unwrap();
        let end = start + sql[start..].find(");\n").unwrap() + 3;
        format!("{}{}", &sql[..start], &sql[end..])
    });
    let no_rows = damaged(&original, |sql| {
        let start = sql.find("COPY public.repositories ").unwrap();
        let body = start + sql[start..].find('\n').unwrap() + 1;
        let end = body + sql[body..].find("\\.\n").unwrap();
        format!("{}{}", &sql[..body], &sql[end..])
    });
    for (name, bytes) in [
        ("flightctl-backup-20990101T000001Z.tar.gz", &no_create),
        ("flightctl-backup-20990101T000002Z.tar.gz", &no_rows),
    ] {
        std::fs::write(folder.join(name), bytes).unwrap();
        std::fs::write(
            folder.join(format!("{name}.sha256")),
            ferry_archive::sidecar_line(&ferry_archive::hex(&Sha256::digest(bytes)), name),
        )
        .unwrap();
    }
    fleet.ferry_ok(&["catalog", "rebuild"]).unwrap();
    let id = |bytes: &[u8]| ferry_archive::hex(&Sha256::digest(bytes))[..12].to_string();
    let before = live(host).await;
    host.clear_calls();

    let (code, output) = run(&fleet, &["drill", "cp01", "--archive", &id(&no_create)]);
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains("drill/load") && output.contains("db/dump.sql does not load"),
        "{output}"
    );
    assert!(
        output.contains("fleets"),
        "the failing table is named: {output}"
    );
    let (code, output) = run(&fleet, &["drill", "cp01", "--archive", &id(&no_rows)]);
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains("drill/count")
            && output.contains("table repositories: 0 rows after the load"),
        "{output}"
    );
    assert_eq!(live(host).await, before, "live plane untouched");
    assert_drill_calls_only(host, "damaged");
    assert_eq!(scratch_databases(host).await, 0);
    // Failed drills are on the ledger with the cause, and mark nothing verified.
    let entries = history(&fleet);
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e["outcome"] == "failed"));
    assert!(
        entries[1]["error"]
            .as_str()
            .unwrap()
            .contains("table repositories"),
        "{}",
        entries[1]
    );
    let (_, list) = json(&fleet, &["archives", "list"]);
    for a in list.as_array().unwrap() {
        assert!(a["drilled_at"].is_null(), "{a}");
    }

    // An agent killed mid-load: the restarted agent drops the scratch database and its directory;
    // the drill is on record as unreachable.
    host.inject_fault("podman", "-d flightctl_drill_", "sleep:5");
    let drill = fleet
        .ferry(&["drill", "cp01"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !host
        .calls()
        .iter()
        .any(|c| c.contains("-d flightctl_drill_"))
    {
        assert!(std::time::Instant::now() < deadline, "the drill's load");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    kill_agent(host);
    host.clear_faults();
    let out = drill.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    start_agent(host).unwrap();
    assert_eq!(scratch_databases(host).await, 0, "dropped at agent start");
    assert_eq!(staging_drills(host), 0);
    let entries = history(&fleet);
    assert_eq!(entries.last().unwrap()["outcome"], "unreachable");
    assert_eq!(live(host).await, before);

    // A staging filesystem that must keep more free than it has: refused before anything is sent.
    let config = host.layout.agent_dir().join("agent.yaml");
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml.push_str("keep_free_bytes: 1125899906842624\n");
    std::fs::write(&config, yaml).unwrap();
    kill_agent(host);
    start_agent(host).unwrap();
    let (code, output) = run(&fleet, &["drill", "cp01"]);
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains("not enough space") && output.contains("keep_free_bytes"),
        "{output}"
    );
    assert_eq!(staging_drills(host), 0);
    // And a good drill afterwards passes once the space is there.
    let yaml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("keep_free_bytes: 1125899906842624\n", "");
    std::fs::write(&config, yaml).unwrap();
    kill_agent(host);
    start_agent(host).unwrap();
    let good = id(&std::fs::read(&original).unwrap());
    let (code, output) = run(&fleet, &["drill", "cp01", "--archive", &good]);
    assert_eq!(code, Some(0), "{output}");
    let drilled = |list: &Value| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == good.as_str())
            .unwrap()
            .clone()
    };
    let (_, list) = json(&fleet, &["archives", "list"]);
    assert!(drilled(&list)["drilled_at"].is_string());

    // A sidecar that disagrees: restore would refuse the archive, so the drill does not pass it.
    let sidecar = original.with_file_name(format!(
        "{}.sha256",
        original.file_name().unwrap().to_string_lossy()
    ));
    let good_sidecar = std::fs::read(&sidecar).unwrap();
    std::fs::write(
        &sidecar,
        ferry_archive::sidecar_line(&"0".repeat(64), "x.tar.gz"),
    )
    .unwrap();
    let (code, output) = run(&fleet, &["drill", "cp01", "--archive", &good]);
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains("drill/store")
            && output.contains("sidecar-differs")
            && output.contains(&format!("ferry archives verify {good}")),
        "{output}"
    );
    std::fs::write(&sidecar, good_sidecar).unwrap();
    // Its sidecar put right, a verify proves it good again.
    let (code, output) = run(&fleet, &["archives", "verify", &good]);
    assert_eq!(code, Some(0), "{output}");

    // The stored copy damaged after it was drilled: the controller's proof refuses it before the
    // agent receives a byte, and marks it suspect (body-differs), so restore, retention and the
    // RPO stop counting on it; no longer shown as verified by restore.
    let mut bytes = std::fs::read(&original).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&original, &bytes).unwrap();
    fleet.host("cp01").clear_calls();
    let (code, output) = run(&fleet, &["drill", "cp01", "--archive", &good]);
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains("drill/store")
            && output.contains("body-differs")
            && output.contains("the drill was not started"),
        "{output}"
    );
    let loads: Vec<String> = fleet
        .host("cp01")
        .calls()
        .into_iter()
        .filter(|c| c.contains("ON_ERROR_STOP=1 -q -f"))
        .collect();
    assert!(loads.is_empty(), "a load ran: {loads:?}");
    let (_, list) = json(&fleet, &["archives", "list"]);
    let a = drilled(&list);
    assert_eq!(a["state"], "suspect", "{a}");
    assert_eq!(a["reason"], "body-differs", "{a}");
    assert!(
        a["suspect"]
            .as_str()
            .unwrap()
            .contains("differs from the catalog's"),
        "{a}"
    );
    let (code, output) = run(&fleet, &["archives", "list"]);
    assert_eq!(code, Some(0));
    assert!(
        output.contains("SUSPECT:body-differs") && !output.contains("verified by restore"),
        "{output}"
    );
}
