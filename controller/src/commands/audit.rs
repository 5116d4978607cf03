//! `ferry history` (who did what to which host, when, with what outcome) and `ferry audit
//! verify|export` (the ledger's hash chain).

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::catalog::Catalog;
use crate::catalog::ledger::{self, Entry};
use crate::cli::{AuditCommand, HistoryArgs, HistoryCommand};
use crate::config::Config;
use crate::report::{Format, exit};

/// Every ledger entry, or the exit code for why they cannot be read.
async fn ledger_entries(config: &Config, what: &str) -> Result<Vec<Entry>, i32> {
    let catalog = Catalog::connect(config).await.map_err(|e| {
        eprintln!("ferry {what}: {e}");
        exit::ERROR
    })?;
    catalog.ledger().await.map_err(|e| {
        eprintln!("ferry {what}: {e}");
        exit::ERROR
    })
}

/// `2026-11-21` or an RFC 3339 time.
fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(&format!("{text}T00:00:00Z"), &Rfc3339))
        .map_err(|_| format!("{text:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"))
}

fn field<'a>(content: &'a Value, key: &str) -> &'a str {
    content[key].as_str().unwrap_or_default()
}

pub async fn history(config: &Config, format: Format, args: HistoryArgs) -> i32 {
    let entries = match ledger_entries(config, "history").await {
        Ok(entries) => entries,
        Err(code) => return code,
    };
    if let Some(HistoryCommand::Show { id }) = args.command {
        return show(&entries, id, format);
    }
    let (since, until) = match (
        args.since.as_deref().map(parse_time).transpose(),
        args.until.as_deref().map(parse_time).transpose(),
    ) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("ferry history: {e}");
            return exit::ERROR;
        }
    };
    let selected: Vec<(&Entry, Value)> = entries
        .iter()
        .map(|e| (e, e.content_json()))
        .filter(|(_, c)| {
            args.pattern
                .as_deref()
                .is_none_or(|p| glob_match::glob_match(p, field(c, "target")))
        })
        .filter(|(_, c)| args.kind.as_deref().is_none_or(|k| field(c, "kind") == k))
        .filter(|(_, c)| {
            args.outcome
                .as_deref()
                .is_none_or(|o| field(c, "outcome") == o)
        })
        .filter(|(_, c)| {
            let started = OffsetDateTime::parse(field(c, "started"), &Rfc3339).ok();
            since.is_none_or(|s| started.is_some_and(|t| t >= s))
                && until.is_none_or(|u| started.is_some_and(|t| t <= u))
        })
        .collect();
    match format {
        Format::Json => {
            let docs: Vec<Value> = selected.iter().map(|(e, c)| entry_json(e, c)).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&docs).unwrap_or_default()
            );
        }
        Format::Csv => {
            println!(
                "id,started,finished,kind,target,outcome,operator,fingerprint,os_user,controller_host,archive_sha256,source_host,error"
            );
            for (e, c) in &selected {
                let row = [
                    e.seq.to_string(),
                    field(c, "started").into(),
                    field(c, "finished").into(),
                    field(c, "kind").into(),
                    field(c, "target").into(),
                    field(c, "outcome").into(),
                    c["operator"]["subject"].as_str().unwrap_or_default().into(),
                    c["operator"]["fingerprint"]
                        .as_str()
                        .unwrap_or_default()
                        .into(),
                    c["operator"]["os_user"].as_str().unwrap_or_default().into(),
                    c["operator"]["controller_host"]
                        .as_str()
                        .unwrap_or_default()
                        .into(),
                    c["archive"]["sha256"].as_str().unwrap_or_default().into(),
                    c["archive"]["source_host"]
                        .as_str()
                        .unwrap_or_default()
                        .into(),
                    field(c, "error").into(),
                ];
                println!(
                    "{}",
                    row.iter().map(|f| csv(f)).collect::<Vec<_>>().join(",")
                );
            }
        }
        Format::Text => {
            println!(
                "{:>5}  {:<20} {:<18} {:<8} {:<11} {:<26} ARCHIVE",
                "ID", "STARTED", "KIND", "TARGET", "OUTCOME", "OPERATOR"
            );
            for (e, c) in &selected {
                let archive = c["archive"]["sha256"]
                    .as_str()
                    .map(|s| format!("{}…", &s[..12.min(s.len())]))
                    .unwrap_or_default();
                let operator = c["operator"]["subject"].as_str().unwrap_or_default();
                let who = operator.rsplit("CN=").next().unwrap_or(operator);
                println!(
                    "{:>5}  {:<20} {:<18} {:<8} {:<11} {:<26} {archive}",
                    e.seq,
                    field(c, "started").get(..19).unwrap_or_default(),
                    field(c, "kind"),
                    field(c, "target"),
                    field(c, "outcome"),
                    format!(
                        "{who} ({})",
                        c["operator"]["os_user"].as_str().unwrap_or_default()
                    ),
                );
            }
            println!(
                "{} entr{}",
                selected.len(),
                if selected.len() == 1 { "y" } else { "ies" }
            );
        }
    }
    exit::OK
}

