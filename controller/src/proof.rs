//! Proving a catalogued archive's stored bytes before anything uses them, and recording what was
//! found. Every read of an archive's bytes (restore, `--check`, drill, verify, export, copy, serve's
//! deep verify) goes through [`prove`] or [`record`], so the catalog's evidence is what was checked.
//!
//! A restore or drill streams exactly the version that was proven ([`Proof::open`]): a directory
//! object with the same inode, size and modification time, a bucket object with the same ETag.

use std::io::Read;
use std::sync::Arc;

use ferry_archive::{DataKey, Identities, Verified};

use crate::catalog::evidence::{Finding, Reason, Source, State};
use crate::catalog::{ArchiveRecord, Catalog};
use crate::keys::{Opened, Pass, Through};
use crate::store::{Store, StoreError, Version};

/// How far a proof reads.
#[derive(Clone, Copy, Default)]
pub struct Options {
    /// Read the archive itself through (entries, metadata, manifest); an encrypted archive is
    /// always read through, since only that authenticates it.
    pub read_archive: bool,
    /// Small files to keep while reading through (see [`ferry_archive::ReadOptions`]).
    pub keep: Option<fn(&str) -> bool>,
    /// The operator accepts a sidecar that disagrees when the body is the catalog's (recorded).
    pub trust_archive_digest: bool,
    /// Without a private key, check an encrypted archive's ciphertext only (and say so) rather
    /// than refuse.
    pub ciphertext_without_key: bool,
}

/// Stored bytes proven equal to the catalog.
pub struct Proof {
    pub version: Version,
    /// The archive as read, when it was read through.
    pub verified: Option<Verified>,
    /// What was accepted on the operator's word (a sidecar trusted over).
    pub trusted_over: Option<String>,
    /// What the proof did not cover (an encrypted archive's plaintext, without its key).
    pub notes: Vec<String>,
    key: Option<Arc<DataKey>>,
}

/// Why the stored bytes are not proven.
#[derive(Debug, Clone)]
pub struct Unproven {
    /// What it says about the archive's copy (recorded in the catalog); None when the cause is not
    /// the archive's (the store did not answer, no key configured).
    pub finding: Option<Finding>,
    pub cause: String,
}

impl std::fmt::Display for Unproven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.cause)
    }
}

impl Proof {
    /// The proven version, opened for streaming its plaintext (decrypted with the key it was
    /// authenticated with). Refused if the object changed since it was proven.
    pub async fn open(&self, store: &Store, archive: &ArchiveRecord) -> Result<Opened, String> {
        let body = store
            .reader_at(&archive.host, &archive.object(), &self.version)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Opened::new(body, self.key.clone()))
    }

    /// The proven version as stored (an encrypted archive's ciphertext).
    pub async fn open_stored(
        &self,
        store: &Store,
        archive: &ArchiveRecord,
    ) -> Result<Opened, String> {
        let body = store
            .reader_at(&archive.host, &archive.object(), &self.version)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Opened::new(body, None))
    }
}

/// Reads `archive`'s copy in `store` once: size and sha256 against the catalog, its sidecar, and
/// (encrypted) its key and every chunk's authentication. What it found is recorded as `by`'s
/// evidence (a catalog that cannot take it is warned about, not fatal).
pub async fn prove(
    store: &Store,
    catalog: &Catalog,
    archive: &ArchiveRecord,
    identities: Option<&Identities>,
    by: Source,
    options: Options,
) -> Result<Proof, Unproven> {
    let result = examine(store, archive, identities, options).await;
    let finding = match &result {
        // Taken on the operator's word, but the store's sidecar still disagrees: so recorded.
        Ok(Proof {
            trusted_over: Some(detail),
            ..
        }) => Some(Finding::Suspect(Reason::SidecarDiffers, detail.clone())),
        Ok(p) => Some(Finding::Good(Some(p.version.fingerprint()))),
        Err(u) => u.finding.clone(),
    };
    if let Some(finding) = finding {
        record(catalog, store, archive, &finding, by).await;
    }
    result
}

/// Like [`prove`], recording only a good finding: the caller records what else it finds.
pub async fn prove_unrecorded(
    store: &Store,
    archive: &ArchiveRecord,
    identities: Option<&Identities>,
    options: Options,
) -> Result<Proof, Unproven> {
    examine(store, archive, identities, options).await
}

