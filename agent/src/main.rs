//! `ferry-agent --config /etc/ferry/agent.yaml`

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// ferry's agent: serves typed backup and restore tasks to the ferry controller over mTLS.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Agent configuration file.
    #[arg(
        long,
        env = "FERRY_AGENT_CONFIG",
        default_value = "/etc/ferry/agent.yaml"
    )]
    config: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written is dropped, never a panic (see the controller's).
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let config = ferry_agent::config::AgentConfig::load(&args.config)?;
    ferry_agent::server::serve(&config, shutdown_signal())
        .await
        .with_context(|| format!("ferry-agent ({})", args.config.display()))
}

/// SIGTERM (systemd stop) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
}
