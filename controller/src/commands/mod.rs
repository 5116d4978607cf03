//! One module per command. Each returns the process exit code.

mod archives;
mod audit;
pub(crate) mod backup;
mod certs;
pub(crate) mod drill;
mod facts;
mod inventory;
mod keys;
mod ping;
mod ports;
mod restore;
mod serve;
mod status;

use std::path::PathBuf;

use crate::cli::{Cli, Command};
use crate::config::{Config, DEFAULT_CONFIG};
use crate::report::exit;

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> i32 {
    let explicit = cli.global.config.is_some();
    let path = cli
        .global
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    if let Command::Serve(args) = &cli.command {
        return serve::run(path, explicit, &cli.global, args.clone()).await;
    }
    // A publication handles its own signals: Ctrl-C unpublishes before the process ends.
    let own_signals = matches!(
        &cli.command,
        Command::Ports(crate::cli::PortsCommand::Publish { .. })
    );
    let config = match Config::load(&path, explicit) {
        Ok(config) => config.with_catalog(cli.global.catalog.clone()),
        Err(e) => {
            errln!("ferry: configuration: {e}");
            return exit::ERROR;
        }
    };
    let code = if own_signals {
        command(&config, cli).await
    } else {
        tokio::select! {
            code = command(&config, cli) => code,
            (name, code) = signal() => interrupted(&config, name, code).await,
        }
    };
    crate::store::settle().await;
    code
}

/// SIGINT or SIGTERM: its name and the exit code a shell expects.
async fn signal() -> (&'static str, i32) {
    crate::process::signals().await
}

/// The command was interrupted: whatever it had open is recorded as `interrupted`. A restore step
/// already running on an agent still runs to its end there, under the restore's lease.
async fn interrupted(config: &Config, name: &str, code: i32) -> i32 {
    errln!(
        "ferry: interrupted by {name}; recording the interrupted operation (an agent finishes the step it runs, and its lease makes the host safe if nobody resumes)"
    );
    // Taken before the runs are closed.
    let next = crate::ops::runs::next_after_interruption();
    match crate::ops::catalog(config).await {
        Ok(catalog) => {
            crate::ops::runs::interrupt_all(&catalog, &format!("interrupted by {name}")).await
        }
        Err(e) => errln!("ferry: recording the interruption: {e}"),
    }
    for next in next {
        errln!("next: {next}");
    }
    code
}

async fn command(config: &Config, cli: Cli) -> i32 {
    let config = config.clone();
    match cli.command {
        Command::Ping { pattern } => ping::run(&config, &cli.global, &pattern).await,
        Command::Facts { pattern } => facts::run(&config, &cli.global, &pattern).await,
        Command::Backup {
            pattern,
            compression,
        } => backup::run(&config, &cli.global, &pattern, compression).await,
        Command::Restore { host, args } => restore::run(&config, &cli.global, &host, &args).await,
        Command::Rollback { host } => restore::rollback(&config, &cli.global, &host).await,
        Command::Drill { pattern, args } => drill::run(&config, &cli.global, &pattern, &args).await,
        Command::Ports(command) => ports::run(&config, &cli.global, command).await,
        Command::PrepareDevices { host, args } => {
            restore::prepare_devices(&config, &cli.global, &host, &args).await
        }
        Command::History(args) => audit::history(&config, &cli.global, args).await,
        Command::Audit(command) => audit::audit(&config, command).await,
        Command::Archives(command) => archives::run(&config, &cli.global, command).await,
        Command::Catalog(command) => archives::run_catalog(&config, command).await,
        Command::Keys(command) => keys::run(&config, command).await,
        Command::Certs(command) => certs::run(&config, command).await,
        Command::Inventory(args) => inventory::run(&config, &cli.global, &args),
        Command::Status { pattern } => status::run(&config, &cli.global, pattern.as_deref()).await,
        // serve handles its own signals: run() hands it over before the generic handling.
        Command::Serve(_) => exit::ERROR,
    }
}
