//! The processes behind the simulated units: PostgreSQL (flightctl-db), Redis (flightctl-kv) and the
//! stand-in API (flightctl-api). Other units are state only.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::layout::Layout;
use crate::state::{Spec, Units};

pub const DB: &str = "flightctl-db.service";
pub const KV: &str = "flightctl-kv.service";
pub const API: &str = "flightctl-api.service";

/// The API's port on the host.
pub const API_PORT: u16 = 3443;

/// Where a unit's container port is published on the host, per the last daemon-reload.
pub fn published(
    units: &Units,
    spec: &Spec,
    unit: &str,
    container_port: u16,
) -> Option<(String, u16)> {
    units.published.get(unit)?.iter().find_map(|value| {
        let parts: Vec<&str> = value.trim().split(':').collect();
        let (ip, host_port, cport) = match parts.as_slice() {
            [ip, h, c] => (ip.to_string(), *h, *c),
            [h, c] => (spec.address.clone(), *h, *c),
            _ => return None,
        };
        let cport: u16 = cport.trim_end_matches("/tcp").parse().ok()?;
        (cport == container_port).then_some(())?;
        // 0.0.0.0 would bind every simulated host's address; this host's own address stands in for it.
        let ip = if ip == "0.0.0.0" || ip.is_empty() {
            spec.address.clone()
        } else {
            ip
        };
        Some((ip, host_port.parse().ok()?))
    })
}

/// Whether the process behind a process-backed unit is alive.
pub fn running(layout: &Layout, unit: &str) -> bool {
    let pid = match unit {
        DB => read_pid(&layout.pg_data().join("postmaster.pid")),
        KV => read_pid(&layout.kv_dir().join("redis.pid")),
        API => read_pid(&layout.pid_file(unit)),
        _ => return false,
    };
    pid.is_some_and(alive)
}

pub fn is_process_backed(unit: &str) -> bool {
    matches!(unit, DB | KV | API)
}

pub fn start(layout: &Layout, spec: &Spec, units: &Units, unit: &str) -> Result<(), String> {
    if spec.light || running(layout, unit) {
        return Ok(());
    }
    match unit {
        DB => start_database(layout, spec, units),
        KV => start_kv(layout, spec, units),
        API => start_api(layout),
        _ => Ok(()),
    }
}

pub fn stop(layout: &Layout, spec: &Spec, unit: &str) -> Result<(), String> {
    if spec.light {
        return Ok(());
    }
    match unit {
        DB => stop_database(layout, spec),
        KV => terminate(read_pid(&layout.kv_dir().join("redis.pid"))),
        API => {
            let result = terminate(read_pid(&layout.pid_file(unit)));
            let _ = std::fs::remove_file(layout.pid_file(unit));
            result
        }
        _ => Ok(()),
    }
}

/// Stops PostgreSQL (fast shutdown), if it runs.
pub fn stop_database(layout: &Layout, spec: &Spec) -> Result<(), String> {
    if !running(layout, DB) {
        return Ok(());
    }
    let status = pg_ctl(spec, layout)
        .args(["stop", "-m", "fast", "-w", "-t", "30"])
        .status()
        .map_err(|e| format!("pg_ctl: {e}"))?;
    if !status.success() {
        return Err(format!("pg_ctl stop exited with {status}"));
    }
    Ok(())
}

/// The port PostgreSQL listens on inside its "container" (the socket name depends on it).
pub fn db_port(units: &Units, spec: &Spec) -> u16 {
    published(units, spec, DB, 5432)
        .map(|(_, p)| p)
        .unwrap_or(5432)
}

