//! Archive object names and the `.sha256` sidecar.

/// `flightctl-backup-YYYYMMDDTHHMMSSZ.tar.gz` (`.tar.zst` for zstd), upstream's naming.
pub fn archive_name(t: time::OffsetDateTime, extension: &str) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "flightctl-backup-{:04}{:02}{:02}T{:02}{:02}{:02}Z.{extension}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// What a sealed (encrypted) archive's body adds to its name in the store: `NAME.age`.
pub const SEALED_SUFFIX: &str = ".age";

/// The store object holding a sealed archive's key: `NAME.key.age`.
pub fn key_object_name(archive_name: &str) -> String {
    format!("{archive_name}.key.age")
}

/// The timestamp in an archive name, as `YYYYMMDDTHHMMSSZ`.
pub fn parse_archive_timestamp(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("flightctl-backup-")?;
    let stamp = rest.get(..16)?;
    let ok = stamp.len() == 16
        && stamp.as_bytes()[8] == b'T'
        && stamp.as_bytes()[15] == b'Z'
        && stamp[..8]
            .bytes()
            .chain(stamp[9..15].bytes())
            .all(|b| b.is_ascii_digit());
    ok.then_some(stamp)
}

/// The time in an archive name.
pub fn archive_time(name: &str) -> Option<time::OffsetDateTime> {
    let stamp = parse_archive_timestamp(name)?;
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(stamp, &format)
        .ok()
        .map(|t| t.assume_utc())
}

/// The sidecar's one line: hex digest, two spaces, base name (`sha256sum -c` accepts it).
pub fn sidecar_line(sha256: &str, archive_name: &str) -> String {
    format!("{sha256}  {archive_name}\n")
}

/// The digest in a sidecar: its first whitespace-separated field, 64 hex characters (as upstream reads it).
pub fn parse_sidecar(text: &str) -> Option<String> {
    let first = text.split_whitespace().next()?;
    (first.len() == 64 && first.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| first.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sidecars_round_trip() {
        let t = time::macros::datetime!(2026-05-21 14:30:22.5 UTC);
        let name = archive_name(t, "tar.gz");
        assert_eq!(name, "flightctl-backup-20260521T143022Z.tar.gz");
        assert_eq!(parse_archive_timestamp(&name), Some("20260521T143022Z"));
        assert_eq!(parse_archive_timestamp("other.tar.gz"), None);
        let digest = "ab".repeat(32);
        let line = sidecar_line(&digest, &name);
        assert_eq!(line, format!("{digest}  {name}\n"));
        assert_eq!(parse_sidecar(&line), Some(digest));
        assert_eq!(parse_sidecar("nothex  x"), None);
    }
}
