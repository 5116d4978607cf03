//! `ferry ping` and `ferry facts` over mTLS against three simulated hosts.

use serde_json::Value;
use simhost::SimFleetOptions;
use simhost::testing::TempFleet;

fn run_json(fleet: &TempFleet, args: &[&str]) -> (i32, Value) {
    let out = fleet
        .ferry(args)
        .args(["-o", "json"])
        .output()
        .expect("run ferry");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().expect("exit code"), doc)
}

fn unit<'a>(facts: &'a Value, name: &str) -> Option<&'a Value> {
    facts["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
}

#[tokio::test]
async fn ping_and_facts_over_mtls_then_an_unreachable_agent() {
    let fleet = TempFleet::up(SimFleetOptions {
        external_db: vec![2],
        ..Default::default()
    })
    .await;
    fleet.host("cp01").systemctl(&["stop", "flightctl-worker"]);

    let (code, ping) = run_json(&fleet, &["ping", "all"]);
    assert_eq!(code, 0, "{ping}");
    for host in ["cp01", "cp02", "cp03"] {
        assert_eq!(ping["hosts"][host]["status"], "ok");
        assert_eq!(ping["hosts"][host]["data"]["host_name"], host);
        assert!(ping["hosts"][host]["data"]["operation"].is_null());
        assert_eq!(ping["recap"][host]["ok"], 1);
    }

    let (code, facts) = run_json(&fleet, &["facts", "all"]);
    assert_eq!(code, 0, "{facts}");
    for host in ["cp01", "cp02", "cp03"] {
        let f = &facts["hosts"][host]["data"];
        assert_eq!(f["flightctl"]["version"], "v1.2.0", "{host}: {f}");
        assert!(
            f["flightctl"]["source"]
                .as_str()
                .unwrap()
                .ends_with(":3443/api/version")
        );
        assert_eq!(f["deployment"]["type"], "podman");
        assert_eq!(f["os"]["id"], "rhel");
        assert_eq!(f["os"]["version_id"], "9.4");
        assert_eq!(
            unit(f, "flightctl-api.service").unwrap()["active_state"],
            "active"
        );
        assert_eq!(
            unit(f, "flightctl-kv.service").unwrap()["active_state"],
            "active"
        );
        assert!(
            unit(f, "flightctl-remote-access.service").is_none(),
            "v1.2 hosts lack remote-access"
        );
        assert!(f["staging"]["free_bytes"].as_u64().unwrap() > 0);
    }
    let cp01 = &facts["hosts"]["cp01"]["data"];
    assert_eq!(cp01["database"]["kind"], "builtin");
    assert_eq!(
        unit(cp01, "flightctl-db.service").unwrap()["active_state"],
        "active"
    );
    assert_eq!(
        unit(cp01, "flightctl-worker.service").unwrap()["active_state"],
        "inactive"
    );
    assert_eq!(
        cp01["containers"][0],
        serde_json::json!({"name": "flightctl-db", "state": "running"})
    );
    let cp03 = &facts["hosts"]["cp03"]["data"];
    assert_eq!(cp03["database"]["kind"], "external");
    assert_eq!(
        cp03["database"]["external_host"],
        fleet.host("cp03").spec.db_address.as_str()
    );
    assert_eq!(cp03["database"]["sslmode"], "verify-full");
    assert!(
        unit(cp03, "flightctl-db.service").is_none(),
        "external-DB host has no flightctl-db unit"
    );
    assert_eq!(
        cp03["containers"][0],
        serde_json::json!({"name": "flightctl-db", "state": "missing"})
    );

    // A stopped agent: unreachable, the same with one fork or ten, and its own exit code.
    simhost::fleet::stop_agent(fleet.host("cp02"));
    let log =
        std::fs::read_to_string(fleet.host("cp02").layout.agent_dir().join("agent.log")).unwrap();
    assert!(
        log.contains("SIGTERM: shutting down") && log.contains("ferry-agent stopped"),
        "graceful stop: {log}"
    );
    let (code1, one) = run_json(&fleet, &["ping", "all", "--forks", "1"]);
    let (code10, ten) = run_json(&fleet, &["ping", "all", "--forks", "10"]);
    assert_eq!((code1, code10), (3, 3));
    for doc in [&one, &ten] {
        assert_eq!(doc["hosts"]["cp02"]["status"], "unreachable");
        assert_eq!(doc["hosts"]["cp02"]["reason"], "unreachable");
        assert!(
            doc["hosts"]["cp02"]["error"]
                .as_str()
                .unwrap()
                .contains("not answering")
        );
        assert_eq!(doc["recap"]["cp02"]["unreachable"], 1);
        assert_eq!(doc["hosts"]["cp01"]["status"], "ok");
        assert_eq!(doc["hosts"]["cp03"]["status"], "ok");
    }
    assert_eq!(one["recap"], ten["recap"]);

    // Text mode says it in words and ends with the recap.
    let out = fleet.ferry(&["ping", "cp02"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3));
    assert!(text.contains("UNREACHABLE: [cp02] agent at"), "{text}");
    assert!(
        text.contains("cp02 : ok=0   changed=0   unreachable=1"),
        "{text}"
    );
}

#[tokio::test]
async fn bad_patterns_and_inventories_touch_nothing_and_exit_4() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        ..Default::default()
    })
    .await;
    let out = fleet.ferry(&["ping", "cp9*"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"cp9*\" matches no host or group"));

    let bad = fleet.dir.join("bad.ini");
    std::fs::write(&bad, "[prod]\ncp01\n[prod:nonsense]\n").unwrap();
    let out = std::process::Command::new(simhost::bins::path("ferry"))
        .arg("--config")
        .arg(fleet.config_path())
        .arg("-i")
        .arg(&bad)
        .args(["ping", "all"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:3: unknown section type", bad.display())),
        "{err}"
    );
}
