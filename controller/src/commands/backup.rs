//! `ferry backup PATTERN`: every selected host's archive streamed into the store and catalogued.

use serde_json::{Value, json};
use std::sync::Arc;

use crate::catalog::Operator;
use crate::cli::{Compression, GlobalArgs};
use crate::config::Config;
use crate::ops::Operation;
use crate::ops::backup::Backups;
use crate::progress::Progress;
use crate::report::{self, HostResult, Outcome};
use crate::store::Store;
use crate::types::OperationKind;

pub async fn run(
    config: &Config,
    global: &GlobalArgs,
    pattern: &str,
    compression: Compression,
) -> i32 {
    let fleet = match crate::selection::prepare(config, global, pattern) {
        Ok(fleet) => fleet,
        Err(stop) => return stop.say(),
    };
    let store = match Store::open(&config.store, &config.state_dir).await {
        Ok(store) => store,
        Err(e) => {
            errln!("ferry backup: {e}");
            return report::exit::ERROR;
        }
    };
    let recipients = match crate::keys::recipients(config) {
        Ok(r) => r.map(|r| r.ids()),
        Err(e) => {
            errln!("ferry backup: encryption: {e}");
            return report::exit::ERROR;
        }
    };
    if let Some(warning) = crate::keys::identity_not_a_recipient(config) {
        errln!("[WARNING] {warning}");
    }
    let catalog = match crate::ops::catalog(config).await {
        Ok(c) => c,
        Err(e) => {
            errln!("ferry backup: {e}");
            return report::exit::ERROR;
        }
    };
    let operator = Operator::current(config);
    let flags = json!({"compression": compression.name(), "forks": fleet.options.forks, "limit": global.limit});
    let operation =
        match Operation::open(&catalog, OperationKind::Backup, pattern, &operator, &flags).await {
            Ok(operation) => operation,
            Err(e) => {
                errln!("ferry backup: {e}");
                return report::exit::ERROR;
            }
        };
    let format = global.output;
    let progress = Arc::new(Progress::new(format));
    let backups = Backups {
        operation: &operation,
        dialer: &fleet.dialer,
        store: &store,
        compression,
        recipients,
    };
    // Each host's --timeout is kept here, so a host that runs out of time is recorded like any
    // other failure; the fan-out's own limit is only a backstop.
    let per_host = fleet.options.timeout;
    let options = crate::fanout::FanoutOptions {
        timeout: per_host + std::time::Duration::from_secs(60),
        ..fleet.options
    };
    let play = crate::fanout::run(
        fleet.targets,
        options,
        |target| {
            let progress = Arc::clone(&progress);
            let backups = &backups;
            async move {
                let bar = progress.host(&target.name);
                backups.backup_within(&target, &bar, per_host).await
            }
        },
        |result| {
            if format == report::Format::Text {
                progress.println(&report::line(result));
            }
        },
    )
    .await;
    let results = &play.results;
    let code = report::exit_code(results);
    let outcome = if code == report::exit::OK {
        "succeeded"
    } else {
        "failed"
    };
    operation.finish(outcome).await;
    for problem in operation.take_problems() {
        errln!("ferry backup: {problem}");
    }
    print_warnings(format, results);
    report::finish(format, "backup", &play, crate::output::Stdout)
}

fn print_warnings(format: report::Format, results: &[HostResult]) {
    if format != report::Format::Text {
        return;
    }
    for r in results {
        if let Outcome::Ok { data, .. } = &r.outcome
            && let Some(warnings) = data["warnings"].as_array()
        {
            for w in warnings.iter().filter_map(Value::as_str) {
                outln!("[WARNING] [{}] {w}", r.host);
            }
        }
    }
}
