//! The archive format: upstream `flightctl-backup`'s layout (docs/upstream-contract.md §3) plus ferry's
//! manifest.
//!
//! An archive is a tar stream of relative entries — `metadata.json`, `config/`, `pki/`, `encryption/`,
//! `volumes/`, `db/dump.sql` — and `ferry-manifest.json`, which upstream ignores. It is compressed as a
//! sequence of gzip members (or zstd frames): concatenated members are one valid stream, which lets the
//! database dump be compressed in parallel while it is produced and spliced in when its size is known.

mod components;
mod compress;
mod config;
mod manifest;
mod metadata;
mod names;
mod reader;
mod seal;
mod sql;
mod writer;

pub use components::absent_components;
pub use compress::{Codec, CompressedSpool, ParallelCompressor};
pub use config::{base_domain, encrypted_value_key_ids, encryption_key_ids, encryption_keys};
pub use manifest::{Entry, EntryKind, MANIFEST_NAME, Manifest};
pub use metadata::{METADATA_NAME, Metadata};
pub use names::{
    SEALED_SUFFIX, archive_name, archive_time, key_object_name, parse_archive_timestamp,
    parse_sidecar, sidecar_line,
};
pub use reader::{ArchiveError, ReadOptions, Verified, read_archive, read_archive_into};
pub use seal::{DataKey, Identities, Recipients, SealError};
pub use sql::{DumpGuard, Refused as DumpRefused};
pub use writer::ArchiveWriter;

/// Hex of a SHA-256 digest.
pub fn hex(digest: &[u8]) -> String {
    use std::fmt::Write;
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
