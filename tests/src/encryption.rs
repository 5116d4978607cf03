//! v1.3's field-level encryption (upstream flightctl commits 69cdb5e2, c36f68b1, 9e265338;
//! docs/user/installing/configuring-encryption.md), as far as a restore can break it: a host of
//! v1.3 or later has a key under `/etc/flightctl/encryption/` that `service-config.yaml` declares,
//! a canary row per key and `enc:v1:<keyid>:…` values in its database, and an API that is never
//! ready while a canary does not decrypt with the keys on the host. The "decryption" is a digest
//! of the key: only the right key file reproduces it, which is all a restore can get wrong.

use sha2::{Digest, Sha256};

use crate::host::SimHostSpec;
use crate::layout::Layout;

/// Whether `version` (`v1.3.0`) has field-level encryption.
pub fn encrypts(version: &str) -> bool {
    let mut parts = version.trim_start_matches('v').split('.');
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (1, 3)
}

/// A fresh key for a host of a version that encrypts: (key id, key file contents).
pub fn new_key(want: &SimHostSpec) -> Option<(String, String)> {
    if !encrypts(&want.version) {
        return None;
    }
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let key = ferry_archive::hex(&Sha256::digest(format!("{}:{nonce}", want.name)));
    Some((format!("{}-{}", want.name, &key[..8]), format!("{key}\n")))
}

/// A key's canary value, as the database stores it.
pub fn canary(id: &str, key: &str) -> String {
    let sealed = ferry_archive::hex(&Sha256::digest(format!("{}:flightctl-canary", key.trim())));
    format!("enc:v1:{id}:{sealed}")
}

/// The canary table and encrypted values for the host's keys (None before v1.3).
pub fn seed_sql(layout: &Layout) -> anyhow::Result<Option<String>> {
    let dir = layout.host_path("/etc/flightctl/encryption");
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut sql = String::from(
        "CREATE TABLE encryption_canaries (strategy text NOT NULL, key_id text NOT NULL, value text NOT NULL, PRIMARY KEY (strategy, key_id));\n",
    );
    for entry in std::fs::read_dir(&dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".key") else {
            continue;
        };
        let key = std::fs::read_to_string(entry.path())?;
        sql.push_str(&format!(
            "INSERT INTO encryption_canaries VALUES ('aes-256-gcm', '{id}', '{}');\n\
             UPDATE repositories SET spec = spec || jsonb_build_object('password', 'enc:v1:{id}:{}');\n",
            canary(id, &key),
            &ferry_archive::hex(&Sha256::digest(format!("{key}:password")))[..24]
        ));
    }
    Ok(Some(sql))
}

/// Why the API must not start: a canary whose key is not on the host, or is another key.
pub fn canary_failure(layout: &Layout, canaries: &[(String, String)]) -> Option<String> {
    for (id, value) in canaries {
        let path = layout.host_path(&format!("/etc/flightctl/encryption/{id}.key"));
        let Ok(key) = std::fs::read_to_string(&path) else {
            return Some(format!(
                "encryption canary for key {id} cannot be decrypted: no key {id} in /etc/flightctl/encryption"
            ));
        };
        if canary(id, &key) != *value {
            return Some(format!(
                "encryption canary for key {id} does not decrypt with the key on the host"
            ));
        }
    }
    None
}
