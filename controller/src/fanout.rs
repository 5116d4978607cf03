//! Runs one task per host, at most `forks` at a time, each under a timeout; in rolling batches
//! (`--serial`) with a failure budget (`--max-fail-percentage`), with Ansible's meaning of both.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use futures::StreamExt;

use crate::inventory::Target;
use crate::types::{HostResult, Outcome};

/// How many hosts at once, how long each may take, and in which batches.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    pub forks: usize,
    pub timeout: Duration,
    pub serial: Option<Serial>,
    /// A batch whose failed share exceeds this stops the play; None: only a batch where every host
    /// failed does.
    pub max_fail_percentage: Option<u8>,
}

/// One batch size: a count, or a share of all selected hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Count(usize),
    Percent(u8),
}

/// `--serial N|P%|A,B,C%`: successive batch sizes, the last repeating (Ansible's `serial`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serial(pub Vec<BatchSize>);

impl FromStr for Serial {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let sizes = text
            .split(',')
            .map(|item| {
                let item = item.trim();
                match item.strip_suffix('%') {
                    Some(p) => p
                        .parse::<u8>()
                        .ok()
                        .filter(|p| (1..=100).contains(p))
                        .map(BatchSize::Percent)
                        .ok_or_else(|| format!("{item:?} is not a percentage from 1% to 100%")),
                    None => item
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .map(BatchSize::Count)
                        .ok_or_else(|| {
                            format!(
                                "{item:?} is not a batch size (a number of hosts from 1, or P%)"
                            )
                        }),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Serial(sizes))
    }
}

impl Serial {
    /// The batch sizes for `total` hosts, as Ansible cuts them (a percentage rounds down, at least 1).
    pub fn batches(&self, total: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut left = total;
        let mut i = 0;
        while left > 0 {
            let size = match self.0.get(i).or(self.0.last()) {
                Some(BatchSize::Count(n)) => *n,
                Some(BatchSize::Percent(p)) => (usize::from(*p) * total / 100).max(1),
                None => left,
            };
            let size = size.min(left);
            sizes.push(size);
            left -= size;
            i = (i + 1).min(self.0.len().saturating_sub(1));
        }
        sizes
    }
}

/// One batch as it ran.
#[derive(Debug, Clone)]
pub struct Batch {
    pub hosts: Vec<String>,
    pub failed: usize,
    /// Why the play stopped after this batch.
    pub stopped: Option<String>,
}

/// Every host's result (in the targets' order) and the batches.
#[derive(Debug, Clone)]
pub struct PlayResults {
    pub results: Vec<HostResult>,
    /// The batches that ran.
    pub batches: Vec<Batch>,
    /// How many batches the selection was cut into.
    pub planned: usize,
}

/// Runs `task` for every target, batch by batch; `on_done` sees each result as soon as it is
/// known. Hosts of batches after one that crossed the failure budget are skipped, not run.
pub async fn run<F, Fut>(
    targets: Vec<Target>,
    options: FanoutOptions,
    task: F,
    mut on_done: impl FnMut(&HostResult),
) -> PlayResults
where
    F: Fn(Target) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let total = targets.len();
    let sizes = match &options.serial {
        Some(serial) => serial.batches(total),
        None => vec![total],
    };
    let mut pending = targets.into_iter();
    let mut results = Vec::with_capacity(total);
    let mut batches = Vec::new();
    let count = sizes.len();
    for (index, size) in sizes.into_iter().enumerate() {
        let batch: Vec<Target> = pending.by_ref().take(size).collect();
        let names: Vec<String> = batch.iter().map(|t| t.name.clone()).collect();
        let done = run_batch(batch, &options, &task, &mut on_done).await;
        let failed = done
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed { .. } | Outcome::Unreachable(_)))
            .count();
        results.extend(done);
        let stopped = budget_crossed(&options, failed, names.len()).filter(|_| index + 1 < count);
        let stop = stopped.clone();
        batches.push(Batch {
            hosts: names,
            failed,
            stopped,
        });
        if let Some(why) = stop {
            for target in pending.by_ref() {
                let result = HostResult {
                    host: target.name.clone(),
                    address: format!("{}:{}", target.address, target.port),
                    outcome: Outcome::Skipped {
                        reason: format!(
                            "not run: the play stopped after batch {} ({why})",
                            index + 1
                        ),
                    },
                };
                on_done(&result);
                results.push(result);
            }
            break;
        }
    }
    PlayResults {
        results,
        batches,
        planned: count,
    }
}

/// Why a batch with `failed` of `size` hosts failed stops the play, if it does.
fn budget_crossed(options: &FanoutOptions, failed: usize, size: usize) -> Option<String> {
    match options.max_fail_percentage {
        Some(p) if failed * 100 > usize::from(p) * size => Some(format!(
            "{failed} of {size} hosts failed or were unreachable ({}%), more than --max-fail-percentage {p}",
            failed * 100 / size.max(1)
        )),
        None if size > 0 && failed == size => {
            Some(format!("every host of the batch ({size}) failed"))
        }
        _ => None,
    }
}

async fn run_batch<F, Fut>(
    targets: Vec<Target>,
    options: &FanoutOptions,
    task: &F,
    on_done: &mut impl FnMut(&HostResult),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_cuts_batches_as_ansible_does() {
        let serial = |s: &str| s.parse::<Serial>().unwrap();
        assert_eq!(serial("2").batches(5), [2, 2, 1]);
        assert_eq!(serial("30%").batches(10), [3, 3, 3, 1]);
        assert_eq!(
            serial("10%").batches(5),
            [1, 1, 1, 1, 1],
            "at least one host"
        );
        assert_eq!(serial("1,2,50%").batches(10), [1, 2, 5, 2]);
        assert_eq!(serial("100%").batches(3), [3]);
        for bad in ["0", "0%", "101%", "x", "2,,3", "-1"] {
            assert!(bad.parse::<Serial>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_budget_is_exceeded_not_reached() {
        let options = |p| FanoutOptions {
            forks: 1,
            timeout: Duration::from_secs(1),
            serial: None,
            max_fail_percentage: p,
        };
        assert!(budget_crossed(&options(Some(0)), 1, 2).is_some());
        assert!(budget_crossed(&options(Some(50)), 1, 2).is_none());
        assert!(budget_crossed(&options(Some(49)), 1, 2).is_some());
        assert!(budget_crossed(&options(None), 1, 2).is_none());
        assert!(budget_crossed(&options(None), 2, 2).is_some());
    }
}
