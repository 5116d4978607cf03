//! The bucket store (S3-compatible, through object_store).
//!
//! An archive is written in place by a multipart upload in parts of [`PART_SIZE`], at most
//! [`IN_FLIGHT`] at a time, so memory does not grow with the archive. Its upload id goes into a
//! journal file under the state directory before the first part: a controller killed mid-upload
//! leaves a journal entry, and the next ferry that opens the store aborts that upload (and removes a
//! completed body that never got its sidecar). The sidecar is written last and is the commit: only
//! archives with one are listed.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_archive::sidecar_line;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};
use tokio::task::JoinSet;

use super::{Committed, S3Location, StoreError, StoredObject, is_archive_object};

/// Parts are 8 MiB (S3's minimum is 5 MiB; 10 000 parts of 8 MiB hold 80 GB).
const PART_SIZE: usize = 8 << 20;
/// Parts uploading at once: memory stays below PART_SIZE × (IN_FLIGHT + 1).
const IN_FLIGHT: usize = 1;

#[derive(Clone)]
pub struct BucketStore {
    s3: Arc<AmazonS3>,
    location: S3Location,
    journal: PathBuf,
}

/// One open multipart upload, as the journal keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Upload {
    url: String,
    key: String,
    upload_id: String,
    pid: u32,
}

