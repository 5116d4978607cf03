//! Per-host outcomes, the play recap, and exit codes.

use std::io::Write;

use serde_json::{Value, json};

/// Documented exit codes of every fleet command.
pub mod exit {
    /// Every host succeeded.
    pub const OK: i32 = 0;
    /// ferry could not start: bad arguments, configuration or certificates.
    pub const ERROR: i32 = 1;
    /// At least one host failed a task.
    pub const FAILED: i32 = 2;
    /// At least one host could not be talked to (and none failed).
    pub const UNREACHABLE: i32 = 3;
    /// The inventory or host pattern is invalid; nothing was contacted.
    pub const INVENTORY: i32 = 4;
}

pub use crate::types::{HostResult, Outcome, human_bytes};

/// Why a command ends before its work: what it says and its exit code. Built where the cause is
/// known, said once by the command ([`Stop::say`]).
#[derive(Debug)]
pub struct Stop {
    pub code: i32,
    /// Lines for stderr (and the JSON document's `error`).
    pub lines: Vec<String>,
}

impl Stop {
    pub fn new(code: i32, line: impl Into<String>) -> Stop {
        Stop {
            code,
            lines: vec![line.into()],
        }
    }

    /// Nothing more to do (`--list-hosts` answered): exit 0, nothing to say.
    pub fn done() -> Stop {
        Stop {
            code: exit::OK,
            lines: Vec::new(),
        }
    }

    /// The operation's own report (a play's output and record) said why already.
    pub fn reported(code: i32) -> Stop {
        Stop {
            code,
            lines: Vec::new(),
        }
    }

    /// Says why, once, and returns the exit code.
    pub fn say(self) -> i32 {
        for line in &self.lines {
            errln!("{line}");
        }
        self.code
    }
}

/// How results are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[value(alias = "table")]
    Text,
    Json,
    /// Comma-separated values (`ferry history`); other commands print text.
    Csv,
}

/// Prints one line as a host finishes (text mode only).
pub fn progress_line(format: Format, result: &HostResult) {
    if format == Format::Text {
        outln!("{}", line(result));
    }
}

/// The line that says how a host finished.
pub fn line(result: &HostResult) -> String {
    match &result.outcome {
        Outcome::Ok {
            changed, summary, ..
        } => format!(
            "{}: [{}] {summary}",
            if *changed { "changed" } else { "ok" },
            result.host
        ),
        Outcome::Failed { task, cause } => {
            format!("FAILED: [{}] task {task}: {cause}", result.host)
        }
        Outcome::Unreachable(e) => format!("UNREACHABLE: [{}] {e}", result.host),
        Outcome::Skipped { reason } => format!("skipping: [{}] {reason}", result.host),
    }
}

/// The exit code for a set of results.
pub fn exit_code(results: &[HostResult]) -> i32 {
    if results
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Failed { .. }))
    {
        exit::FAILED
    } else if results
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Unreachable(_)))
    {
        exit::UNREACHABLE
    } else {
        exit::OK
    }
}

fn counts(outcome: &Outcome) -> [u32; 5] {
    // ok, changed, unreachable, failed, skipped
    match outcome {
        Outcome::Ok { changed: false, .. } => [1, 0, 0, 0, 0],
        Outcome::Ok { changed: true, .. } => [1, 1, 0, 0, 0],
        Outcome::Unreachable(_) => [0, 0, 1, 0, 0],
        Outcome::Failed { .. } => [0, 0, 0, 1, 0],
        Outcome::Skipped { .. } => [0, 0, 0, 0, 1],
    }
}

/// Prints the recap (text) or the whole JSON document, and returns the exit code.
pub fn finish(
    format: Format,
    command: &str,
    play: &crate::fanout::PlayResults,
    mut out: impl Write,
) -> i32 {
    let results = &play.results;
    let code = exit_code(results);
    let batches = &play.batches;
    let stopped = batches.iter().enumerate().find_map(|(i, b)| {
        b.stopped.as_ref().map(|why| {
            format!(
                "the play stopped after batch {}/{}: {why}",
                i + 1,
                play.planned
            )
        })
    });
    match format {
        Format::Text | Format::Csv => {
            let width = results.iter().map(|r| r.host.len()).max().unwrap_or(0);
            if play.planned > 1 {
                let _ = writeln!(out, "\nBATCHES ({command})");
                for (i, b) in batches.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "batch {}/{}: {} — {} failed",
                        i + 1,
                        play.planned,
                        b.hosts.join(", "),
                        b.failed
                    );
                }
                if let Some(stopped) = &stopped {
                    let skipped: Vec<&str> = results
                        .iter()
                        .filter(|r| matches!(r.outcome, Outcome::Skipped { .. }))
                        .map(|r| r.host.as_str())
                        .collect();
                    let _ = writeln!(out, "STOPPED: {stopped}; not run: {}", skipped.join(", "));
                }
            }
            let _ = writeln!(out, "\nPLAY RECAP ({command})");
            for r in results {
                let [ok, changed, unreachable, failed, skipped] = counts(&r.outcome);
                let _ = writeln!(
                    out,
                    "{:width$} : ok={ok:<3} changed={changed:<3} unreachable={unreachable:<3} failed={failed:<3} skipped={skipped}",
                    r.host
                );
            }
        }
        Format::Json => {
            let hosts: serde_json::Map<String, Value> = results
                .iter()
                .map(|r| (r.host.clone(), host_json(r)))
                .collect();
            let recap: serde_json::Map<String, Value> = results
                .iter()
                .map(|r| {
                    let [ok, changed, unreachable, failed, skipped] = counts(&r.outcome);
                    (
                        r.host.clone(),
                        json!({"ok": ok, "changed": changed, "unreachable": unreachable,
                               "failed": failed, "skipped": skipped}),
                    )
                })
                .collect();
            let batches: Vec<Value> = batches
                .iter()
                .map(|b| json!({"hosts": b.hosts, "failed": b.failed, "stopped": b.stopped}))
                .collect();
            let doc = json!({"command": command, "hosts": hosts, "recap": recap,
                             "batches": batches, "stopped": stopped, "exit_code": code});
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&doc).unwrap_or_default()
            );
        }
    }
    code
}

