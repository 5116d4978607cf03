//! The operator's keys on the controller: the private key from `encryption.identity`, opening an
//! encrypted archive as a plaintext stream, and re-wrapping archive keys for a rotation.
//!
//! Plaintext and keys live in memory only: nothing here writes them to a disk or a log.

use std::io::Read;

use ferry_archive::{DataKey, Identities, Recipients, SealError, key_object_name};

use crate::catalog::ArchiveRecord;
use crate::config::Config;
use crate::store::Store;

/// The configured private key, if any.
pub fn identities(config: &Config) -> Result<Option<Identities>, SealError> {
    let Some(path) = config.encryption.as_ref().and_then(|e| e.identity.as_ref()) else {
        return Ok(None);
    };
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        let mode = meta.permissions().mode();
        let who = match (mode & 0o070 != 0, mode & 0o007 != 0) {
            (true, true) => "its group and others",
            (true, false) => "its group",
            _ => "others",
        };
        errln!(
            "[WARNING] {} (encryption.identity) is open to {who} (mode {:o}): it opens every archive; chmod 600 it",
            path.display(),
            mode & 0o777
        );
    }
    Identities::read(path).map(Some)
}

/// Why the configuration cannot restore what it backs up, if so: `identity` names no readable key,
/// or one that is not among the `recipients`.
pub fn identity_not_a_recipient(config: &Config) -> Option<String> {
    let encryption = config.encryption.as_ref()?;
    let path = encryption.identity.as_ref()?;
    let public = match Identities::read(path) {
        Ok(ids) => ids.public(),
        Err(e) => {
            return Some(format!(
                "encryption.identity ({}) cannot be read: {e}; archives are still encrypted to the recipients, but this controller cannot restore, verify or drill them until it can",
                path.display()
            ));
        }
    };
    (!public.iter().any(|p| encryption.recipients.contains(p))).then(|| {
        format!(
            "encryption.identity ({}) is not one of encryption.recipients: ferry could not decrypt these archives with it",
            public.join(", ")
        )
    })
}

/// The configured recipients, if encryption is on.
pub fn recipients(config: &Config) -> Result<Option<Recipients>, SealError> {
    match &config.encryption {
        Some(e) => Recipients::parse(&e.recipients).map(Some),
        None => Ok(None),
    }
}

/// An archive about to be read: the stored object and, for an encrypted one, its key.
pub struct Opened {
    body: Box<dyn Read + Send>,
    key: Option<std::sync::Arc<DataKey>>,
}

impl Opened {
    pub(crate) fn new(body: Box<dyn Read + Send>, key: Option<std::sync::Arc<DataKey>>) -> Opened {
        Opened { body, key }
    }

    /// The upstream archive's bytes. Blocking: call it on a blocking thread. Every chunk of an
    /// encrypted body is authenticated before it is returned.
    pub fn plaintext(self) -> Result<Box<dyn Read + Send>, SealError> {
        match self.key {
            None => Ok(self.body),
            Some(key) => Ok(Box::new(key.open(self.body)?)),
        }
    }
}

/// Why an archive's key could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    /// Configuration: no private key, or not one the key is wrapped for.
    #[error("{0}")]
    NotConfigured(String),
    /// The stored key file is missing, swapped or does not open: the archive's copy.
    #[error("{0}")]
    Bad(String),
}

/// Unwraps an archive's key with the operator's private key.
pub async fn data_key(
    store: &Store,
    archive: &ArchiveRecord,
    identities: Option<&Identities>,
    key_ids: &[String],
) -> Result<DataKey, KeyError> {
    let Some(identities) = identities else {
        return Err(KeyError::NotConfigured(format!(
            "archive {} is encrypted and no private key is configured: set encryption.identity in ferry.yaml to an age identity file whose public key is one of {}",
            archive.short_id(),
            key_ids.join(", ")
        )));
    };
    stored_key(store, &archive.host, &archive.name, identities)
        .await
        .map_err(|e| match e {
            SealError::NotARecipient { keys, .. } => KeyError::NotConfigured(format!(
                "the configured private key ({keys}) is not a recipient of archive {}: its key is wrapped for {}; set encryption.identity to one of those keys",
                archive.short_id(),
                key_ids.join(", ")
            )),
            other => KeyError::Bad(format!("archive {}: {other}", archive.short_id())),
        })
}

/// Opens the key file stored beside archive `name` of `host`.
pub async fn stored_key(
    store: &Store,
    host: &str,
    name: &str,
    identities: &Identities,
) -> Result<DataKey, SealError> {
    let key_name = key_object_name(name);
    let wrapped = store
        .get_small(host, &key_name)
        .await
        .map_err(|e| SealError::BadKeyFile(e.to_string()))?
        .ok_or_else(|| {
            SealError::BadKeyFile(format!(
                "{} is missing from the store",
                store.location(host, &key_name)
            ))
        })?;
    let key = DataKey::unwrap(&wrapped, identities)?;
    // The key file names its archive: one swapped in from another archive is refused here, before it
    // is taken for a damaged archive.
    let expected = format!("{host}/{name}");
    if !key.archive.is_empty() && key.archive != expected {
        return Err(SealError::BadKeyFile(format!(
            "{} is the key of {}, not of {expected}: it was swapped or copied by hand; restore the right key file (a copy of the store, or `ferry archives export` output)",
            store.location(host, &key_name),
            key.archive
        )));
    }
    Ok(key)
}

