//! Backup: preflight, then the upstream archive layout streamed to the controller while the database
//! dump is compressed in parallel. Nothing on the host is changed; scratch files live in the staging
//! directory and are removed whatever happens.

mod dump;
mod files;
mod stream;

use std::path::PathBuf;

use bytes::Bytes;
use ferry_archive::{ArchiveWriter, Codec, MANIFEST_NAME, METADATA_NAME, Manifest, Metadata};
use tokio::sync::mpsc::Sender;

use crate::host::Host;
use crate::tasks::facts::{DatabaseKind, DeploymentKind, Facts};

pub use dump::CopyRowCounter;

/// What the backup reports as it goes.
#[derive(Debug)]
pub enum Event {
    Progress {
        phase: &'static str,
        bytes: u64,
    },
    /// The archive's name, before its first byte.
    Started(String),
    Data(Bytes),
    Done(Trailer),
}

/// The last event: what was sent, and what the archive holds.
#[derive(Debug, Clone)]
pub struct Trailer {
    pub archive_name: String,
    pub size: u64,
    pub sha256: String,
    pub metadata_json: String,
    pub manifest_json: String,
    pub warnings: Vec<String>,
    pub sealed: Option<Sealed>,
}

/// An encrypted archive's plaintext size and digest, and its key wrapped for the recipients.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub plain_size: u64,
    pub plain_sha256: String,
    pub wrapped_key: Vec<u8>,
    pub recipients: Vec<String>,
}

/// A failed backup: the phase it failed in and why.
#[derive(Debug, thiserror::Error)]
#[error("{phase}: {cause}")]
pub struct BackupError {
    pub phase: &'static str,
    pub cause: String,
}

fn fail(phase: &'static str) -> impl Fn(String) -> BackupError {
    move |cause| BackupError { phase, cause }
}

/// Everything the backup needs, owned (it outlives the request handler).
pub struct BackupJob {
    pub host: Host,
    pub host_name: String,
    /// The common name of the agent's certificate.
    pub identity: String,
    pub staging_dir: PathBuf,
    pub operation_id: String,
    pub codec: Codec,
    pub facts: Facts,
    /// The archive's timestamp is at least this (the controller's next free second).
    pub not_before: time::OffsetDateTime,
    /// The operator's public keys: set, the archive leaves the host encrypted.
    pub recipients: Option<ferry_archive::Recipients>,
    /// The running dump's process (a pidfd: never another process that reused its id), so a
    /// backup whose controller is gone can be stopped at once rather than at its next message.
    pub dump_process: DumpProcess,
}

/// Where a backup keeps its dump's pidfd for whoever must stop it.
pub type DumpProcess = std::sync::Arc<std::sync::Mutex<Option<std::os::fd::OwnedFd>>>;

/// Kills the dump `process` holds, if any.
pub fn stop_dump(process: &DumpProcess) {
    let held = process.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(fd) = held.as_ref() {
        let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
    }
}

