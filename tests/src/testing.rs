//! Helpers for tests: fleets and hosts that clean up after themselves.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::{SimFleet, SimFleetOptions, SimHost, SimHostSpec};

/// A temporary directory others may enter (mode 0755: the catalog's PostgreSQL runs as another user
/// when tests run as root), removed on drop.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// A simulated fleet in a temporary directory, stopped and removed on drop.
pub struct TempFleet {
    fleet: SimFleet,
    _dir: tempfile::TempDir,
}

impl TempFleet {
    pub async fn up(options: SimFleetOptions) -> TempFleet {
        let dir = tempfile::Builder::new()
            .prefix("ferry-fleet-")
            .tempdir()
            .expect("temp dir");
        let fleet = SimFleet::up(dir.path(), &options)
            .await
            .expect("simulated fleet");
        TempFleet { fleet, _dir: dir }
    }
}

impl Deref for TempFleet {
    type Target = SimFleet;
    fn deref(&self) -> &SimFleet {
        &self.fleet
    }
}

impl Drop for TempFleet {
    fn drop(&mut self) {
        self.fleet.down();
    }
}

/// One simulated host (no agent), started, in a temporary directory; stopped on drop.
pub struct TempHost {
    pub host: SimHost,
    _dir: tempfile::TempDir,
}

impl TempHost {
    /// `address` must be unique among concurrently running tests.
    pub async fn up(name: &str, address: &str, external_db: bool) -> TempHost {
        let dir = tempfile::Builder::new()
            .prefix("ferry-host-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let spec = SimHostSpec {
            name: name.into(),
            address: address.into(),
            version: "v1.2.0".into(),
            external_db,
            devices: 30,
            payload_bytes: 0,
            light: false,
        };
        let host = SimHost::create(&dir.path().join(name), &spec)
            .await
            .expect("simulated host");
        host.start().expect("start simulated host");
        host.clear_calls();
        TempHost { host, _dir: dir }
    }
}

impl Deref for TempHost {
    type Target = SimHost;
    fn deref(&self) -> &SimHost {
        &self.host
    }
}

impl Drop for TempHost {
    fn drop(&mut self) {
        self.host.stop();
    }
}