fn pg_ctl(spec: &Spec, layout: &Layout) -> Command {
    let mut cmd = Command::new(Path::new(&spec.pg_bin).join("pg_ctl"));
    cmd.arg("-D").arg(layout.pg_data());
    as_pg_user(&mut cmd, spec);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Runs `cmd` as the database user when we are root (PostgreSQL refuses root).
pub fn as_pg_user(cmd: &mut Command, spec: &Spec) {
    if rustix::process::geteuid().is_root() {
        cmd.uid(spec.pg_uid).gid(spec.pg_gid);
    }
}

/// Starts PostgreSQL: the flightctl-db unit's process, or a host's external database.
pub fn start_database(layout: &Layout, spec: &Spec, units: &Units) -> Result<(), String> {
    let listen = published(units, spec, DB, 5432)
        .map(|(ip, _)| ip)
        .unwrap_or_default();
    let mut options = format!(
        "-c listen_addresses='{}' -c port={} -c unix_socket_directories='{}'",
        if spec.external_db {
            &spec.db_address
        } else {
            &listen
        },
        db_port(units, spec),
        layout.pg_socket_dir().display()
    );
    if spec.external_db {
        let tls = layout.pg_tls_dir();
        options.push_str(&format!(
            " -c ssl=on -c ssl_cert_file='{}' -c ssl_key_file='{}'",
            tls.join("server.crt").display(),
            tls.join("server.key").display()
        ));
    }
    let log = layout.logs().join("db.log");
    let status = pg_ctl(spec, layout)
        .args(["start", "-w", "-t", "60", "-l"])
        .arg(&log)
        .arg("-o")
        .arg(options)
        .status()
        .map_err(|e| format!("pg_ctl: {e}"))?;
    if !status.success() {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(5).collect();
        return Err(format!(
            "pg_ctl start exited with {status}: {}",
            tail.join(" | ")
        ));
    }
    Ok(())
}

fn start_kv(layout: &Layout, spec: &Spec, units: &Units) -> Result<(), String> {
    let password = std::fs::read_to_string(layout.secrets().join("flightctl-kv-password"))
        .map_err(|e| format!("kv password secret: {e}"))?;
    let network = match published(units, spec, KV, 6379) {
        Some((ip, port)) => format!("bind {ip}\nport {port}\n"),
        None => "port 0\n".to_string(),
    };
    let kv = layout.kv_dir();
    let conf = format!(
        "daemonize yes\npidfile {kv}/redis.pid\nlogfile {logs}/kv.log\ndir {kv}\nsave \"\"\nappendonly no\n\
         requirepass {password}\nunixsocket {sock}\nunixsocketperm 700\n{network}\
         maxmemory 1gb\nmaxmemory-policy allkeys-lru\nprotected-mode no\n",
        kv = kv.display(),
        logs = layout.logs().display(),
        sock = layout.kv_socket().display(),
        password = password.trim(),
    );
    let conf_path = kv.join("redis.conf");
    std::fs::write(&conf_path, conf).map_err(|e| format!("redis.conf: {e}"))?;
    let _ = std::fs::remove_file(kv.join("redis.pid"));
    let status = Command::new("redis-server")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("redis-server: {e} (is redis-server installed?)"))?;
    if !status.success() {
        return Err(format!("redis-server exited with {status}"));
    }
    wait_for(
        || layout.kv_socket().exists() && running(layout, KV),
        "flightctl-kv to accept connections",
    )
}

fn start_api(layout: &Layout) -> Result<(), String> {
    let log = std::fs::File::create(layout.logs().join("api.log")).map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new(crate::bins::path("simfleet"))
        .arg("api")
        .arg("--host")
        .arg(&layout.dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("stand-in API: {e}"))?;
    std::fs::write(layout.pid_file(API), child.id().to_string()).map_err(|e| e.to_string())?;
    let spec = Spec::load(layout).map_err(|e| e.to_string())?;
    let addr = format!("{}:{API_PORT}", spec.address);
    wait_for(
        || std::net::TcpStream::connect(&addr).is_ok(),
        "flightctl-api to listen",
    )
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("timed out waiting for {what}"))
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return false;
    };
    if rustix::process::test_kill_process(pid).is_err() {
        return false;
    }
    // A zombie still answers kill(0); it is not running.
    let stat =
        std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    state != Some("Z")
}

fn terminate(pid: Option<i32>) -> Result<(), String> {
    let Some(raw) = pid else { return Ok(()) };
    let Some(pid) = rustix::process::Pid::from_raw(raw) else {
        return Ok(());
    };
    if !alive(raw) {
        return Ok(());
    }
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    wait_for(|| !alive(raw), "process to exit").or_else(|_| {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        wait_for(|| !alive(raw), "process to die")
    })
}
