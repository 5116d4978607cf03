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
            if code != 0 && json_requested() {
                ferry::output::set_json(true);
                ferry::errln!("{}", e.render().to_string().trim());
                ferry::output::finish("ferry", code);
            }
            std::process::exit(code);
        }
    };
    ferry::output::set_json(cli.global.output == ferry::report::Format::Json);
    let command = cli.command.name();
    // A service logs what it does; a command only what goes wrong.
    init_logging(
        cli.global.log_format,
        if command == "serve" {
            "info,tokio_postgres=warn"
        } else {
            "warn"
        },
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            ferry::errln!("ferry: cannot start the async runtime: {e}");
            ferry::output::finish(command, ferry::report::exit::ERROR);
            std::process::exit(ferry::report::exit::ERROR);
        }
    };
    let code = runtime.block_on(ferry::commands::run(cli));
    ferry::output::finish(command, code);
    std::process::exit(code);
}

/// Whether the command line asked for `-o json` (read before clap could parse it).
fn json_requested() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().enumerate().any(|(i, a)| {
        matches!(a.as_str(), "-ojson" | "--output=json")
            || (matches!(a.as_str(), "-o" | "--output")
                && args.get(i + 1).is_some_and(|v| v == "json"))
    })
}

fn init_logging(format: ferry::cli::LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (a closed pipe: `ferry serve 2>&1 | head -1`) is
        // dropped; tracing's own report of that would print to the same closed stderr and panic.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    match format {
        ferry::cli::LogFormat::Text => builder.init(),
        ferry::cli::LogFormat::Json => builder.json().init(),
    }
}
