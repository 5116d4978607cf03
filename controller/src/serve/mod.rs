//! `ferry serve`: the long-running controller. Each replica plans the schedules' slots into the
//! catalog, claims due ones (exactly one replica wins each), backs the hosts up, prunes after each
//! run, and delivers alerts; the leader (an advisory lock in the catalog) also watches RPOs and
//! probes agents. SIGHUP reloads the configuration and inventory; SIGTERM lets running backups
//! finish (or records them interrupted) and hands unfinished slots back to the queue.

mod alerts;
mod metrics;
mod scheduler;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::signal::unix::{SignalKind, signal};

use crate::catalog::{Catalog, Operator};
use crate::config::Config;
use crate::dial::Dialer;
use crate::inventory::{Inventory, Target};
use crate::report::exit;
use crate::schedule::{HostPlan, Schedule};
use crate::store::Store;

/// Where `/metrics` listens when `serve.listen` is not set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9482";

/// Everything a reload replaces: the configuration and what is derived from it.
pub struct Settings {
    pub config: Config,
    pub plans: Vec<HostPlan>,
    pub targets: BTreeMap<String, Target>,
    pub dialer: Dialer,
    pub store: Store,
    pub operator: Operator,
}

impl Settings {
    /// Reads the configuration and inventory and plans every schedule; every reason it cannot run
    /// comes back at once, each naming its file and line. Also returns the warnings.
    pub async fn load(
        path: &Path,
        explicit: bool,
        inventory: &[PathBuf],
        catalog: Option<&str>,
    ) -> Result<(Settings, Vec<String>), Vec<String>> {
        let config = Config::load(path, explicit)
            .map_err(|e| vec![e.to_string()])?
            .with_catalog(catalog.map(str::to_string));
        if config.schedules.is_empty() {
            return Err(vec![format!(
                "{}: no schedules: to run (see \"Running ferry as a service\" in docs/operator-guide.md)",
                path.display()
            )]);
        }
        let sources = if inventory.is_empty() {
            &config.inventory
        } else {
            inventory
        };
        if sources.is_empty() {
            return Err(vec![format!(
                "{}: no inventory: set inventory: in the config or pass -i",
                path.display()
            )]);
        }
        let inventory = Inventory::load_all(sources).map_err(|e| vec![format!("inventory {e}")])?;
        let plan = crate::schedule::fleet_plan(
            &config.schedules,
            |s, k| config.schedule_at(s, k),
            &inventory,
            OffsetDateTime::now_utc(),
        )?;
        let mut targets = BTreeMap::new();
        let mut errors = Vec::new();
        for host in plan.plans.iter().map(|p| &p.host) {
            match inventory.target(host) {
                Ok(t) => {
                    targets.insert(host.clone(), t);
                }
                Err(e) => errors.push(format!("inventory: {e}")),
            }
        }
        let tls = ferry_certs::tls::client_config(&config.tls)
            .map_err(|e| vec![format!("operator certificate: {e}")]);
        let store = Store::open(&config.store, &config.state_dir)
            .await
            .map_err(|e| vec![e.to_string()]);
        let (tls, store) = match (tls, store) {
            (Ok(tls), Ok(store)) if errors.is_empty() => (tls, store),
            (tls, store) => {
                errors.extend(tls.err().into_iter().flatten());
                errors.extend(store.err().into_iter().flatten());
                return Err(errors);
            }
        };
        let dialer = Dialer::new(tls, Duration::from_secs(config.connect_timeout_seconds));
        let operator = Operator::current(&config);
        let mut warnings = plan.warnings;
        warnings.extend(crate::keys::identity_not_a_recipient(&config));
        Ok((
            Settings {
                plans: plan.plans,
                targets,
                dialer,
                store,
                operator,
                config,
            },
            warnings,
        ))
    }

    pub fn listen(&self) -> std::net::SocketAddr {
        self.config.serve.as_ref().map_or_else(
            || {
                DEFAULT_LISTEN
                    .parse()
                    .unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 9482)))
            },
            |s| s.listen,
        )
    }

    pub fn schedule(&self, name: &str) -> Option<&Schedule> {
        self.config.schedules.iter().find(|s| s.name == name)
    }

    pub fn plan(&self, schedule: &str, host: &str) -> Option<&HostPlan> {
        self.plans
            .iter()
            .find(|p| p.schedule == schedule && p.host == host)
    }

    pub fn alert_urls(&self) -> Vec<String> {
        self.config
            .alerts
            .iter()
            .map(|a| a.webhook.clone())
            .collect()
    }

    /// Every scheduled host, once, in plan order.
    pub fn hosts(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        self.plans
            .iter()
            .filter(|p| seen.insert(p.host.clone()))
            .map(|p| p.host.clone())
            .collect()
    }
}

