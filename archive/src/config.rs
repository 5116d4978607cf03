//! What ferry reads from upstream's `service-config.yaml`, whether it comes from a host or from an
//! archive's `config/`.

/// `global.baseDomain`, or empty when unset (upstream then uses the host's FQDN).
pub fn base_domain(service_config: &str) -> String {
    serde_norway::from_str::<serde_norway::Value>(service_config)
        .ok()
        .and_then(|doc| doc["global"]["baseDomain"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The encryption keys `encryption.keys[]` declares (v1.3+), by id, with the key file's path when
/// given (`encryption.activeKeyID` counts too); empty before v1.3 or when unreadable.
pub fn encryption_keys(service_config: &str) -> std::collections::BTreeMap<String, Option<String>> {
    let Ok(doc) = serde_norway::from_str::<serde_norway::Value>(service_config) else {
        return Default::default();
    };
    let encryption = &doc["encryption"];
    let mut keys: std::collections::BTreeMap<String, Option<String>> = encryption["keys"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|k| {
            let id = k["id"].as_str().or_else(|| k["keyID"].as_str())?;
            Some((id.to_string(), k["path"].as_str().map(str::to_string)))
        })
        .collect();
    if let Some(active) = encryption["activeKeyID"].as_str() {
        keys.entry(active.to_string()).or_default();
    }
    keys
}

/// The ids of [`encryption_keys`], sorted.
pub fn encryption_key_ids(service_config: &str) -> Vec<String> {
    encryption_keys(service_config).into_keys().collect()
}

/// The key ids of every `enc:v1:<keyid>:` value in `text` (v1.3's encrypted fields and canaries).
pub fn encrypted_value_key_ids(text: &[u8], into: &mut std::collections::BTreeSet<String>) {
    const PREFIX: &[u8] = b"enc:v1:";
    for at in memchr::memmem::find_iter(text, PREFIX) {
        let rest = &text[at + PREFIX.len()..];
        let end = rest
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
            .unwrap_or(rest.len());
        if end > 0 && rest.get(end) == Some(&b':') {
            into.insert(String::from_utf8_lossy(&rest[..end]).into_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_encryption_key_ids_both_ways() {
        let config = "encryption:\n  activeKeyID: k2\n  keys:\n    - id: k1\n      path: /root/.flightctl/encryption/k1.key\n    - keyID: k2\n";
        assert_eq!(super::encryption_key_ids(config), ["k1", "k2"]);
        assert!(super::encryption_key_ids("db: {}\n").is_empty());
        let mut ids = std::collections::BTreeSet::new();
        super::encrypted_value_key_ids(
            b"a\t{\"password\": \"enc:v1:k1:QUJD\"}\nenc:v1:k-2:xyz\tenc:v1:bad\n",
            &mut ids,
        );
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), ["k-2", "k1"]);
    }

    #[test]
    fn reads_the_base_domain() {
        let text = "global:\n  baseDomain: cp01.example.com\ndb:\n  type: builtin\n";
        assert_eq!(super::base_domain(text), "cp01.example.com");
        assert_eq!(super::base_domain("db: {}\n"), "");
        assert_eq!(super::base_domain(": not yaml ["), "");
    }
}