/// The cheap look (a HEAD or a stat): `Present` at the catalog's size and the version last proven,
/// `Changed` when another version is there (to be proven again), `Missing`, or
/// `Suspect(BodyDiffers)` at another size. Nothing is read or recorded.
pub async fn presence(store: &Store, archive: &ArchiveRecord) -> Result<Finding, StoreError> {
    let location = || store.location(&archive.host, &archive.object());
    let proven = archive.copy_in(&store.id()).and_then(|c| c.version.clone());
    Ok(
        match store.version(&archive.host, &archive.object()).await? {
            Some(v) if v.size() == archive.size as u64 => match proven {
                Some(p) if p != v.fingerprint() => Finding::Changed,
                _ => Finding::Present,
            },
            Some(v) => Finding::Suspect(
                Reason::BodyDiffers,
                format!(
                    "{} is {} bytes, the catalog says {}",
                    location(),
                    v.size(),
                    archive.size
                ),
            ),
            None => Finding::Missing(format!("{} is not in the store", location())),
        },
    )
}

/// Records a finding about `archive`'s copy in `store`; a catalog that cannot take it is warned
/// about (the operation's own record still says what happened).
pub async fn record(
    catalog: &Catalog,
    store: &Store,
    archive: &ArchiveRecord,
    finding: &Finding,
    by: Source,
) -> Option<State> {
    match catalog
        .record_finding(archive.id, &store.id(), finding, by)
        .await
    {
        Ok(before) => before,
        Err(e) => {
            errln!(
                "[WARNING] [{}] archive {}: recording what {} found: {e}",
                archive.host,
                archive.short_id(),
                by.as_str()
            );
            None
        }
    }
}

async fn examine(
    store: &Store,
    archive: &ArchiveRecord,
    identities: Option<&Identities>,
    options: Options,
) -> Result<Proof, Unproven> {
    let object = archive.object();
    let location = store.location(&archive.host, &object);
    let id = archive.short_id();
    let env = |cause: String| Unproven {
        finding: None,
        cause,
    };
    let suspect = |reason: Reason, detail: String| Unproven {
        finding: Some(Finding::Suspect(reason, detail.clone())),
        cause: format!("archive {id} is suspect ({}): {detail}", reason.as_str()),
    };
    let missing = || Unproven {
        finding: Some(Finding::Missing(format!("{location} is not in the store"))),
        cause: format!("archive {id}: {location} is missing from the store"),
    };
    let version = match store.version(&archive.host, &object).await {
        Ok(Some(v)) => v,
        Ok(None) => return Err(missing()),
        Err(e) => return Err(env(e.to_string())),
    };
    let mut notes = Vec::new();
    let key = match &archive.sealed {
        None => None,
        Some(_) if identities.is_none() && options.ciphertext_without_key => {
            notes.push(
                "ciphertext checked; the plaintext was not (no encryption.identity)".to_string(),
            );
            None
        }
        Some(sealed) => {
            match crate::keys::data_key(store, archive, identities, &sealed.key_ids).await {
                Ok(key) => Some(Arc::new(key)),
                Err(crate::keys::KeyError::NotConfigured(e)) => return Err(env(e)),
                Err(crate::keys::KeyError::Bad(e)) => {
                    return Err(suspect(
                        Reason::AuthFailed,
                        format!("its key file does not open: {e}"),
                    ));
                }
            }
        }
    };
    let through = match (&key, options.read_archive) {
        (Some(k), _) => Through::Archive(Some(Arc::clone(k))),
        (None, true) => Through::Archive(None),
        (None, false) => Through::HashOnly,
    };
    let expected_plain = match &archive.sealed {
        Some(s) if key.is_some() => Some(s.plain_sha256.clone()),
        Some(_) => None,
        None if options.read_archive => Some(archive.sha256.clone()),
        None => None,
    };
    let body = match store.reader_at(&archive.host, &object, &version).await {
        Ok(body) => body,
        Err(StoreError::Changed { .. }) => {
            return Err(env(format!(
                "archive {id}: {location} changed while ferry was reading it; run the command again"
            )));
        }
        Err(e) => return Err(env(e.to_string())),
    };
    let pass = match crate::keys::pass(
        body,
        location.clone(),
        through,
        expected_plain,
        options.keep,
    )
    .await
    {
        Ok(pass) => pass,
        Err(e) => {
            // Gone between the look and the read, or a read that broke part-way: a file that does
            // not read is the copy's fault; a bucket's broken GET is the link's, and says nothing.
            return match store.version(&archive.host, &object).await {
                Ok(None) => Err(missing()),
                _ if matches!(store, Store::Bucket(_)) => Err(env(format!(
                    "archive {id}: reading {location} broke: {e}; run the command again"
                ))),
                _ => Err(suspect(Reason::Unreadable, e)),
            };
        }
    };
    let Pass {
        size,
        sha256,
        archive: read,
    } = pass;
    let sidecar = match store.sidecar_digest(&archive.host, &object).await {
        Ok(s) => s,
        Err(e) => return Err(env(e.to_string())),
    };
    if size != archive.size as u64 || sha256 != archive.sha256 {
        let mut detail = if size != archive.size as u64 {
            format!(
                "{location} is {size} bytes, the catalog says {}; sha256 {sha256} differs from the catalog's {}",
                archive.size, archive.sha256
            )
        } else {
            format!(
                "{location}: sha256 {sha256} differs from the catalog's {}",
                archive.sha256
            )
        };
        match &sidecar {
            Some(side) if *side != sha256 => {
                detail.push_str(&format!("; it also differs from the sidecar's {side}"))
            }
            Some(_) => detail.push_str(" (its sidecar was rewritten to match)"),
            None => {}
        }
        // An encrypted body that no longer authenticates says so first: that is what an operator
        // searches for.
        return Err(match read {
            Some(Err(e)) if archive.sealed.is_some() => {
                suspect(Reason::AuthFailed, format!("{e}; {detail}"))
            }
            _ => suspect(Reason::BodyDiffers, detail),
        });
    }
    let verified = match read {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(e)) if archive.sealed.is_some() => {
            return Err(suspect(Reason::AuthFailed, e));
        }
        // The bytes are the catalog's, yet the archive does not read: the catalog recorded a bad
        // archive. Suspect, whatever its digest.
        Some(Err(e)) => return Err(suspect(Reason::BodyDiffers, e)),
    };
    let trusted_over = match sidecar {
        Some(side) if side == sha256 => None,
        other => {
            let detail = match other {
                Some(side) => format!(
                    "the .sha256 sidecar of {location} says {side}, the archive hashes to {sha256} as the catalog says"
                ),
                None => format!("the .sha256 sidecar of {location} is missing"),
            };
            if !options.trust_archive_digest {
                return Err(suspect(Reason::SidecarDiffers, detail));
            }
            Some(detail)
        }
    };
    Ok(Proof {
        version,
        verified,
        trusted_over,
        notes,
        key,
    })
}