/// A TCP proxy on loopback that forwards at a limited rate and can cut every connection: for
/// interrupting transfers mid-stream.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    forwarded: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    /// Listens on `listen` and forwards to `upstream`, each way at most `bytes_per_sec`.
    pub async fn start(listen: &str, upstream: std::net::SocketAddr, bytes_per_sec: u64) -> Proxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .expect("proxy listen");
        let addr = listener.local_addr().expect("proxy addr");
        let forwarded = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let counter = std::sync::Arc::clone(&forwarded);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                // A cut link stays cut: new connections go nowhere.
                if *cut_rx.borrow() {
                    drop(client);
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let counter = std::sync::Arc::clone(&counter);
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let tick = std::time::Duration::from_millis(10);
                    let per_tick = (bytes_per_sec / 100).max(1) as usize;
                    // Both directions at the same rate: a restore streams to the agent.
                    let up = async {
                        let mut buf = vec![0u8; 16 << 10];
                        loop {
                            let want = per_tick.min(buf.len());
                            let n = match client_read.read(&mut buf[..want]).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            tokio::time::sleep(tick).await;
                        }
                    };
                    let down = async {
                        let mut buf = vec![0u8; 16 << 10];
                        loop {
                            let want = per_tick.min(buf.len());
                            let n = match server_read.read(&mut buf[..want]).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if client_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                            tokio::time::sleep(tick).await;
                        }
                    };
                    // Either side going away closes the other, as for a real connection.
                    tokio::select! {
                        biased;
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            forwarded,
            cut,
        }
    }

    /// Bytes forwarded from the agent so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drops every connection at once, as a failed network would.
    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }

    /// Waits until at least `bytes` were forwarded (panics after 60 s).
    pub async fn wait_for(&self, bytes: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.forwarded() < bytes {
            assert!(
                std::time::Instant::now() < deadline,
                "proxy forwarded only {} bytes",
                self.forwarded()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// A scratch PostgreSQL cluster (socket only) for loading dumps; stopped on drop.
pub struct ScratchCluster {
    dir: tempfile::TempDir,
    pg_bin: std::path::PathBuf,
}

impl ScratchCluster {
    pub fn start() -> ScratchCluster {
        use std::os::unix::fs::PermissionsExt;
        use std::process::Command;
        let dir = tempfile::Builder::new()
            .prefix("ferry-pg-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let pg_bin = ferry::catalog::embedded::pg_bin();
        let data = dir.path().join("data");
        let mut initdb = Command::new(pg_bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync"]);
        ferry::catalog::embedded::as_server_user(&mut initdb).expect("server user");
        assert!(initdb.output().expect("initdb").status.success());
        let mut start = Command::new(pg_bin.join("pg_ctl"));
        start
            .arg("-D")
            .arg(&data)
            .args(["-w", "-l"])
            .arg(dir.path().join("log"))
            .arg("-o")
            .arg(format!(
                "-c listen_addresses='' -c unix_socket_directories='{}' -c fsync=off",
                dir.path().display()
            ))
            .arg("start");
        ferry::catalog::embedded::as_server_user(&mut start).expect("server user");
        assert!(start.output().expect("pg_ctl").status.success());
        ScratchCluster { dir, pg_bin }
    }

    /// A libpq connection string to database `db` of this cluster (for `--catalog`).
    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} port=5432 user=postgres dbname={db}",
            self.dir.path().display()
        )
    }

    /// `psql` against database `db` of this cluster.
    pub fn psql(&self, db: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.pg_bin.join("psql"));
        cmd.arg("-h")
            .arg(self.dir.path())
            .args(["-U", "postgres", "-d", db, "-X", "-q"]);
        cmd
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        let mut stop = std::process::Command::new(self.pg_bin.join("pg_ctl"));
        stop.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"]);
        let _ = ferry::catalog::embedded::as_server_user(&mut stop);
        let _ = stop.output();
    }
}

/// A process's stdout then stderr, as text.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// path → (sha256 of content, mode) for every file and directory under `dir`.
pub fn tree(dir: &Path) -> BTreeMap<String, (String, u32)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, (String, u32)>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(base)
                .expect("below base")
                .display()
                .to_string();
            let mode = std::fs::symlink_metadata(&path)
                .expect("metadata")
                .permissions()
                .mode()
                & 0o7777;
            if path.is_dir() {
                out.insert(rel, (String::new(), mode));
                walk(base, &path, out);
            } else {
                let digest = ferry_archive::hex(&<sha2::Sha256 as sha2::Digest>::digest(
                    std::fs::read(&path).expect("read"),
                ));
                out.insert(rel, (digest, mode));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// How many awaiting-reconnect keys `host`'s KV holds.
pub async fn awaiting_reconnect_keys(host: &SimHost) -> usize {
    let mut kv = host.kv().await.expect("KV connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("v1/*/awaiting-reconnect")
        .query_async(&mut kv)
        .await
        .expect("KEYS");
    keys.len()
}

/// Polls `done` every 50 ms until it holds, failing the test with `what` after `limit`: a
/// deadline, never a fixed sleep before an assertion.
pub async fn wait_until(
    what: &str,
    limit: std::time::Duration,
    mut done: impl AsyncFnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + limit;
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The catalog of the fleet whose `ferry.yaml` is `config`, connected as ferry connects.
pub async fn catalog(config: &Path) -> ferry::catalog::Catalog {
    ferry::catalog::Catalog::connect(
        &ferry::config::Config::load(config, true).expect("ferry.yaml"),
    )
    .await
    .expect("the fleet's catalog")
}