/// What this replica has done since it started (for metrics).
#[derive(Default)]
pub struct Counters {
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Attempts that found the host busy with another operation (tried again, not failed).
    pub busy: AtomicU64,
    pub deleted: AtomicU64,
}

pub struct Service {
    pub replica: String,
    path: PathBuf,
    explicit: bool,
    inventory: Vec<PathBuf>,
    /// `--catalog`, which a reload keeps.
    catalog_url: Option<String>,
    settings: RwLock<Arc<Settings>>,
    catalog: RwLock<Arc<Catalog>>,
    leader: AtomicBool,
    stopping: AtomicBool,
    /// Hosts this replica is backing up, with the schedule.
    running: Mutex<BTreeMap<String, String>>,
    /// Live replicas, as of the last heartbeat.
    replicas: Mutex<Vec<String>>,
    /// The newest slot planned per (schedule, host).
    planned: Mutex<BTreeMap<(String, String), OffsetDateTime>>,
    counters: Counters,
    /// When the leader last watched RPOs and probed agents.
    last_watch: watch::Last,
    last_probe: watch::Last,
    last_housekeeping: watch::Last,
    last_archive_check: watch::Last,
    /// Bytes of deep verification earned and not yet spent (it accrues per check).
    verify_budget: Mutex<u64>,
    /// An archive check is running (they never overlap).
    checking: AtomicBool,
    tasks: tokio::sync::Mutex<tokio::task::JoinSet<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

const TICK: Duration = Duration::from_secs(1);
const HEARTBEAT: Duration = Duration::from_secs(3);

impl Service {
    pub fn new(
        replica: String,
        path: PathBuf,
        explicit: bool,
        inventory: Vec<PathBuf>,
        catalog_url: Option<String>,
        settings: Settings,
        catalog: Catalog,
    ) -> Arc<Service> {
        Arc::new(Service {
            replica,
            path,
            explicit,
            inventory,
            catalog_url,
            settings: RwLock::new(Arc::new(settings)),
            catalog: RwLock::new(Arc::new(catalog)),
            leader: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            running: Mutex::new(BTreeMap::new()),
            replicas: Mutex::new(Vec::new()),
            planned: Mutex::new(BTreeMap::new()),
            counters: Counters::default(),
            last_watch: Mutex::new(None),
            last_probe: Mutex::new(None),
            last_housekeeping: Mutex::new(None),
            last_archive_check: Mutex::new(None),
            verify_budget: Mutex::new(0),
            checking: AtomicBool::new(false),
            tasks: tokio::sync::Mutex::new(tokio::task::JoinSet::new()),
        })
    }

    pub fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.catalog.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Runs until SIGTERM or SIGINT; returns the exit code.
    pub async fn run(self: Arc<Self>, listener: tokio::net::TcpListener, grace: Duration) -> i32 {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            errln!("ferry serve: cannot install signal handlers");
            return exit::ERROR;
        };
        let catalog = self.catalog();
        match catalog.register_replica(&self.replica, &host_name()).await {
            Ok(None) => {}
            Ok(Some(live)) => {
                errln!(
                    "ferry serve: replica name {:?} is in use by a live replica on {} (started {}, last heartbeat {}); nothing was started: give this one another --replica, or stop that one first",
                    self.replica,
                    live.controller_host,
                    live.started_at
                        .replace_nanosecond(0)
                        .unwrap_or(live.started_at),
                    live.heartbeat_at
                        .replace_nanosecond(0)
                        .unwrap_or(live.heartbeat_at)
                );
                return exit::ERROR;
            }
            Err(e) => {
                errln!("ferry serve: registering this replica in the catalog: {e}");
                return exit::ERROR;
            }
        }
        if let Err(e) = catalog.track_hosts(&self.settings().hosts()).await {
            errln!("ferry serve: {e}");
            return exit::ERROR;
        }
        let settings = self.settings();
        tracing::info!(
            replica = %self.replica,
            listen = %settings.listen(),
            schedules = settings.config.schedules.len(),
            hosts = settings.hosts().len(),
            "ferry serve started"
        );
        let metrics = tokio::spawn(metrics::serve(Arc::clone(&self), listener));
        let deliveries = tokio::spawn(alerts::deliver(Arc::clone(&self)));
        let mut beat = tokio::time::interval(HEARTBEAT);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let signal_name = loop {
            tokio::select! {
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
                _ = hup.recv() => self.reload().await,
                _ = beat.tick() => self.heartbeat().await,
                _ = tick.tick() => self.tick().await,
            }
        };
        self.stopping.store(true, Ordering::Relaxed);
        deliveries.abort();
        let code = self.stop(signal_name, grace).await;
        metrics.abort();
        code
    }

