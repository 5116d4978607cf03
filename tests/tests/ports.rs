//! `ferry ports publish|unpublish`: the database and KV on the host's loopback address for a person,
//! under a dead-man lease. The time running out, Ctrl-C, a killed controller and `unpublish` from
//! another terminal each end it: drop-ins gone, both data services restarted, nothing published,
//! and a ledger entry for every publication.

use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use simhost::SimFleetOptions;
use simhost::SimHost;
use simhost::testing::{TempFleet, text};

fn published(host: &SimHost) -> (bool, bool) {
    let open = |port| TcpStream::connect((host.spec.address.as_str(), port)).is_ok();
    (open(5432), open(6379))
}

fn dropins(host: &SimHost) -> usize {
    ["flightctl-db.service", "flightctl-kv.service"]
        .iter()
        .filter(|u| {
            host.layout
                .quadlet(u)
                .with_extension("container.d")
                .join("10-ferry-publish-port.conf")
                .exists()
        })
        .count()
}

fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn(fleet: &TempFleet, args: &[&str]) -> Child {
    fleet
        .ferry(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn entries(fleet: &TempFleet, kind: &str) -> Vec<Value> {
    let out = fleet
        .ferry(&["history", "--kind", kind, "-o", "json"])
        .output()
        .unwrap();
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
        .as_array()
        .unwrap()
        .clone()
}

/// Both data services restarted after call `from` of the log, and nothing is left published.
fn taken_down(host: &SimHost, from: usize) {
    wait("the drop-ins to go", Duration::from_secs(20), || {
        dropins(host) == 0 && published(host) == (false, false)
    });
    let calls = host.calls();
    assert!(
        calls[from..]
            .iter()
            .any(|c| c == "systemctl restart flightctl-db.service flightctl-kv.service"),
        "{calls:#?}"
    );
    assert_eq!(host.unit_state("flightctl-db.service"), "active");
    assert_eq!(host.unit_state("flightctl-kv.service"), "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_ends_when_its_time_runs_out_or_its_controller_goes() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        devices: 10,
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");
    assert_eq!(published(host), (false, false));

    // Typos change nothing.
    let out = fleet
        .ferry(&["ports", "publish", "cp01", "--for", "15x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--for"), "{}", text(&out));
    let out = fleet.ferry(&["ports", "publish", "cp0l"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(dropins(host), 0);

    // 1. --for 2s, with the controller stopped (SIGSTOP) right after publishing: the agent takes the
    // ports down at 2 s on its own, well before the 10 s lease would.
    let mut child = spawn(&fleet, &["ports", "publish", "cp01", "--for", "2s"]);
    wait("the ports", Duration::from_secs(30), || {
        published(host) == (true, true)
    });
    assert_eq!(dropins(host), 2);
    let published_at = Instant::now();
    let from = host.calls().len();
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::STOP,
    )
    .unwrap();
    taken_down(host, from);
    assert!(
        published_at.elapsed() < Duration::from_secs(8),
        "expired by the agent, not the lease"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::CONT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let e = entries(&fleet, "ports-publish");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0]["outcome"], "succeeded", "{}", e[0]);
    assert_eq!(e[0]["flags"]["for_seconds"], 2);

    // While published, the host is busy for anything else.
    let mut child = spawn(&fleet, &["ports", "publish", "cp01", "--for", "15m"]);
    wait("the ports", Duration::from_secs(30), || {
        published(host) == (true, true)
    });
    let out = fleet.ferry(&["backup", "cp01"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("ports operation"), "{}", text(&out));

    // 2. The controller killed outright: the lease lapses and the agent unpublishes.
    let from = host.calls().len();
    child.kill().unwrap();
    let _ = child.wait();
    taken_down(host, from);
    let e = entries(&fleet, "ports-publish");
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(e[1]["outcome"], "interrupted", "{}", e[1]);

    // 3. Ctrl-C: unpublished before the command ends, on record as interrupted.
    let child = spawn(&fleet, &["ports", "publish", "cp01"]);
    wait("the ports", Duration::from_secs(30), || {
        published(host) == (true, true)
    });
    let from = host.calls().len();
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert_eq!(dropins(host), 0);
    assert_eq!(published(host), (false, false));
    taken_down(host, from);
    let e = entries(&fleet, "ports-publish");
    assert_eq!(e.last().unwrap()["outcome"], "interrupted");

    // 4. `ferry ports unpublish` from another terminal ends a running publication.
    let child = spawn(&fleet, &["ports", "publish", "cp01", "--for", "10m"]);
    wait("the ports", Duration::from_secs(30), || {
        published(host) == (true, true)
    });
    let from = host.calls().len();
    let out = fleet
        .ferry(&["ports", "unpublish", "cp01"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing published"), "{}", text(&out));
    taken_down(host, from);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("is no longer running"),
        "{}",
        text(&out)
    );
    let e = entries(&fleet, "ports-unpublish");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0]["outcome"], "succeeded");
    // 5. The agent restarts mid-publication: the new agent takes it down as it starts.
    let child = spawn(&fleet, &["ports", "publish", "cp01", "--for", "10m"]);
    wait("the ports", Duration::from_secs(30), || {
        published(host) == (true, true)
    });
    let from = host.calls().len();
    simhost::fleet::kill_agent(host);
    simhost::fleet::start_agent(host).unwrap();
    // The restarted agent takes it down as it starts, before it serves a call.
    let log = host.layout.agent_dir().join("agent.log");
    wait(
        "the restarted agent to unpublish",
        Duration::from_secs(30),
        || {
            dropins(host) == 0
                && std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("the agent restarted during a publication: drop-ins removed")
        },
    );
    taken_down(host, from);
    let out = child.wait_with_output().unwrap();
    // Ended by the new agent (0), or found unanswering during the restart (3, unreachable).
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "{}",
        text(&out)
    );
    assert_eq!(entries(&fleet, "ports-publish").len(), 5);

    // 6. The agent dies and stays down: a loss, not an end. Non-zero, on record as unreachable with
    // the state as far as it is known; the drop-ins go when the agent starts again.
    let child = spawn(&fleet, &["ports", "publish", "cp01", "--for", "10m"]);
    wait("the ports", Duration::from_secs(30), || {
        published(host) == (true, true)
    });
    let from = host.calls().len();
    simhost::fleet::kill_agent(host);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    // Lost while renewing, or (the publish call still setting the KV's keys again) during it.
    assert!(
        (text(&out).contains(
            "UNREACHABLE: [cp01] the agent stopped answering while the ports were published"
        ) || text(&out).contains("UNREACHABLE: [cp01] task publish:"))
            && text(&out).contains("host state: unknown")
            && text(&out).contains("next: `ferry facts cp01`"),
        "{}",
        text(&out)
    );
    let e = entries(&fleet, "ports-publish");
    assert_eq!(e.len(), 6);
    let last = e.iter().max_by_key(|x| x["seq"].as_i64()).unwrap();
    assert_eq!(last["outcome"], "unreachable", "{last}");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("host state: unknown"),
        "{last}"
    );
    assert_eq!(dropins(host), 2, "still published while the agent is down");
    simhost::fleet::start_agent(host).unwrap();
    wait(
        "the restarted agent to unpublish",
        Duration::from_secs(30),
        || dropins(host) == 0,
    );
    taken_down(host, from);

    // The host is free again.
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();
}
