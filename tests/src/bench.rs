//! `simfleet bench backup`: ferry's backup against its baselines, side by side, on one simulated host.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{SimFleet, SimFleetOptions};

/// Per-device payload used to grow the database; devices are added until the target size is reached.
const PAYLOAD: usize = 4096;
/// Approximate on-disk bytes per seeded device with [`PAYLOAD`] (heap, TOAST, indexes, labels).
const BYTES_PER_DEVICE: usize = 9000;

/// One simulated host seeded to about `size_mb`, torn down after `bench` whatever it returns.
async fn with_host<F, Fut>(dir: &Path, size_mb: usize, bench: F) -> anyhow::Result<()>
where
    F: FnOnce(SimFleet) -> Fut,
    Fut: std::future::Future<Output = (SimFleet, anyhow::Result<()>)>,
{
    let devices = (size_mb << 20) / BYTES_PER_DEVICE;
    println!("seeding one simulated host with {devices} devices (~{size_mb} MiB database)…");
    let seed_start = Instant::now();
    let options = SimFleetOptions {
        hosts: 1,
        devices,
        payload_bytes: PAYLOAD,
        ..Default::default()
    };
    let fleet = SimFleet::up(dir, &options).await?;
    println!("(seeding took {:.0}s)", seed_start.elapsed().as_secs_f64());
    let (fleet, result) = bench(fleet).await;
    fleet.down();
    result
}

pub async fn backup(dir: &Path, size_mb: usize) -> anyhow::Result<()> {
    with_host(dir, size_mb, async |fleet| {
        let result = run(&fleet).await;
        (fleet, result)
    })
    .await
}

/// (a) `psql -f dump.sql` into an empty database; (b) `ferry restore` end to end, with its downtime.
pub async fn restore(dir: &Path, size_mb: usize) -> anyhow::Result<()> {
    with_host(dir, size_mb, async |fleet| {
        let result = run_restore(&fleet).await;
        (fleet, result)
    })
    .await
}

async fn run_restore(fleet: &SimFleet) -> anyhow::Result<()> {
    let host = &fleet.hosts[0];
    let podman = host.layout.bin().join("podman");
    run_ok(fleet.ferry(&["backup", "all"]).stdout(Stdio::null()))?;
    let store = fleet.dir.join("controller/store/cp01");
    let archive = std::fs::read_dir(&store)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "gz"))
        .context("no archive in the store")?;
    let dump = fleet.dir.join("dump.sql");
    run_ok(
        Command::new("tar")
            .arg("-xzOf")
            .arg(&archive)
            .arg("db/dump.sql")
            .stdout(std::fs::File::create(&dump)?),
    )?;
    let dump_size = std::fs::metadata(&dump)?.len();
    let psql = |args: &[&str]| {
        let mut cmd = Command::new(&podman);
        cmd.args(["exec", "-i", "flightctl-db", "psql", "-U", "postgres"])
            .args(args);
        cmd
    };
    run_ok(&mut psql(&["-c", "CREATE DATABASE bench_empty"]))?;
    let a = timed(|| {
        run_ok(
            psql(&[
                "-d",
                "bench_empty",
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-f",
                "-",
            ])
            .stdin(std::fs::File::open(&dump)?)
            .stdout(Stdio::null()),
        )
    })?;
    run_ok(&mut psql(&["-c", "DROP DATABASE bench_empty"]))?;
    std::fs::remove_file(&dump)?;

    let started = Instant::now();
    let out = fleet.ferry(&["restore", "cp01"]).output()?;
    let b = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("ferry restore failed: {text}");
    }
    let downtime = text
        .lines()
        .find_map(|l| l.strip_prefix("downtime (application units stopped → started): "))
        .unwrap_or("?");
    let secs = |d: Duration| d.as_secs_f64();
    println!();
    println!(
        "dump size                               {:>10.1} MiB",
        dump_size as f64 / 1048576.0
    );
    println!(
        "(a) psql -f dump.sql into an empty DB   {:>10.2} s",
        secs(a)
    );
    println!(
        "(b) ferry restore, end to end           {:>10.2} s",
        secs(b)
    );
    println!("(b)/(a) = {:.2}   (target <= 1.15)", secs(b) / secs(a));
    println!("downtime (units stopped → started): {downtime}   (target < 3 s, flat in the size)");
    // The controller proves the stored bytes (one read, before any unit stops): its share.
    if let Some(proof) = text
        .lines()
        .find_map(|l| l.split("proven equal to the catalog in ").nth(1))
        .and_then(|rest| rest.split('s').next())
        .and_then(|n| n.parse::<f64>().ok())
    {
        println!(
            "controller's proof of the stored bytes  {proof:>10.2} s   ({:.0}% of (b); (b) without it / (a) = {:.2})",
            100.0 * proof / secs(b),
            (secs(b) - proof) / secs(a)
        );
    }
    for line in text.lines().filter(|l| l.starts_with("TASK [")) {
        println!("  {line}");
    }

    // (c) a drill of the same archive, with the live API's readiness probed every 100 ms throughout.
    let probing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let prober = {
        let probing = std::sync::Arc::clone(&probing);
        let (ca, address) = (
            host.layout.host_path("/etc/flightctl/pki/ca.crt"),
            host.spec.address.clone(),
        );
        std::thread::spawn(move || {
            let (mut probes, mut not_ready) = (0u32, Vec::new());
            while probing.load(std::sync::atomic::Ordering::Relaxed) {
                probes += 1;
                match readyz(&ca, &address) {
                    Ok(200) => {}
                    other => not_ready.push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (probes, not_ready)
        })
    };
    let started = Instant::now();
    let out = fleet
        .ferry(&["drill", "cp01", "--timeout", "3600"])
        .output()?;
    let c = started.elapsed();
    probing.store(false, std::sync::atomic::Ordering::Relaxed);
    let (probes, not_ready) = prober.join().unwrap_or_default();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("ferry drill failed: {text}");
    }
    println!(
        "(c) ferry drill, end to end             {:>10.2} s   ({:.2} × (a))",
        secs(c),
        secs(c) / secs(a)
    );
    println!(
        "    live API /readyz probed {probes} times during the drill: {} not ready{}",
        not_ready.len(),
        if not_ready.is_empty() {
            String::new()
        } else {
            format!(" ({})", not_ready.join(", "))
        }
    );
    if let Some(line) = text.lines().find(|l| l.contains("restores")) {
        println!("  {line}");
    }
    Ok(())
}

