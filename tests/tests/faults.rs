//! Safety under faults. The matrix: every restore step from stage to commit is stalled, and while it
//! stalls the agent is SIGKILLed and restarted, or the controller is SIGKILLed, or the link is cut.
//! Within the lease nothing stays published and the data services run; a host the restore had not
//! changed is free again; `ferry facts` names the state; and `ferry rollback` (or `--resume`, once a
//! commit began) ends it, leaving every table, file, mode and unit as it was before the restore.
//! Then: every operation leaves a record, whatever stops it.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use simhost::SimFleetOptions;
use simhost::SimHost;
use simhost::fleet::{kill_agent, start_agent};
use simhost::testing::{Proxy, TempFleet, text, tree, wait_until};

/// The lease the restores under test run with, and how long a stalled call waits.
/// The stall is shorter than the lease: a call the agent started ends before the agent acts alone.
const LEASE: &str = "4";
const STALL: u64 = 2;
/// A killed agent's stalled database rename, held past the lease: it must die with the agent, not
/// complete behind the back of the restarted agent's recovery.
const ORPHAN_STALL: u64 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    AgentKilled,
    ControllerKilled,
    LinkCut,
}

/// How a step is caught in the act: a call of its own to stall, or (for stage and verify, which make
/// no call of their own) the controller's report of the step before.
enum Trigger {
    Call(&'static str, &'static str),
    After(&'static str, &'static str, &'static str),
}

fn trigger(step: &str) -> Trigger {
    use Trigger::*;
    match step {
        "stage" => After("preflight", "", ""),
        // The stage is slow: the next container inspection is verify's facts.
        "verify" => After("preflight", "podman", "inspect --type container"),
        // The dump's psql, which stage runs as the archive streams in; load itself only records it.
        "load" => Call("podman", "ON_ERROR_STOP=1 -q -f"),
        "stop" => Call("systemctl", "stop flightctl-api"),
        "swap-db" => Call("podman", "RENAME TO"),
        "swap-files" => Call("podman", "volume import"),
        "prepare-loaded" => Call("podman", "UPDATE devices SET"),
        "seed-kv" => Call("podman", "redis-cli --pipe"),
        "start" => Call("systemctl", "start flightctl-api"),
        "health" => Call("podman", "redis-cli --no-auth-warning"),
        "commit" => Call("podman", "DROP DATABASE IF EXISTS \"flightctl_old"),
        other => panic!("no trigger for {other}"),
    }
}

/// Steps that leave the live control plane as it was if the restore goes no further.
const BEFORE_LIVE_CHANGE: [&str; 4] = ["stage", "verify", "load", "prepare-loaded"];

/// What a restore must give back: every table, the files under /etc/flightctl with their modes,
/// the PAM volume, and every unit's state.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    tables: BTreeMap<&'static str, String>,
    files: BTreeMap<String, (String, u32)>,
    pam: BTreeMap<String, (String, u32)>,
    units: Vec<(String, String)>,
}

async fn snapshot(host: &SimHost) -> Snapshot {
    let db = host.db().await.unwrap();
    let mut tables = BTreeMap::new();
    for table in simhost::pg::TABLES {
        let sql = format!(
            "SELECT count(*)::text || ':' || COALESCE(md5(string_agg(r, '|' ORDER BY r)), '') FROM (SELECT (t.*)::text r FROM {table} t) x"
        );
        tables.insert(table, db.query_one(&sql, &[]).await.unwrap().get(0));
    }
    Snapshot {
        tables,
        files: tree(&host.layout.host_path("/etc/flightctl")),
        pam: tree(&host.layout.volumes().join("flightctl-pam-issuer-etc")),
        units: simhost::host::UNITS
            .iter()
            .map(|u| (u.to_string(), host.unit_state(u)))
            .collect(),
    }
}