fn csv(field: &str) -> String {
    if field.contains([',', '"', '\n']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

fn entry_json(e: &Entry, content: &Value) -> Value {
    let mut doc = content.clone();
    doc["id"] = e.seq.into();
    doc["recorded_at"] = e.recorded_at.format(&Rfc3339).unwrap_or_default().into();
    doc["hash"] = e.hash.clone().into();
    doc
}

fn show(entries: &[Entry], id: i64, format: Format) -> i32 {
    let Some(entry) = entries.iter().find(|e| e.seq == id) else {
        eprintln!("ferry history: no entry {id} (see `ferry history`)");
        return exit::ERROR;
    };
    let c = entry.content_json();
    if format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entry_json(entry, &c)).unwrap_or_default()
        );
        return exit::OK;
    }
    println!("entry:      {} (hash {})", entry.seq, entry.hash);
    println!(
        "operation:  {} of {} — {}",
        field(&c, "kind"),
        field(&c, "target"),
        field(&c, "outcome")
    );
    println!(
        "operator:   {} (sha256 {}), user {} on {}",
        c["operator"]["subject"].as_str().unwrap_or_default(),
        c["operator"]["fingerprint"].as_str().unwrap_or_default(),
        c["operator"]["os_user"].as_str().unwrap_or_default(),
        c["operator"]["controller_host"]
            .as_str()
            .unwrap_or_default()
    );
    if !c["archive"].is_null() {
        println!(
            "archive:    {} {} of {} (sha256 {})",
            c["archive"]["id"],
            c["archive"]["name"].as_str().unwrap_or_default(),
            c["archive"]["source_host"].as_str().unwrap_or_default(),
            c["archive"]["sha256"].as_str().unwrap_or_default()
        );
    }
    println!("flags:      {}", c["flags"]);
    println!(
        "time:       {} → {}",
        field(&c, "started"),
        field(&c, "finished")
    );
    if let Some(error) = c["error"].as_str() {
        println!("error:      {error}");
    }
    println!("tasks:");
    for t in c["tasks"].as_array().into_iter().flatten() {
        println!(
            "  {} {:<16} {:<8} {}",
            t["started"].as_str().unwrap_or_default(),
            t["name"].as_str().unwrap_or_default(),
            t["outcome"].as_str().unwrap_or_default(),
            t["detail"].as_str().unwrap_or_default()
        );
    }
    exit::OK
}

pub async fn audit(config: &Config, command: AuditCommand) -> i32 {
    let entries = match ledger_entries(config, "audit").await {
        Ok(entries) => entries,
        Err(code) => return code,
    };
    match command {
        AuditCommand::Verify => match ledger::verify(&entries) {
            Ok(n) => {
                let head = entries
                    .last()
                    .map(|e| e.hash.as_str())
                    .unwrap_or(ledger::GENESIS);
                println!("ledger intact: {n} entries, head hash {head}");
                exit::OK
            }
            Err(broken) => {
                println!("LEDGER BROKEN: {broken}");
                exit::FAILED
            }
        },
        AuditCommand::Export { since } => {
            let since = match since.as_deref().map(parse_time).transpose() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("ferry audit export: {e}");
                    return exit::ERROR;
                }
            };
            // The chain starts before `since`: each line keeps its prev_hash so it can be checked.
            for e in entries
                .iter()
                .filter(|e| since.is_none_or(|s| e.recorded_at >= s))
            {
                let line = serde_json::json!({"seq": e.seq, "recorded_at": e.recorded_at.format(&Rfc3339).unwrap_or_default(),
                                              "content": e.content, "prev_hash": e.prev_hash, "hash": e.hash});
                println!("{line}");
            }
            exit::OK
        }
    }
}