fn host_json(r: &HostResult) -> Value {
    match &r.outcome {
        Outcome::Ok {
            changed,
            summary,
            data,
        } => json!({"status": "ok", "address": r.address, "changed": changed,
                    "summary": summary, "data": data}),
        Outcome::Failed { task, cause } => {
            json!({"status": "failed", "address": r.address, "task": task, "error": cause})
        }
        Outcome::Unreachable(e) => json!({"status": "unreachable", "address": r.address,
                                          "reason": e.kind(), "error": e.to_string()}),
        Outcome::Skipped { reason } => {
            json!({"status": "skipped", "address": r.address, "reason": reason})
        }
    }
}

/// A restore's status as JSON: every field typed, steps and components by name.
pub fn restore_status_json(s: &ferry_proto::v1::RestoreStatus) -> Value {
    json!({
        "restore_id": s.restore_id,
        "state": ferry_proto::v1::HostState::try_from(s.state).unwrap_or(ferry_proto::v1::HostState::Unspecified).as_str_name(),
        "state_name": ferry_proto::v1::HostState::try_from(s.state).unwrap_or(ferry_proto::v1::HostState::Unspecified).name(),
        "last_done": ferry_proto::v1::Step::of(s.last_done).name(),
        "plan": s.plan.iter().map(|p| ferry_proto::v1::Step::of(*p).name()).collect::<Vec<_>>(),
        "components": s.components.iter().map(|c| ferry_proto::v1::Component::try_from(*c).unwrap_or(ferry_proto::v1::Component::Unspecified).name()).collect::<Vec<_>>(),
        "published": s.published,
        "lapsed": (!s.lapsed.is_empty()).then_some(&s.lapsed),
        "running": (s.running != 0).then(|| ferry_proto::v1::Step::of(s.running).name()),
        "idle_seconds": s.idle_seconds,
        "summary": s.summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dial::DialError;

    fn result(host: &str, outcome: Outcome) -> HostResult {
        HostResult {
            host: host.into(),
            address: "127.0.0.1:7482".into(),
            outcome,
        }
    }

    fn ok() -> Outcome {
        Outcome::Ok {
            changed: false,
            summary: String::new(),
            data: Value::Null,
        }
    }

    fn unreachable() -> Outcome {
        Outcome::Unreachable(DialError::Unreachable {
            addr: "x".into(),
            cause: "connection refused".into(),
        })
    }

    fn failed() -> Outcome {
        Outcome::Failed {
            task: "facts".into(),
            cause: "boom".into(),
        }
    }

    #[test]
    fn failed_outranks_unreachable_outranks_ok() {
        assert_eq!(exit_code(&[result("a", ok())]), exit::OK);
        assert_eq!(
            exit_code(&[result("a", ok()), result("b", unreachable())]),
            exit::UNREACHABLE
        );
        assert_eq!(
            exit_code(&[result("a", failed()), result("b", unreachable())]),
            exit::FAILED
        );
        assert_ne!(exit::FAILED, exit::UNREACHABLE);
    }

    #[test]
    fn recap_counts_per_host() {
        let mut out = Vec::new();
        let results = [
            result("cp01", ok()),
            result("cp02", failed()),
            result("cp03", unreachable()),
        ];
        let play = crate::fanout::PlayResults {
            results: results.to_vec(),
            batches: Vec::new(),
            planned: 1,
        };
        let code = finish(Format::Json, "ping", &play, &mut out);
        assert_eq!(code, exit::FAILED);
        let doc: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["recap"]["cp01"]["ok"], 1);
        assert_eq!(doc["recap"]["cp02"]["failed"], 1);
        assert_eq!(doc["hosts"]["cp02"]["task"], "facts");
        assert_eq!(doc["recap"]["cp03"]["unreachable"], 1);
        assert_eq!(doc["hosts"]["cp03"]["reason"], "unreachable");
        assert_eq!(doc["exit_code"], 2);
    }
}