impl BucketStore {
    pub async fn open(location: &S3Location, journal: &Path) -> Result<BucketStore, StoreError> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&location.bucket)
            .with_virtual_hosted_style_request(!location.path_style)
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: Duration::from_secs(60),
                ..Default::default()
            })
            .with_client_options(
                ClientOptions::new().with_connect_timeout(Duration::from_secs(10)),
            );
        if let Some(endpoint) = &location.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        builder = builder.with_region(location.region.as_deref().unwrap_or("us-east-1"));
        if let Some(c) = &location.credentials {
            builder = builder
                .with_access_key_id(&c.access_key_id)
                .with_secret_access_key(&c.secret_access_key);
            if let Some(token) = &c.session_token {
                builder = builder.with_token(token);
            }
        }
        let store = BucketStore {
            s3: Arc::new(builder.build().map_err(|e| StoreError::Bucket {
                store: location.url(),
                cause: e.to_string(),
            })?),
            location: location.clone(),
            journal: journal.to_path_buf(),
        };
        // A bucket that is missing or refuses us is found here, before any agent is asked.
        store
            .s3
            .list_with_delimiter(Some(&store.key_of("")))
            .await
            .map_err(|e| store.error("listing the bucket", e))?;
        store.finish_dead_uploads().await;
        Ok(store)
    }

    pub fn url(&self) -> String {
        self.location.url()
    }

    fn key_of(&self, rest: &str) -> Key {
        match (self.location.prefix.is_empty(), rest.is_empty()) {
            (true, _) => Key::from(rest),
            (false, true) => Key::from(self.location.prefix.as_str()),
            (false, false) => Key::from(format!("{}/{rest}", self.location.prefix)),
        }
    }

    fn key(&self, host: &str, name: &str) -> Key {
        self.key_of(&format!("{host}/{name}"))
    }

    /// A bucket error, named for an operator: what was done, and the likely cause in plain words.
    fn error(&self, doing: &str, e: object_store::Error) -> StoreError {
        let text = e.to_string();
        let hint = if text.contains("169.254.169.254") {
            "no S3 credentials found: set `store_credentials:` in ferry.yaml or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY".to_string()
        } else if text.contains("NoSuchBucket") {
            format!(
                "bucket {:?} does not exist{}; create it, or correct the store URL (`store:` or `--to`)",
                self.location.bucket,
                self.location
                    .endpoint
                    .as_deref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default()
            )
        } else if [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "403 Forbidden",
            "Missing credentials",
            "InvalidToken",
        ]
        .iter()
        .any(|m| text.contains(m))
        {
            "the bucket refused ferry's credentials; check `store_credentials:` in ferry.yaml or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY".to_string()
        } else if text.contains("error sending request") || text.contains("Connection refused") {
            format!(
                "cannot reach {}; check the endpoint and the network",
                self.location
                    .endpoint
                    .as_deref()
                    .unwrap_or("the S3 endpoint")
            )
        } else {
            String::new()
        };
        StoreError::Bucket {
            store: self.url(),
            cause: if hint.is_empty() {
                format!("{doing}: {}", short(&text))
            } else {
                format!("{doing}: {hint} ({})", short(&text))
            },
        }
    }

    /// Aborts the uploads of controllers that died mid-transfer, from the journal.
    async fn finish_dead_uploads(&self) {
        let Ok(entries) = std::fs::read_dir(&self.journal) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let Ok(upload) = serde_json::from_str::<Upload>(&text) else {
                continue;
            };
            if upload.url != self.url() || Path::new(&format!("/proc/{}", upload.pid)).exists() {
                continue;
            }
            let key = Key::from(upload.key.as_str());
            tracing::warn!(object = %upload.key, "aborting an upload left by an interrupted transfer");
            let _ = self
                .s3
                .abort_multipart(&key, &upload.upload_id.clone())
                .await;
            // Completed but never committed: remove the body unless its sidecar exists.
            let sidecar = Key::from(format!("{}.sha256", upload.key));
            if matches!(
                self.s3.head(&sidecar).await,
                Err(object_store::Error::NotFound { .. })
            ) {
                let _ = self.s3.delete(&key).await;
            }
            let _ = std::fs::remove_file(entry.path());
        }
    }

    pub async fn begin(&self, host: &str, object: &str) -> Result<Incoming, StoreError> {
        let key = self.key(host, object);
        for k in [key.clone(), Key::from(format!("{key}.sha256"))] {
            match self.s3.head(&k).await {
                Err(object_store::Error::NotFound { .. }) => {}
                Ok(_) => {
                    return Err(StoreError::Exists(format!(
                        "{}/{host}/{object}",
                        self.url()
                    )));
                }
                Err(e) => return Err(self.error("checking the object", e)),
            }
        }
        let id = self
            .s3
            .create_multipart(&key)
            .await
            .map_err(|e| self.error("starting the upload", e))?;
        let journal = self.record_upload(&key, &id)?;
        Ok(Incoming {
            store: self.clone(),
            host: host.to_string(),
            name: object.to_string(),
            key,
            id,
            journal: Some(journal),
            buf: Vec::with_capacity(PART_SIZE),
            parts: Vec::new(),
            uploading: JoinSet::new(),
            received: Default::default(),
        })
    }

    fn record_upload(&self, key: &Key, id: &str) -> Result<PathBuf, StoreError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let io = |path: &Path, source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&self.journal).map_err(|e| io(&self.journal, e))?;
        let path = self
            .journal
            .join(format!("{}-{n}.json", std::process::id()));
        let upload = Upload {
            url: self.url(),
            key: key.to_string(),
            upload_id: id.to_string(),
            pid: std::process::id(),
        };
        std::fs::write(&path, serde_json::to_vec(&upload).unwrap_or_default())
            .map_err(|e| io(&path, e))?;
        Ok(path)
    }

    pub async fn list(&self) -> Result<Vec<StoredObject>, StoreError> {
        let prefix = self.key_of("");
        let all: Vec<_> = self
            .s3
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.error("listing the bucket", e))?;
        let skip = if self.location.prefix.is_empty() {
            0
        } else {
            self.location.prefix.split('/').count()
        };
        let parts = |meta: &object_store::ObjectMeta| -> Option<(String, String)> {
            let mut it = meta.location.parts().skip(skip);
            let host = it.next()?.as_ref().to_string();
            let name = it.next()?.as_ref().to_string();
            it.next().is_none().then_some((host, name))
        };
        let sidecars: BTreeSet<(String, String)> = all
            .iter()
            .filter_map(parts)
            .filter_map(|(h, n)| n.strip_suffix(".sha256").map(|o| (h, o.to_string())))
            .collect();
        Ok(all
            .iter()
            .filter_map(|meta| parts(meta).map(|(h, n)| (h, n, meta.size)))
            .filter(|(h, n, _)| is_archive_object(n) && sidecars.contains(&(h.clone(), n.clone())))
            .map(|(host, object, size)| StoredObject { host, object, size })
            .collect())
    }

    pub async fn names(&self, host: &str) -> Result<Vec<String>, StoreError> {
        let metas: Vec<_> = self
            .s3
            .list(Some(&self.key_of(host)))
            .try_collect()
            .await
            .map_err(|e| self.error("listing the bucket", e))?;
        Ok(metas
            .iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect())
    }

    pub async fn delete(&self, host: &str, names: &[String]) -> Result<(), StoreError> {
        for name in names {
            match self.s3.delete(&self.key(host, name)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error("deleting", e)),
            }
        }
        Ok(())
    }

    pub async fn size(&self, host: &str, name: &str) -> Result<Option<u64>, StoreError> {
        match self.s3.head(&self.key(host, name)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("reading", e)),
        }
    }

    pub async fn version(
        &self,
        host: &str,
        name: &str,
    ) -> Result<Option<super::Version>, StoreError> {
        match self.s3.head(&self.key(host, name)).await {
            Ok(meta) => Ok(Some(super::Version::Object {
                e_tag: meta.e_tag,
                version: meta.version,
                size: meta.size,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("reading", e)),
        }
    }

    /// A reader of exactly `version`: the GET carries If-Match (and the version id), so an object
    /// replaced since is refused by the bucket, not read.
    pub async fn reader_at(
        &self,
        host: &str,
        name: &str,
        version: &super::Version,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        let changed = || StoreError::Changed {
            store: self.url(),
            object: format!("{host}/{name}"),
        };
        let super::Version::Object { e_tag, version, .. } = version else {
            return Err(changed());
        };
        let options = object_store::GetOptions {
            if_match: e_tag.clone(),
            version: version.clone(),
            ..Default::default()
        };
        let got = match self.s3.get_opts(&self.key(host, name), options).await {
            Ok(got) => got,
            Err(
                object_store::Error::NotFound { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::NotModified { .. },
            ) => return Err(changed()),
            Err(e) => return Err(self.error("reading", e)),
        };
        if e_tag.is_some() && got.meta.e_tag != *e_tag {
            return Err(changed());
        }
        let stream = got.into_stream().map_err(std::io::Error::other);
        let reader = tokio_util::io::StreamReader::new(stream);
        Ok(Box::new(tokio_util::io::SyncIoBridge::new(reader)))
    }

    pub async fn get_small(&self, host: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.s3.get(&self.key(host, name)).await {
            Ok(got) => Ok(Some(
                got.bytes()
                    .await
                    .map_err(|e| self.error("reading", e))?
                    .to_vec(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("reading", e)),
        }
    }

    pub async fn put_small(&self, host: &str, name: &str, data: Vec<u8>) -> Result<(), StoreError> {
        self.s3
            .put(&self.key(host, name), PutPayload::from(data))
            .await
            .map(|_| ())
            .map_err(|e| self.error("writing", e))
    }

    pub async fn reader(&self, host: &str, name: &str) -> Result<Box<dyn Read + Send>, StoreError> {
        let got = match self.s3.get(&self.key(host, name)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StoreError::Missing {
                    store: self.url(),
                    object: format!("{host}/{name}"),
                });
            }
            Err(e) => return Err(self.error("reading", e)),
        };
        let stream = got.into_stream().map_err(std::io::Error::other);
        let reader = tokio_util::io::StreamReader::new(stream);
        Ok(Box::new(tokio_util::io::SyncIoBridge::new(reader)))
    }
}

/// An archive being uploaded.
pub struct Incoming {
    store: BucketStore,
    host: String,
    name: String,
    key: Key,
    id: String,
    /// The journal entry; None once the upload is finished or aborted.
    journal: Option<PathBuf>,
    buf: Vec<u8>,
    parts: Vec<Option<PartId>>,
    uploading: JoinSet<Result<(usize, PartId), object_store::Error>>,
    received: super::Received,
}

impl Incoming {
    pub async fn write_chunk(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.received.update(data);
        let mut rest = data;
        while !rest.is_empty() {
            let n = (PART_SIZE - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == PART_SIZE {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.received.size
    }

    async fn send_part(&mut self) -> Result<(), StoreError> {
        while self.uploading.len() >= IN_FLIGHT {
            self.collect_one().await?;
        }
        let data = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(PART_SIZE),
        ));
        let index = self.parts.len();
        self.parts.push(None);
        let (s3, key, id) = (
            Arc::clone(&self.store.s3),
            self.key.clone(),
            self.id.clone(),
        );
        self.uploading.spawn(async move {
            let part = s3
                .put_part(&key, &id, index, PutPayload::from(data))
                .await?;
            Ok((index, part))
        });
        Ok(())
    }

    async fn collect_one(&mut self) -> Result<(), StoreError> {
        match self.uploading.join_next().await {
            Some(Ok(Ok((index, part)))) => {
                self.parts[index] = Some(part);
                Ok(())
            }
            Some(Ok(Err(e))) => Err(self.store.error("uploading a part", e)),
            Some(Err(e)) => Err(StoreError::Bucket {
                store: self.store.url(),
                cause: format!("uploading a part: {e}"),
            }),
            None => Ok(()),
        }
    }

    pub async fn commit(
        mut self,
        expected_size: u64,
        expected_sha: &str,
        extras: &[(String, Vec<u8>)],
    ) -> Result<Committed, StoreError> {
        let sha256 = self.received.check(expected_size, expected_sha)?;
        if !self.buf.is_empty() || self.parts.is_empty() {
            self.send_part().await?;
        }
        while !self.uploading.is_empty() {
            self.collect_one().await?;
        }
        let parts: Vec<PartId> = self.parts.iter().flatten().cloned().collect();
        let s3 = Arc::clone(&self.store.s3);
        s3.complete_multipart(&self.key, &self.id, parts)
            .await
            .map_err(|e| self.store.error("completing the upload", e))?;
        let committed = self.write_marker(&sha256, extras).await;
        if committed.is_err() {
            let _ = s3.delete(&self.key).await;
        }
        // Done either way: the body is committed or removed; the journal entry goes.
        if let Some(journal) = self.journal.take() {
            let _ = std::fs::remove_file(journal);
        }
        committed?;
        Ok(Committed {
            location: format!("{}/{}/{}", self.store.url(), self.host, self.name),
            size: self.received.size,
            sha256,
        })
    }

    /// The extras, then the sidecar: the commit. The sidecar is created only if absent.
    async fn write_marker(
        &self,
        sha256: &str,
        extras: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let (host, name) = (self.host.as_str(), self.name.as_str());
        for (extra, data) in extras {
            self.store.put_small(host, extra, data.clone()).await?;
        }
        let sidecar = self.store.key(host, &format!("{name}.sha256"));
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.store
            .s3
            .put_opts(
                &sidecar,
                PutPayload::from(sidecar_line(sha256, name).into_bytes()),
                create,
            )
            .await
            .map(|_| ())
            .map_err(|e| match e {
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. } => {
                    StoreError::Exists(format!("{}/{host}/{name}", self.store.url()))
                }
                e => self.store.error("writing the sidecar", e),
            })
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let Some(journal) = self.journal.take() else {
            return;
        };
        self.uploading.abort_all();
        let (s3, key, id) = (
            Arc::clone(&self.store.s3),
            self.key.clone(),
            self.id.clone(),
        );
        // Abort in the background; if this process dies first, the journal entry stays and the
        // next ferry aborts it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let abort = runtime.spawn(async move {
                if s3.abort_multipart(&key, &id).await.is_ok() {
                    let _ = std::fs::remove_file(journal);
                }
            });
            if let Ok(mut pending) = ABORTING.lock() {
                pending.push(abort);
            }
        }
    }
}

/// Aborts started by dropped uploads, for [`settle`].
static ABORTING: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Waits (up to 10 s) for the aborts of dropped uploads: called before the process exits, so an
/// interrupted or failed transfer leaves no open multipart upload behind.
pub async fn settle() {
    let pending: Vec<_> = ABORTING
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default();
    let all = futures::future::join_all(pending);
    let _ = tokio::time::timeout(Duration::from_secs(10), all).await;
}

/// The first line of an error, bounded: S3 errors can carry whole XML bodies.
fn short(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(300).collect()
}