impl BackupJob {
    /// Runs the backup, sending events; the last one is [`Event::Done`].
    pub async fn run(self, events: Sender<Event>) -> Result<(), BackupError> {
        let scratch = self.staging_dir.join(&self.operation_id);
        let result = self.run_in(&scratch, events).await;
        if let Err(e) = std::fs::remove_dir_all(&scratch)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %scratch.display(), error = %e, "could not remove backup scratch");
        }
        result
    }

    async fn run_in(
        self,
        scratch: &std::path::Path,
        events: Sender<Event>,
    ) -> Result<(), BackupError> {
        let _ = events
            .send(Event::Progress {
                phase: "preflight",
                bytes: 0,
            })
            .await;
        let version = self.preflight()?;
        std::fs::create_dir_all(scratch)
            .map_err(|e| fail("preflight")(format!("{}: {e}", scratch.display())))?;
        let mut warnings = Vec::new();
        let builtin = self.facts.database.kind == DatabaseKind::Builtin;
        if !builtin {
            warnings.push(external_db_guidance(&self.facts));
        }
        let password = if builtin {
            Some(
                self.host
                    .podman()
                    .secret("flightctl-postgresql-password")
                    .await
                    .map_err(|e| {
                        fail("preflight")(format!(
                            "reading podman secret flightctl-postgresql-password: {e}"
                        ))
                    })?,
            )
        } else {
            None
        };
        let pam_tar = scratch.join("pam-issuer-etc.tar");
        let pam = match self
            .host
            .podman()
            .volume_export("flightctl-pam-issuer-etc", &pam_tar)
            .await
        {
            Ok(()) => Some(pam_tar),
            Err(e) => {
                warnings.push(format!("PAM issuer volume flightctl-pam-issuer-etc not exported (as upstream, not fatal): {e}"));
                None
            }
        };
        let started = time::OffsetDateTime::now_utc().max(self.not_before);
        let metadata = Metadata {
            timestamp: Metadata::go_timestamp(started),
            version,
            deployment_type: "podman".into(),
            database_included: builtin,
        };
        let archive_name = ferry_archive::archive_name(started, self.codec.extension());
        let spool = scratch.join("dump.spool");
        let _ = events.send(Event::Started(archive_name.clone())).await;
        tokio::task::spawn_blocking(move || {
            let dump = match &password {
                Some(password) => {
                    let progress_events = events.clone();
                    let job = dump::DumpJob::start(
                        &self.host,
                        &self.facts.database.name,
                        password,
                        self.codec,
                        spool,
                        move |bytes| {
                            let _ = progress_events.blocking_send(Event::Progress {
                                phase: "dump",
                                bytes,
                            });
                        },
                    )
                    .map_err(|e| fail("dump")(format!("starting pg_dump in flightctl-db: {e}")))?;
                    if let Some(pid) = rustix::process::Pid::from_raw(job.pid() as i32) {
                        *self.dump_process.lock().unwrap_or_else(|p| p.into_inner()) =
                            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
                                .ok();
                    }
                    Some(job)
                }
                None => None,
            };
            let written = write_archive(
                &self,
                &events,
                &metadata,
                pam.as_deref(),
                dump,
                warnings.clone(),
                (started, &archive_name),
            );
            let (sent, manifest_json) = written?;
            let trailer = Trailer {
                archive_name,
                size: sent.size,
                sha256: sent.sha256,
                metadata_json: metadata.to_json(),
                manifest_json,
                warnings,
                sealed: sent.sealed,
            };
            events
                .blocking_send(Event::Done(trailer))
                .map_err(|_| fail("stream")("the controller stopped receiving".into()))
        })
        .await
        .map_err(|e| fail("stream")(format!("backup task failed: {e}")))?
    }

    /// Refuses hosts ferry cannot back up faithfully; returns the Flight Control version.
    fn preflight(&self) -> Result<String, BackupError> {
        let f = &self.facts;
        let refuse = fail("preflight");
        if f.deployment != DeploymentKind::Podman {
            return Err(refuse(format!(
                "deployment type is {:?} ({}); ferry backs up podman (quadlet) hosts",
                f.deployment, f.deployment_reason
            )));
        }
        let version = f.version.clone().ok_or_else(|| {
            refuse(format!(
                "the Flight Control version is unknown ({}); it is needed to restore safely",
                f.version_detail
            ))
        })?;
        if f.database.kind == DatabaseKind::Unknown {
            return Err(refuse(
                "/etc/flightctl/service-config.yaml is missing or unreadable".into(),
            ));
        }
        if f.database.kind == DatabaseKind::Builtin {
            let db = f
                .containers
                .iter()
                .find(|(name, _)| name == "flightctl-db")
                .map(|(_, s)| s.as_str());
            if db != Some("running") {
                return Err(refuse(format!(
                    "container flightctl-db is {}",
                    db.unwrap_or("missing")
                )));
            }
        }
        const MIN_FREE: u64 = 64 << 20;
        if f.staging_free < MIN_FREE {
            return Err(refuse(format!(
                "only {} MiB free in the staging directory {}",
                f.staging_free >> 20,
                self.staging_dir.display()
            )));
        }
        Ok(version)
    }
}

