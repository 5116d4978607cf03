//! `ferry ports publish HOST [--for 15m]` and `ferry ports unpublish HOST`: a host's database and KV
//! on its loopback address for a person, for the DBA-led paths of the restore docs. The agent holds
//! the publication under a dead-man lease this command renews; when the time runs out, this command
//! stops renewing (Ctrl-C, a kill, a cut link) or `unpublish` runs, the agent removes the drop-ins
//! and restarts both data services. Each publication is a run and a ledger entry.

use std::time::Duration;

use ferry_proto::v1::{PublishPortsRequest, UnpublishPortsRequest};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::catalog::HostRecord;
use crate::catalog::ledger::TaskRecord;
use crate::cli::{GlobalArgs, PortsCommand};
use crate::config::Config;
use crate::ops::Operation;
use crate::report::{Stop, exit};
use crate::types::OperationKind;

/// How long the agent waits for a renewal before it unpublishes on its own.
const LEASE: Duration = Duration::from_secs(10);
/// How often this command renews.
const RENEW: Duration = Duration::from_secs(2);
/// The longest publication ferry grants.
const LONGEST: Duration = Duration::from_secs(12 * 3600);

pub async fn run(config: &Config, global: &GlobalArgs, command: PortsCommand) -> i32 {
    match command {
        PortsCommand::Publish { host, duration } => publish(config, global, &host, &duration).await,
        PortsCommand::Unpublish { host } => unpublish(config, global, &host).await,
    }
}

/// One publication's record: a run, a host result and a ledger entry.
struct Record<'a> {
    opened: &'a crate::selection::Opened,
    operation: Operation<'a>,
    started: OffsetDateTime,
    tasks: Vec<TaskRecord>,
}

impl Record<'_> {
    fn task(&mut self, name: &str, started: OffsetDateTime, outcome: &str, detail: &str) {
        self.tasks.push(TaskRecord {
            name: name.into(),
            started,
            finished: OffsetDateTime::now_utc(),
            outcome: outcome.into(),
            detail: detail.into(),
        });
    }

    async fn end(self, outcome: &str, error: Option<String>) {
        let host = &self.opened.target.name;
        let finished = OffsetDateTime::now_utc();
        let host_outcome = match outcome {
            "succeeded" => "ok",
            "unreachable" => "unreachable",
            _ => "failed",
        };
        let record = HostRecord {
            host: host.clone(),
            outcome: host_outcome.into(),
            phase: error.as_ref().map(|_| self.operation.kind()),
            error: error.clone(),
            archive_id: None,
            started: self.started,
            finished,
        };
        let mut event = self.operation.event(host, self.started);
        event.finished = finished;
        event.outcome = outcome.into();
        event.error = error;
        event.tasks = self.tasks;
        self.operation.host(Some(&record), &event).await;
        let run = if outcome == "succeeded" {
            "succeeded"
        } else {
            "failed"
        };
        self.operation.finish(run).await;
        for problem in self.operation.take_problems() {
            errln!("ferry ports: {}: {}", problem.what, problem.error);
        }
    }
}

async fn begin<'a>(
    opened: &'a crate::selection::Opened,
    kind: OperationKind,
    flags: Value,
) -> Result<Record<'a>, Stop> {
    let operation = Operation::open(
        &opened.catalog,
        kind,
        &opened.target.name,
        &opened.operator,
        &flags,
    )
    .await
    .map_err(|e| Stop::new(exit::ERROR, format!("ferry ports: {e}")))?;
    Ok(Record {
        opened,
        operation,
        started: OffsetDateTime::now_utc(),
        tasks: Vec::new(),
    })
}

