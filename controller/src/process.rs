//! This process: its identity on this machine (what runs and serve replicas are owned by), and
//! the signals that end it.

/// This process, as `pid:start time` (a pid alone may be reused).
pub fn this_process() -> String {
    process_id(std::process::id()).unwrap_or_default()
}

fn process_id(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the command name (which may hold spaces and parentheses).
    let start = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?;
    Some(format!("{pid}:{start}"))
}

/// Whether the process recorded as `pid:start time` still runs (on this machine).
pub fn alive(process: &str) -> bool {
    let Some(pid) = process
        .split_once(':')
        .and_then(|(p, _)| p.parse::<u32>().ok())
    else {
        return false;
    };
    process_id(pid).as_deref() == Some(process)
}

/// SIGINT or SIGTERM: its name and the exit code a shell expects, with the handlers installed now
/// rather than when first awaited: a command that
/// handles its own signals takes them from its very start.
pub fn signals() -> impl std::future::Future<Output = (&'static str, i32)> {
    use tokio::signal::unix::{SignalKind, signal};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        let (Ok(mut int), Ok(mut term)) = (int, term) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => ("SIGINT", 130),
            _ = term.recv() => ("SIGTERM", 143),
        }
    }
}