/// Opens the configured store and links to it the archives catalogued before stores were
/// recorded that it holds (found by listing it, once).
pub async fn open_store(
    config: &crate::config::Config,
    catalog: &Catalog,
) -> Result<Store, StoreError> {
    let store = Store::open(&config.store, &config.state_dir).await?;
    adopt(catalog, &store).await;
    Ok(store)
}

/// Links the catalog's unrecorded archives that `store` lists; a failure is only warned about
/// (they stay unrecorded, which nothing counts as good).
pub async fn adopt(catalog: &Catalog, store: &Store) {
    match catalog.has_unrecorded().await {
        Ok(false) => return,
        Ok(true) => {}
        Err(e) => {
            errln!("[WARNING] looking for archives with no store recorded: {e}");
            return;
        }
    }
    let listed = match store.list().await {
        Ok(objects) => objects
            .into_iter()
            .map(|o| ((o.host, o.object), o.size))
            .collect::<std::collections::BTreeMap<_, _>>(),
        Err(e) => {
            errln!(
                "[WARNING] listing {} to link older archives to it: {e}",
                store.describe()
            );
            return;
        }
    };
    match catalog.adopt_unrecorded(&store.id(), &listed).await {
        Ok(0) => {}
        Ok(n) => errln!(
            "ferry: {n} archive(s) catalogued before stores were recorded were found in {} and linked to it",
            store.describe()
        ),
        Err(e) => errln!(
            "[WARNING] linking older archives to {}: {e}",
            store.describe()
        ),
    }
}

/// What [`send_archive`]'s reader ends with: the plaintext's size and sha256 when read to the end.
pub type Sent = std::io::Result<Option<(u64, String)>>;

/// Streams an opened archive's plaintext as messages (`first`, then `wrap` of each 1 MiB piece),
/// read off the async workers. The handle gives the size and sha256 of the whole plaintext (None
/// when the receiver stopped reading first), or why the store could not be read to its end.
pub fn send_archive<T: Send + 'static>(
    opened: crate::keys::Opened,
    first: T,
    wrap: impl Fn(bytes::Bytes) -> T + Send + 'static,
) -> (
    tokio_stream::wrappers::ReceiverStream<T>,
    tokio::task::JoinHandle<Sent>,
) {
    use sha2::Digest;
    let (tx, rx) = tokio::sync::mpsc::channel::<T>(8);
    let reader = tokio::task::spawn_blocking(move || -> Sent {
        if tx.blocking_send(first).is_err() {
            return Ok(None);
        }
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        let mut file = opened.plaintext().map_err(std::io::Error::other)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(Some((size, ferry_archive::hex(&hasher.finalize()))));
            }
            hasher.update(&buf[..n]);
            size += n as u64;
            if tx
                .blocking_send(wrap(bytes::Bytes::copy_from_slice(&buf[..n])))
                .is_err()
            {
                return Ok(None);
            }
        }
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), reader)
}
