//! What ferry reads from upstream's `service-config.yaml`, whether it comes from a host or from an
//! archive's `config/`.

/// `global.baseDomain`, or empty when unset (upstream then uses the host's FQDN).
pub fn base_domain(service_config: &str) -> String {
    serde_norway::from_str::<serde_norway::Value>(service_config)
        .ok()
        .and_then(|doc| doc["global"]["baseDomain"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_base_domain() {
        let text = "global:\n  baseDomain: cp01.example.com\ndb:\n  type: builtin\n";
        assert_eq!(super::base_domain(text), "cp01.example.com");
        assert_eq!(super::base_domain("db: {}\n"), "");
        assert_eq!(super::base_domain(": not yaml ["), "");
    }
}
