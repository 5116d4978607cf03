use serde::{Deserialize, Serialize};

/// The name of upstream's metadata file at the archive root.
pub const METADATA_NAME: &str = "metadata.json";

/// Upstream's `metadata.json`: exactly these four keys, in these formats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// RFC 3339 with nanoseconds, UTC (Go's time marshalling).
    pub timestamp: String,
    /// The Flight Control version of the host, e.g. `v1.2.0`.
    pub version: String,
    /// `podman` or `kubernetes`.
    #[serde(rename = "deploymentType")]
    pub deployment_type: String,
    /// False when the host uses an external database (no `db/dump.sql`).
    #[serde(rename = "databaseIncluded")]
    pub database_included: bool,
}

impl Metadata {
    /// Pretty-printed with a 2-space indent, as upstream writes it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Go's RFC 3339 rendering of `t` in UTC with nanoseconds (trailing zeros trimmed, as Go does).
    pub fn go_timestamp(t: time::OffsetDateTime) -> String {
        let t = t.to_offset(time::UtcOffset::UTC);
        let nanos = t.nanosecond();
        let frac = if nanos == 0 {
            String::new()
        } else {
            format!(".{nanos:09}").trim_end_matches('0').to_string()
        };
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_exactly_the_upstream_keys() {
        let m = Metadata {
            timestamp: "2026-05-21T14:30:22.123456789Z".into(),
            version: "v1.2.0".into(),
            deployment_type: "podman".into(),
            database_included: true,
        };
        let v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["databaseIncluded", "deploymentType", "timestamp", "version"]
        );
        assert!(m.to_json().contains("\n  \"timestamp\""));
    }

    #[test]
    fn go_timestamps_trim_trailing_zeros() {
        let t = time::macros::datetime!(2026-05-21 14:30:22.120 UTC);
        assert_eq!(Metadata::go_timestamp(t), "2026-05-21T14:30:22.12Z");
        let t = time::macros::datetime!(2026-05-21 14:30:22 UTC);
        assert_eq!(Metadata::go_timestamp(t), "2026-05-21T14:30:22Z");
    }
}
