//! Publishing flightctl-db and flightctl-kv on the host's loopback address for a person (the
//! DBA-led paths of the restore docs), through `PublishPort=` drop-ins next to the units' quadlets,
//! under a dead-man lease: the controller renews it while the operator's command runs; when the
//! time asked for runs out, the controller goes quiet, or the agent restarts, the drop-ins go and
//! both data services are restarted. The publication holds the host's operation slot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::host::Host;
use crate::operation::{OperationGuard, OperationSlot};

const DROPIN: &str = "10-ferry-publish-port.conf";
/// The publication on record, so a restarted agent takes it down.
const STATE: &str = "ports.json";

/// The data services a person may reach, and their ports.
pub const SERVICES: [(&str, u16); 2] = [
    ("flightctl-db.service", 5432),
    ("flightctl-kv.service", 6379),
];

/// Where a unit's drop-in goes: next to its quadlet.
pub async fn dropin_path(host: &Host, unit: &str) -> Result<PathBuf, String> {
    let source = host
        .systemd()
        .source_path(unit)
        .await
        .map_err(|e| e.to_string())?;
    if source.is_empty() {
        return Err(format!("{unit} has no SourcePath: not a quadlet unit"));
    }
    Ok(host.path(format!("{source}.d")).join(DROPIN))
}

