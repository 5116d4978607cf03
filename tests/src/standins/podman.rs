//! The `podman` stand-in: `secret inspect`, `exec` into the db and kv containers, `volume
//! export|import|create|rm`, `inspect` and `port`, with podman's output and exit codes.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::json;

use super::Reply;
use super::services::{self, DB, KV};
use crate::layout::Layout;
use crate::state::{Spec, Units};

/// podman's exit status for its own errors.
const PODMAN_ERROR: i32 = 125;

/// Runs one `podman` invocation. `exec` passes stdin/stdout through and returns the command's status.
pub fn run(layout: &Layout, args: &[String]) -> Reply {
    crate::state::log_call(layout, "podman", &redact(args));
    if let Some(message) = crate::state::fault(layout, "podman", args) {
        match message
            .strip_prefix("sleep:")
            .and_then(|s| s.parse::<u64>().ok())
        {
            // A slow call: wait, then behave normally.
            Some(secs) => std::thread::sleep(std::time::Duration::from_secs(secs)),
            None => return Reply::fail(PODMAN_ERROR, format!("{message}\n")),
        }
    }
    let (spec, units) = match (Spec::load(layout), Units::load(layout)) {
        (Ok(spec), Ok(units)) => (spec, units),
        (Err(e), _) | (_, Err(e)) => return Reply::fail(1, format!("simhost state: {e}\n")),
    };
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["secret", "inspect", rest @ ..] => secret_inspect(layout, rest),
        ["exec", rest @ ..] => exec(layout, &spec, &units, rest),
        ["volume", "export", rest @ ..] => volume_export(layout, rest),
        ["volume", "import", name, file] => volume_import(layout, name, file),
        ["volume", "create", name] => volume_create(layout, name),
        ["volume", "rm", name] => volume_rm(layout, &units, name),
        ["inspect", rest @ ..] | ["container", "inspect", rest @ ..] => {
            inspect(layout, &spec, &units, rest)
        }
        ["port", container, rest @ ..] => {
            port(layout, &spec, &units, container, rest.first().copied())
        }
        _ => Reply::fail(
            PODMAN_ERROR,
            format!("Error: unrecognized command `podman {}`\n", args.join(" ")),
        ),
    }
}

/// Secrets never reach the call log.
fn redact(args: &[String]) -> Vec<String> {
    args.iter()
        .map(|a| {
            if a.starts_with("PGPASSWORD=") {
                "PGPASSWORD=<redacted>".into()
            } else {
                a.clone()
            }
        })
        .collect()
}

fn container_unit(name: &str) -> String {
    format!("{name}.service")
}

fn container_exists(spec: &Spec, name: &str) -> bool {
    spec.has_unit(&container_unit(name))
}

fn container_running(layout: &Layout, spec: &Spec, units: &Units, name: &str) -> bool {
    container_exists(spec, name)
        && super::systemctl::active_state(layout, spec, units, &container_unit(name)) == "active"
}

