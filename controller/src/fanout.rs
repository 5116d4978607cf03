//! Runs one task per host, at most `forks` at a time, each under a timeout.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;

use crate::inventory::Target;
use crate::report::{HostResult, Outcome};

/// How many hosts at once, and how long each may take.
#[derive(Debug, Clone, Copy)]
pub struct FanoutOptions {
    pub forks: usize,
    pub timeout: Duration,
}

/// Runs `task` for every target and returns the results in the targets' order. `on_done` sees each
/// result as soon as it is known.
pub async fn run<F, Fut>(
    targets: Vec<Target>,
    options: FanoutOptions,
    task: F,
    mut on_done: impl FnMut(&HostResult),
) -> Vec<HostResult>
where
    F: Fn(Target) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let order: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let timeout = options.timeout;
    let mut results: Vec<HostResult> = futures::stream::iter(targets)
        .map(|target| {
            let host = target.name.clone();
            let address = format!("{}:{}", target.address, target.port);
            let work = task(target);
            async move {
                let outcome = match tokio::time::timeout(timeout, work).await {
                    Ok(outcome) => outcome,
                    Err(_) => Outcome::Failed {
                        task: "timeout".into(),
                        cause: format!("no result within {}s (--timeout)", timeout.as_secs()),
                    },
                };
                HostResult {
                    host,
                    address,
                    outcome,
                }
            }
        })
        .buffer_unordered(options.forks.max(1))
        .inspect(|result| on_done(result))
        .collect()
        .await;
    results.sort_by_key(|r| order.iter().position(|h| *h == r.host));
    results
}
