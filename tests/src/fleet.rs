//! A fleet of simulated hosts with their agents, a controller config and an inventory: what
//! `simfleet up` builds and `simfleet down` stops.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::host::{SimHost, SimHostSpec, write};

/// What to build.
#[derive(Debug, Clone)]
pub struct SimFleetOptions {
    pub hosts: usize,
    /// Indexes (0-based) of hosts configured with an external database.
    pub external_db: Vec<usize>,
    pub version: String,
    pub devices: usize,
    pub payload_bytes: usize,
    /// Light hosts (`lt001`, …) after the full ones: units without processes, for fleet scale.
    pub light: usize,
}

impl Default for SimFleetOptions {
    fn default() -> Self {
        SimFleetOptions {
            hosts: 3,
            external_db: Vec::new(),
            version: "v1.2.0".into(),
            devices: 60,
            payload_bytes: 0,
            light: 0,
        }
    }
}

/// A running simulated fleet.
pub struct SimFleet {
    pub dir: PathBuf,
    pub hosts: Vec<SimHost>,
}

/// The agent's port on every simulated host.
pub const AGENT_PORT: u16 = ferry_proto::DEFAULT_AGENT_PORT;

impl SimFleet {
    /// Builds and starts the fleet under `dir`: CA and certificates through `ferry certs`, hosts,
    /// units, agents, `inventory.ini` and `ferry.yaml`.
    pub async fn up(dir: &Path, options: &SimFleetOptions) -> anyhow::Result<SimFleet> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let dir = dir.canonicalize()?;
        let net = Subnets::claim(&dir, options.hosts + options.light)?;
        let fleet = SimFleet {
            dir: dir.clone(),
            hosts: Vec::new(),
        };
        write(
            &fleet.config_path(),
            &format!(
                "state_dir: {}\nforks: 10\ntimeout_seconds: 120\n",
                dir.join("controller").display()
            ),
            0o644,
        )?;
        fleet.ferry_ok(&["certs", "init"])?;
        fleet.ferry_ok(&["certs", "issue-operator", "controller"])?;
        let mut fleet = fleet;
        for i in 0..options.hosts + options.light {
            let light = i >= options.hosts;
            let name = if light {
                format!("lt{:03}", i - options.hosts + 1)
            } else {
                format!("cp{:02}", i + 1)
            };
            let spec = SimHostSpec {
                name: name.clone(),
                address: net.address(i),
                version: options.version.clone(),
                external_db: options.external_db.contains(&i),
                devices: options.devices,
                payload_bytes: options.payload_bytes,
                light,
            };
            let host = SimHost::create(&dir.join("hosts").join(&name), &spec).await?;
            let agent_dir = host.layout.agent_dir();
            fleet.ferry_ok(&[
                "certs",
                "issue-agent",
                &name,
                "--san",
                &spec.address,
                "--san",
                &name,
                "--out",
                &agent_dir.to_string_lossy(),
            ])?;
            write(&agent_dir.join("agent.yaml"), &agent_config(&host), 0o644)?;
            host.start()?;
            host.clear_calls();
            fleet.hosts.push(host);
        }
        // All agents start at once, then each is waited for: hundreds start in seconds.
        let mut started = Vec::with_capacity(fleet.hosts.len());
        for host in &fleet.hosts {
            started.push(spawn_agent(host)?);
        }
        for (host, before) in fleet.hosts.iter().zip(started) {
            wait_for_agent(host, before)?;
            // Tests read the log from here: the agent's own start-up checks are not theirs.
            host.clear_calls();
        }
        fleet.write_inventory(options)?;
        Ok(fleet)
    }

    /// Opens a fleet built earlier by `up`.
    pub fn open(dir: &Path) -> anyhow::Result<SimFleet> {
        let mut hosts = Vec::new();
        let hosts_dir = dir.join("hosts");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&hosts_dir)
            .with_context(|| format!("no simulated fleet at {}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        names.sort();
        for path in names {
            hosts.push(SimHost::open(&path)?);
        }
        Ok(SimFleet {
            dir: dir.to_path_buf(),
            hosts,
        })
    }

    /// Stops every agent, every host process and the controller's private catalog, and releases the
    /// fleet's loopback addresses.
    pub fn down(&self) {
        for host in &self.hosts {
            stop_every_agent(host);
            host.stop();
        }
        let _ = ferry::catalog::embedded::PrivateCluster::new(&self.dir.join("controller")).stop();
        Subnets::release(&self.dir);
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("ferry.yaml")
    }

    /// A controller config with its own, empty state directory `DIR/NAME` over this fleet's store:
    /// for rebuilding a catalog from the store alone.
    pub fn fresh_catalog_config(&self, name: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.yaml"));
        let text = format!(
            "state_dir: {}\nstore: {}\n",
            self.dir.join(name).display(),
            self.dir.join("controller/store").display()
        );
        std::fs::write(&path, text).expect("writing a controller config");
        path
    }

    pub fn inventory_path(&self) -> PathBuf {
        self.dir.join("inventory.ini")
    }

    pub fn host(&self, name: &str) -> &SimHost {
        self.hosts
            .iter()
            .find(|h| h.name() == name)
            .unwrap_or_else(|| panic!("no simulated host {name}"))
    }

    /// `ferry --config DIR/ferry.yaml -i DIR/inventory.ini ARGS…`
    pub fn ferry(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(crate::bins::path("ferry"));
        cmd.arg("--config")
            .arg(self.config_path())
            .arg("-i")
            .arg(self.inventory_path())
            .args(args);
        cmd
    }

    /// What `ferry facts HOST -o json` reports of `host` (its `data`), or why it reported nothing.
    pub fn facts(&self, host: &str) -> anyhow::Result<serde_json::Value> {
        let out = self.ferry(&["facts", host, "-o", "json"]).output()?;
        if !out.status.success() {
            bail!(
                "ferry facts {host}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(doc["hosts"][host]["data"].clone())
    }

    /// Runs `ferry ARGS…` (as [`SimFleet::ferry`]) and requires success.
    pub fn ferry_ok(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = self
            .ferry(args)
            .output()
            .context("running ferry (build the workspace first: cargo build --workspace)")?;
        if !out.status.success() {
            bail!(
                "ferry {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn write_inventory(&self, options: &SimFleetOptions) -> anyhow::Result<()> {
        let mut text =
            String::from("# Simulated Flight Control control planes (simfleet)\n[controlplanes]\n");
        for host in self.hosts.iter().filter(|h| !h.spec.light) {
            text.push_str(&format!(
                "{} ansible_host={}\n",
                host.name(),
                host.spec.address
            ));
        }
        if !options.external_db.is_empty() {
            text.push_str("\n[external_db]\n");
            for host in self.hosts.iter().filter(|h| h.spec.external_db) {
                text.push_str(&format!("{}\n", host.name()));
            }
        }
        if options.light > 0 {
            text.push_str("\n# Light hosts: ping and facts only\n[light]\n");
            for host in self.hosts.iter().filter(|h| h.spec.light) {
                text.push_str(&format!(
                    "{} ansible_host={}\n",
                    host.name(),
                    host.spec.address
                ));
            }
        }
        text.push_str(&format!("\n[all:vars]\nferry_port={AGENT_PORT}\n"));
        write(&self.inventory_path(), &text, 0o644)
    }
}

fn agent_config(host: &SimHost) -> String {
    let l = &host.layout;
    let a = l.agent_dir();
    format!(
        "listen: {addr}:{AGENT_PORT}\nhost_name: {name}\nlocal_address: {addr}\napi_server_name: localhost\nroot: {root}\nsystemctl: {bin}/systemctl\npodman: {bin}/podman\nstaging_dir: {staging}\ntls:\n  ca: {a}/ca.crt\n  cert: {a}/agent.crt\n  key: {a}/agent.key\n",
        addr = host.spec.address,
        name = host.spec.name,
        root = l.root().display(),
        bin = l.bin().display(),
        staging = a.join("staging").display(),
        a = a.display(),
    )
}

/// Starts `ferry-agent` for `host` in the background and waits until it listens.
pub fn start_agent(host: &SimHost) -> anyhow::Result<()> {
    let before = spawn_agent(host)?;
    wait_for_agent(host, before)
}

/// Starts `ferry-agent` for `host` in the background.
/// Returns how many times an agent had said it serves before this one started.
fn spawn_agent(host: &SimHost) -> anyhow::Result<usize> {
    let before = serving(host);
    let agent_dir = host.layout.agent_dir();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(agent_dir.join("agent.log"))?;
    let child = Command::new(crate::bins::path("ferry-agent"))
        .arg("--config")
        .arg(agent_dir.join("agent.yaml"))
        .env("FERRY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting ferry-agent (build the workspace first: cargo build --workspace)")?;
    std::fs::write(agent_dir.join("agent.pid"), child.id().to_string())?;
    Ok(before)
}

/// How many times the host's agent log says an agent serves: an agent says so once its start-up
/// work (which calls the stand-ins) is done.
fn serving(host: &SimHost) -> usize {
    std::fs::read_to_string(host.layout.agent_dir().join("agent.log"))
        .map(|log| log.matches("ferry-agent serving over mTLS").count())
        .unwrap_or(0)
}

/// Waits until `host`'s agent listens and has finished its start-up work.
fn wait_for_agent(host: &SimHost, before: usize) -> anyhow::Result<()> {
    let agent_dir = host.layout.agent_dir();
    let addr = format!("{}:{AGENT_PORT}", host.spec.address);
    // Its start-up work (scratch databases, a publication to take down) takes seconds, longer on
    // a machine busy with a whole suite.
    let pid = std::fs::read_to_string(agent_dir.join("agent.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw);
    let deadline = Instant::now() + Duration::from_secs(45);
    while Instant::now() < deadline {
        if serving(host) > before && std::net::TcpStream::connect(&addr).is_ok() {
            return Ok(());
        }
        if pid.is_some_and(|pid| !process_alive(pid)) {
            bail!(
                "ferry-agent for {} exited before it listened on {addr}; its log ends:\n{}",
                host.name(),
                log_tail(host)
            )
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The log goes with the fleet's directory: its end is the only evidence left of why.
    bail!(
        "ferry-agent for {} did not listen on {addr} within 45 s; its log ends:\n{}",
        host.name(),
        log_tail(host)
    )
}

/// The last lines of `host`'s agent log: from the error an agent exited with, if there is one,
/// without its backtrace.
fn log_tail(host: &SimHost) -> String {
    let log =
        std::fs::read_to_string(host.layout.agent_dir().join("agent.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let error = lines.iter().rposition(|l| l.starts_with("Error:"));
    let (from, to) = match error {
        Some(at) => (
            at.saturating_sub(20),
            lines[at..]
                .iter()
                .position(|l| l.starts_with("Stack backtrace:"))
                .map_or(lines.len(), |n| at + n),
        ),
        None => (lines.len().saturating_sub(40), lines.len()),
    };
    lines[from..to].join("\n")
}

/// Stops `host`'s agent (SIGTERM, then SIGKILL after 10 s).
pub fn stop_agent(host: &SimHost) {
    let pid_file = host.layout.agent_dir().join("agent.pid");
    let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return;
    };
    terminate(pid);
    let _ = std::fs::remove_file(pid_file);
}

/// SIGTERM, then SIGKILL after 10 s.
fn terminate(pid: rustix::process::Pid) {
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && process_alive(pid) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if process_alive(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Every agent process serving `host`'s agent.yaml, however it was started (an operator's restart
/// may not have updated agent.pid): found by its command line.
fn agents_of(host: &SimHost) -> Vec<rustix::process::Pid> {
    let config = host.layout.agent_dir().join("agent.yaml");
    let config = config.to_string_lossy();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first()
                .is_some_and(|a| String::from_utf8_lossy(a).ends_with("ferry-agent"))
                && args.iter().any(|a| String::from_utf8_lossy(a) == config)
        })
        .filter_map(rustix::process::Pid::from_raw)
        .collect()
}

/// Stops `host`'s agent and any other agent process serving its configuration.
pub fn stop_every_agent(host: &SimHost) {
    stop_agent(host);
    for pid in agents_of(host) {
        terminate(pid);
    }
}

fn process_alive(pid: rustix::process::Pid) -> bool {
    // A killed process's main thread turns zombie while a thread stuck in I/O still runs, holding
    // its files and listening sockets: it is gone only when every thread is.
    let tasks = format!("/proc/{}/task", pid.as_raw_nonzero());
    let Ok(threads) = std::fs::read_dir(&tasks) else {
        return false;
    };
    threads.flatten().any(|thread| {
        let stat = std::fs::read_to_string(thread.path().join("stat")).unwrap_or_default();
        !stat.is_empty()
            && !matches!(
                stat.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().next()),
                Some("Z" | "X")
            )
    })
}

/// Claims on 127.B.C.0/24 for one fleet (one per 250 hosts), so concurrent fleets (parallel tests)
/// never share addresses.
struct Subnets(Vec<(u8, u8)>);

const PER_SUBNET: usize = 250;

const CLAIMS: &str = "/tmp/ferry-simhost-subnets";

impl Subnets {
    fn claim(fleet_dir: &Path, hosts: usize) -> anyhow::Result<Subnets> {
        std::fs::create_dir_all(CLAIMS)?;
        let wanted = hosts.div_ceil(PER_SUBNET).max(1);
        let mut claimed = Vec::new();
        let mut files = Vec::new();
        let start = std::process::id() as usize;
        for n in 0..(200 * 250) {
            if claimed.len() == wanted {
                break;
            }
            let k = (start + n) % (200 * 250);
            let (b, c) = (50 + (k / 250) as u8, (k % 250) as u8 + 1);
            let claim = Path::new(CLAIMS).join(format!("127.{b}.{c}"));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&claim)
            {
                Ok(_) => {
                    std::fs::write(&claim, fleet_dir.to_string_lossy().as_bytes())?;
                    files.push(claim.to_string_lossy().into_owned());
                    std::fs::write(fleet_dir.join("subnet"), files.join("\n"))?;
                    claimed.push((b, c));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A claim whose fleet directory is gone is stale.
                    let owner = std::fs::read_to_string(&claim).unwrap_or_default();
                    if !owner.is_empty() && !Path::new(&owner).exists() {
                        let _ = std::fs::remove_file(&claim);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        if claimed.len() < wanted {
            bail!("no free simulated subnet under {CLAIMS}");
        }
        Ok(Subnets(claimed))
    }

    fn release(fleet_dir: &Path) {
        if let Ok(claims) = std::fs::read_to_string(fleet_dir.join("subnet")) {
            for claim in claims.lines() {
                let _ = std::fs::remove_file(claim.trim());
            }
        }
    }

    fn address(&self, index: usize) -> String {
        let (b, c) = self.0[index / PER_SUBNET];
        format!("127.{b}.{c}.{}", index % PER_SUBNET + 1)
    }
}

/// Kills `host`'s agent with SIGKILL, as a crash would.
pub fn kill_agent(host: &SimHost) {
    let pid_file = host.layout.agent_dir().join("agent.pid");
    if let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        // A thread in uninterruptible I/O (an fsync on a busy disk) ends only when the I/O does.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && process_alive(pid) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = std::fs::remove_file(pid_file);
}
