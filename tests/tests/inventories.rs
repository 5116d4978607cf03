//! ferry reads inventories as Ansible does: on a corpus of inventories (INI, YAML, a directory with
//! `group_vars/` and `host_vars/`, several sources at once), `ferry inventory --list/--graph` and
//! `--list-hosts` are compared with a real ansible-core's `ansible-inventory` and `ansible
//! --list-hosts`. Every difference fails. And `ansible_port` (SSH's) never changes the agent port.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use simhost::SimFleetOptions;
use simhost::testing::{TempFleet, text};

/// ansible-core's bin directory: `FERRY_ANSIBLE_BIN` (scripts/test sets it), else the venv
/// scripts/deps.sh makes under target/.
fn ansible(tool: &str) -> PathBuf {
    let dir = std::env::var_os("FERRY_ANSIBLE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ansible-venv/bin")
        });
    let path = dir.join(tool);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/test, which installs ansible-core into target/ansible-venv",
        path.display()
    );
    path
}

fn corpus(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("inventories")
        .join(name)
        .display()
        .to_string()
}

/// Runs a command in an empty directory: Ansible also reads group_vars/ next to the playbook
/// directory (the working directory), which ferry has no notion of.
fn run(cmd: &mut Command, scratch: &Path) -> Output {
    cmd.current_dir(scratch)
        .env("ANSIBLE_HOME", scratch.join(".ansible"))
        .env("ANSIBLE_LOCALHOST_WARNING", "False")
        .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "False")
        .env("ANSIBLE_NOCOLOR", "1")
        .output()
        .unwrap()
}

fn with_sources(mut cmd: Command, sources: &[&str]) -> Command {
    for s in sources {
        cmd.arg("-i").arg(corpus(s));
    }
    cmd
}

fn ferry(sources: &[&str], args: &[&str]) -> Command {
    let mut cmd = Command::new(simhost::bins::path("ferry"));
    cmd.args(["--config", "/dev/null"]);
    let mut cmd = with_sources(cmd, sources);
    cmd.args(args);
    cmd
}

fn json(out: &Output, what: &str) -> Value {
    assert!(out.status.success(), "{what}: {}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: {e}: {}", text(out)))
}

