//! `simfleet bench fleet`: the controller at fleet size. `ping` and `facts` against 100 and 300
//! light agents with `--forks 50` (wall time, the controller's peak RSS, open descriptors and CPU
//! time), and `backup` of 20 full simulated hosts with `--forks 1` and `--forks 10` against the
//! one-host time.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{SimFleet, SimFleetOptions};

/// What one controller run cost, sampled from /proc while it ran.
#[derive(Debug, Default)]
struct Cost {
    wall: Duration,
    peak_rss_kib: u64,
    peak_fds: usize,
    cpu_seconds: f64,
    /// CPU time the whole machine spent during the run (agents, stand-ins, PostgreSQL included).
    machine_cpu_seconds: f64,
    stdout: Vec<u8>,
}

/// Busy CPU time of the whole machine so far, from /proc/stat, in seconds.
fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    let total: f64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0.0) + fields.get(4).copied().unwrap_or(0.0);
    (total - idle) / 100.0
}

/// Runs `cmd`, sampling the process every 5 ms; fails if it fails.
fn measure(cmd: &mut Command) -> anyhow::Result<Cost> {
    let started = Instant::now();
    let busy_before = machine_busy();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ferry")?;
    let pid = child.id();
    let mut stdout = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
        buf
    });
    let mut cost = Cost::default();
    // /proc reports CPU time in USER_HZ, which Linux fixes at 100.
    let ticks = 100.0;
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0);
            cost.peak_rss_kib = cost.peak_rss_kib.max(hwm);
        }
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            cost.peak_fds = cost.peak_fds.max(fds.count());
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some((_, rest)) = stat.rsplit_once(')')
        {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let (utime, stime): (f64, f64) = (
                fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0),
                fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0),
            );
            cost.cpu_seconds = (utime + stime) / ticks;
        }
        if let Some(status) = child.try_wait()? {
            cost.wall = started.elapsed();
            cost.machine_cpu_seconds = machine_busy() - busy_before;
            cost.stdout = reader.join().unwrap_or_default();
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                bail!("ferry exited with {status}: {err}");
            }
            return Ok(cost);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How many hosts the JSON document reports ok.
fn answered(cost: &Cost) -> usize {
    serde_json::from_slice::<serde_json::Value>(&cost.stdout)
        .ok()
        .and_then(|doc| {
            doc["hosts"]
                .as_object()
                .map(|hosts| hosts.values().filter(|h| h["status"] == "ok").count())
        })
        .unwrap_or(0)
}

pub async fn fleet(dir: &Path) -> anyhow::Result<()> {
    println!(
        "{:<28} {:>8} {:>10} {:>8} {:>8} {:>9}",
        "run", "hosts ok", "wall (s)", "cpu (s)", "RSS MiB", "max fds"
    );
    println!("(cpu: the controller's; RSS and fds: the controller's peak)");
    let mut pings_300 = None;
    let mut rss_300 = 0;
    for n in [100, 300] {
        let fleet_dir = dir.join(format!("light-{n}"));
        let _ = std::fs::remove_dir_all(&fleet_dir);
        let up = Instant::now();
        let fleet = SimFleet::up(
            &fleet_dir,
            &SimFleetOptions {
                hosts: 0,
                light: n,
                ..Default::default()
            },
        )
        .await?;
        let up = up.elapsed();
        let result = (|| -> anyhow::Result<()> {
            // The first contact finds every agent cold (its first TLS handshake, its pages not
            // touched yet, all on the same cores at once); the runs after it are the steady state.
            for (label, command) in [
                ("ping (cold agents)", "ping"),
                ("ping", "ping"),
                ("facts", "facts"),
            ] {
                let cost =
                    measure(&mut fleet.ferry(&[command, "all", "--forks", "50", "-o", "json"]))?;
                println!(
                    "{:<28} {:>8} {:>10.2} {:>8.2} {:>8.1} {:>9}",
                    format!("{label} {n}, forks 50"),
                    format!("{}/{n}", answered(&cost)),
                    cost.wall.as_secs_f64(),
                    cost.cpu_seconds,
                    cost.peak_rss_kib as f64 / 1024.0,
                    cost.peak_fds
                );
                if n == 300 {
                    rss_300 = rss_300.max(cost.peak_rss_kib);
                    if label == "ping" {
                        pings_300 = Some(cost.wall);
                    }
                }
            }
            Ok(())
        })();
        fleet.down();
        let _ = std::fs::remove_dir_all(&fleet_dir);
        println!("  ({n} light hosts stood up in {:.0}s)", up.as_secs_f64());
        result?;
    }

    let fleet_dir = dir.join("full-20");
    let _ = std::fs::remove_dir_all(&fleet_dir);
    let fleet = SimFleet::up(
        &fleet_dir,
        &SimFleetOptions {
            hosts: 20,
            devices: 200,
            ..Default::default()
        },
    )
    .await?;
    let result = (|| -> anyhow::Result<(Cost, Cost, Cost)> {
        let one = measure(&mut fleet.ferry(&["backup", "cp01", "-o", "json"]))?;
        let forks1 = measure(&mut fleet.ferry(&["backup", "all", "--forks", "1", "-o", "json"]))?;
        let forks10 = measure(&mut fleet.ferry(&["backup", "all", "--forks", "10", "-o", "json"]))?;
        Ok((one, forks1, forks10))
    })();
    fleet.down();
    let _ = std::fs::remove_dir_all(&fleet_dir);
    let (one, forks1, forks10) = result?;
    for (label, cost, hosts) in [
        ("backup 1 host", &one, 1),
        ("backup 20 full, forks 1", &forks1, 20),
        ("backup 20 full, forks 10", &forks10, 20),
    ] {
        println!(
            "{:<28} {:>8} {:>10.2} {:>8.2} {:>8.1} {:>9}",
            label,
            format!("{}/{hosts}", answered(cost)),
            cost.wall.as_secs_f64(),
            cost.cpu_seconds,
            cost.peak_rss_kib as f64 / 1024.0,
            cost.peak_fds
        );
    }
    println!();
    if let Some(p) = pings_300 {
        println!(
            "300 pings (steady): {:.2} s   (target < 10 s; the cold first contact is above)",
            p.as_secs_f64()
        );
    }
    println!(
        "controller peak RSS at 300 agents: {:.1} MiB   (target < 150 MiB)",
        rss_300 as f64 / 1024.0
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bound = 1.3 * 2.0 * one.wall.as_secs_f64();
    println!(
        "backup of 20, forks 10: {:.2} s; bound 1.3 × ceil(20/10) × one host ({:.2} s) = {bound:.2} s   ({})",
        forks10.wall.as_secs_f64(),
        one.wall.as_secs_f64(),
        if forks10.wall.as_secs_f64() <= bound {
            "met"
        } else {
            "missed"
        }
    );
    println!(
        "  the machine spent {:.2} s of CPU on it (controller {:.2} s): on {cores} cores no schedule beats {:.2} s",
        forks10.machine_cpu_seconds,
        forks10.cpu_seconds,
        forks10.machine_cpu_seconds / cores as f64
    );
    println!(
        "  one host: {:.2} s wall, {:.2} s machine CPU; forks 1 → forks 10 speed-up: {:.2}×",
        one.wall.as_secs_f64(),
        one.machine_cpu_seconds,
        forks1.wall.as_secs_f64() / forks10.wall.as_secs_f64()
    );
    Ok(())
}
