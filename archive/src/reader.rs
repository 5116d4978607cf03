//! A safe streaming reader: checks every entry before anything is written, hashes everything it reads,
//! and cross-checks ferry's manifest.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Component, Path};

use sha2::{Digest, Sha256};

use crate::compress::Codec;
use crate::manifest::{Entry, EntryKind, MANIFEST_NAME, Manifest};
use crate::metadata::{METADATA_NAME, Metadata};

/// Why an archive cannot be used. Every variant means "nothing was changed".
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a gzip or zstd archive")]
    UnknownFormat,
    #[error("archive is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error("unsafe tar entry {path:?}: {reason}")]
    UnsafeEntry { path: String, reason: String },
    #[error("digest mismatch: expected sha256 {expected}, archive has {actual}")]
    Digest { expected: String, actual: String },
    #[error("{METADATA_NAME}: {0}")]
    Metadata(String),
    #[error("{MANIFEST_NAME} disagrees with the archive: {0}")]
    Manifest(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What to do while reading.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadOptions<'a> {
    /// Materialise directories (0700) and regular files (0600) under this directory.
    pub extract_to: Option<&'a Path>,
    /// Fail unless the compressed bytes hash to this.
    pub expected_sha256: Option<&'a str>,
    /// Keep the contents of the small files this selects (by path) in [`Verified::kept`].
    pub keep: Option<fn(&str) -> bool>,
}

/// An archive that was read to its end and found consistent.
#[derive(Debug, Clone)]
pub struct Verified {
    pub codec: Codec,
    pub size: u64,
    pub sha256: String,
    pub metadata: Option<Metadata>,
    pub manifest: Option<Manifest>,
    /// Entries as found in the tar (manifest excluded), with their content digests.
    pub entries: Vec<Entry>,
    /// Contents of the files [`ReadOptions::keep`] selected, by path.
    pub kept: BTreeMap<String, Vec<u8>>,
}

const SMALL_FILE_LIMIT: u64 = 16 << 20;

/// Reads a whole archive. Links, devices, absolute paths and `..` are refused.
pub fn read_archive(input: impl Read, options: &ReadOptions<'_>) -> Result<Verified, ArchiveError> {
    read_archive_into(input, options, None)
}

