//! The archive store: where archives live, a local directory (the default) or an S3-compatible
//! bucket, behind one interface. Layout in both: `<host>/<archive>` and `<host>/<archive>.sha256`,
//! plus `<host>/<archive>.key.age` for an encrypted archive (`<archive>` then ends in `.age`).
//!
//! An archive becomes visible only once its size and digest matched the agent's trailer: the
//! directory store renames a temporary file into place; the bucket completes a multipart upload and
//! writes the sidecar last, and lists only archives whose sidecar exists.

mod dir;
mod location;
mod s3;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use location::{Credentials, S3Location, StoreLocation};
pub use s3::settle;

/// Why the store could not take or give an archive.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store is full at {path}: {source}; free space or point `store:` elsewhere")]
    Full {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {store}: {cause}")]
    Bucket { store: String, cause: String },
    #[error(
        "received {actual_size} bytes sha256 {actual_sha}, but the agent announced {expected_size} bytes sha256 {expected_sha}"
    )]
    Mismatch {
        expected_size: u64,
        expected_sha: String,
        actual_size: u64,
        actual_sha: String,
    },
    #[error("{0} already exists in the store; refusing to overwrite it")]
    Exists(String),
    #[error("{0:?} is not a safe name for a store object")]
    BadName(String),
    #[error("store {store}: {object} is missing")]
    Missing { store: String, object: String },
    /// The object is no longer the version that was proven (replaced or rewritten since).
    #[error(
        "store {store}: {object} changed after ferry proved it (replaced or rewritten in between); nothing was sent"
    )]
    Changed { store: String, object: String },
}

/// Which bytes of an object were read: [`Store::reader_at`] refuses any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// A file: the same inode, size and modification time.
    File {
        dev: u64,
        ino: u64,
        size: u64,
        mtime_ns: i128,
    },
    /// A bucket object: its ETag and version id (when the bucket versions), read with If-Match.
    Object {
        e_tag: Option<String>,
        version: Option<String>,
        size: u64,
    },
}

impl Version {
    pub fn size(&self) -> u64 {
        match self {
            Version::File { size, .. } | Version::Object { size, .. } => *size,
        }
    }

    /// The version as the catalog keeps it, to tell later whether the object changed.
    pub fn fingerprint(&self) -> String {
        match self {
            Version::File {
                dev,
                ino,
                size,
                mtime_ns,
            } => format!("file:{dev}:{ino}:{size}:{mtime_ns}"),
            Version::Object {
                e_tag,
                version,
                size,
            } => format!(
                "object:{}:{}:{size}",
                e_tag.as_deref().unwrap_or("-"),
                version.as_deref().unwrap_or("-")
            ),
        }
    }
}

/// One archive object in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub host: String,
    /// The object's name: the archive's name, plus `.age` when it is encrypted.
    pub object: String,
    pub size: u64,
}

impl StoredObject {
    /// The upstream archive name (without `.age`).
    pub fn archive_name(&self) -> &str {
        self.object
            .strip_suffix(ferry_archive::SEALED_SUFFIX)
            .unwrap_or(&self.object)
    }

    pub fn sealed(&self) -> bool {
        self.object.ends_with(ferry_archive::SEALED_SUFFIX)
    }
}

/// A committed archive.
#[derive(Debug, Clone)]
pub struct Committed {
    /// Where it is, for people: a path or an `s3://` URL.
    pub location: String,
    pub size: u64,
    pub sha256: String,
}

/// The store ferry writes archives to and reads them from.
#[derive(Clone)]
pub enum Store {
    Dir(dir::DirStore),
    Bucket(s3::BucketStore),
}

/// An archive being received. Dropping it without `commit` removes what was written.
pub enum Incoming {
    Dir(Box<dir::Incoming>),
    Bucket(Box<s3::Incoming>),
}

impl Store {
    /// Opens the store (creating a directory, checking a bucket answers), and clears what transfers
    /// of controllers that died left behind. `state_dir` keeps the journal of open uploads.
    pub async fn open(location: &StoreLocation, state_dir: &Path) -> Result<Store, StoreError> {
        match location {
            StoreLocation::Dir(root) => Ok(Store::Dir(dir::DirStore::open(root)?)),
            StoreLocation::S3(s3) => Ok(Store::Bucket(
                s3::BucketStore::open(s3, &state_dir.join("uploads")).await?,
            )),
        }
    }

