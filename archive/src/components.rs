//! Which restore components an archive holds.

use ferry_proto::v1::Component;

/// The components the operator named (`--only`) that `entries` hold nothing of: restoring them would
/// be downtime for nothing. Both sides apply it, the controller in `--check`.
pub fn absent_components(components: &[Component], entries: &[crate::Entry]) -> Vec<Component> {
    use crate::EntryKind;
    let has =
        |path: &str, kind: EntryKind| entries.iter().any(|e| e.path == path && e.kind == kind);
    components
        .iter()
        .copied()
        .filter(|c| match c {
            Component::Db => !has("db/dump.sql", EntryKind::File),
            Component::Pki => !has("pki", EntryKind::Dir),
            Component::Config => !has("config/service-config.yaml", EntryKind::File),
            Component::Encryption => !has("encryption", EntryKind::Dir),
            Component::Volumes => !has("volumes/pam-issuer-etc.tar", EntryKind::File),
            Component::Unspecified => true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_components_must_be_in_the_archive() {
        use crate::{Entry, EntryKind};
        let entry = |path: &str, kind| Entry {
            path: path.into(),
            kind,
            mode: 0o600,
            size: 0,
            sha256: String::new(),
        };
        let entries = [
            entry("pki", EntryKind::Dir),
            entry("config/service-config.yaml", EntryKind::File),
            entry("encryption", EntryKind::File),
        ];
        assert_eq!(
            absent_components(
                &[
                    Component::Pki,
                    Component::Db,
                    Component::Encryption,
                    Component::Config
                ],
                &entries
            ),
            [Component::Db, Component::Encryption],
            "a file named like a component's directory is not the component"
        );
    }
}
