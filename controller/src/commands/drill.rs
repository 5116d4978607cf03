//! `ferry drill PATTERN [--archive ID|latest] [--on HOST]`: proves that each selected host's archive
//! restores. The archive streams from the store (decrypted in memory when encrypted) to the agent of
//! the host itself or of a sandbox, which loads it into a scratch database inside its DB container,
//! prepares it, counts every table against the manifest, parses the PKI, config and keys, and drops
//! it. The live control plane is never touched. Each drill is a host result, a catalog drill record
//! (a passing one marks the archive "verified by restore") and a ledger entry naming what failed.

use std::time::Duration;

use serde_json::json;

use crate::catalog::Operator;
use crate::cli::{DrillArgs, GlobalArgs};
use crate::config::Config;
use crate::inventory::Target;
use crate::ops::Operation;
use crate::ops::drill::{Drills, limit};
use crate::report::{self, Stop};
use crate::types::OperationKind;
pub async fn run(config: &Config, global: &GlobalArgs, pattern: &str, args: &DrillArgs) -> i32 {
    let fleet = match crate::selection::prepare(config, global, pattern) {
        Ok(fleet) => fleet,
        Err(stop) => return stop.say(),
    };
    let sandbox = match &args.on {
        None => None,
        Some(on) => match sandbox(config, global, on) {
            Ok(target) => Some(target),
            Err(stop) => return stop.say(),
        },
    };
    let fail = |e: &dyn std::fmt::Display| {
        errln!("ferry drill: {e}");
        report::exit::ERROR
    };
    let identities = match crate::keys::identities(config) {
        Ok(ids) => ids,
        Err(e) => return fail(&format!("encryption.identity: {e}")),
    };
    let catalog = match crate::ops::catalog(config).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let store = match crate::proof::open_store(config, &catalog).await {
        Ok(store) => store,
        Err(e) => return fail(&e),
    };
    let operator = Operator::current(config);
    let flags = json!({"archive": args.archive, "on": args.on, "limit": global.limit});
    let operation =
        match Operation::open(&catalog, OperationKind::Drill, pattern, &operator, &flags).await {
            Ok(operation) => operation,
            Err(e) => return fail(&e),
        };
    let warn = |line: &str| outln!("{line}");
    let drills = Drills {
        operation: &operation,
        store: &store,
        dialer: &fleet.dialer,
        identities,
        archive: args.archive.as_deref(),
        sandbox,
        limit: limit(global.timeout, fleet.options.timeout),
        warn: &warn,
    };
    // A sandbox holds one operation at a time: its drills run one after the other.
    let options = crate::fanout::FanoutOptions {
        forks: if drills.sandbox.is_some() {
            1
        } else {
            fleet.options.forks
        },
        timeout: fleet.options.timeout + Duration::from_secs(60),
        ..fleet.options
    };
    let format = global.output;
    let play = crate::fanout::run(
        fleet.targets,
        options,
        |target| {
            let drills = &drills;
            async move { drills.drill_within(&target).await }
        },
        |result| report::progress_line(format, result),
    )
    .await;
    let outcome = if report::exit_code(&play.results) == report::exit::OK {
        "succeeded"
    } else {
        "failed"
    };
    operation.finish(outcome).await;
    for problem in operation.take_problems() {
        errln!("ferry drill: {problem}");
    }
    report::finish(format, "drill", &play, crate::output::Stdout)
}

/// The one host `--on` names.
fn sandbox(config: &Config, global: &GlobalArgs, on: &str) -> Result<Target, Stop> {
    let inventory = crate::selection::load_inventory(config, global)?;
    let wrong = |e: &dyn std::fmt::Display| {
        Stop::new(
            report::exit::INVENTORY,
            format!("ferry drill: --on {on}: {e}"),
        )
    };
    let selection = crate::pattern::select(&inventory, on, None).map_err(|e| wrong(&e))?;
    let [host] = selection.hosts.as_slice() else {
        return Err(Stop::new(
            report::exit::INVENTORY,
            format!(
                "ferry drill: --on {on:?} selects {} hosts; name exactly one sandbox host",
                selection.hosts.len()
            ),
        ));
    };
    inventory.target(host).map_err(|e| wrong(&e))
}
