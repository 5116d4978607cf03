//! The database dump: `pg_dump` inside the DB container, compressed in parallel while it runs into a
//! spool file in the staging directory, with its digest and per-table row counts taken on the way.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::thread::JoinHandle;

use ferry_archive::{Codec, ParallelCompressor};
use sha2::{Digest, Sha256};

use crate::host::Host;
use crate::host::podman::Secret;

/// What the dump produced.
#[derive(Debug, Clone)]
pub struct DumpResult {
    pub raw_size: u64,
    pub sha256: String,
    pub compressed_size: u64,
    pub row_counts: BTreeMap<String, u64>,
    /// Key ids of the dump's `enc:v1:` values.
    pub key_ids: Vec<String>,
    pub spool: PathBuf,
}

/// A running dump.
pub struct DumpJob {
    child: Child,
    compressor: JoinHandle<std::io::Result<DumpResult>>,
    stderr: JoinHandle<String>,
    spool: PathBuf,
}

/// The dump runs as `postgres` over the container's socket, like upstream's restore; the password from
/// the podman secret is fed on stdin (never on a command line) for hosts whose pg_hba wants one.
const DUMP_SCRIPT: &str =
    r#"PGPASSWORD="$(cat)" exec pg_dump --clean --if-exists -U postgres -d "$1""#;

impl DumpJob {
    pub fn start(
        host: &Host,
        database: &str,
        password: &Secret,
        codec: Codec,
        spool: PathBuf,
        progress: impl Fn(u64) + Send + 'static,
    ) -> std::io::Result<DumpJob> {
        let mut child = host
            .podman()
            .exec_command(
                "flightctl-db",
                &["sh", "-c", DUMP_SCRIPT, "ferry-dump", database],
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(password.expose().as_bytes())?;
        }
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no dump stdout"))?;
        let mut stderr_pipe = child
            .stderr
            .take()
            .ok_or_else(|| std::io::Error::other("no dump stderr"))?;
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            text
        });
        let mut file = std::fs::File::create(&spool)?;
        let spool_path = spool.clone();
        let compressor = std::thread::spawn(move || {
            let mut hasher = Sha256::new();
            let mut rows = CopyRowCounter::default();
            let mut seen = 0u64;
            let mut reported = 0u64;
            let spool = ParallelCompressor::new(codec).run(stdout, &mut file, |chunk| {
                hasher.update(chunk);
                rows.feed(chunk);
                seen += chunk.len() as u64;
                if seen - reported >= 16 << 20 {
                    reported = seen;
                    progress(seen);
                }
            })?;
            file.sync_all()?;
            Ok(DumpResult {
                raw_size: spool.raw_size,
                sha256: ferry_archive::hex(&hasher.finalize()),
                compressed_size: spool.compressed_size,
                key_ids: rows.key_ids.into_iter().collect(),
                row_counts: rows.counts,
                spool: spool_path,
            })
        });
        Ok(DumpJob {
            child,
            compressor,
            stderr,
            spool,
        })
    }

    /// Waits for the dump to end; a non-zero exit is an error carrying pg_dump's own words.
    pub fn finish(mut self) -> Result<DumpResult, String> {
        let compressed = self
            .compressor
            .join()
            .map_err(|_| "dump compressor panicked".to_string())?;
        // The spool could not be written (a full disk): that is the cause, not the pg_dump that
        // died of the closed pipe after it.
        if let Err(e) = &compressed {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = self.stderr.join();
            return Err(format!(
                "writing the dump's spool {}: {e}; nothing was stored, the staging space is cleared",
                self.spool.display()
            ));
        }
        let status = self
            .child
            .wait()
            .map_err(|e| format!("waiting for pg_dump: {e}"))?;
        let stderr = self.stderr.join().unwrap_or_default();
        if !status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
            return Err(format!(
                "pg_dump in flightctl-db exited with {status}: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ));
        }
        let done = compressed
            .map_err(|e| format!("compressing the dump into {}: {e}", self.spool.display()))?;
        if done.raw_size == 0 {
            return Err("pg_dump produced no output".into());
        }
        Ok(done)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the dump (the backup failed elsewhere).
    pub fn abort(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.compressor.join();
        let _ = self.stderr.join();
    }
}

/// Counts the rows of every `COPY … FROM stdin;` block of a plain-format dump.
#[derive(Debug, Default)]
pub struct CopyRowCounter {
    table: Option<String>,
    partial: Vec<u8>,
    pub counts: BTreeMap<String, u64>,
    /// Key ids of the `enc:v1:<keyid>:` values in the rows (v1.3's encrypted fields, canaries).
    pub key_ids: std::collections::BTreeSet<String>,
}

impl CopyRowCounter {
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', chunk) {
            if self.partial.is_empty() {
                self.line(&chunk[start..end]);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&chunk[start..end]);
                self.line(&line);
            }
            start = end + 1;
        }
        self.partial.extend_from_slice(&chunk[start..]);
    }

    fn line(&mut self, line: &[u8]) {
        match &self.table {
            Some(table) => {
                if line == b"\\." {
                    self.table = None;
                } else if let Some(count) = self.counts.get_mut(table) {
                    *count += 1;
                    ferry_archive::encrypted_value_key_ids(line, &mut self.key_ids);
                }
            }
            None => {
                if let Some(rest) = line.strip_prefix(b"COPY ")
                    && line.ends_with(b"FROM stdin;")
                {
                    let name = rest.split(|b| *b == b' ').next().unwrap_or_default();
                    let name = String::from_utf8_lossy(name).replace('"', "");
                    let table = name.strip_prefix("public.").unwrap_or(&name).to_string();
                    self.counts.insert(table.clone(), 0);
                    self.table = Some(table);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rows_across_chunk_boundaries() {
        let dump = "SET x;\nCOPY public.devices (org_id, name) FROM stdin;\na\tb\nc\td\n\\.\n\n\
                    COPY public.\"fleets\" (name) FROM stdin;\n\\.\nCOPY public.events (n) FROM stdin;\nx\n\\.\n";
        for split in 1..dump.len() {
            let mut c = CopyRowCounter::default();
            c.feed(&dump.as_bytes()[..split]);
            c.feed(&dump.as_bytes()[split..]);
            assert_eq!(c.counts.get("devices"), Some(&2), "split at {split}");
            assert_eq!(c.counts.get("fleets"), Some(&0));
            assert_eq!(c.counts.get("events"), Some(&1));
        }
    }
}
