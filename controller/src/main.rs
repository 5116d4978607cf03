//! `ferry`: parses arguments and hands over to the library.

use clap::Parser;

fn main() {
    let cli = match ferry::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                ferry::report::exit::ERROR
            } else {
                0
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    init_logging(cli.global.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            std::process::exit(ferry::report::exit::ERROR);
        }
    };
    let code = runtime.block_on(ferry::commands::run(cli));
    std::process::exit(code);
}

fn init_logging(format: ferry::cli::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        ferry::cli::LogFormat::Text => builder.init(),
        ferry::cli::LogFormat::Json => builder.json().init(),
    }
}