    /// SIGHUP: a new configuration and inventory, or the old ones kept with the reason logged.
    async fn reload(&self) {
        match Settings::load(
            &self.path,
            self.explicit,
            &self.inventory,
            self.catalog_url.as_deref(),
        )
        .await
        {
            Ok((settings, warnings)) => {
                for w in warnings {
                    tracing::warn!("{w}");
                }
                tracing::info!(
                    schedules = settings.config.schedules.len(),
                    hosts = settings.hosts().len(),
                    "configuration reloaded"
                );
                *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
                lock(&self.planned).clear();
            }
            Err(errors) => {
                for e in errors {
                    tracing::error!("reload refused, the running configuration stays: {e}");
                }
            }
        }
    }

    async fn heartbeat(&self) {
        let mut catalog = self.catalog();
        if catalog.client().is_closed() {
            self.leader.store(false, Ordering::Relaxed);
            match crate::ops::catalog(&self.settings().config).await {
                Ok(c) => {
                    tracing::info!("reconnected to the catalog");
                    let c = Arc::new(c);
                    *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&c);
                    catalog = c;
                }
                Err(e) => {
                    tracing::error!("the catalog is unreachable: {e}; retrying");
                    return;
                }
            }
        }
        if !self.is_leader() {
            match catalog.try_lead().await {
                Ok(true) => {
                    tracing::info!(replica = %self.replica, "this replica leads");
                    self.leader.store(true, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("leader lock: {e}"),
            }
        }
        if let Err(e) = catalog.heartbeat(&self.replica, self.is_leader()).await {
            tracing::warn!("heartbeat: {e}");
            return;
        }
        match catalog.replicas().await {
            Ok(list) => {
                *lock(&self.replicas) = list.into_iter().filter(|r| r.live).map(|r| r.id).collect();
            }
            Err(e) => tracing::warn!("replicas: {e}"),
        }
        if let Err(e) = self.take_over().await {
            tracing::warn!("taking over runs of stopped replicas: {e}");
        }
    }

    async fn tick(self: &Arc<Self>) {
        if self.stopping() || self.catalog().client().is_closed() {
            return;
        }
        let now = OffsetDateTime::now_utc();
        if let Err(e) = self.plan_slots(now).await {
            tracing::warn!("planning scheduled runs: {e}");
        }
        if let Err(e) = self.claim_due().await {
            tracing::warn!("claiming scheduled runs: {e}");
        }
        if self.is_leader() {
            self.watch(now).await;
        }
    }

    /// Runs of replicas that stopped heartbeating go back to the queue; their catalog runs are
    /// closed as interrupted.
    async fn take_over(&self) -> Result<(), crate::catalog::CatalogError> {
        let catalog = self.catalog();
        for gone in catalog.take_over_abandoned(&self.replica).await? {
            tracing::warn!(
                host = %gone.host, owner = %gone.owner,
                "replica {} stopped during a run; its run is queued again", gone.owner
            );
            if let Some(run_id) = gone.run_id {
                catalog
                    .close_interrupted_run(
                        run_id,
                        &format!(
                            "replica {} stopped during the run; replica {} took it over",
                            gone.owner, self.replica
                        ),
                    )
                    .await;
            }
        }
        Ok(())
    }

    /// Stops claiming, gives running backups `grace` to finish, records the rest interrupted and
    /// hands their slots back.
    async fn stop(&self, signal_name: &str, grace: Duration) -> i32 {
        let running = lock(&self.running).len();
        tracing::info!(
            running,
            grace_seconds = grace.as_secs(),
            "{signal_name}: stopping; running backups may finish"
        );
        let mut tasks = self.tasks.lock().await;
        let finished =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
                .await
                .is_ok();
        let catalog = self.catalog();
        if !finished {
            crate::ops::runs::interrupt_all(
                &catalog,
                &format!("ferry serve stopped by {signal_name}"),
            )
            .await;
            tasks.abort_all();
        }
        match catalog
            .release_runs(
                &self.replica,
                &format!("replica {} stopped ({signal_name})", self.replica),
            )
            .await
        {
            Ok(n) if n > 0 => tracing::info!(runs = n, "unfinished runs handed back to the queue"),
            Ok(_) => {}
            Err(e) => tracing::warn!("handing back unfinished runs: {e}"),
        }
        let _ = catalog.replica_stopped(&self.replica).await;
        tracing::info!("ferry serve stopped");
        exit::OK
    }
}

fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}