/// Re-wraps one archive's key: the same key, for `keep` (the recipients it had, less the retired,
/// plus the added). The body is not touched. Returns the new key ids.
pub async fn rewrap(
    store: &Store,
    archive: &ArchiveRecord,
    identities: &Identities,
    add: &[String],
    retire: &[String],
) -> Result<Vec<String>, String> {
    let current = archive
        .sealed
        .as_ref()
        .map(|s| s.key_ids.clone())
        .unwrap_or_default();
    let mut key = data_key(store, archive, Some(identities), &current)
        .await
        .map_err(|e| e.to_string())?;
    let mut ids: Vec<String> = key
        .recipients
        .iter()
        .chain(current.iter())
        .filter(|k| !retire.contains(k))
        .cloned()
        .collect();
    ids.extend(add.iter().cloned());
    let mut unique = Vec::new();
    for id in ids {
        if !unique.contains(&id) {
            unique.push(id);
        }
    }
    if unique.is_empty() {
        return Err(format!(
            "archive {}: retiring {} would leave its key wrapped for no one; add a key with --add",
            archive.short_id(),
            retire.join(", ")
        ));
    }
    let recipients = Recipients::parse(&unique).map_err(|e| e.to_string())?;
    let wrapped = key.wrap(&recipients).map_err(|e| e.to_string())?;
    store
        .put_small(&archive.host, &key_object_name(&archive.name), &wrapped)
        .await
        .map_err(|e| e.to_string())?;
    Ok(recipients.ids())
}

/// How far one pass over a stored object goes.
pub enum Through {
    /// Size and digest of the stored bytes only (an encrypted archive without its key).
    HashOnly,
    /// Also the archive itself, read to its end: decrypted with the key when there is one.
    Archive(Option<std::sync::Arc<DataKey>>),
}

/// What one pass over a stored object found.
pub struct Pass {
    /// Size and sha256 of the stored object (the ciphertext of an encrypted archive).
    pub size: u64,
    pub sha256: String,
    /// The upstream archive as read (plaintext digest, entries, metadata), when read.
    pub archive: Option<Result<ferry_archive::Verified, String>>,
}

/// Reads a stored object once, streaming: its digest, and through it the archive (decrypting and
/// authenticating each chunk when encrypted). `expected_plain` makes a different plaintext digest an
/// error; `keep` keeps small files, as [`ferry_archive::ReadOptions`].
pub async fn pass(
    body: Box<dyn Read + Send>,
    location: String,
    through: Through,
    expected_plain: Option<String>,
    keep: Option<fn(&str) -> bool>,
) -> Result<Pass, String> {
    tokio::task::spawn_blocking(move || {
        let state = std::sync::Arc::new(std::sync::Mutex::new(Tee::default()));
        let tee = TeeReader {
            inner: body,
            state: std::sync::Arc::clone(&state),
        };
        let options = ferry_archive::ReadOptions {
            expected_sha256: expected_plain.as_deref(),
            keep,
            ..Default::default()
        };
        let archive = match through {
            Through::HashOnly => {
                let mut tee = tee;
                std::io::copy(&mut tee, &mut std::io::sink())
                    .map_err(|e| format!("reading {location}: {e}"))?;
                None
            }
            Through::Archive(None) => {
                Some(ferry_archive::read_archive(tee, &options).map_err(|e| e.to_string()))
            }
            Through::Archive(Some(key)) => {
                Some(key.open(tee).map_err(|e| e.to_string()).and_then(|plain| {
                    ferry_archive::read_archive(plain, &options).map_err(|e| {
                        // age reports a failed chunk as an I/O error "decryption error".
                        let text = e.to_string();
                        if text.contains("ecrypt") {
                            ferry_archive::SealError::Tampered(text).to_string()
                        } else {
                            text
                        }
                    })
                }))
            }
        };
        let tee = state.lock().map_err(|e| e.to_string())?;
        if let Some(e) = &tee.error {
            return Err(format!("reading {location}: {e}"));
        }
        Ok(Pass {
            size: tee.size,
            sha256: ferry_archive::hex(&sha2::Digest::finalize(tee.hasher.clone())),
            archive,
        })
    })
    .await
    .map_err(|e| e.to_string())?
}

#[derive(Default)]
struct Tee {
    size: u64,
    hasher: sha2::Sha256,
    error: Option<String>,
}

/// A reader that hashes what passes through it into shared state (the archive reader owns it).
struct TeeReader {
    inner: Box<dyn Read + Send>,
    state: std::sync::Arc<std::sync::Mutex<Tee>>,
}

impl Read for TeeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf);
        if let Ok(mut tee) = self.state.lock() {
            match &read {
                Ok(n) => {
                    sha2::Digest::update(&mut tee.hasher, &buf[..*n]);
                    tee.size += *n as u64;
                }
                Err(e) => tee.error = Some(e.to_string()),
            }
        }
        read
    }
}
