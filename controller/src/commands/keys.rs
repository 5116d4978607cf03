//! `ferry keys rotate`: every encrypted archive's key re-wrapped for a new set of public keys. The
//! bodies are not touched; the rotation is one ledger entry.

use serde_json::json;
use time::OffsetDateTime;

use crate::catalog::Operator;
use crate::catalog::ledger::{Event, TaskRecord};
use crate::cli::KeysCommand;
use crate::config::Config;
use crate::ops::Operation;
use crate::report::exit;
use crate::types::OperationKind;

pub async fn run(config: &Config, command: KeysCommand) -> i32 {
    match command {
        KeysCommand::Rotate { add, retire } => {
            rotate(config, &add, &retire).await.unwrap_or_else(|e| {
                errln!("ferry keys rotate: {e}");
                exit::ERROR
            })
        }
    }
}

async fn rotate(config: &Config, add: &[String], retire: &[String]) -> Result<i32, String> {
    // Every key is checked before any archive is touched.
    let add: Vec<String> = add.iter().map(|k| k.trim().to_string()).collect();
    let retire: Vec<String> = retire.iter().map(|k| k.trim().to_string()).collect();
    for key in add.iter().chain(retire.iter()) {
        ferry_archive::Recipients::parse(std::slice::from_ref(key))
            .map_err(|e| format!("{e}; nothing was changed"))?;
    }
    if let Some(both) = add.iter().find(|k| retire.contains(k)) {
        return Err(format!(
            "{both} is both added and retired; nothing was changed"
        ));
    }
    let identities = crate::keys::identities(config)
        .map_err(|e| format!("encryption.identity: {e}; nothing was changed"))?
        .ok_or("no private key is configured: set encryption.identity to a key that opens the archives' keys; nothing was changed")?;
    let catalog = crate::ops::catalog(config)
        .await
        .map_err(|e| e.to_string())?;
    let store = crate::proof::open_store(config, &catalog)
        .await
        .map_err(|e| e.to_string())?;
    let started = OffsetDateTime::now_utc();
    // The key files of the archives this store holds (another store's are rotated with it).
    let here = store.id();
    let archives: Vec<_> = catalog
        .archives()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|a| a.sealed.is_some())
        .filter(|a| {
            let elsewhere = matches!(
                a.standing(&here),
                crate::catalog::evidence::Standing::Elsewhere(_)
            );
            if elsewhere {
                outln!(
                    "skipped: [{}] archive {} {}: recorded in another store; rotate it with that store configured",
                    a.host,
                    a.short_id(),
                    a.name
                );
            }
            !elsewhere
        })
        .collect();
    let (mut rotated, mut failed) = (0usize, Vec::new());
    let mut tasks = Vec::new();
    for a in &archives {
        let began = OffsetDateTime::now_utc();
        let result = crate::keys::rewrap(&store, a, &identities, &add, &retire).await;
        match &result {
            Ok(ids) => {
                catalog
                    .set_key_ids(a.id, ids)
                    .await
                    .map_err(|e| e.to_string())?;
                rotated += 1;
                outln!(
                    "rotated: [{}] archive {} {}: key wrapped for {}",
                    a.host,
                    a.short_id(),
                    a.name,
                    ids.len()
                );
            }
            Err(e) => {
                outln!(
                    "FAILED: [{}] archive {} {}: {e}",
                    a.host,
                    a.short_id(),
                    a.name
                );
                failed.push(format!("{}: {e}", a.short_id()));
            }
        }
        tasks.push(TaskRecord {
            name: format!("rewrap/{}", a.short_id()),
            started: began,
            finished: OffsetDateTime::now_utc(),
            outcome: if result.is_ok() {
                "ok".into()
            } else {
                "failed".into()
            },
            detail: result.err().unwrap_or_else(|| "key re-wrapped".into()),
        });
    }
    let configured = config
        .encryption
        .as_ref()
        .map(|e| e.recipients.clone())
        .unwrap_or_default();
    let event = Event {
        archive: serde_json::Value::Null,
        flags: json!({"add": add, "retire": retire, "archives": archives.len(), "rotated": rotated}),
        started,
        finished: OffsetDateTime::now_utc(),
        outcome: if failed.is_empty() {
            "succeeded".into()
        } else {
            "failed".into()
        },
        error: (!failed.is_empty()).then(|| failed.join("; ")),
        tasks,
        ..Operation::standalone(
            OperationKind::KeysRotate,
            Operator::current(config),
            "all",
            started,
        )
    };
    if let Err(e) = Operation::entry(&catalog, &event).await {
        errln!("ferry keys rotate: writing the audit ledger: {e}");
    }
    outln!(
        "{rotated} of {} encrypted archive(s) re-wrapped, {} failed",
        archives.len(),
        failed.len()
    );
    // New backups use encryption.recipients: say so when it still names a retired key or lacks a new one.
    if let Some(stale) = configured.iter().find(|k| retire.contains(k)) {
        outln!(
            "[WARNING] encryption.recipients in ferry.yaml still names the retired key {stale}: new backups would be encrypted for it; edit the config"
        );
    }
    let own = identities.public();
    if own.iter().any(|k| retire.contains(k)) {
        outln!(
            "[WARNING] encryption.identity is the retired key: it opens no archive now; point it at the new key's file"
        );
    } else if !add.iter().chain(configured.iter()).any(|k| own.contains(k)) {
        outln!(
            "[WARNING] encryption.identity ({}) is not among the keys archives are wrapped for now: ferry cannot decrypt them with it",
            own.join(", ")
        );
    }
    if let Some(missing) = add.iter().find(|k| !configured.contains(k)) {
        outln!(
            "[WARNING] encryption.recipients in ferry.yaml lacks {missing}: new backups will not be encrypted for it; add it to the config"
        );
    }
    if crate::output::is_json() {
        crate::output::json(
            &json!({"command": "keys rotate", "archives": archives.len(), "rotated": rotated, "failed": failed}),
        );
    }
    Ok(if failed.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    })
}
