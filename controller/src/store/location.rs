//! What `store:` names: a directory, or `s3://bucket/prefix?endpoint=…&region=…&path_style=true`.

use std::path::{Path, PathBuf};

/// Where the store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Dir(PathBuf),
    S3(S3Location),
}

/// An S3-compatible bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix without leading or trailing '/', possibly empty.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`); the default with an `endpoint`, as most
    /// S3-compatible servers want.
    pub path_style: bool,
    /// From `store_credentials:`; None means the standard AWS environment variables.
    pub credentials: Option<Credentials>,
}

/// An access key. Its secret never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

impl StoreLocation {
    /// Parses `store:` (or `--to`); a relative directory is relative to `base`.
    pub fn parse(text: &str, base: &Path) -> Result<StoreLocation, String> {
        if !text.contains("://") {
            let path = PathBuf::from(text);
            return Ok(StoreLocation::Dir(if path.is_absolute() {
                path
            } else {
                base.join(path)
            }));
        }
        let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        if url.scheme() != "s3" {
            return Err(format!(
                "{text:?}: a store is a directory or s3://bucket/prefix, not {}://",
                url.scheme()
            ));
        }
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| format!("{text:?} names no bucket (s3://BUCKET/prefix)"))?
            .to_string();
        let mut location = S3Location {
            bucket,
            prefix: url.path().trim_matches('/').to_string(),
            endpoint: None,
            region: None,
            path_style: false,
            credentials: None,
        };
        let mut path_style = None;
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "endpoint" => {
                    let endpoint = url::Url::parse(&value)
                        .map_err(|e| format!("{text:?}: endpoint {value:?} is not a URL: {e}"))?;
                    if !matches!(endpoint.scheme(), "http" | "https") {
                        return Err(format!(
                            "{text:?}: endpoint {value:?} must be http:// or https://"
                        ));
                    }
                    location.endpoint = Some(value.trim_end_matches('/').to_string());
                }
                "region" => location.region = Some(value.into_owned()),
                "path_style" => {
                    path_style = Some(match value.as_ref() {
                        "true" => true,
                        "false" => false,
                        other => {
                            return Err(format!(
                                "{text:?}: path_style is true or false, not {other:?}"
                            ));
                        }
                    })
                }
                other => {
                    return Err(format!(
                        "{text:?}: unknown store option {other:?} (known: endpoint, region, path_style)"
                    ));
                }
            }
        }
        location.path_style = path_style.unwrap_or(location.endpoint.is_some());
        Ok(StoreLocation::S3(location))
    }

    /// The store's stable id, under which the catalog records the copies it holds: its directory
    /// (symbolic links resolved) or `s3://bucket/prefix` (the endpoint and region are how it is
    /// reached, not what it is). Computed without opening the store.
    pub fn id(&self) -> String {
        match self {
            StoreLocation::Dir(p) => dir_id(p),
            StoreLocation::S3(s3) => s3.url(),
        }
    }

    /// The store as an operator writes it, without credentials.
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Dir(p) => p.display().to_string(),
            StoreLocation::S3(s3) => s3.url(),
        }
    }
}

/// A directory store's id: its path with symbolic links resolved (as written when it does not exist).
pub fn dir_id(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

impl S3Location {
    /// `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_locations_parse() {
        let base = Path::new("/etc/ferry");
        assert_eq!(
            StoreLocation::parse("archives", base).unwrap(),
            StoreLocation::Dir("/etc/ferry/archives".into())
        );
        let StoreLocation::S3(s3) = StoreLocation::parse(
            "s3://ferry-archives/prod/site1/?endpoint=https://s3.example.com&region=us-east-1",
            base,
        )
        .unwrap() else {
            panic!("not s3")
        };
        assert_eq!(s3.bucket, "ferry-archives");
        assert_eq!(s3.prefix, "prod/site1");
        assert_eq!(s3.endpoint.as_deref(), Some("https://s3.example.com"));
        assert_eq!(s3.region.as_deref(), Some("us-east-1"));
        assert!(s3.path_style);
        assert_eq!(s3.url(), "s3://ferry-archives/prod/site1");
        for bad in [
            "s3:///prefix",
            "gs://bucket",
            "s3://b?endpoint=ftp://x",
            "s3://b?regoin=x",
            "s3://b?path_style=yes",
        ] {
            assert!(StoreLocation::parse(bad, base).is_err(), "{bad}");
        }
        let creds = Credentials {
            access_key_id: "AKIA".into(),
            secret_access_key: "very-secret".into(),
            session_token: None,
        };
        assert!(!format!("{creds:?}").contains("very-secret"));
    }
}