/// Writes one drop-in per (unit, port, path), reloads, restarts the units, and waits until every
/// port answers on `local_address`; then sets the KV's awaiting-reconnect keys again (returns how,
/// in words).
pub async fn publish(
    host: &Host,
    local_address: &str,
    dropins: &[(&str, u16, PathBuf)],
) -> Result<String, String> {
    for (_, port, dropin) in dropins {
        if let Some(dir) = dropin.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(dropin, format!("# Written by ferry; removed when its lease ends.\n[Container]\nPublishPort={local_address}:{port}:{port}\n"))
            .map_err(|e| format!("{}: {e}", dropin.display()))?;
    }
    host.systemd()
        .daemon_reload()
        .await
        .map_err(|e| e.to_string())?;
    let units: Vec<&str> = dropins.iter().map(|(u, _, _)| *u).collect();
    host.systemd()
        .control("restart", &units)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for (unit, port, _) in dropins {
        while tokio::net::TcpStream::connect((local_address, *port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "{unit} did not answer on {local_address}:{port} after the restart"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(crate::tasks::reconnect::after_kv_restart(host).await)
}

/// Removes ferry's drop-ins, reloads, and restarts the data services so nothing stays published;
/// then sets the KV's awaiting-reconnect keys again (returns how, in words).
pub async fn unpublish(host: &Host, dropins: &[PathBuf]) -> Result<String, String> {
    for dropin in dropins {
        match std::fs::remove_file(dropin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", dropin.display())),
        }
        if let Some(dir) = dropin.parent() {
            let _ = std::fs::remove_dir(dir); // only if empty
        }
    }
    host.systemd()
        .daemon_reload()
        .await
        .map_err(|e| e.to_string())?;
    host.systemd()
        .control("restart", &["flightctl-db.service", "flightctl-kv.service"])
        .await
        .map_err(|e| e.to_string())?;
    Ok(crate::tasks::reconnect::after_kv_restart(host).await)
}

/// A publication as it is kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    dropins: Vec<PathBuf>,
    /// Unix seconds when the time asked for runs out.
    until: u64,
}

struct Active {
    record: Record,
    /// Length of the dead-man lease, and when the controller was last heard.
    lease: Duration,
    heard: Instant,
    _slot: OperationGuard,
}

/// What a publish call reports.
#[derive(Debug, Clone)]
pub struct Published {
    pub address: String,
    pub ports: Vec<(String, u16)>,
    pub until_unix: u64,
    /// The call renewed a running publication.
    pub renewed: bool,
    /// What became of the KV's awaiting-reconnect keys after the restart (empty: none await).
    pub kv: String,
}

/// The host's publication for a person, if any.
#[derive(Clone)]
pub struct Ports {
    host: Host,
    local_address: String,
    state_file: PathBuf,
    operations: OperationSlot,
    active: Arc<tokio::sync::Mutex<Option<Active>>>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Ports {
    pub fn new(
        host: Host,
        local_address: String,
        staging_dir: &Path,
        operations: OperationSlot,
    ) -> Ports {
        Ports {
            host,
            local_address,
            state_file: staging_dir.join(STATE),
            operations,
            active: Arc::default(),
        }
    }

    /// Publishes both data services for `for_seconds` under a lease of `lease_seconds`, or renews
    /// the publication `id` already holds (only that when `renew`).
    pub async fn publish(
        &self,
        id: &str,
        for_seconds: u64,
        lease_seconds: u64,
        renew: bool,
        who: &str,
    ) -> Result<Published, String> {
        let ports = SERVICES.iter().map(|(u, p)| (u.to_string(), *p)).collect();
        let mut active = self.active.lock().await;
        if renew && active.as_ref().is_none_or(|a| a.record.id != id) {
            return Err(format!(
                "publication {id} is no longer running (unpublished, expired, or the agent restarted): nothing is published"
            ));
        }
        if let Some(a) = active.as_mut() {
            if a.record.id != id {
                let until = time::OffsetDateTime::from_unix_timestamp(a.record.until as i64)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_default();
                return Err(format!(
                    "the data services are already published by publication {} until {until}; end it with `ferry ports unpublish` first",
                    a.record.id
                ));
            }
            a.heard = Instant::now();
            return Ok(Published {
                address: self.local_address.clone(),
                ports,
                until_unix: a.record.until,
                renewed: true,
                kv: String::new(),
            });
        }
        if crate::tasks::facts::database(&self.host).kind
            == crate::tasks::facts::DatabaseKind::External
        {
            return Err(
                "this host uses an external database (db.type: external): there is no flightctl-db to publish; reach the database where its DBA runs it"
                    .into(),
            );
        }
        let loopback = self
            .local_address
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(format!(
                "local_address {} in agent.yaml is not a loopback address: ferry publishes the data services on loopback only",
                self.local_address
            ));
        }
        let slot = self
            .operations
            .try_begin("ports", id, who)
            .map_err(|running| {
                format!(
                    "the host is busy: {} operation {} started by {}; publish once it ends",
                    running.kind, running.id, running.started_by
                )
            })?;
        let mut dropins = Vec::new();
        for (unit, port) in SERVICES {
            dropins.push((unit, port, dropin_path(&self.host, unit).await?));
        }
        let record = Record {
            id: id.to_string(),
            dropins: dropins.iter().map(|(_, _, p)| p.clone()).collect(),
            until: now_unix() + for_seconds,
        };
        // On record before the first drop-in exists.
        let text = serde_json::to_vec_pretty(&record).map_err(|e| e.to_string())?;
        std::fs::write(&self.state_file, text)
            .map_err(|e| format!("{}: {e}", self.state_file.display()))?;
        let kv = match publish(&self.host, &self.local_address, &dropins).await {
            Ok(kv) => kv,
            Err(e) => {
                let undone = unpublish(&self.host, &record.dropins).await;
                let _ = std::fs::remove_file(&self.state_file);
                return Err(match undone {
                    Ok(_) => format!("{e}; the drop-ins were removed again"),
                    Err(u) => format!("{e}; removing the drop-ins failed too: {u}"),
                });
            }
        };
        let until_unix = record.until;
        *active = Some(Active {
            record,
            lease: Duration::from_secs(lease_seconds.max(1)),
            heard: Instant::now(),
            _slot: slot,
        });
        Ok(Published {
            address: self.local_address.clone(),
            ports,
            until_unix,
            renewed: false,
            kv,
        })
    }

    /// Ends the publication (`only` that one, when given; else whichever there is): drop-ins
    /// removed, data services restarted, the slot freed. Returns what was done.
    pub async fn unpublish(&self, only: Option<&str>, why: &str) -> Result<String, String> {
        let mut active = self.active.lock().await;
        if let (Some(only), Some(a)) = (only, active.as_ref())
            && a.record.id != only
        {
            return Ok(format!(
                "publication {only} had already ended; publication {} is not this command's and stays",
                a.record.id
            ));
        }
        let dropins = match active.as_ref() {
            Some(a) => a.record.dropins.clone(),
            None => match self.on_disk() {
                Some(record) => record.dropins,
                None => return Ok("nothing is published (it was already taken down)".into()),
            },
        };
        let kv = unpublish(&self.host, &dropins).await?;
        let _ = std::fs::remove_file(&self.state_file);
        *active = None;
        let kv = if kv.is_empty() { kv } else { format!("; {kv}") };
        Ok(format!(
            "{why}: drop-ins removed, flightctl-db and flightctl-kv restarted; nothing published{kv}"
        ))
    }

    fn on_disk(&self) -> Option<Record> {
        let text = std::fs::read(&self.state_file).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The watchdog's tick: the time asked for ran out, or the controller went quiet.
    pub async fn watch(&self) {
        let why = {
            let active = self.active.lock().await;
            let Some(a) = active.as_ref() else { return };
            if now_unix() >= a.record.until {
                "the time asked for ran out"
            } else if a.heard.elapsed() > a.lease {
                "the controller's lease lapsed"
            } else {
                return;
            }
        };
        match self.unpublish(None, why).await {
            Ok(note) => tracing::warn!("{note}"),
            Err(e) => {
                tracing::error!(error = %e, "could not take the published ports down; trying again")
            }
        }
    }

    /// At agent start: a publication the previous agent left is taken down.
    pub async fn recover(&self) {
        if self.on_disk().is_some() {
            match self
                .unpublish(None, "the agent restarted during a publication")
                .await
            {
                Ok(note) => tracing::warn!("{note}"),
                Err(e) => tracing::error!(error = %e, "could not take a previous publication down"),
            }
        }
    }
}