    /// The store's stable id ([`StoreLocation::id`]).
    pub fn id(&self) -> String {
        match self {
            Store::Dir(d) => location::dir_id(d.root()),
            Store::Bucket(b) => b.url(),
        }
    }

    /// The version of an object as it is now, or None when it is not there.
    pub async fn version(&self, host: &str, object: &str) -> Result<Option<Version>, StoreError> {
        match self {
            Store::Dir(d) => {
                let path = d.path(host, object);
                match std::fs::metadata(&path) {
                    Ok(meta) => Ok(Some(dir::version(&meta))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(dir::io_error(&path, e)),
                }
            }
            Store::Bucket(b) => b.version(host, object).await,
        }
    }

    /// A blocking reader of exactly `version` of an object: refused ([`StoreError::Changed`]) when
    /// the object was replaced or rewritten since.
    pub async fn reader_at(
        &self,
        host: &str,
        object: &str,
        version: &Version,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        let changed = || StoreError::Changed {
            store: self.describe(),
            object: format!("{host}/{object}"),
        };
        match self {
            Store::Dir(d) => {
                let path = d.path(host, object);
                let file = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(changed()),
                    Err(e) => return Err(dir::io_error(&path, e)),
                };
                let now = file.metadata().map_err(|e| dir::io_error(&path, e))?;
                if dir::version(&now) != *version {
                    return Err(changed());
                }
                Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, file)))
            }
            Store::Bucket(b) => b
                .reader_at(host, object, version)
                .await
                .map_err(|e| match e {
                    StoreError::Missing { .. } => changed(),
                    other => other,
                }),
        }
    }

    /// The store as an operator names it: a path or `s3://bucket/prefix`.
    pub fn describe(&self) -> String {
        match self {
            Store::Dir(d) => d.root().display().to_string(),
            Store::Bucket(b) => b.url(),
        }
    }

    /// Where an object is, for messages.
    pub fn location(&self, host: &str, object: &str) -> String {
        match self {
            Store::Dir(d) => d.path(host, object).display().to_string(),
            Store::Bucket(b) => format!("{}/{host}/{object}", b.url()),
        }
    }

    /// Starts receiving `object` for `host`; refused if it exists.
    pub async fn begin(&self, host: &str, object: &str) -> Result<Incoming, StoreError> {
        check_name(host)?;
        check_name(object)?;
        match self {
            Store::Dir(d) => d.begin(host, object).map(|i| Incoming::Dir(Box::new(i))),
            Store::Bucket(b) => b
                .begin(host, object)
                .await
                .map(|i| Incoming::Bucket(Box::new(i))),
        }
    }

    /// Every visible archive, by host then name.
    pub async fn list(&self) -> Result<Vec<StoredObject>, StoreError> {
        let mut objects = match self {
            Store::Dir(d) => d.list()?,
            Store::Bucket(b) => b.list().await?,
        };
        objects.sort_by(|a, b| (&a.host, &a.object).cmp(&(&b.host, &b.object)));
        Ok(objects)
    }

    /// The second after `host`'s newest stored archive: the earliest timestamp a new archive of it
    /// may carry without colliding (Unix seconds; 0 when it has none).
    pub async fn next_free_second(&self, host: &str) -> Result<i64, StoreError> {
        let names = match self {
            Store::Dir(d) => d.names(host),
            Store::Bucket(b) => b.names(host).await?,
        };
        let newest = names
            .iter()
            .filter_map(|n| ferry_archive::archive_time(n))
            .max();
        Ok(newest.map_or(0, |t| t.unix_timestamp() + 1))
    }

    /// Removes an archive: its sidecar first (so it stops being visible), then its key and body.
    /// Objects already gone are not an error.
    pub async fn delete(&self, host: &str, object: &str) -> Result<(), StoreError> {
        let archive = object
            .strip_suffix(ferry_archive::SEALED_SUFFIX)
            .unwrap_or(object);
        let names = [
            format!("{object}.sha256"),
            ferry_archive::key_object_name(archive),
            object.to_string(),
        ];
        match self {
            Store::Dir(d) => d.delete(host, &names),
            Store::Bucket(b) => b.delete(host, &names).await,
        }
    }

    /// The digest recorded in an object's sidecar.
    pub async fn sidecar_digest(
        &self,
        host: &str,
        object: &str,
    ) -> Result<Option<String>, StoreError> {
        match self {
            Store::Dir(d) => d.sidecar_digest(host, object),
            Store::Bucket(b) => Ok(b
                .get_small(host, &format!("{object}.sha256"))
                .await?
                .and_then(|bytes| ferry_archive::parse_sidecar(&String::from_utf8_lossy(&bytes)))),
        }
    }

    /// An object's size, or None when it is not there.
    pub async fn size(&self, host: &str, object: &str) -> Result<Option<u64>, StoreError> {
        match self {
            Store::Dir(d) => d.size(host, object),
            Store::Bucket(b) => b.size(host, object).await,
        }
    }

    /// A small object (a key file), whole.
    pub async fn get_small(&self, host: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Dir(d) => d.get_small(host, name),
            Store::Bucket(b) => b.get_small(host, name).await,
        }
    }

    /// Replaces a small object (a key file) in one atomic write.
    pub async fn put_small(&self, host: &str, name: &str, data: &[u8]) -> Result<(), StoreError> {
        match self {
            Store::Dir(d) => d.put_small(host, name, data),
            Store::Bucket(b) => b.put_small(host, name, data.to_vec()).await,
        }
    }

    /// A blocking reader of an object, streamed (a bucket object is never read whole); use it on a
    /// blocking thread (`spawn_blocking`).
    pub async fn reader(
        &self,
        host: &str,
        object: &str,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        match self {
            Store::Dir(d) => {
                let path = d.path(host, object);
                match std::fs::File::open(&path) {
                    Ok(f) => Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Err(StoreError::Missing {
                            store: self.describe(),
                            object: format!("{host}/{object}"),
                        })
                    }
                    Err(e) => Err(dir::io_error(&path, e)),
                }
            }
            Store::Bucket(b) => b.reader(host, object).await,
        }
    }
}

