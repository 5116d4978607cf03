//! Honest operations under faults: a fault ends an operation with the true exit code, record and
//! host state, and leaves the host free and safe.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use simhost::SimFleetOptions;
use simhost::testing::{TempFleet, text};

/// Writes zeros into `path` until the filesystem under it is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 1 << 20];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_disk_that_fills_during_a_backup_ends_it_and_frees_the_host() {
    // A dump of more 1 MiB chunks than the compressor's queues hold (~12 MiB).
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        devices: 2000,
        payload_bytes: 6000,
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");
    let staging = host.layout.agent_dir().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    // Room enough for the backup's preflight (64 MiB), filled once the dump has begun.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=80m", "tmpfs"])
        .arg(&staging)
        .status()
        .unwrap();
    assert!(mounted.success(), "this test mounts a tmpfs and needs root");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(staging.clone());
    // The dump waits on the devices table while the disk is filled.
    let db = host.db().await.unwrap();
    db.batch_execute("BEGIN; LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    host.clear_calls();
    let backup = fleet
        .ferry(&["backup", "cp01"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !host.calls().iter().any(|c| c.contains("ferry-dump")) {
        assert!(
            Instant::now() < deadline,
            "the dump never started: {:?}",
            host.calls()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let filler = staging.join("filler");
    fill(&filler);
    db.batch_execute("ROLLBACK").await.unwrap();
    // The write error ends the backup at once (it hung the agent, busy, until killed by hand).
    let started = Instant::now();
    let out = backup.wait_with_output().unwrap();
    let output = text(&out);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}: {output}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(2), "{output}");
    assert!(
        output.contains("writing the dump's spool") && output.contains("No space left on device"),
        "{output}"
    );
    // The host is free and its staging space cleared: only the filler is left.
    std::fs::remove_file(&filler).unwrap();
    let left: Vec<_> = std::fs::read_dir(&staging)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in staging: {left:?}");
    let out = fleet.ferry(&["backup", "cp01"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // On record as the failure it was.
    let out = fleet
        .ferry(&["history", "--kind", "backup", "-o", "json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = doc
        .as_array()
        .or_else(|| doc["entries"].as_array())
        .cloned()
        .unwrap();
    assert!(
        entries.iter().any(|e| e["outcome"] == "failed"
            && e["error"]
                .as_str()
                .is_some_and(|t| t.contains("No space left on device"))),
        "{doc}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_refused_by_a_busy_host_names_what_to_do_about_it() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        devices: 20,
        ..Default::default()
    })
    .await;
    fleet.ferry_ok(&["backup", "cp01"]).unwrap();
    let host = fleet.host("cp01");
    // A DBA's publication holds the host.
    let publisher = fleet
        .ferry(&["ports", "publish", "cp01", "--for", "10m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let published = || {
        [5432, 6379]
            .iter()
            .all(|port| std::net::TcpStream::connect((host.spec.address.as_str(), *port)).is_ok())
    };
    while !published() {
        assert!(Instant::now() < deadline, "never published");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = fleet.ferry(&["restore", "cp01"]).output().unwrap();
    let output = text(&out);
    assert_eq!(out.status.code(), Some(2), "{output}");
    assert!(
        output.contains("REFUSED: [cp01] task stage: cp01 is busy: ports operation")
            && output.contains("next: `ferry ports unpublish cp01`")
            && !output.contains("archives verify"),
        "{output}"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&publisher),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = publisher.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    // Free again, the same restore goes through.
    let out = fleet.ferry(&["restore", "cp01"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