/// [`read_archive`], with the content of the entry at `divert.0` written to `divert.1` instead of
/// being extracted (a dump streamed straight into `psql`). Its size and digest are checked all the
/// same; a write error ends the read.
pub fn read_archive_into(
    input: impl Read,
    options: &ReadOptions<'_>,
    mut divert: Option<(&str, &mut dyn Write)>,
) -> Result<Verified, ArchiveError> {
    let mut hashed = Hashing {
        inner: BufReader::with_capacity(1 << 20, input),
        hasher: Sha256::new(),
        size: 0,
    };
    let codec = Codec::sniff(hashed.inner.fill_buf()?).ok_or(ArchiveError::UnknownFormat)?;
    let mut entries = Vec::new();
    let mut metadata_bytes = None;
    let mut manifest_bytes = None;
    let mut kept = BTreeMap::new();
    {
        let decoder = codec.decoder(&mut hashed).map_err(corrupt)?;
        let mut archive = tar::Archive::new(decoder);
        for entry in archive.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let clean = check_path(&path)?;
            let kind = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
                tar::EntryType::Directory => EntryKind::Dir,
                other => {
                    return Err(ArchiveError::UnsafeEntry {
                        path,
                        reason: format!("{} entries are not allowed", kind_name(other)),
                    });
                }
            };
            let mode = entry.header().mode().unwrap_or(0);
            if kind == EntryKind::Dir {
                if let Some(dest) = options.extract_to {
                    create_dir(&dest.join(&clean))?;
                }
                entries.push(Entry {
                    path: clean,
                    kind,
                    mode,
                    size: 0,
                    sha256: String::new(),
                });
                continue;
            }
            let wanted = options.keep.is_some_and(|keep| keep(&clean));
            let keep = wanted || clean == METADATA_NAME || clean == MANIFEST_NAME;
            let mut small = Vec::new();
            let diverted = divert.as_ref().is_some_and(|(path, _)| *path == clean);
            let mut file = match options.extract_to {
                Some(dest) if clean != MANIFEST_NAME && !diverted => {
                    Some(create_file(&dest.join(&clean))?)
                }
                _ => None,
            };
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = entry.read(&mut buf).map_err(corrupt)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
                if let Some(f) = file.as_mut() {
                    f.write_all(&buf[..n])?;
                }
                if diverted && let Some((_, sink)) = divert.as_mut() {
                    sink.write_all(&buf[..n])?;
                }
                if keep && size <= SMALL_FILE_LIMIT {
                    small.extend_from_slice(&buf[..n]);
                }
            }
            if let Some(f) = file {
                f.sync_all()?;
            }
            if wanted && size <= SMALL_FILE_LIMIT {
                kept.insert(clean.clone(), small.clone());
            }
            match clean.as_str() {
                METADATA_NAME => metadata_bytes = Some(small),
                MANIFEST_NAME => {
                    manifest_bytes = Some(small);
                    continue;
                }
                _ => {}
            }
            entries.push(Entry {
                path: clean,
                kind,
                mode,
                size,
                sha256: crate::hex(&hasher.finalize()),
            });
        }
        // Read whatever follows the end-of-archive blocks so the digest covers every byte.
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(corrupt)?;
    }
    io::copy(&mut hashed, &mut io::sink())?;
    let sha256 = crate::hex(&hashed.hasher.finalize());
    if let Some(expected) = options.expected_sha256
        && !expected.eq_ignore_ascii_case(&sha256)
    {
        return Err(ArchiveError::Digest {
            expected: expected.to_string(),
            actual: sha256,
        });
    }
    let metadata = metadata_bytes
        .map(|b| {
            serde_json::from_slice::<Metadata>(&b)
                .map_err(|e| ArchiveError::Metadata(e.to_string()))
        })
        .transpose()?;
    let manifest = manifest_bytes
        .map(|b| {
            serde_json::from_slice::<Manifest>(&b)
                .map_err(|e| ArchiveError::Manifest(format!("unreadable: {e}")))
        })
        .transpose()?;
    if let Some(manifest) = &manifest {
        cross_check(manifest, &entries)?;
    }
    Ok(Verified {
        codec,
        size: hashed.size,
        sha256,
        metadata,
        manifest,
        entries,
        kept,
    })
}

/// Every entry the manifest lists is in the archive with the same size and digest, and vice versa.
fn cross_check(manifest: &Manifest, entries: &[Entry]) -> Result<(), ArchiveError> {
    let found: BTreeMap<&str, &Entry> = entries.iter().map(|e| (e.path.as_str(), e)).collect();
    for listed in &manifest.entries {
        let Some(actual) = found.get(listed.path.as_str()) else {
            return Err(ArchiveError::Manifest(format!(
                "{} is listed but missing",
                listed.path
            )));
        };
        if actual.kind != listed.kind
            || actual.size != listed.size
            || actual.sha256 != listed.sha256
        {
            return Err(ArchiveError::Manifest(format!(
                "{}: manifest says {} bytes sha256 {}, archive has {} bytes sha256 {}",
                listed.path, listed.size, listed.sha256, actual.size, actual.sha256
            )));
        }
    }
    if let Some(extra) = entries.iter().find(|e| manifest.entry(&e.path).is_none()) {
        return Err(ArchiveError::Manifest(format!(
            "{} is in the archive but not listed",
            extra.path
        )));
    }
    Ok(())
}

/// A relative path made only of normal components, without `./`.
fn check_path(raw: &str) -> Result<String, ArchiveError> {
    let unsafe_entry = |reason: &str| ArchiveError::UnsafeEntry {
        path: raw.to_string(),
        reason: reason.into(),
    };
    if raw.is_empty() || raw.contains('\0') {
        return Err(unsafe_entry("empty name"));
    }
    if raw.starts_with('/') {
        return Err(unsafe_entry("absolute path"));
    }
    let mut parts = Vec::new();
    for component in Path::new(raw).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_entry("path climbs out with '..'")),
            Component::RootDir | Component::Prefix(_) => return Err(unsafe_entry("absolute path")),
        }
    }
    if parts.is_empty() {
        return Err(unsafe_entry("empty name"));
    }
    Ok(parts.join("/"))
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "symbolic link",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "FIFO",
        _ => "special",
    }
}

fn create_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

fn create_file(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        create_dir(parent)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

fn corrupt(e: io::Error) -> ArchiveError {
    ArchiveError::Corrupt(e.to_string())
}

struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}