/// Changes since the backup, so a restore and its rollback are both visible.
async fn damage(host: &SimHost, n: usize) {
    let db = host.db().await.unwrap();
    db.batch_execute(&format!(
        "UPDATE fleets SET resource_version = resource_version + {n}; DELETE FROM enrollment_requests WHERE name IN (SELECT name FROM enrollment_requests ORDER BY name LIMIT 1)"
    ))
    .await
    .unwrap();
    let config = host.layout.host_path("/etc/flightctl/service-config.yaml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("# changed after the backup ({n})\n"));
    std::fs::write(&config, text).unwrap();
}

fn dropin(host: &SimHost) -> PathBuf {
    host.layout
        .quadlet("flightctl-db.service")
        .with_extension("container.d")
        .join("10-ferry-publish-port.conf")
}

async fn temporary_databases(host: &SimHost) -> i64 {
    let db = host.db().await.unwrap();
    db.query_one(
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'flightctl\\_restore\\_%' OR datname LIKE 'flightctl\\_old\\_%'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// The operation `ferry ping` says the host is busy with (null when it is free).
fn ping_operation(fleet: &TempFleet, inventory: &Path, host: &str) -> Value {
    let out = ferry(fleet, inventory, &["ping", host, "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ferry ping {host}: {}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["hosts"][host]["data"]["operation"].clone()
}

/// The unfinished restore `ferry facts` reports (null when there is none).
fn facts_restore(fleet: &TempFleet, inventory: &Path, host: &str) -> Value {
    let out = ferry(fleet, inventory, &["facts", host, "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ferry facts {host}: {}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["hosts"][host]["data"]["restore"].clone()
}

fn ferry(fleet: &TempFleet, inventory: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(simhost::bins::path("ferry"));
    cmd.arg("--config")
        .arg(fleet.config_path())
        .arg("-i")
        .arg(inventory)
        .args(args);
    cmd
}

/// A controller whose stdout is collected line by line as it runs.
struct Controller {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Controller {
    fn spawn(mut cmd: Command) -> Controller {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        Controller { child, lines }
    }

    fn printed(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// One cell of the matrix, on `host` (already backed up), through its own proxy.
async fn scenario(fleet: &TempFleet, name: &str, step: &str, fault: Fault, round: usize) {
    let host = fleet.host(name);
    let what = format!("{name} {step} {fault:?}");
    damage(host, round).await;
    let before = snapshot(host).await;
    let agent: std::net::SocketAddr =
        format!("{}:{}", host.spec.address, simhost::fleet::AGENT_PORT)
            .parse()
            .unwrap();
    // The stage is slowed to a few seconds so it can be caught in the act.
    let archive_size = std::fs::read_dir(fleet.dir.join("controller/store").join(name))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .max()
        .unwrap();
    let rate = if step == "stage" || step == "verify" {
        (archive_size / 4).max(4096)
    } else {
        1 << 30
    };
    let proxy = Proxy::start(&format!("{}:0", host.spec.address), agent, rate).await;
    let inventory = fleet.dir.join(format!("{name}-proxied.ini"));
    std::fs::write(
        &inventory,
        format!(
            "{name} ansible_host={} ferry_port={}\n",
            proxy.addr.ip(),
            proxy.addr.port()
        ),
    )
    .unwrap();
    host.clear_calls();
    let trig = trigger(step);
    let stall = if matches!(fault, Fault::AgentKilled) && step == "swap-db" {
        ORPHAN_STALL
    } else {
        STALL
    };
    let stalled_from = Instant::now();
    if let Trigger::Call(tool, needle) = trig {
        host.inject_fault(tool, needle, &format!("sleep:{stall}"));
    }
    let mut controller = Controller::spawn(ferry(
        fleet,
        &inventory,
        &["restore", name, "--lease-seconds", LEASE],
    ));
    match trig {
        Trigger::Call(_, needle) => {
            wait_until(
                &format!("{what}: the stalled call"),
                Duration::from_secs(60),
                async || host.calls().iter().any(|c| c.contains(needle)),
            )
            .await
        }
        Trigger::After(previous, tool, needle) => {
            let line = format!("TASK [{previous}] ok");
            wait_until(
                &format!("{what}: {line}"),
                Duration::from_secs(60),
                async || controller.printed(&line),
            )
            .await;
            if !tool.is_empty() {
                let seen =
                    |host: &SimHost| host.calls().iter().filter(|c| c.contains(needle)).count();
                let earlier = seen(host);
                host.inject_fault(tool, needle, &format!("sleep:{STALL}"));
                wait_until(
                    &format!("{what}: the stalled call"),
                    Duration::from_secs(30),
                    async || seen(host) > earlier,
                )
                .await;
            } else {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    match fault {
        Fault::AgentKilled => {
            kill_agent(host);
            host.clear_faults();
            start_agent(host).unwrap();
        }
        Fault::ControllerKilled => {
            controller.child.kill().unwrap();
            host.clear_faults();
        }
        Fault::LinkCut => {
            proxy.cut();
            host.clear_faults();
        }
    }
    let _ = controller.child.wait();
    let output = controller.output();

    // Within the lease (plus the stalled call and the watchdog's tick), the host is safe.
    let direct = fleet.inventory_path();
    let limit = Duration::from_secs(STALL + 4 + 10);
    wait_until(
        &format!("{what}: the lease to settle the host"),
        limit,
        async || {
            let restore = facts_restore(fleet, &direct, name);
            let staging = host.layout.agent_dir().join("staging");
            let staging_empty = std::fs::read_dir(&staging).map_or(true, |d| d.count() == 0);
            !dropin(host).exists()
                && restore["running"].is_null()
                && (!restore.is_null() || staging_empty)
                && host.unit_state("flightctl-db.service") == "active"
                && host.unit_state("flightctl-kv.service") == "active"
                && (restore.is_null() || restore["lapsed"].is_string())
        },
    )
    .await;
    // Whatever the killed agent left running would have finished by now.
    tokio::time::sleep(Duration::from_secs(stall + 1).saturating_sub(stalled_from.elapsed())).await;
    assert!(
        std::net::TcpStream::connect((host.spec.address.as_str(), 5432)).is_err(),
        "{what}: nothing published"
    );
    let restore = facts_restore(fleet, &direct, name);
    if BEFORE_LIVE_CHANGE.contains(&step) {
        assert!(
            restore.is_null(),
            "{what}: the host is free again: {restore}\n{output}"
        );
    }
    if restore.is_null() && step != "commit" {
        // Undone by the agent on its own: the host is free, exactly as it was.
        assert_eq!(
            temporary_databases(host).await,
            0,
            "{what}: no temporary database"
        );
        let staging = host.layout.agent_dir().join("staging");
        assert_eq!(
            std::fs::read_dir(&staging).unwrap().count(),
            0,
            "{what}: staging is clean"
        );
        assert_eq!(snapshot(host).await, before, "{what}: untouched\n{output}");
        if step != "stage" {
            // The lease undid it: facts and the next rollback say so, though nothing is left.
            let out = ferry(fleet, &direct, &["facts", name, "-o", "json"])
                .output()
                .unwrap();
            let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
            let undone = doc["hosts"][name]["data"]["undone"]
                .as_str()
                .unwrap_or_default();
            assert!(
                undone.contains("was ended by the agent") && undone.contains("lease lapsed"),
                "{what}: {doc}"
            );
            let out = ferry(fleet, &direct, &["rollback", name]).output().unwrap();
            assert!(
                text(&out).contains("has no unfinished restore to roll back; restore"),
                "{what}: {}",
                text(&out)
            );
        }
        return;
    }
    // `ferry facts` names the state; the recovery that fits it ends the restore.
    if !restore.is_null() {
        let state = restore["state"].as_str().unwrap_or_default();
        assert!(state.starts_with("HOST_STATE_"), "{what}: {restore}");
        assert!(
            restore["summary"].as_str().unwrap().contains("unfinished"),
            "{what}: {restore}"
        );
    }
    if step == "commit" {
        // Past the point of no return the restore can only be finished.
        if !restore.is_null() {
            let out = ferry(fleet, &direct, &["restore", name, "--resume"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{what}: {}", text(&out));
        }
        assert_eq!(temporary_databases(host).await, 0, "{what}");
        assert_eq!(host.unit_state("flightctl-api.service"), "active", "{what}");
        assert!(facts_restore(fleet, &direct, name).is_null(), "{what}");
        // A commit the agent finished on its own frees the host.
        wait_until(
            &format!("{what}: the host to be free"),
            Duration::from_secs(10),
            async || ping_operation(fleet, &direct, name).is_null(),
        )
        .await;
        return;
    }
    let out = ferry(fleet, &direct, &["rollback", name]).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: rollback: {}\n{output}",
        text(&out)
    );
    assert!(!dropin(host).exists(), "{what}");
    assert_eq!(
        temporary_databases(host).await,
        0,
        "{what}: no temporary or old database"
    );
    assert_eq!(
        snapshot(host).await,
        before,
        "{what}: exactly the pre-restore state"
    );
}

async fn matrix(fault: Fault) {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 2,
        devices: 40,
        payload_bytes: 4000,
        ..Default::default()
    })
    .await;
    fleet.ferry_ok(&["backup", "all"]).unwrap();
    let chains = [
        (
            "cp01",
            ["stage", "load", "swap-db", "start", "commit"].as_slice(),
        ),
        (
            "cp02",
            [
                "verify",
                "stop",
                "swap-files",
                "prepare-loaded",
                "seed-kv",
                "health",
            ]
            .as_slice(),
        ),
    ];
    let runs = chains.map(|(name, steps)| {
        let fleet = &fleet;
        async move {
            for (round, step) in steps.iter().enumerate() {
                scenario(fleet, name, step, fault, round + 1).await;
            }
        }
    });
    let [a, b] = runs;
    tokio::join!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_survives_the_agent_being_killed_and_restarted() {
    matrix(Fault::AgentKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_survives_the_controller_being_killed() {
    matrix(Fault::ControllerKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_survives_a_cut_link() {
    matrix(Fault::LinkCut).await;
}