async fn publish(config: &Config, global: &GlobalArgs, host: &str, duration: &str) -> i32 {
    let length = match crate::schedule::Span::parse(duration) {
        Ok(span) if span.0 <= LONGEST => span.0,
        Ok(_) => {
            errln!(
                "ferry ports publish: --for {duration} is longer than 12h; publish again when it ends"
            );
            return exit::ERROR;
        }
        Err(e) => {
            errln!("ferry ports publish: --for: {e}");
            return exit::ERROR;
        }
    };
    // Handlers first: a Ctrl-C at any moment from here unpublishes rather than killing the process.
    let signal = crate::process::signals();
    tokio::pin!(signal);
    let opened = match crate::selection::open(config, global, host).await {
        Ok(opened) => opened,
        Err(stop) => return stop.say(),
    };
    let flags = json!({"for_seconds": length.as_secs(), "lease_seconds": LEASE.as_secs()});
    let mut record = match begin(&opened, OperationKind::PortsPublish, flags).await {
        Ok(r) => r,
        Err(stop) => return stop.say(),
    };
    let conn = match opened.dialer.connect(&opened.target).await {
        Ok(conn) => conn,
        Err(e) => {
            errln!("UNREACHABLE: [{host}] {e}; nothing was published");
            record.end("unreachable", Some(e.to_string())).await;
            return exit::UNREACHABLE;
        }
    };
    let id = format!(
        "p{}-{}",
        record.operation.run_id(),
        OffsetDateTime::now_utc().unix_timestamp()
    );
    let request = |renew| PublishPortsRequest {
        publication_id: id.clone(),
        for_seconds: length.as_secs(),
        lease_seconds: LEASE.as_secs() as u32,
        renew,
    };
    let started = OffsetDateTime::now_utc();
    let published = match conn.client.clone().publish_ports(request(false)).await {
        Ok(reply) => reply.into_inner(),
        // The agent went away during the call: it may have published before it did.
        Err(status) if conn.transport_error(&status).is_some() => {
            let cause = conn
                .transport_error(&status)
                .map(|e| e.to_string())
                .unwrap_or_default();
            let state = format!(
                "unknown: the ports may have been published; a running agent unpublishes within {}s, a stopped one as it starts again",
                LEASE.as_secs()
            );
            errln!(
                "UNREACHABLE: [{host}] task publish: {cause}\nhost state: {state}\nnext: `ferry facts {host}`"
            );
            record.task("publish", started, "unreachable", &cause);
            record
                .end(
                    "unreachable",
                    Some(format!("publish: {cause}; host state: {state}")),
                )
                .await;
            return exit::UNREACHABLE;
        }
        Err(status) => {
            let cause = status.message().to_string();
            errln!("FAILED: [{host}] task publish: {cause}; nothing was changed by this command");
            record.task("publish", started, "failed", &cause);
            record
                .end("failed", Some(format!("publish: {cause}")))
                .await;
            return exit::FAILED;
        }
    };
    let ports: Vec<String> = published
        .ports
        .iter()
        .map(|p| {
            format!(
                "{} on {}:{}",
                p.unit.trim_end_matches(".service"),
                published.address,
                p.port
            )
        })
        .collect();
    let until = OffsetDateTime::from_unix_timestamp(published.until_unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let kv = if published.kv.is_empty() {
        String::new()
    } else {
        format!("; {}", published.kv)
    };
    let detail = format!("{} published until {until}{kv}", ports.join(", "));
    record.task("publish", started, "ok", &detail);
    outln!("[{host}] {detail}");
    outln!(
        "[{host}] keep this command running; Ctrl-C or `ferry ports unpublish {host}` ends it (the agent unpublishes on its own {}s after this command stops renewing)",
        LEASE.as_secs()
    );
    // Renew until the time runs out, the publication ends elsewhere, or a signal arrives.
    let deadline = tokio::time::Instant::now() + length;
    let ended = loop {
        tokio::select! {
            (name, code) = &mut signal => break Ended::Signal(name, code),
            _ = tokio::time::sleep(RENEW) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            break Ended::Expired;
        }
        if let Err(status) = conn.client.clone().publish_ports(request(true)).await {
            break match conn.transport_error(&status) {
                Some(e) => Ended::Lost(e.to_string()),
                None => Ended::Gone(status.message().to_string()),
            };
        }
    };
    let why = match &ended {
        Ended::Signal(name, _) => format!("interrupted by {name}"),
        Ended::Expired => format!("--for {duration} ran out"),
        Ended::Gone(cause) | Ended::Lost(cause) => cause.clone(),
    };
    let started = OffsetDateTime::now_utc();
    if let Ended::Lost(cause) = &ended {
        // The agent stopped answering with the ports published: not an end, a loss. What is known:
        // a running agent unpublishes when its lease lapses; a dead one does when it starts again.
        let state = format!(
            "unknown: the ports may still be published; a running agent unpublishes within {}s of the last renewal, a stopped one as it starts again",
            LEASE.as_secs()
        );
        record.task("renew", started, "unreachable", cause);
        errln!(
            "UNREACHABLE: [{host}] the agent stopped answering while the ports were published: {cause}\nhost state: {state}\nnext: `ferry facts {host}` (once the agent answers, it says whether anything is still published); start ferry-agent on {host} if it is down"
        );
        record
            .end(
                "unreachable",
                Some(format!("renew: {cause}; host state: {state}")),
            )
            .await;
        return exit::UNREACHABLE;
    }
    if let Ended::Gone(cause) = &ended {
        // Ended elsewhere (unpublish, the agent's own expiry or restart): nothing left to end here.
        outln!("[{host}] {cause}");
        record.task("unpublish", started, "ok", cause);
        record.end("succeeded", None).await;
        return exit::OK;
    }
    let unpublished = conn
        .client
        .clone()
        .unpublish_ports(UnpublishPortsRequest {
            reason: why.clone(),
            publication_id: id.clone(),
        })
        .await;
    let (code, outcome, error) = match (&ended, unpublished) {
        (_, Err(status)) => {
            let cause = status.message().to_string();
            record.task("unpublish", started, "failed", &cause);
            errln!(
                "FAILED: [{host}] task unpublish: {cause}; the agent's lease unpublishes within {}s (check with `ferry facts {host}`)",
                LEASE.as_secs()
            );
            (exit::FAILED, "failed", Some(format!("unpublish: {cause}")))
        }
        (ended, Ok(reply)) => {
            let summary = reply.into_inner().summary;
            record.task("unpublish", started, "ok", &format!("{why}; {summary}"));
            outln!("[{host}] {why}; {summary}");
            match ended {
                Ended::Signal(_, code) => (*code, "interrupted", Some(why)),
                _ => (exit::OK, "succeeded", None),
            }
        }
    };
    record.end(outcome, error).await;
    code
}

/// Why a publication's renewals stopped.
enum Ended {
    Signal(&'static str, i32),
    Expired,
    /// The agent no longer holds it (unpublished from elsewhere, restarted).
    Gone(String),
    /// The agent stopped answering: the publication's state is not known.
    Lost(String),
}

async fn unpublish(config: &Config, global: &GlobalArgs, host: &str) -> i32 {
    let opened = match crate::selection::open(config, global, host).await {
        Ok(opened) => opened,
        Err(stop) => return stop.say(),
    };
    let mut record = match begin(&opened, OperationKind::PortsUnpublish, json!({})).await {
        Ok(r) => r,
        Err(stop) => return stop.say(),
    };
    let conn = match opened.dialer.connect(&opened.target).await {
        Ok(conn) => conn,
        Err(e) => {
            errln!("UNREACHABLE: [{host}] {e}");
            record.end("unreachable", Some(e.to_string())).await;
            return exit::UNREACHABLE;
        }
    };
    let started = OffsetDateTime::now_utc();
    match conn
        .client
        .clone()
        .unpublish_ports(UnpublishPortsRequest {
            reason: "ferry ports unpublish".into(),
            publication_id: String::new(),
        })
        .await
    {
        Ok(reply) => {
            let summary = reply.into_inner().summary;
            outln!("[{host}] {summary}");
            record.task("unpublish", started, "ok", &summary);
            record.end("succeeded", None).await;
            exit::OK
        }
        Err(status) => {
            let cause = status.message().to_string();
            errln!("FAILED: [{host}] task unpublish: {cause}");
            record.task("unpublish", started, "failed", &cause);
            record.end("failed", Some(cause)).await;
            exit::FAILED
        }
    }
}