fn secret_inspect(layout: &Layout, rest: &[&str]) -> Reply {
    let show = rest.contains(&"--showsecret");
    let names: Vec<&&str> = rest.iter().filter(|a| !a.starts_with("--")).collect();
    let mut out = Vec::new();
    for name in names {
        let path = layout.secrets().join(name);
        let Ok(data) = std::fs::read_to_string(&path) else {
            return Reply::fail(
                PODMAN_ERROR,
                format!(
                    "Error: inspecting secret: no secret with name or id \"{name}\": no such secret\n"
                ),
            );
        };
        let mut entry = json!({
            "ID": format!("{:x}", fnv(name)),
            "CreatedAt": "2026-01-01T00:00:00Z",
            "Spec": {"Name": name, "Driver": {"Name": "file", "Options": {"path": "/var/lib/containers/storage/secrets/filedriver"}}},
        });
        if show {
            entry["SecretData"] = json!(data);
        }
        out.push(entry);
    }
    Reply::ok(format!(
        "{}\n",
        serde_json::to_string_pretty(&out).unwrap_or_default()
    ))
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// `podman exec [-i] [-t] [-e K=V] CONTAINER CMD ARGS…` inside the db or kv "container".
fn exec(layout: &Layout, spec: &Spec, units: &Units, rest: &[&str]) -> Reply {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < rest.len() && rest[i].starts_with('-') {
        match rest[i] {
            "-e" | "--env" => {
                if let Some((k, v)) = rest.get(i + 1).and_then(|kv| kv.split_once('=')) {
                    env.push((k.into(), v.into()));
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    let Some((container, command)) = rest[i..].split_first() else {
        return Reply::fail(
            PODMAN_ERROR,
            "Error: exec requires the name or ID of a container\n",
        );
    };
    if !container_exists(spec, container) {
        return Reply::fail(
            PODMAN_ERROR,
            format!(
                "Error: no container with name or ID \"{container}\" found: no such container\n"
            ),
        );
    }
    if !container_running(layout, spec, units, container) {
        return Reply::fail(
            PODMAN_ERROR,
            "Error: can only create exec sessions on running containers: container state improper\n",
        );
    }
    if spec.light {
        return Reply::fail(
            PODMAN_ERROR,
            format!(
                "Error: {} is a light simulated host (simfleet up --light): no PostgreSQL or Redis runs behind {container}; back up and restore full simulated hosts\n",
                spec.name
            ),
        );
    }
    let Some((program, args)) = command.split_first() else {
        return Reply::fail(PODMAN_ERROR, "Error: you must provide a command to exec\n");
    };
    let mut cmd = match (format!("{container}.service").as_str(), *program) {
        (DB, _) => {
            // The container's own PostgreSQL tools, matching its server.
            let bundled = Path::new(&spec.pg_bin).join(program);
            let mut cmd = Command::new(if bundled.is_file() {
                bundled
            } else {
                program.into()
            });
            cmd.args(args)
                .env("PGHOST", layout.pg_socket_dir())
                .env("PGPORT", services::db_port(units, spec).to_string());
            cmd
        }
        (KV, "redis-cli" | "valkey-cli") => {
            let mut cmd = Command::new("redis-cli");
            cmd.arg("-s").arg(layout.kv_socket()).args(args);
            cmd
        }
        (KV, "sh") => {
            let mut cmd = Command::new("sh");
            cmd.args(args);
            cmd
        }
        _ => {
            return Reply::fail(
                127,
                format!(
                    "Error: crun: executable file `{program}` not found in $PATH: No such file or directory\n"
                ),
            );
        }
    };
    for (k, v) in env {
        cmd.env(k, v);
    }
    // stdin/stdout/stderr are the caller's, as with the real `podman exec -i`.
    match cmd
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
    {
        Ok(status) => Reply {
            code: status.code().unwrap_or(PODMAN_ERROR),
            ..Default::default()
        },
        Err(e) => Reply::fail(
            127,
            format!("Error: crun: executable file `{program}`: {e}\n"),
        ),
    }
}

fn volume_dir(layout: &Layout, name: &str) -> std::path::PathBuf {
    layout.volumes().join(name)
}

fn volume_export(layout: &Layout, rest: &[&str]) -> Reply {
    let mut name = None;
    let mut output = None;
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            "-o" | "--output" => {
                output = rest.get(i + 1).copied();
                i += 2;
            }
            other => {
                name = Some(other);
                i += 1;
            }
        }
    }
    let Some(name) = name else {
        return Reply::fail(
            PODMAN_ERROR,
            "Error: requires exactly 1 arg(s), only received 0\n",
        );
    };
    let dir = volume_dir(layout, name);
    if !dir.is_dir() {
        return Reply::fail(PODMAN_ERROR, format!("Error: no such volume {name}\n"));
    }
    let Some(output) = output else {
        return Reply::fail(
            PODMAN_ERROR,
            "Error: expects output path, use --output=[path]\n",
        );
    };
    tar(&["-C", &dir.to_string_lossy(), "-cf", output, "."])
}

fn volume_import(layout: &Layout, name: &str, file: &str) -> Reply {
    let dir = volume_dir(layout, name);
    if !dir.is_dir() {
        return Reply::fail(PODMAN_ERROR, format!("Error: no such volume {name}\n"));
    }
    tar(&["-C", &dir.to_string_lossy(), "-xf", file])
}

fn volume_create(layout: &Layout, name: &str) -> Reply {
    let dir = volume_dir(layout, name);
    if dir.exists() {
        return Reply::fail(
            PODMAN_ERROR,
            format!("Error: volume with name {name} already exists: volume already exists\n"),
        );
    }
    match std::fs::create_dir_all(&dir) {
        Ok(()) => Reply::ok(format!("{name}\n")),
        Err(e) => Reply::fail(PODMAN_ERROR, format!("Error: {e}\n")),
    }
}

/// The PAM issuer's volume is in use while flightctl-pam-issuer runs, as on a real host.
fn volume_rm(layout: &Layout, units: &Units, name: &str) -> Reply {
    let dir = volume_dir(layout, name);
    if !dir.is_dir() {
        return Reply::fail(
            1,
            format!("Error: no volume with name \"{name}\" found: no such volume\n"),
        );
    }
    if name == "flightctl-pam-issuer-etc" && units.is_active("flightctl-pam-issuer.service") {
        return Reply::fail(
            2,
            format!(
                "Error: volume {name} is being used by the following container(s): flightctl-pam-issuer: volume is being used\n"
            ),
        );
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Reply::ok(format!("{name}\n")),
        Err(e) => Reply::fail(PODMAN_ERROR, format!("Error: {e}\n")),
    }
}

fn tar(args: &[&str]) -> Reply {
    match Command::new("tar").args(args).output() {
        Ok(out) if out.status.success() => Reply::default(),
        Ok(out) => Reply::fail(
            PODMAN_ERROR,
            format!("Error: {}", String::from_utf8_lossy(&out.stderr)),
        ),
        Err(e) => Reply::fail(PODMAN_ERROR, format!("Error: tar: {e}\n")),
    }
}

fn inspect(layout: &Layout, spec: &Spec, units: &Units, rest: &[&str]) -> Reply {
    let mut format = None;
    let mut names = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            "--format" | "-f" => {
                format = rest.get(i + 1).copied();
                i += 2;
            }
            "--type" | "-t" => i += 2,
            other => {
                names.push(other);
                i += 1;
            }
        }
    }
    let mut out = Vec::new();
    for name in &names {
        if !container_exists(spec, name) {
            return Reply::fail(PODMAN_ERROR, format!("Error: no such object: \"{name}\"\n"));
        }
        let running = container_running(layout, spec, units, name);
        let status = if running { "running" } else { "exited" };
        out.push((name, status, running));
    }
    match format {
        Some("{{.State.Status}}") => Reply::ok(
            out.iter()
                .map(|(_, s, _)| format!("{s}\n"))
                .collect::<String>(),
        ),
        Some("{{.State.Running}}") => Reply::ok(
            out.iter()
                .map(|(_, _, r)| format!("{r}\n"))
                .collect::<String>(),
        ),
        Some(other) => Reply::fail(
            PODMAN_ERROR,
            format!("Error: template {other:?} is not modelled by simhost\n"),
        ),
        None => {
            let docs: Vec<_> = out
                .iter()
                .map(|(name, status, running)| {
                    json!({
                        "Name": name,
                        "State": {"Status": status, "Running": running},
                        "NetworkSettings": {"Networks": {"flightctl": {"IPAddress": ""}}},
                    })
                })
                .collect();
            Reply::ok(format!(
                "{}\n",
                serde_json::to_string_pretty(&docs).unwrap_or_default()
            ))
        }
    }
}

fn port(
    layout: &Layout,
    spec: &Spec,
    units: &Units,
    container: &str,
    which: Option<&str>,
) -> Reply {
    if !container_exists(spec, container) {
        return Reply::fail(
            PODMAN_ERROR,
            format!(
                "Error: no container with name or ID \"{container}\" found: no such container\n"
            ),
        );
    }
    let unit = container_unit(container);
    let cport = match unit.as_str() {
        DB => 5432,
        KV => 6379,
        _ => services::API_PORT,
    };
    let published = container_running(layout, spec, units, container)
        .then(|| services::published(units, spec, &unit, cport))
        .flatten();
    match (which, published) {
        (Some(_), Some((ip, p))) => Reply::ok(format!("{ip}:{p}\n")),
        (None, Some((ip, p))) => Reply::ok(format!("{cport}/tcp -> {ip}:{p}\n")),
        (Some(w), None) => Reply::fail(
            PODMAN_ERROR,
            format!("Error: failed to find published port \"{w}\"\n"),
        ),
        (None, None) => Reply::default(),
    }
}