/// One `GET /readyz` to the stand-in API over HTTPS, trusting the host's Flight Control CA.
fn readyz(ca: &Path, address: &str) -> anyhow::Result<u16> {
    use rustls::pki_types::pem::PemObject;
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(address.to_string())?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)?;
    let addr: std::net::SocketAddr =
        format!("{address}:{}", crate::standins::services::API_PORT).parse()?;
    let tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(
        format!("GET /readyz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut response = String::new();
    let _ = tls.read_to_string(&mut response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("no HTTP status")
}

async fn run(fleet: &SimFleet) -> anyhow::Result<()> {
    let host = &fleet.hosts[0];
    let db = host.db().await?;
    let db_size: i64 = db
        .query_one("SELECT pg_database_size('flightctl')", &[])
        .await?
        .get(0);
    let podman = host.layout.bin().join("podman");
    let scratch = fleet.dir.join("bench");
    std::fs::create_dir_all(&scratch)?;

    // pg_dump inside the DB container, as flightctl-backup runs it.
    let pg_dump = || {
        let mut cmd = Command::new(&podman);
        cmd.args([
            "exec",
            "flightctl-db",
            "pg_dump",
            "--clean",
            "--if-exists",
            "-U",
            "postgres",
            "-d",
            "flightctl",
        ]);
        cmd
    };

    // (a) pg_dump to /dev/null: the ceiling.
    let a = timed(|| run_ok(pg_dump().args(["-f", "/dev/null"])))?;

    // (b) what flightctl-backup does: dump to a file, then tar + gzip at the default level, one thread.
    let staging = scratch.join("upstream");
    std::fs::create_dir_all(staging.join("db"))?;
    let b = timed(|| {
        let dump = std::fs::File::create(staging.join("db/dump.sql"))?;
        run_ok(pg_dump().stdout(dump))?;
        run_ok(
            Command::new("cp")
                .arg("-a")
                .arg(host.layout.host_path("/etc/flightctl/pki"))
                .arg(staging.join("pki")),
        )?;
        run_ok(
            Command::new("tar")
                .arg("-czf")
                .arg(scratch.join("upstream.tar.gz"))
                .arg("-C")
                .arg(&staging)
                .arg("."),
        )
    })?;
    let upstream_size = std::fs::metadata(scratch.join("upstream.tar.gz"))?.len();
    std::fs::remove_dir_all(&staging)?;
    std::fs::remove_file(scratch.join("upstream.tar.gz"))?;

    // (c) ferry backup, end to end into the store, with the controller's and agent's peak RSS;
    // (d) the same with zstd, for archives only ferry reads.
    // The first command creates ferry's private catalog cluster: not part of a backup's cost.
    run_ok(fleet.ferry(&["archives", "list"]).stdout(Stdio::null()))?;
    let agent_pid: u32 = std::fs::read_to_string(host.layout.agent_dir().join("agent.pid"))?
        .trim()
        .parse()?;
    let cpu0 = cpu_seconds(agent_pid);
    let (c, controller_rss, archive_size) = ferry_backup(fleet, "gzip")?;
    let cpu1 = cpu_seconds(agent_pid);
    let (d, _, zstd_size) = ferry_backup(fleet, "zstd")?;
    let cpu2 = cpu_seconds(agent_pid);
    let agent_rss = peak_rss(agent_pid).unwrap_or(0);

    let secs = |d: Duration| d.as_secs_f64();
    println!();
    println!(
        "database size                     {:>10.1} MiB",
        db_size as f64 / 1048576.0
    );
    println!("(a) pg_dump -f /dev/null          {:>10.2} s", secs(a));
    println!(
        "(b) upstream: dump, then tar+gzip {:>10.2} s   archive {:.1} MiB",
        secs(b),
        upstream_size as f64 / 1048576.0
    );
    println!(
        "(c) ferry backup, end to end      {:>10.2} s   archive {:.1} MiB",
        secs(c),
        archive_size as f64 / 1048576.0
    );
    println!(
        "(d) ferry backup --compression zstd {:>8.2} s   archive {:.1} MiB",
        secs(d),
        zstd_size as f64 / 1048576.0
    );
    println!("(c)/(a) = {:.2}   (target <= 1.6)", secs(c) / secs(a));
    println!("(d)/(a) = {:.2}   (target <= 1.2)", secs(d) / secs(a));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "agent CPU (compression, hashing, tar): gzip {:.1} core-s, zstd {:.1} core-s; on {cores} cores gzip alone needs >= {:.1} s wall",
        cpu1 - cpu0,
        cpu2 - cpu1,
        (cpu1 - cpu0) / cores
    );
    println!("(c)/(b) = {:.2}   (target <= 0.35)", secs(c) / secs(b));
    println!(
        "peak RSS: controller {:.1} MiB, agent {:.1} MiB",
        controller_rss as f64 / 1024.0,
        agent_rss as f64 / 1024.0
    );
    Ok(())
}

/// Runs `ferry backup all`; returns (duration, controller peak RSS KiB, archive bytes).
fn ferry_backup(fleet: &SimFleet, compression: &str) -> anyhow::Result<(Duration, u64, u64)> {
    let store = fleet.dir.join("controller/store");
    let _ = std::fs::remove_dir_all(&store);
    let (elapsed, rss) = ferry_backup_with(fleet, &fleet.config_path(), compression)?;
    Ok((elapsed, rss, walk_size(&store)))
}

/// Runs `ferry --config CONFIG backup all`; returns (duration, controller peak RSS KiB).
fn ferry_backup_with(
    fleet: &SimFleet,
    config: &Path,
    compression: &str,
) -> anyhow::Result<(Duration, u64)> {
    let mut ferry = Command::new(crate::bins::path("ferry"));
    ferry
        .arg("--config")
        .arg(config)
        .arg("-i")
        .arg(fleet.inventory_path())
        .args(["backup", "all", "--compression", compression]);
    ferry.stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let child = ferry.spawn().context("ferry backup")?;
    let rss = watch_peak_rss(child.id());
    let out = child.wait_with_output()?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        bail!(
            "ferry backup failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((elapsed, rss.join().unwrap_or(0)))
}

/// `simfleet bench store`: ferry backup of a small and a large host into the directory store, a
/// bucket (a real S3 server on loopback), and a bucket with encryption: time, throughput and the
/// controller's peak RSS, which must not grow with the archive.
pub async fn store(dir: &Path, small_mb: usize, large_mb: usize) -> anyhow::Result<()> {
    let s3 = crate::s3::S3Server::start("ferry-bench");
    let keys = dir.join("bench.age");
    std::fs::create_dir_all(dir)?;
    run_ok(Command::new("age-keygen").arg("-o").arg(&keys))?;
    let public = String::from_utf8(
        Command::new("age-keygen")
            .arg("-y")
            .arg(&keys)
            .output()?
            .stdout,
    )?;
    let mut rows = Vec::new();
    for size_mb in [small_mb, large_mb] {
        let s3 = &s3;
        let public = public.trim().to_string();
        let keys = keys.clone();
        let mut measured = Vec::new();
        with_host(&dir.join(format!("{size_mb}")), size_mb, async |fleet| {
            let result = (|| -> anyhow::Result<()> {
                run_ok(fleet.ferry(&["archives", "list"]).stdout(Stdio::null()))?;
                let base = std::fs::read_to_string(fleet.config_path())?;
                let bucket = fleet.dir.join("bucket.yaml");
                std::fs::write(
                    &bucket,
                    format!("{base}{}", s3.config(&format!("plain{size_mb}"))),
                )?;
                let sealed = fleet.dir.join("sealed.yaml");
                std::fs::write(
                    &sealed,
                    format!(
                        "{base}{}encryption:\n  recipients: [\"{public}\"]\n  identity: {}\n",
                        s3.config(&format!("sealed{size_mb}")),
                        keys.display()
                    ),
                )?;
                let (t, rss, bytes) = ferry_backup(&fleet, "gzip")?;
                measured.push(("directory", t, rss, bytes));
                for (label, config) in [("s3", &bucket), ("s3 + age", &sealed)] {
                    let (t, rss) = ferry_backup_with(&fleet, config, "gzip")?;
                    measured.push((label, t, rss, bytes));
                }
                Ok(())
            })();
            (fleet, result)
        })
        .await?;
        rows.push((size_mb, measured));
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    println!();
    println!(
        "{:>8}  {:<10} {:>10} {:>9} {:>11} {:>10}",
        "DB MiB", "store", "archive", "time", "throughput", "peak RSS"
    );
    for (size_mb, measured) in &rows {
        for (label, t, rss, bytes) in measured {
            println!(
                "{size_mb:>8}  {label:<10} {:>6.1} MiB {:>7.2} s {:>6.1} MiB/s {:>6.1} MiB",
                mib(*bytes),
                t.as_secs_f64(),
                mib(*bytes) / t.as_secs_f64(),
                *rss as f64 / 1024.0
            );
        }
    }
    let rss_of = |i: usize, label: &str| {
        rows[i]
            .1
            .iter()
            .find(|m| m.0 == label)
            .map(|m| m.2 as f64 / 1024.0)
            .unwrap_or(0.0)
    };
    for label in ["s3", "s3 + age"] {
        let growth = rss_of(1, label) - rss_of(0, label);
        println!(
            "{label}: controller peak RSS grows {growth:.1} MiB from {small_mb} MiB to {large_mb} MiB (target <= 30 MiB)"
        );
    }
    let time_of = |label: &str| {
        rows[1]
            .1
            .iter()
            .find(|m| m.0 == label)
            .map(|m| m.1.as_secs_f64())
            .unwrap_or(0.0)
    };
    println!(
        "s3 / directory time at {large_mb} MiB = {:.2}; s3 + age / directory = {:.2}",
        time_of("s3") / time_of("directory"),
        time_of("s3 + age") / time_of("directory")
    );
    Ok(())
}

fn timed(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed())
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    // USER_HZ, the unit of these fields, is 100 on Linux whatever the kernel tick.
    ticks / 100.0
}

/// VmHWM (peak resident set) of a process, in KiB.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Polls a child's peak RSS until it exits; returns the last value seen (KiB).
fn watch_peak_rss(pid: u32) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while let Some(rss) = peak_rss(pid) {
            peak = peak.max(rss);
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

fn walk_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk_size(&p)
                    } else if p.extension().is_some_and(|x| x == "gz" || x == "zst") {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    } else {
                        0
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