/// `  hosts (N):` then one indented host per line.
fn listed_hosts(out: &Output, what: &str) -> Vec<String> {
    assert!(out.status.success(), "{what}: {}", text(out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

const SOURCES: [&[&str]; 6] = [
    &["hosts.ini"],
    &["site.yml"],
    &["invdir"],
    &["all-hosts-first.yml"],
    &["hosts.ini", "invdir"],
    &["site.yml", "all-hosts-first.yml"],
];

/// (sources, pattern): groups, children, ranges, globs, regexes, subscripts, unions,
/// intersections, exclusions (some of them typos), across several sources.
const PATTERNS: [(usize, &str); 36] = [
    (0, "all"),
    (0, "*"),
    (0, "prod"),
    (0, "edge"),
    (0, "lab:prod"),
    (0, "prod:lab"),
    (0, "prod,lab"),
    (0, "all:!prod"),
    (0, "all:!externa_db"),
    (0, "prod:&edge"),
    (0, "edge:&lab"),
    (0, "cp0*"),
    (0, "~cp0[12]"),
    (0, "~lab-.\\.example"),
    (0, "prod[0]"),
    (0, "prod[-1]"),
    (0, "prod[0:2]"),
    (0, "prod[1:]"),
    (0, "prod[2:2]"),
    (0, "prod[9]"),
    (0, "lab-*:cp02"),
    (0, "!lab"),
    (0, "*.example.com:!lab-b*"),
    (1, "all"),
    (1, "east"),
    (1, "east[1:]"),
    (1, "east_db:west"),
    (1, "e?"),
    (1, "all:!east_db"),
    (2, "all"),
    (2, "prod:dev:&prod"),
    (2, "web[0:1]"),
    (3, "all"),
    (3, "g[-1]"),
    (4, "all:!dev"),
    (5, "all:&east"),
];

#[test]
fn inventories_and_patterns_read_as_ansible_reads_them() {
    let scratch = tempfile::tempdir().unwrap();
    let scratch = scratch.path();
    for sources in SOURCES {
        let what = format!("-i {sources:?}");
        let mut theirs = json(
            &run(
                with_sources(Command::new(ansible("ansible-inventory")), sources).arg("--list"),
                scratch,
            ),
            &what,
        );
        if let Some(meta) = theirs["_meta"].as_object_mut() {
            meta.remove("profile");
        }
        let ours = json(
            &run(&mut ferry(sources, &["inventory", "--list"]), scratch),
            &what,
        );
        assert_eq!(ours, theirs, "{what}: inventory --list");
        let graph = |out: Output| String::from_utf8_lossy(&out.stdout).trim_end().to_string();
        assert_eq!(
            graph(run(&mut ferry(sources, &["inventory", "--graph"]), scratch)),
            graph(run(
                with_sources(Command::new(ansible("ansible-inventory")), sources).arg("--graph"),
                scratch
            )),
            "{what}: inventory --graph"
        );
    }
    let mut compared = 0;
    for (set, pattern) in PATTERNS {
        let sources = SOURCES[set];
        let what = format!("-i {sources:?} {pattern:?}");
        let theirs = listed_hosts(
            &run(
                with_sources(Command::new(ansible("ansible")), sources)
                    .arg(pattern)
                    .arg("--list-hosts"),
                scratch,
            ),
            &what,
        );
        let out = run(
            &mut ferry(sources, &["ping", pattern, "--list-hosts"]),
            scratch,
        );
        assert_eq!(listed_hosts(&out, &what), theirs, "{what}");
        if pattern.contains("externa_db") {
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("\"externa_db\""),
                "{what}: the typo is named: {}",
                text(&out)
            );
        }
        compared += 1;
    }
    assert!(compared >= 30);
    // One host's vars, as `ansible-inventory --host`.
    let theirs = json(
        &run(
            with_sources(Command::new(ansible("ansible-inventory")), &["invdir"])
                .args(["--host", "cp04"]),
            scratch,
        ),
        "--host cp04",
    );
    let ours = json(
        &run(
            &mut ferry(&["invdir"], &["inventory", "--host", "cp04"]),
            scratch,
        ),
        "--host cp04",
    );
    assert_eq!(ours, theirs);
}

#[test]
fn mistakes_in_inventories_and_patterns_are_named() {
    let scratch = tempfile::tempdir().unwrap();
    let scratch = scratch.path();
    // A plain term that matches nothing is an error (Ansible only warns): a typo selects nothing.
    let out = run(
        &mut ferry(&["hosts.ini"], &["ping", "prdo", "--list-hosts"]),
        scratch,
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("\"prdo\" matches no host or group"),
        "{}",
        text(&out)
    );
    // An unknown host for --host, a missing source, an executable script.
    let out = run(
        &mut ferry(&["hosts.ini"], &["inventory", "--host", "cp99"]),
        scratch,
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let missing = run(&mut ferry(&["nope.ini"], &["inventory", "--list"]), scratch);
    assert_eq!(missing.status.code(), Some(4), "{}", text(&missing));
    assert!(
        text(&missing).contains("nope.ini: cannot read inventory"),
        "{}",
        text(&missing)
    );
    let script = scratch.join("dynamic.py");
    std::fs::write(&script, "#!/usr/bin/env python3\nprint('{}')\n").unwrap();
    std::fs::set_permissions(
        &script,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    let mut cmd = Command::new(simhost::bins::path("ferry"));
    cmd.args(["--config", "/dev/null", "-i"])
        .arg(&script)
        .args(["inventory", "--list"]);
    let out = run(&mut cmd, scratch);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("ansible-inventory -i SCRIPT --list -y"),
        "{}",
        text(&out)
    );
    // Every bad agent port of the selection is named before anything is listed or contacted.
    let bad = scratch.join("badport.ini");
    std::fs::write(&bad, "cp1\ncp2 ferry_port=abc\ncp3 ferry_port=99999\n").unwrap();
    let mut cmd = Command::new(simhost::bins::path("ferry"));
    cmd.args(["--config", "/dev/null", "-i"])
        .arg(&bad)
        .args(["ping", "all", "--list-hosts"]);
    let out = run(&mut cmd, scratch);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("host cp2: ferry_port \"abc\"")
            && text(&out).contains("host cp3: ferry_port 99999"),
        "{}",
        text(&out)
    );
    // The config's inventory is used when -i is not given.
    let config = scratch.join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {}\ninventory: [{}, {}]\n",
            scratch.join("state").display(),
            corpus("hosts.ini"),
            corpus("site.yml")
        ),
    )
    .unwrap();
    let mut cmd = Command::new(simhost::bins::path("ferry"));
    cmd.arg("--config")
        .arg(&config)
        .args(["ping", "cp02:solo", "--list-hosts"]);
    assert_eq!(
        listed_hosts(&run(&mut cmd, scratch), "config inventory"),
        ["cp02", "solo"]
    );
}

#[tokio::test]
async fn ansible_port_is_ssh_and_never_the_agent_port() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 2,
        ..Default::default()
    })
    .await;
    let inventory = fleet.dir.join("ssh.ini");
    let hosts: Vec<String> = ["cp01", "cp02"]
        .iter()
        .map(|h| {
            format!(
                "{h} ansible_host={} ansible_port=22 ansible_user=root",
                fleet.host(h).spec.address
            )
        })
        .collect();
    std::fs::write(&inventory, hosts.join("\n") + "\n").unwrap();
    let out = Command::new(simhost::bins::path("ferry"))
        .arg("--config")
        .arg(fleet.config_path())
        .arg("-i")
        .arg(&inventory)
        .args(["ping", "all", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    for h in ["cp01", "cp02"] {
        assert_eq!(doc["hosts"][h]["status"], "ok", "{doc}");
    }
}
