//! What every fleet command does first: read the inventory, select hosts, load the TLS identity;
//! and what a single-host command does first: exactly one host, the catalog, the dialer.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::GlobalArgs;
use crate::config::Config;
use ferry_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

use crate::catalog::{Catalog, Operator};
use crate::dial::Dialer;
use crate::fanout::FanoutOptions;
use crate::inventory::{Inventory, Target};
use crate::report::{Outcome, Stop, exit};

/// Selected hosts and the means to reach them.
pub struct Fleet {
    pub targets: Vec<Target>,
    pub options: FanoutOptions,
    pub dialer: Dialer,
}

/// The inventory sources of this command: every `-i`, else `inventory:` in the config.
pub fn inventory_sources<'a>(config: &'a Config, global: &'a GlobalArgs) -> &'a [PathBuf] {
    if global.inventory.is_empty() {
        &config.inventory
    } else {
        &global.inventory
    }
}

fn describe_sources(sources: &[PathBuf]) -> String {
    sources
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads the command's inventory.
pub fn load_inventory(config: &Config, global: &GlobalArgs) -> Result<Inventory, Stop> {
    let sources = inventory_sources(config, global);
    if sources.is_empty() {
        return Err(Stop::new(
            exit::ERROR,
            "ferry: no inventory: pass -i INVENTORY (a file or a directory; repeat for several), set FERRY_INVENTORY, or set inventory: in the config",
        ));
    }
    Inventory::load_all(sources)
        .map_err(|e| Stop::new(exit::INVENTORY, format!("ferry: inventory {e}")))
}

/// The hosts `pattern` (and `--limit`) selects, with the pattern's warnings printed.
pub fn select(
    config: &Config,
    global: &GlobalArgs,
    inventory: &Inventory,
    pattern: &str,
) -> Result<Vec<String>, Stop> {
    let sources = describe_sources(inventory_sources(config, global));
    let selection = crate::pattern::select(inventory, pattern, global.limit.as_deref())
        .map_err(|e| Stop::new(exit::INVENTORY, format!("ferry: {e} ({sources})")))?;
    for warning in &selection.warnings {
        errln!("[WARNING]: {warning}");
    }
    Ok(selection.hosts)
}

/// The schedules of the config over the inventory, or every reason they cannot run
/// (`FILE:LINE: …`). Warnings are printed and do not stop.
pub fn schedule_plans(
    config: &Config,
    global: &GlobalArgs,
) -> Result<(Inventory, crate::schedule::FleetPlan), Stop> {
    if config.schedules.is_empty() {
        return Err(Stop::new(
            exit::ERROR,
            "ferry: the configuration has no schedules: (see \"Running ferry as a service\" in docs/operator-guide.md)",
        ));
    }
    let inventory = load_inventory(config, global)?;
    match crate::schedule::fleet_plan(
        &config.schedules,
        |s, k| config.schedule_at(s, k),
        &inventory,
        time::OffsetDateTime::now_utc(),
    ) {
        Ok(plan) => {
            for w in &plan.warnings {
                errln!("[WARNING]: {w}");
            }
            Ok((inventory, plan))
        }
        Err(errors) => Err(Stop {
            code: exit::ERROR,
            lines: errors.iter().map(|e| format!("ferry: {e}")).collect(),
        }),
    }
}

/// `--list-hosts`: prints the selection as `ansible --list-hosts` does (or as JSON).
fn list_hosts(global: &GlobalArgs, hosts: &[String]) {
    if global.output == crate::report::Format::Json {
        crate::output::json(&serde_json::json!({ "hosts": hosts }));
        return;
    }
    outln!("  hosts ({}):", hosts.len());
    for host in hosts {
        outln!("    {host}");
    }
}

/// Prepares a fleet command, or says why it cannot (or need not) run: `--list-hosts` prints the
/// selection and ends the command with 0.
pub fn prepare(config: &Config, global: &GlobalArgs, pattern: &str) -> Result<Fleet, Stop> {
    let inventory = load_inventory(config, global)?;
    let hosts = select(config, global, &inventory, pattern)?;
    // Every selected host's address and port, all problems at once, before anything else.
    let mut targets = Vec::with_capacity(hosts.len());
    let mut bad = Vec::new();
    for host in &hosts {
        match inventory.target(host) {
            Ok(target) => targets.push(target),
            Err(e) => bad.push(e),
        }
    }
    if !bad.is_empty() {
        let sources = describe_sources(inventory_sources(config, global));
        return Err(Stop {
            code: exit::INVENTORY,
            lines: bad
                .iter()
                .map(|e| format!("ferry: inventory {sources}: {e}"))
                .collect(),
        });
    }
    if global.list_hosts {
        list_hosts(global, &hosts);
        return Err(Stop::done());
    }
    if hosts.is_empty() {
        return Err(Stop::new(
            exit::INVENTORY,
            format!(
                "ferry: host pattern {pattern:?}{} selects no host; nothing was contacted (`--list-hosts` shows a selection)",
                global
                    .limit
                    .as_deref()
                    .map(|l| format!(" with --limit {l:?}"))
                    .unwrap_or_default()
            ),
        ));
    }
    operator_certificate_valid(config)?;
    let tls = ferry_certs::tls::client_config(&config.tls).map_err(|e| {
        Stop::new(
            exit::ERROR,
            format!(
                "ferry: operator certificate: {e}\n  (create one with `ferry certs init` and `ferry certs issue-operator NAME`, or set tls: in the config)"
            ),
        )
    })?;
    Ok(Fleet {
        targets,
        options: FanoutOptions {
            forks: global.forks.map_or(config.forks, |f| f as usize).max(1),
            timeout: Duration::from_secs(global.timeout.unwrap_or(config.timeout_seconds)),
            serial: global.serial.clone(),
            max_fail_percentage: global.max_fail_percentage,
        },
        dialer: Dialer::new(tls, Duration::from_secs(config.connect_timeout_seconds)),
    })
}

/// An expired or not-yet-valid operator certificate would make every agent refuse us; say so once,
/// with its dates, instead of reporting every host unreachable.
fn operator_certificate_valid(config: &Config) -> Result<(), Stop> {
    let Ok(info) = ferry_certs::inspect_pem(&config.tls.cert) else {
        return Ok(()); // unreadable: client_config says why
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let problem = if now < info.not_before_unix {
        Some("is not valid yet")
    } else if now > info.not_after_unix {
        Some("has expired")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(Stop::new(
            exit::ERROR,
            format!(
                "ferry: the operator certificate {} ({}) {problem}: valid from {} until {}; nothing was contacted.\n  next: issue a new one with `ferry certs issue-operator NAME` (and point tls: in the config at it), or check this machine's clock",
                config.tls.cert.display(),
                info.subject,
                info.not_before,
                info.not_after
            ),
        )),
    }
}

/// Dials `target`, makes one call, and turns the reply (or why there is none) into an [`Outcome`].
pub async fn call<T, Fut>(
    dialer: &Dialer,
    target: &Target,
    task: &str,
    request: impl FnOnce(AgentClient<Channel>) -> Fut,
    on_reply: impl FnOnce(T) -> Outcome,
) -> Outcome
where
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let conn = match dialer.connect(target).await {
        Ok(conn) => conn,
        Err(e) => return Outcome::Unreachable(e),
    };
    match request(conn.client.clone()).await {
        Ok(reply) => on_reply(reply.into_inner()),
        Err(status) => match conn.transport_error(&status) {
            Some(e) => Outcome::Unreachable(e),
            None => Outcome::Failed {
                task: task.into(),
                cause: status.message().to_string(),
            },
        },
    }
}

/// Runs one call on every host `pattern` selects and ends with the recap; returns the exit code.
pub async fn call_all<T, F, Fut>(
    config: &Config,
    global: &GlobalArgs,
    pattern: &str,
    task: &str,
    request: F,
    on_reply: fn(T) -> Outcome,
) -> i32
where
    F: Fn(AgentClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let fleet = match prepare(config, global, pattern) {
        Ok(fleet) => fleet,
        Err(stop) => return stop.say(),
    };
    let format = global.output;
    let (dialer, request) = (&fleet.dialer, &request);
    let results = crate::fanout::run(
        fleet.targets,
        fleet.options,
        |target| async move { call(dialer, &target, task, request, on_reply).await },
        |result| crate::report::progress_line(format, result),
    )
    .await;
    crate::report::finish(format, task, &results, crate::output::Stdout)
}

/// A selected host, the means to reach it, and the catalog.
pub struct Opened {
    pub target: Target,
    pub dialer: Dialer,
    pub catalog: Catalog,
    pub operator: Operator,
}

/// What every single-host operation does first: select exactly one host and open the catalog.
pub async fn open(config: &Config, global: &GlobalArgs, host: &str) -> Result<Opened, Stop> {
    let fleet = prepare(config, global, host)?;
    let [target] = fleet.targets.as_slice() else {
        return Err(Stop::new(
            exit::INVENTORY,
            format!(
                "ferry: {host:?} selects {} hosts; name exactly one host",
                fleet.targets.len()
            ),
        ));
    };
    let catalog = crate::ops::catalog(config)
        .await
        .map_err(|e| Stop::new(exit::ERROR, format!("ferry: {e}")))?;
    Ok(Opened {
        target: target.clone(),
        dialer: fleet.dialer,
        catalog,
        operator: Operator::current(config),
    })
}
