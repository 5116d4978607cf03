//! `ferry serve` refuses a bad configuration at start, naming the file and line, and runs nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use simhost::serving::{Serve, free_port, wait_for};
use simhost::testing::text;

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        let dir = simhost::testing::temp_dir("ferry-serve-config-");
        std::fs::write(
            dir.path().join("inventory.ini"),
            "[controlplanes]\ncp01 ansible_host=127.0.0.1 ferry_port=1\n[lab]\nlab01 ansible_host=127.0.0.1 ferry_port=1\n",
        )
        .unwrap();
        let d = Dir { dir };
        d.write("");
        for args in [
            &["certs", "init"][..],
            &["certs", "issue-operator", "controller"],
        ] {
            let out = d.ferry(args).output().unwrap();
            assert!(out.status.success(), "{}", text(&out));
        }
        d
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self) -> PathBuf {
        self.path().join("ferry.yaml")
    }

    /// Writes ferry.yaml: the state dir and inventory, then `rest`.
    fn write(&self, rest: &str) {
        std::fs::write(
            self.config(),
            format!(
                "state_dir: {}\ninventory: inventory.ini\n{rest}",
                self.path().join("state").display()
            ),
        )
        .unwrap();
    }

    fn ferry(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(simhost::bins::path("ferry"));
        cmd.arg("--config").arg(self.config()).args(args);
        cmd
    }

    /// `ferry serve` that must refuse: exit 1, the message, nothing started.
    fn refused(&self, want: &[&str]) {
        let out = self.ferry(&["serve", "--replica", "r"]).output().unwrap();
        let output = text(&out);
        assert_eq!(out.status.code(), Some(1), "{output}");
        for w in want {
            assert!(output.contains(w), "missing {w:?} in:\n{output}");
        }
        assert!(output.contains("nothing was started"), "{output}");
        assert!(!output.contains("ferry serve started"), "{output}");
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = ferry::catalog::embedded::PrivateCluster::new(&self.path().join("state")).stop();
    }
}

const GOOD: &str = "schedules:\n  - name: nightly\n    hosts: controlplanes\n    cron: \"0 2 * * *\"\n    rpo: 26h\n    retention: {keep_last: 7, keep_daily: 14}\n";

#[test]
fn bad_serve_configuration_is_refused_with_file_and_line_and_nothing_runs() {
    let d = Dir::new();
    let file = d.config().display().to_string();

    // A cron expression with an hour of 25 (line 6 of the file).
    d.write(&GOOD.replace("0 2 * * *", "0 25 * * *"));
    d.refused(&[
        &format!("{file}:6:"),
        "\"0 25 * * *\" is not a cron expression",
    ]);
    // An unknown retention key (a typo of keep_daily), line 8.
    d.write(&GOOD.replace("keep_daily", "keep_dayly"));
    d.refused(&[&format!("{file}:8:"), "unknown field `keep_dayly`"]);
    // A pattern that matches no host (a typo of the group), line 5.
    d.write(&GOOD.replace("hosts: controlplanes", "hosts: contrlplanes"));
    d.refused(&[
        &format!("{file}:5:"),
        "schedule \"nightly\"",
        "contrlplanes",
    ]);
    // A typo in a top-level key.
    d.write(&GOOD.replace("schedules:", "schedule:"));
    d.refused(&[&format!("{file}:3:"), "unknown field `schedule`"]);
    // Alerts with no delivery attempt at all.
    d.write(&format!(
        "{GOOD}alerts:\n  - webhook: http://127.0.0.1:1/hook\n    attempts: 0\n"
    ));
    d.refused(&[&format!("{file}:10:"), "attempts must be at least 1"]);
    // A fleet-command flag that means nothing to the service.
    d.write(GOOD);
    let out = d.ferry(&["serve", "--limit", "cp01"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("--limit does not apply to ferry serve"),
        "{}",
        text(&out)
    );
    // Nothing above ran: no replica ever registered, no backup was made.
    d.write(GOOD);
    let out = d.ferry(&["status", "-o", "json"]).output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["replicas"], serde_json::json!([]), "{doc}");
    assert!(doc["hosts"][0]["last_success"].is_null(), "{doc}");
    // With no serve running, no next run is promised.
    assert!(doc["hosts"][0]["next_run"].is_null(), "{doc}");
    let table = text(&d.ferry(&["status"]).output().unwrap());
    assert!(
        table.contains("no serve") && table.contains("ferry serve: no replica running"),
        "{table}"
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "never backed up, never tracked: breached"
    );
    // An unreachable catalog (line 3).
    let port = free_port();
    d.write(&format!(
        "catalog: postgres://ferry@127.0.0.1:{port}/ferry\n{GOOD}"
    ));
    d.refused(&[&format!("{file}:3:"), "the catalog is unreachable"]);
    // An RPO shorter than the time between runs is a warning with its line; serve starts.
    d.write(&format!(
        "serve:\n  listen: 127.0.0.1:{}\n{}",
        free_port(),
        GOOD.replace("rpo: 26h", "rpo: 1h")
    ));
    let mut serve = Serve::start(
        &d.config(),
        &d.path().join("inventory.ini"),
        &[],
        &d.path().join("serve.log"),
    );
    wait_for(Duration::from_secs(30), "serve to start", || {
        serve
            .log_text()
            .contains("ferry serve started")
            .then_some(())
    });
    let log = serve.log_text();
    assert!(
        log.contains(&format!(
            "{file}:9: schedule \"nightly\": rpo 1h is shorter than the time between its runs (1d"
        )),
        "{log}"
    );
    serve.signal(rustix::process::Signal::TERM);
    assert_eq!(
        serve.wait(Duration::from_secs(20)),
        Some(0),
        "{}",
        serve.log_text()
    );
}

