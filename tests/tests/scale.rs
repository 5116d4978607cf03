//! A fleet of hundreds held by one controller: 300 light simulated hosts (agents whose units are
//! states only) answer `ping` and `facts`, and refuse backups with a clear message.

use serde_json::Value;
use simhost::SimFleetOptions;
use simhost::testing::{TempFleet, text};

fn statuses(doc: &Value) -> Vec<(String, String)> {
    doc["hosts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(h, r)| (h.clone(), r["status"].as_str().unwrap_or("").to_string()))
        .collect()
}

#[tokio::test]
async fn three_hundred_light_agents_answer_ping_and_facts() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 0,
        light: 300,
        ..Default::default()
    })
    .await;
    for command in ["ping", "facts"] {
        let out = fleet
            .ferry(&[command, "all", "--forks", "50", "-o", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}: {}", text(&out));
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let answered = statuses(&doc);
        assert_eq!(answered.len(), 300, "{command}");
        let not_ok: Vec<_> = answered.iter().filter(|(_, s)| s != "ok").collect();
        assert!(not_ok.is_empty(), "{command}: {not_ok:?}");
    }
    // Facts are real facts of each host (its own name, its units).
    let out = fleet
        .ferry(&["facts", "lt150", "-o", "json"])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let facts = &doc["hosts"]["lt150"]["data"];
    assert_eq!(facts["flightctl"]["version"], "v1.2.0", "{facts}");
    // A light host refuses a backup, saying why.
    let out = fleet.ferry(&["backup", "lt001"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("light simulated host"),
        "{}",
        text(&out)
    );
}
