//! `ferry history` (who did what to which host, when, with what outcome) and `ferry audit
//! verify|export` (the ledger's hash chain).

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::catalog::CatalogError;
use crate::catalog::ledger::{self, Entry};
use crate::cli::{AuditCommand, GlobalArgs, HistoryArgs, HistoryCommand};
use crate::config::Config;
use crate::report::{Format, Stop, exit};

/// Every ledger entry, or why they cannot be read.
async fn ledger_entries(config: &Config, what: &str) -> Result<Vec<Entry>, Stop> {
    let stop = |e: CatalogError| Stop::new(exit::ERROR, format!("ferry {what}: {e}"));
    let catalog = crate::ops::catalog(config).await.map_err(stop)?;
    catalog.ledger().await.map_err(stop)
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

/// The other names of the hosts `pattern` matches: an inventory host known to its agent by
/// another name (`ferry_agent_name`) has its operations recorded under both.
fn aliases(config: &Config, global: &GlobalArgs, pattern: &str) -> Vec<String> {
    let sources = crate::selection::inventory_sources(config, global);
    let Ok(inventory) = crate::inventory::Inventory::load_all(sources) else {
        return Vec::new();
    };
    let mut aliases = Vec::new();
    for host in inventory.hosts_of_group("all") {
        let Ok(target) = inventory.target(&host) else {
            continue;
        };
        if target.agent_name == host {
            continue;
        }
        if glob_match::glob_match(pattern, &host) {
            errln!(
                "[NOTE]: {host} is known to its agent as {} (ferry_agent_name): operations recorded under either name are shown",
                target.agent_name
            );
            aliases.push(target.agent_name);
        } else if glob_match::glob_match(pattern, &target.agent_name) {
            aliases.push(host);
        }
    }
    aliases
}

pub async fn history(config: &Config, global: &GlobalArgs, args: HistoryArgs) -> i32 {
    let format = global.output;
    let entries = match ledger_entries(config, "history").await {
        Ok(entries) => entries,
        Err(stop) => return stop.say(),
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
            errln!("ferry history: {e}");
            return exit::ERROR;
        }
    };
    let failing = ledger::failing(&entries);
    let aliases = args
        .pattern
        .as_deref()
        .map(|p| aliases(config, global, p))
        .unwrap_or_default();
    let selected: Vec<(&Entry, Value)> = entries
        .iter()
        .map(|e| (e, e.content_json()))
        .filter(|(_, c)| {
            args.pattern.as_deref().is_none_or(|p| {
                let target = field(c, "target");
                glob_match::glob_match(p, target) || aliases.iter().any(|a| a == target)
            })
        })
        .filter(|(_, c)| args.kind.is_none_or(|k| field(c, "kind") == k.name()))
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
            let docs: Vec<Value> = selected
                .iter()
                .map(|(e, c)| {
                    let mut doc = entry_json(e, c);
                    doc["verified"] = (!failing.contains(&e.seq)).into();
                    doc
                })
                .collect();
            crate::output::json(&serde_json::to_value(&docs).unwrap_or_default());
        }
        Format::Csv => {
            outln!(
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
                outln!(
                    "{}",
                    row.iter().map(|f| csv(f)).collect::<Vec<_>>().join(",")
                );
            }
        }
        Format::Text => {
            // Columns as wide as their widest value: long host names or operators never run into
            // the next column.
            let mut rows: Vec<[String; 7]> = vec![[
                "ID".into(),
                "STARTED".into(),
                "KIND".into(),
                "TARGET".into(),
                "OUTCOME".into(),
                "OPERATOR".into(),
                "ARCHIVE".into(),
            ]];
            for (e, c) in &selected {
                let archive = c["archive"]["sha256"]
                    .as_str()
                    .map(|s| format!("{}…", &s[..12.min(s.len())]))
                    .unwrap_or_default();
                let operator = c["operator"]["subject"].as_str().unwrap_or_default();
                let who = operator.rsplit("CN=").next().unwrap_or(operator);
                rows.push([
                    e.seq.to_string(),
                    field(c, "started")
                        .get(..19)
                        .unwrap_or_default()
                        .to_string(),
                    field(c, "kind").to_string(),
                    field(c, "target").to_string(),
                    if failing.contains(&e.seq) {
                        format!("{} [FAILS VERIFY]", field(c, "outcome"))
                    } else {
                        field(c, "outcome").to_string()
                    },
                    format!(
                        "{who} ({})",
                        c["operator"]["os_user"].as_str().unwrap_or_default()
                    ),
                    archive,
                ]);
            }
            let widths: Vec<usize> = (0..7)
                .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
                .collect();
            for row in &rows {
                let cells: Vec<String> = row
                    .iter()
                    .enumerate()
                    .map(|(i, cell)| match i {
                        0 => format!("{cell:>w$}", w = widths[0]),
                        6 => cell.clone(),
                        _ => format!("{cell:<w$}", w = widths[i]),
                    })
                    .collect();
                outln!("{}", cells.join("  "));
            }
            outln!(
                "{} entr{}",
                selected.len(),
                if selected.len() == 1 { "y" } else { "ies" }
            );
        }
    }
    let marked = selected
        .iter()
        .filter(|(e, _)| failing.contains(&e.seq))
        .count();
    if marked > 0 {
        errln!(
            "[WARNING]: {marked} of these entries fail the ledger's hash chain (edited, renumbered or unchained): marked [FAILS VERIFY]; `ferry audit verify` names the first break"
        );
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
        errln!("ferry history: no entry {id} (see `ferry history`)");
        return exit::ERROR;
    };
    let c = entry.content_json();
    if format == Format::Json {
        crate::output::json(&entry_json(entry, &c));
        return exit::OK;
    }
    outln!("entry:      {} (hash {})", entry.seq, entry.hash);
    outln!(
        "operation:  {} of {} — {}",
        field(&c, "kind"),
        field(&c, "target"),
        field(&c, "outcome")
    );
    outln!(
        "operator:   {} (sha256 {}), user {} on {}",
        c["operator"]["subject"].as_str().unwrap_or_default(),
        c["operator"]["fingerprint"].as_str().unwrap_or_default(),
        c["operator"]["os_user"].as_str().unwrap_or_default(),
        c["operator"]["controller_host"]
            .as_str()
            .unwrap_or_default()
    );
    if !c["archive"].is_null() {
        outln!(
            "archive:    {} {} of {} (sha256 {})",
            c["archive"]["id"],
            c["archive"]["name"].as_str().unwrap_or_default(),
            c["archive"]["source_host"].as_str().unwrap_or_default(),
            c["archive"]["sha256"].as_str().unwrap_or_default()
        );
    }
    outln!("flags:      {}", c["flags"]);
    outln!(
        "time:       {} → {}",
        field(&c, "started"),
        field(&c, "finished")
    );
    if let Some(error) = c["error"].as_str() {
        outln!("error:      {error}");
    }
    outln!("tasks:");
    for t in c["tasks"].as_array().into_iter().flatten() {
        outln!(
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
        Err(stop) => return stop.say(),
    };
    match command {
        AuditCommand::Verify => {
            let head = entries
                .last()
                .map(|e| e.hash.as_str())
                .unwrap_or(ledger::GENESIS);
            let (code, doc) = match ledger::verify(&entries) {
                Ok(n) => {
                    outln!("ledger intact: {n} entries, head hash {head}");
                    (
                        exit::OK,
                        serde_json::json!({"intact": true, "entries": n, "head": head}),
                    )
                }
                Err(broken) => {
                    outln!("LEDGER BROKEN: {broken}");
                    (
                        exit::FAILED,
                        serde_json::json!({"intact": false, "entries": entries.len(),
                                           "broken": broken.to_string()}),
                    )
                }
            };
            if crate::output::is_json() {
                let mut doc = doc;
                doc["command"] = "audit verify".into();
                doc["exit_code"] = code.into();
                crate::output::json(&doc);
            }
            code
        }
        AuditCommand::Export { since } => {
            let since = match since.as_deref().map(parse_time).transpose() {
                Ok(s) => s,
                Err(e) => {
                    errln!("ferry audit export: {e}");
                    return exit::ERROR;
                }
            };
            // The chain starts before `since`: each line keeps its prev_hash so it can be checked.
            let lines: Vec<Value> = entries
                .iter()
                .filter(|e| since.is_none_or(|s| e.recorded_at >= s))
                .map(|e| serde_json::json!({"seq": e.seq, "recorded_at": e.recorded_at.format(&Rfc3339).unwrap_or_default(),
                                            "content": e.content, "prev_hash": e.prev_hash, "hash": e.hash}))
                .collect();
            // JSON lines (what the independent verifier reads), or one array under -o json.
            if crate::output::is_json() {
                crate::output::json(&Value::Array(lines));
            } else {
                use std::io::Write;
                let mut out = std::io::BufWriter::new(crate::output::Stdout);
                for line in &lines {
                    let _ = writeln!(out, "{line}");
                }
            }
            exit::OK
        }
    }
}