#[test]
fn the_operator_guides_alert_rules_pass_promtool() {
    let guide = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operator-guide.md"),
    )
    .unwrap();
    let start = guide
        .find("Example alert rules")
        .expect("the rules section");
    let block = &guide[start..];
    let body = block
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(yaml, _)| yaml)
        .expect("a yaml block");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("ferry-rules.yml");
    std::fs::write(&rules, body).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool (apt-get install prometheus)");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("7 rules found"), "{}", text(&out));
}

#[test]
fn serve_outlives_a_closed_log_pipe_and_stops_cleanly() {
    // `ferry serve … 2>&1 | head -1`: its log pipe closes after one line. Its hosts do not answer
    // (port 1), so it keeps logging failed backups into the closed pipe.
    let d = Dir::new();
    let port = free_port();
    d.write(&format!(
        "serve:\n  listen: 127.0.0.1:{port}\n{}",
        GOOD.replace("0 2 * * *", "* * * * *")
    ));
    let mut serve = d
        .ferry(&["-i", d.path().join("inventory.ini").to_str().unwrap()])
        .args(["serve", "--replica", "piped"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut first = String::new();
        std::io::BufReader::new(serve.stderr.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty());
        drop(serve.stdout.take());
        // The reader goes away here: the pipe is closed for every later line.
    }
    // Backups of both hosts fail and are logged (and retried) while the pipe is closed.
    let catalog = || {
        let out = d
            .ferry(&["history", "--kind", "backup", "-o", "json"])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    wait_for(
        Duration::from_secs(60),
        "two failed scheduled backups",
        || {
            if let Some(status) = serve.try_wait().unwrap() {
                panic!("serve died on its closed log pipe: {status:?}");
            }
            let doc = catalog();
            let entries = doc
                .as_array()
                .or_else(|| doc["entries"].as_array())
                .cloned()
                .unwrap_or_default();
            (entries
                .iter()
                .filter(|e| e["outcome"] != "succeeded")
                .count()
                >= 2)
                .then_some(())
        },
    );
    assert!(
        serve.try_wait().unwrap().is_none(),
        "serve died on its closed log pipe"
    );
    let (_, live) = {
        let out = d.ferry(&["status", "-o", "json"]).output().unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), doc)
    };
    assert!(
        live["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "piped" && r["live"] == true),
        "{live}"
    );
    // Its metrics count each backup once: started apart, ended by outcome.
    let (_, metrics) = simhost::serving::http_get(port, "/metrics").unwrap();
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{series} not in {metrics}"))
    };
    assert!(value("ferry_serve_backups_started_total{replica=\"piped\"}") >= 2.0);
    assert!(value("ferry_serve_backups_total{outcome=\"failed\",replica=\"piped\"}") >= 1.0);
    assert!(!metrics.contains("outcome=\"started\""), "{metrics}");
    // Ctrl-C with the pipe still closed: a clean stop, the replica recorded as stopped.
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&serve),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
    let out = d.ferry(&["status", "-o", "json"]).output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        doc["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "piped" && r["live"] == false),
        "{doc}"
    );
}

#[test]
fn a_live_replica_name_is_refused_and_free_again_once_it_stops() {
    let d = Dir::new();
    d.write(&format!(
        "serve:\n  listen: 127.0.0.1:{}\n{GOOD}",
        free_port()
    ));
    let inventory = d.path().join("inventory.ini");
    let mut alpha = Serve::start(
        &d.config(),
        &inventory,
        &["--replica", "alpha"],
        &d.path().join("alpha.log"),
    );
    wait_for(Duration::from_secs(30), "alpha to start", || {
        alpha
            .log_text()
            .contains("ferry serve started")
            .then_some(())
    });
    // A second process under the live name: refused, and the live one untouched.
    d.write(&format!(
        "serve:\n  listen: 127.0.0.1:{}\n{GOOD}",
        free_port()
    ));
    let out = d
        .ferry(&[
            "-i",
            inventory.to_str().unwrap(),
            "serve",
            "--replica",
            "alpha",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("replica name \"alpha\" is in use by a live replica")
            && text(&out).contains("nothing was started"),
        "{}",
        text(&out)
    );
    let status = || -> serde_json::Value {
        let out = d.ferry(&["status", "-o", "json"]).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let alive = |doc: &serde_json::Value| {
        doc["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "alpha" && r["live"] == true)
    };
    assert!(alive(&status()), "{}", status());
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        alive(&status()),
        "the refused one marked the live one stopped"
    );
    // Stopped, the name is free again.
    alpha.signal(rustix::process::Signal::TERM);
    assert_eq!(
        alpha.wait(Duration::from_secs(20)),
        Some(0),
        "{}",
        alpha.log_text()
    );
    let mut again = Serve::start(
        &d.config(),
        &inventory,
        &["--replica", "alpha"],
        &d.path().join("again.log"),
    );
    wait_for(Duration::from_secs(30), "alpha to start again", || {
        again
            .log_text()
            .contains("ferry serve started")
            .then_some(())
    });
    again.signal(rustix::process::Signal::TERM);
    assert_eq!(
        again.wait(Duration::from_secs(20)),
        Some(0),
        "{}",
        again.log_text()
    );
}
