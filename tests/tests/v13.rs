//! v1.3 hosts encrypt fields with keys under /etc/flightctl/encryption, one canary per key, and
//! their API refuses to run while a canary does not decrypt. A restore that would leave the
//! database without its keys is refused in preflight, naming the key ids; a full restore brings the
//! keys with the database and the API starts; a drill checks every key the database uses.

use serde_json::Value;
use simhost::SimFleetOptions;
use simhost::testing::{TempFleet, text};

fn json(fleet: &TempFleet, args: &[&str]) -> Value {
    let out = fleet.ferry(args).args(["-o", "json"]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out)))
}

fn key_id(fleet: &TempFleet, host: &str) -> String {
    let dir = fleet
        .host(host)
        .layout
        .host_path("/etc/flightctl/encryption");
    let name = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".key"))
        .unwrap();
    name.trim_end_matches(".key").to_string()
}

async fn repositories(fleet: &TempFleet, host: &str) -> String {
    let db = fleet.host(host).db().await.unwrap();
    db.query_one(
        "SELECT string_agg(spec::text, '|' ORDER BY name) FROM repositories",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_would_lose_the_database_keys_is_refused_naming_them() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 2,
        version: "v1.3.0".into(),
        devices: 20,
        ..Default::default()
    })
    .await;
    let (k1, k2) = (key_id(&fleet, "cp01"), key_id(&fleet, "cp02"));
    assert_ne!(k1, k2);
    fleet.ferry_ok(&["backup", "all"]).unwrap();
    let list = json(&fleet, &["archives", "list"]);
    let cp01 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["host"] == "cp01")
        .unwrap()
        .clone();
    assert_eq!(cp01["db_key_ids"], serde_json::json!([k1]), "{cp01}");

    // --only db from cp01 onto cp02: cp02 keeps its own key, the database needs cp01's.
    let cp02_before = repositories(&fleet, "cp02").await;
    for extra in [&[][..], &["--check"][..]] {
        let mut args = vec!["restore", "cp02", "--from", "cp01", "--only", "db"];
        args.extend_from_slice(extra);
        let out = fleet.ferry(&args).output().unwrap();
        let output = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {output}");
        assert!(
            output.contains(&format!("encryption key id(s) {k1}"))
                && output.contains("API would refuse to start"),
            "{args:?}: {output}"
        );
    }
    // --only db,encryption brings cp01's key file but cp02's config still declares only k2: the
    // API would not use it. Refused, naming both ids and the component to add.
    for extra in [&[][..], &["--check"][..]] {
        let mut args = vec![
            "restore",
            "cp02",
            "--from",
            "cp01",
            "--only",
            "db,encryption",
        ];
        args.extend_from_slice(extra);
        let out = fleet.ferry(&args).output().unwrap();
        let output = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {output}");
        assert!(
            output.contains(&format!("encryption key id(s) {k1}"))
                && output.contains(&format!("declares only {k2} (config is not restored)"))
                && output.contains("add config to --only"),
            "{args:?}: {output}"
        );
    }
    assert_eq!(repositories(&fleet, "cp02").await, cp02_before);
    assert_eq!(key_id(&fleet, "cp02"), k2, "cp02's key untouched");
    let journal_left = std::fs::read_dir(fleet.host("cp02").layout.agent_dir().join("staging"))
        .map_or(0, |d| d.count());
    assert_eq!(journal_left, 0, "nothing staged");

    // The full restore brings cp01's keys with its database; the API starts (health passes).
    let out = fleet
        .ferry(&["restore", "cp02", "--from", "cp01"])
        .output()
        .unwrap();
    let output = text(&out);
    assert_eq!(out.status.code(), Some(0), "{output}");
    assert!(output.contains("TASK [health] ok: API ready"), "{output}");
    assert_eq!(key_id(&fleet, "cp02"), k1);
    assert!(
        repositories(&fleet, "cp02")
            .await
            .contains(&format!("enc:v1:{k1}:"))
    );

    // The stand-in API does refuse to run when a canary does not decrypt: a key file replaced
    // behind ferry's back, and the API answers nothing but why.
    let key_file = fleet
        .host("cp02")
        .layout
        .host_path(&format!("/etc/flightctl/encryption/{k1}.key"));
    let good_key = std::fs::read(&key_file).unwrap();
    std::fs::write(&key_file, "0000\n").unwrap();
    let facts = json(&fleet, &["facts", "cp02"]);
    let detail = facts["hosts"]["cp02"]["data"]["flightctl"].to_string();
    assert!(detail.contains(&format!("canary for key {k1}")), "{facts}");
    std::fs::write(&key_file, good_key).unwrap();
    let facts = json(&fleet, &["facts", "cp02"]);
    assert_eq!(
        facts["hosts"]["cp02"]["data"]["flightctl"]["version"], "v1.3.0",
        "{facts}"
    );

    // A drill checks the keys: cp01's archive passes; an archive made after its key file was lost
    // fails, naming the file.
    let out = fleet.ferry(&["drill", "cp01"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    std::fs::remove_file(
        fleet
            .host("cp01")
            .layout
            .host_path(&format!("/etc/flightctl/encryption/{k1}.key")),
    )
    .unwrap();
    std::fs::write(
        fleet
            .host("cp01")
            .layout
            .host_path("/etc/flightctl/encryption/README"),
        "keys were here\n",
    )
    .unwrap();
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();
    let out = fleet.ferry(&["drill", "cp01"]).output().unwrap();
    let output = text(&out);
    assert_eq!(out.status.code(), Some(2), "{output}");
    assert!(
        output.contains(&format!(
            "encryption/{k1}.key: missing, so key {k1}'s canary cannot decrypt"
        )),
        "{output}"
    );
}
