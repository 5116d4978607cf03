//! The archive writer's output is what GNU tar and upstream expect; the reader refuses hostile input.

use std::io::Write;
use std::process::Command;

use ferry_archive::*;
use sha2::{Digest, Sha256};

fn sample(codec: Codec) -> (Vec<u8>, Vec<Entry>) {
    let mut out = Vec::new();
    let mut w = ArchiveWriter::new(&mut out, codec, 1_700_000_000);
    w.bytes("metadata.json", 0o600, br#"{"timestamp":"t","version":"v1.2.0","deploymentType":"podman","databaseIncluded":true}"#).unwrap();
    w.dir("pki", 0o700).unwrap();
    w.bytes("pki/ca.crt", 0o644, b"-----BEGIN CERTIFICATE-----\n")
        .unwrap();
    w.dir("db", 0o755).unwrap();
    // The dump is compressed in parallel elsewhere and spliced in.
    let dump: Vec<u8> = (0..200_000)
        .flat_map(|i: u32| format!("row {i}\n").into_bytes())
        .collect();
    let mut spool = Vec::new();
    let compressor = ParallelCompressor {
        codec,
        workers: 2,
        chunk_size: 100_000,
    };
    let stats = compressor.run(&dump[..], &mut spool, |_| {}).unwrap();
    let sha = hex(&Sha256::digest(&dump));
    w.splice("db/dump.sql", 0o600, stats.raw_size, &sha, &spool[..])
        .unwrap();
    let entries = w.entries().to_vec();
    let manifest = Manifest {
        identity: String::new(),
        format: Manifest::FORMAT.into(),
        entries: entries.clone(),
        ..Default::default()
    };
    w.bytes(
        MANIFEST_NAME,
        0o600,
        serde_json::to_vec(&manifest).unwrap().as_slice(),
    )
    .unwrap();
    w.finish().unwrap();
    (out, entries)
}

#[test]
fn gnu_tar_lists_the_layout_and_the_reader_verifies_it() {
    let (bytes, entries) = sample(Codec::Gzip);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.tar.gz");
    std::fs::write(&path, &bytes).unwrap();
    let listing = Command::new("tar")
        .arg("-tvzf")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        listing.status.success(),
        "{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let text = String::from_utf8_lossy(&listing.stdout);
    let names: Vec<&str> = text
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "metadata.json",
            "pki/",
            "pki/ca.crt",
            "db/",
            "db/dump.sql",
            MANIFEST_NAME
        ]
    );
    assert!(
        text.lines().nth(1).unwrap().starts_with("drwx------"),
        "{text}"
    );
    assert!(
        text.lines().nth(2).unwrap().starts_with("-rw-------"),
        "{text}"
    );

    let extract = dir.path().join("out");
    let verified = read_archive(
        &bytes[..],
        &ReadOptions {
            extract_to: Some(&extract),
            expected_sha256: Some(&hex(&Sha256::digest(&bytes))),
            keep: None,
        },
    )
    .unwrap();
    assert_eq!(verified.metadata.unwrap().version, "v1.2.0");
    assert_eq!(verified.entries.len(), entries.len());
    assert_eq!(verified.size as usize, bytes.len());
    let dump = std::fs::read_to_string(extract.join("db/dump.sql")).unwrap();
    assert!(dump.starts_with("row 0\nrow 1\n") && dump.ends_with("row 199999\n"));
    assert!(!extract.join(MANIFEST_NAME).exists());
}

#[test]
fn zstd_archives_round_trip() {
    let (bytes, entries) = sample(Codec::Zstd);
    let verified = read_archive(&bytes[..], &ReadOptions::default()).unwrap();
    assert_eq!(verified.codec, Codec::Zstd);
    assert_eq!(verified.manifest.unwrap().entries, entries);
}

#[test]
fn truncated_flipped_and_mislabelled_archives_are_refused() {
    let (bytes, _) = sample(Codec::Gzip);
    let truncated = &bytes[..bytes.len() * 2 / 3];
    assert!(matches!(
        read_archive(truncated, &ReadOptions::default()),
        Err(ArchiveError::Corrupt(_))
    ));
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    assert!(read_archive(&flipped[..], &ReadOptions::default()).is_err());
    let wrong = "0".repeat(64);
    let err = read_archive(
        &bytes[..],
        &ReadOptions {
            expected_sha256: Some(&wrong),
            keep: None,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, ArchiveError::Digest { .. }), "{err}");
    assert!(matches!(
        read_archive(&b"plain text"[..], &ReadOptions::default()),
        Err(ArchiveError::UnknownFormat)
    ));
}

/// A gzip'd tar with one raw entry, bypassing the tar crate's own path checks.
fn hostile(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    {
        let raw = header.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
    }
    header.set_entry_type(kind);
    header.set_mode(0o644);
    let body = b"x";
    header.set_size(if kind == tar::EntryType::Regular {
        body.len() as u64
    } else {
        0
    });
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    if kind == tar::EntryType::Regular {
        tar.extend_from_slice(body);
        tar.resize(1024, 0);
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

#[test]
fn traversal_absolute_links_and_devices_are_refused_before_anything_is_written() {
    let cases = [
        (
            hostile("pki/../../etc/passwd", tar::EntryType::Regular, None),
            "'..'",
        ),
        (
            hostile("/etc/flightctl/pki/ca.key", tar::EntryType::Regular, None),
            "absolute",
        ),
        (
            hostile("pki/evil", tar::EntryType::Symlink, Some("/etc/shadow")),
            "symbolic link",
        ),
        (
            hostile("pki/hard", tar::EntryType::Link, Some("../../x")),
            "hard link",
        ),
        (
            hostile("dev/sda", tar::EntryType::Block, None),
            "block device",
        ),
    ];
    for (bytes, why) in cases {
        let dir = tempfile::tempdir().unwrap();
        let err = read_archive(
            &bytes[..],
            &ReadOptions {
                extract_to: Some(dir.path()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, ArchiveError::UnsafeEntry { .. }), "{err}");
        assert!(err.to_string().contains(why), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing extracted"
        );
    }
}

#[test]
fn manifest_disagreement_is_reported() {
    let mut out = Vec::new();
    let mut w = ArchiveWriter::new(&mut out, Codec::Gzip, 0);
    w.bytes("pki/ca.crt", 0o644, b"real").unwrap();
    let mut entries = w.entries().to_vec();
    entries[0].sha256 = "0".repeat(64);
    let manifest = Manifest {
        identity: String::new(),
        format: Manifest::FORMAT.into(),
        entries,
        ..Default::default()
    };
    w.bytes(
        MANIFEST_NAME,
        0o600,
        &serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    w.finish().unwrap();
    let err = read_archive(&out[..], &ReadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("pki/ca.crt"), "{err}");
}