/// Streams the archive; returns what was sent and the manifest JSON. Aborts the dump on any failure.
fn write_archive(
    job: &BackupJob,
    events: &Sender<Event>,
    metadata: &Metadata,
    pam: Option<&std::path::Path>,
    dump: Option<dump::DumpJob>,
    warnings: Vec<String>,
    (started, archive_name): (time::OffsetDateTime, &str),
) -> Result<(stream::Sent, String), BackupError> {
    let mut dump = dump;
    let result = (|| {
        let _ = events.blocking_send(Event::Progress {
            phase: "files",
            bytes: 0,
        });
        let files = fail("files");
        let mtime = started.unix_timestamp().max(0) as u64;
        let io = |e: std::io::Error| fail("stream")(e.to_string());
        let sink = stream::Sink::new(
            events.clone(),
            job.recipients.as_ref(),
            format!("{}/{archive_name}", job.identity),
        )
        .map_err(|e| fail("encrypt")(e.to_string()))?;
        let mut w = ArchiveWriter::new(sink, job.codec, mtime);
        w.bytes(METADATA_NAME, 0o600, metadata.to_json().as_bytes())
            .map_err(io)?;
        let etc = job.host.path("/etc/flightctl");
        w.dir("config", 0o700).map_err(io)?;
        files::add_file(
            &mut w,
            &etc.join("service-config.yaml"),
            "config/service-config.yaml",
        )
        .map_err(&files)?;
        if etc.join("conf.d").is_dir() {
            files::add_tree(&mut w, &etc.join("conf.d"), "config/conf.d").map_err(&files)?;
        }
        if !etc.join("pki").is_dir() {
            return Err(files(format!(
                "{} is missing; without it devices must re-enroll",
                etc.join("pki").display()
            )));
        }
        files::add_tree(&mut w, &etc.join("pki"), "pki").map_err(&files)?;
        if etc.join("encryption").is_dir() {
            files::add_tree(&mut w, &etc.join("encryption"), "encryption").map_err(&files)?;
        }
        if let Some(pam) = pam {
            w.dir("volumes", 0o700).map_err(io)?;
            files::add_file(&mut w, pam, "volumes/pam-issuer-etc.tar").map_err(&files)?;
        }
        let mut row_counts = Default::default();
        let mut encryption_key_ids = Vec::new();
        if let Some(job) = dump.take() {
            // Send what we have: the controller sees progress while the dump finishes.
            w.flush().map_err(io)?;
            let _ = events.blocking_send(Event::Progress {
                phase: "dump",
                bytes: 0,
            });
            let done = job.finish().map_err(fail("dump"))?;
            tracing::info!(
                dump_bytes = done.raw_size,
                compressed_bytes = done.compressed_size,
                "database dumped"
            );
            w.dir("db", 0o700).map_err(io)?;
            let spool =
                std::fs::File::open(&done.spool).map_err(|e| fail("dump")(e.to_string()))?;
            w.splice("db/dump.sql", 0o600, done.raw_size, &done.sha256, spool)
                .map_err(io)?;
            row_counts = done.row_counts;
            encryption_key_ids = done.key_ids;
        }
        let manifest = Manifest {
            format: Manifest::FORMAT.into(),
            agent_version: crate::VERSION.into(),
            host: job.host_name.clone(),
            identity: job.identity.clone(),
            compression: job.codec.name().into(),
            entries: w.entries().to_vec(),
            row_counts,
            encryption_key_ids,
            captured: Manifest::CAPTURED.iter().map(|p| p.to_string()).collect(),
            facts: serde_json::to_value(&job.facts).unwrap_or_default(),
            warnings,
        };
        let manifest_json = serde_json::to_string_pretty(&manifest).unwrap_or_default();
        w.bytes(MANIFEST_NAME, 0o600, manifest_json.as_bytes())
            .map_err(io)?;
        let sent = w.finish().map_err(io)?.finish().map_err(io)?;
        Ok((sent, manifest_json))
    })();
    if let Some(job) = dump {
        job.abort();
    }
    result
}

fn external_db_guidance(facts: &Facts) -> String {
    let db = &facts.database;
    format!(
        "External database (db.type: external): the archive has no db/dump.sql and databaseIncluded is false. \
         Back up database {name:?} on {host}:{port} with your DBA's tooling (for example pg_dump --clean --if-exists) \
         at the same time, and keep it with this archive; restore it before `ferry prepare-devices`.",
        name = db.name,
        host = if db.external_host.is_empty() {
            "the external server"
        } else {
            &db.external_host
        },
        port = db.external_port,
    )
}
