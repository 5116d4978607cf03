//! ferry's private PostgreSQL cluster in its state directory: unix socket only, no TCP, started on
//! demand and left running for the next command.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::CatalogError;

/// The private cluster under `<state>/catalog`.
#[derive(Debug, Clone)]
pub struct PrivateCluster {
    dir: PathBuf,
    pg_bin: PathBuf,
}

/// PostgreSQL refuses to run as root: the user it runs as instead (uid, gid).
pub fn server_user() -> Result<(u32, u32), String> {
    let euid = rustix::process::geteuid();
    if !euid.is_root() {
        return Ok((euid.as_raw(), rustix::process::getegid().as_raw()));
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    for name in ["postgres", "nobody"] {
        let prefix = format!("{name}:");
        if let Some(line) = passwd.lines().find(|l| l.starts_with(&prefix)) {
            let fields: Vec<&str> = line.split(':').collect();
            if let (Some(Ok(uid)), Some(Ok(gid))) = (
                fields.get(2).map(|u| u.parse()),
                fields.get(3).map(|g| g.parse()),
            ) {
                return Ok((uid, gid));
            }
        }
    }
    Err("running as root and there is no `postgres` or `nobody` user to run PostgreSQL as".into())
}

/// (uid, gid) of a path's owner; `u32::MAX` when it cannot be read.
fn owner_of(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or((u32::MAX, u32::MAX))
}

/// Makes `cmd` run as [`server_user`].
pub fn as_server_user(cmd: &mut Command) -> Result<(), String> {
    if rustix::process::geteuid().is_root() {
        let (uid, gid) = server_user()?;
        cmd.uid(uid).gid(gid);
    }
    Ok(())
}

/// Where PostgreSQL server binaries are: `FERRY_PG_BIN`, else Debian's and RHEL's usual places.
pub fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_PG_BIN") {
        return PathBuf::from(dir);
    }
    [
        "/usr/lib/postgresql/15/bin",
        "/usr/lib/postgresql/16/bin",
        "/usr/pgsql-16/bin",
        "/usr/bin",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|d| d.join("initdb").is_file())
    .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

impl PrivateCluster {
    pub fn new(state_dir: &Path) -> Self {
        PrivateCluster {
            dir: state_dir.join("catalog"),
            pg_bin: pg_bin(),
        }
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Creates the cluster if needed and starts it if it is not running. Serialised by a lock file so
    /// concurrent ferry commands do not race.
    pub fn ensure_running(&self) -> Result<(), CatalogError> {
        let err =
            |what: &str, e: &dyn std::fmt::Display| CatalogError::Embedded(format!("{what}: {e}"));
        let state = self.dir.parent().unwrap_or(Path::new("/"));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state)
            .map_err(|e| err(&state.display().to_string(), &e))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(state.join("catalog.lock"))
            .map_err(|e| err("catalog lock", &e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| err("catalog lock", &e))?;
        let (uid, gid) = self.owner(state).map_err(CatalogError::Embedded)?;
        if rustix::process::geteuid().is_root() && uid != owner_of(state).0 {
            // The server user must be able to reach its own directory inside ours.
            let mode = std::fs::metadata(state)
                .map_err(|e| err("state dir", &e))?
                .permissions()
                .mode();
            if mode & 0o001 == 0 {
                std::fs::set_permissions(
                    state,
                    std::fs::Permissions::from_mode((mode & 0o7777) | 0o711),
                )
                .map_err(|e| err("state dir", &e))?;
            }
        }
        for d in [self.dir.clone(), self.socket_dir()] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .map_err(|e| err(&d.display().to_string(), &e))?;
            rustix::fs::chown(
                &d,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| err(&d.display().to_string(), &e))?;
        }
        if !self.data().join("PG_VERSION").is_file() {
            self.run("initdb", |c| {
                c.arg("-D").arg(self.data()).args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]);
            })?;
        }
        if !self.running() {
            let options = format!(
                "-c listen_addresses='' -c unix_socket_directories='{}' -c port=5432",
                self.socket_dir().display()
            );
            let log = self.dir.join("postgres.log");
            self.run("pg_ctl", |c| {
                c.arg("-D")
                    .arg(self.data())
                    .args(["-w", "-t", "60", "-l"])
                    .arg(&log)
                    .arg("-o")
                    .arg(&options)
                    .arg("start");
            })?;
        }
        Ok(())
    }

    fn running(&self) -> bool {
        let pid = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        pid.and_then(rustix::process::Pid::from_raw)
            .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
    }

    /// Stops the cluster (fast shutdown), if it runs.
    pub fn stop(&self) -> Result<(), CatalogError> {
        if self.running() {
            self.run("pg_ctl", |c| {
                c.arg("-D")
                    .arg(self.data())
                    .args(["-m", "fast", "-w", "stop"]);
            })?;
        }
        Ok(())
    }

    /// Who runs the cluster. As root: whoever already owns it, or owns the state directory (the
    /// service user), so running ferry once as root never takes the catalog from that user.
    fn owner(&self, state: &Path) -> Result<(u32, u32), String> {
        if !rustix::process::geteuid().is_root() {
            return server_user();
        }
        for path in [self.data(), self.dir.clone(), state.to_path_buf()] {
            let (uid, gid) = owner_of(&path);
            if uid != 0 && uid != u32::MAX {
                return Ok((uid, gid));
            }
        }
        server_user()
    }

    fn run(&self, tool: &str, args: impl FnOnce(&mut Command)) -> Result<(), CatalogError> {
        let mut cmd = Command::new(self.pg_bin.join(tool));
        args(&mut cmd);
        cmd.stdin(Stdio::null());
        if rustix::process::geteuid().is_root() {
            let state = self.dir.parent().unwrap_or(Path::new("/"));
            let (uid, gid) = self.owner(state).map_err(CatalogError::Embedded)?;
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().map_err(|e| {
            CatalogError::Embedded(format!(
                "{}: {e} (set FERRY_PG_BIN to PostgreSQL's server binaries)",
                self.pg_bin.join(tool).display()
            ))
        })?;
        if !out.status.success() {
            return Err(CatalogError::Embedded(format!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                if tool == "pg_ctl" {
                    format!(" (see {})", self.dir.join("postgres.log").display())
                } else {
                    String::new()
                }
            )));
        }
        Ok(())
    }
}