impl Incoming {
    pub async fn write_chunk(&mut self, data: &[u8]) -> Result<(), StoreError> {
        match self {
            Incoming::Dir(i) => i.write_chunk(data),
            Incoming::Bucket(i) => i.write_chunk(data).await,
        }
    }

    pub fn size(&self) -> u64 {
        match self {
            Incoming::Dir(i) => i.size(),
            Incoming::Bucket(i) => i.size(),
        }
    }

    /// Makes the object visible if it is exactly what was announced: `extras` (small objects such
    /// as its key) are written first, the sidecar last.
    pub async fn commit(
        self,
        expected_size: u64,
        expected_sha: &str,
        extras: &[(String, Vec<u8>)],
    ) -> Result<Committed, StoreError> {
        match self {
            Incoming::Dir(i) => i.commit(expected_size, expected_sha, extras),
            Incoming::Bucket(i) => i.commit(expected_size, expected_sha, extras).await,
        }
    }
}

/// What an incoming object has received so far: its size and running sha256.
#[derive(Clone, Default)]
pub(crate) struct Received {
    hasher: sha2::Sha256,
    size: u64,
}

impl Received {
    fn update(&mut self, data: &[u8]) {
        sha2::Digest::update(&mut self.hasher, data);
        self.size += data.len() as u64;
    }

    /// The sha256, if size and digest are what was announced.
    fn check(&self, expected_size: u64, expected_sha: &str) -> Result<String, StoreError> {
        let sha256 = ferry_archive::hex(&sha2::Digest::finalize(self.hasher.clone()));
        if self.size != expected_size || !sha256.eq_ignore_ascii_case(expected_sha) {
            return Err(StoreError::Mismatch {
                expected_size,
                expected_sha: expected_sha.to_string(),
                actual_size: self.size,
                actual_sha: sha256,
            });
        }
        Ok(sha256)
    }
}

/// An archive object's name: upstream's archive names, plain or sealed.
fn is_archive_object(name: &str) -> bool {
    let archive = name
        .strip_suffix(ferry_archive::SEALED_SUFFIX)
        .unwrap_or(name);
    !name.starts_with('.') && (archive.ends_with(".tar.gz") || archive.ends_with(".tar.zst"))
}

fn check_name(part: &str) -> Result<(), StoreError> {
    if part.is_empty() || part.starts_with('.') || part.contains('/') || part.contains('\0') {
        return Err(StoreError::BadName(part.to_string()));
    }
    Ok(())
}
