//! The restore runbook, shared by the agent (which runs it) and the controller (which drives, plans
//! and checks it): the steps in order, the components, the plan a restore runs, and the rules that
//! decide whether an archive may be restored onto a host.

use crate::v1::{Component, HostState, Step};

/// Every step of the runbook, in order. `stage` happens through its own call before these. Whatever
/// grows with the database (load, device preparation, the KV key list) comes before `stop`; the
/// window from `stop` to `start` holds renames, the KV seed and unit calls only.
pub const STEPS: [Step; 11] = [
    Step::Verify,
    Step::Load,
    Step::PrepareLoaded,
    Step::Stop,
    Step::SwapDb,
    Step::SwapFiles,
    Step::PrepareDevices,
    Step::SeedKv,
    Step::Start,
    Step::Health,
    Step::Commit,
];

/// Components a partial restore may name, in their order.
pub const COMPONENTS: [Component; 5] = [
    Component::Db,
    Component::Pki,
    Component::Config,
    Component::Encryption,
    Component::Volumes,
];

impl Step {
    /// The operator's name: `swap-db`.
    pub fn name(self) -> &'static str {
        match self {
            Step::Unspecified => "unspecified",
            Step::Stage => "stage",
            Step::Verify => "verify",
            Step::Load => "load",
            Step::Stop => "stop",
            Step::SwapDb => "swap-db",
            Step::SwapFiles => "swap-files",
            Step::Publish => "publish",
            Step::PrepareDevices => "prepare-devices",
            Step::Unpublish => "unpublish",
            Step::SeedKv => "seed-kv",
            Step::Start => "start",
            Step::Health => "health",
            Step::Commit => "commit",
            Step::Rollback => "rollback",
            Step::PrepareLoaded => "prepare-loaded",
        }
    }

    /// Parses an operator's name (the runbook's steps, `stage` and `rollback`).
    pub fn from_name(name: &str) -> Option<Step> {
        STEPS
            .into_iter()
            .chain([Step::Stage, Step::Rollback, Step::Publish, Step::Unpublish])
            .find(|s| s.name() == name)
    }

    /// A step from the wire; unknown values are `Unspecified`.
    pub fn of(raw: i32) -> Step {
        Step::try_from(raw).unwrap_or(Step::Unspecified)
    }
}

impl Component {
    /// The operator's name: `pki`.
    pub fn name(self) -> &'static str {
        match self {
            Component::Unspecified => "unspecified",
            Component::Db => "db",
            Component::Pki => "pki",
            Component::Config => "config",
            Component::Encryption => "encryption",
            Component::Volumes => "volumes",
        }
    }

    /// Parses an operator's name.
    pub fn from_name(name: &str) -> Option<Component> {
        COMPONENTS.into_iter().find(|c| c.name() == name)
    }
}

impl HostState {
    /// The state's short name: `swapped`.
    pub fn name(self) -> &'static str {
        match self {
            HostState::Unspecified => "unknown",
            HostState::Unchanged => "unchanged",
            HostState::Staged => "staged",
            HostState::Stopped => "stopped",
            HostState::Swapped => "swapped",
            HostState::Started => "started",
            HostState::Committed => "committed",
            HostState::RolledBack => "rolled-back",
        }
    }

    /// The state in words.
    pub fn describe(self) -> &'static str {
        match self {
            HostState::Unspecified => "unknown",
            HostState::Unchanged => "unchanged: nothing on the host was touched and it is free",
            HostState::Staged => {
                "staged: the live control plane is untouched and running; the archive waits in staging"
            }
            HostState::Stopped => "application units stopped; live data untouched",
            HostState::Swapped => {
                "restored data in place, pre-restore copies kept; application units stopped"
            }
            HostState::Started => {
                "application units running on the restored data; pre-restore copies kept until commit"
            }
            HostState::Committed => "restored and committed",
            HostState::RolledBack => "rolled back to the pre-restore state",
        }
    }

    /// Whether the live control plane was changed (so only `--resume` or `rollback` end it).
    pub fn changed(self) -> bool {
        matches!(
            self,
            HostState::Stopped | HostState::Swapped | HostState::Started
        )
    }
}

/// The components a restore puts back: `components`, or all of them when empty, in their order.
pub fn chosen(components: &[Component]) -> Vec<Component> {
    COMPONENTS
        .into_iter()
        .filter(|c| components.is_empty() || components.contains(c))
        .collect()
}

/// How the host's database is reached, which decides the database steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseAccess {
    /// flightctl-db in its container: loaded, prepared and swapped inside it, never published.
    Builtin,
    /// A server elsewhere, restored by its DBA: device preparation connects to it directly.
    External,
}

/// The steps a restore of `components` runs (all of them when empty); device preparation alone when
/// `prepare_only`. A restored database always gets device preparation: a loaded built-in one before
/// the units stop (`prepare-loaded`), a live one after (`prepare-devices`). On an external-database
/// host, whose database its DBA restores, `db` means device preparation on it, as upstream's does.
pub fn plan(components: &[Component], prepare_only: bool, database: DatabaseAccess) -> Vec<Step> {
    let chosen = chosen(components);
    let has = |c: Component| chosen.contains(&c);
    let builtin = database == DatabaseAccess::Builtin;
    let prepare = prepare_only || has(Component::Db);
    let load = !prepare_only && builtin && has(Component::Db);
    let files = !prepare_only && chosen.iter().any(|c| *c != Component::Db);
    STEPS
        .into_iter()
        .filter(|s| match s {
            Step::Verify => !prepare_only,
            Step::Load | Step::SwapDb | Step::PrepareLoaded => load,
            Step::SwapFiles => files,
            Step::PrepareDevices => prepare && !load,
            Step::SeedKv => prepare,
            _ => true,
        })
        .collect()
}

/// What the compatibility rules need to know of an archive.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveSide<'a> {
    pub version: &'a str,
    pub deployment_type: &'a str,
    pub database_included: bool,
}

/// What the compatibility rules need to know of a host.
#[derive(Debug, Clone, Copy)]
pub struct HostSide<'a> {
    /// None when no source told the version.
    pub version: Option<&'a str>,
    pub podman: bool,
    pub database: DatabaseAccess,
}

/// Why `archive` must not be restored onto `host` for `components` (empty: it may). Both sides apply
/// these: the controller before it stages anything, the agent again before it changes anything.
pub fn incompatibilities(
    archive: ArchiveSide<'_>,
    host: HostSide<'_>,
    components: &[Component],
) -> Vec<String> {
    let mut problems = Vec::new();
    if host.version != Some(archive.version) {
        problems.push(format!(
            "the archive is of Flight Control {}, the host runs {}; restore only onto the same version",
            archive.version,
            host.version.unwrap_or("an unknown version")
        ));
    }
    if archive.deployment_type != "podman" || !host.podman {
        problems.push(format!(
            "deployment type {} in the archive and {} on the host: only podman to podman is supported",
            archive.deployment_type,
            if host.podman { "podman" } else { "not podman" }
        ));
    }
    let chosen = chosen(components);
    let wants = |c: Component| chosen.contains(&c);
    let external = host.database == DatabaseAccess::External;
    if archive.database_included && external && wants(Component::Db) {
        problems.push(
            "the archive holds a database but the host uses an external one (db.type: external); restore the other components with --only pki,config,encryption,volumes, and the database with your DBA's tooling"
                .into(),
        );
    }
    if !archive.database_included && !external && (wants(Component::Db) || wants(Component::Config))
    {
        problems.push(
            "the archive was made on an external-database host (it holds no database) but this host uses the built-in one; its config would point this host at that database"
                .into(),
        );
    }
    if !archive.database_included && chosen == [Component::Db] {
        problems.push(
            "the archive holds no database (external database): --only db has nothing to restore; after the DBA restored it, run `ferry prepare-devices` for this host"
                .into(),
        );
    }
    problems
}

/// The encryption key ids a restored database would use that the host will not have afterwards
/// (v1.3: its API refuses to start when a key's canary does not decrypt, and uses only the keys its
/// service-config.yaml declares). After the restore the host has the archive's key files when
/// `encryption` is restored (else its own), and declares the archive's ids when `config` is restored
/// (else its own): a key needs both. Key files are known by the ids their config declares. Empty
/// when the database is not restored. Both sides apply it.
pub fn missing_keys(
    dump_uses: &[String],
    archive_has: &[String],
    host_has: &[String],
    components: &[Component],
) -> Vec<String> {
    let chosen = chosen(components);
    if !chosen.contains(&Component::Db) {
        return Vec::new();
    }
    let pick = |c: Component| {
        if chosen.contains(&c) {
            archive_has
        } else {
            host_has
        }
    };
    let (files, declared) = (pick(Component::Encryption), pick(Component::Config));
    dump_uses
        .iter()
        .filter(|id| !files.contains(id) || !declared.contains(id))
        .cloned()
        .collect()
}

/// The refusal for [`missing_keys`], naming the ids, what the host will declare, and what to add.
pub fn missing_keys_problem(
    missing: &[String],
    archive_has: &[String],
    host_has: &[String],
    components: &[Component],
) -> String {
    let chosen = chosen(components);
    let (encryption, config) = (
        chosen.contains(&Component::Encryption),
        chosen.contains(&Component::Config),
    );
    let list = |ids: &[String]| {
        if ids.is_empty() {
            "none".to_string()
        } else {
            ids.join(", ")
        }
    };
    let whose = match (encryption, config) {
        (false, _) => format!(
            "the host keeps its own keys ({}; encryption is not restored)",
            list(host_has)
        ),
        (true, false) => format!(
            "its service-config.yaml stays and declares only {} (config is not restored), so the restored key files would not be used",
            list(host_has)
        ),
        (true, true) => format!(
            "the archive's encryption/ and config declare only {}",
            list(archive_has)
        ),
    };
    let add: Vec<&str> = [
        (!encryption).then_some("encryption"),
        (!config).then_some("config"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let fix = if add.is_empty() {
        "this archive cannot be restored onto the host as it is".to_string()
    } else {
        format!(
            "restore the keys and the config that declares them with it (a full restore, or add {} to --only)",
            add.join(" and ")
        )
    };
    format!(
        "the restored database uses encryption key id(s) {} that the host will not have after this restore: {whose}; the API would refuse to start. {fix}",
        missing.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_plans_name_only_their_steps() {
        use DatabaseAccess::*;
        use Step::*;
        assert_eq!(
            plan(&[Component::Pki], false, Builtin),
            [Verify, Stop, SwapFiles, Start, Health, Commit]
        );
        assert_eq!(
            plan(&[], false, Builtin),
            STEPS
                .into_iter()
                .filter(|s| *s != PrepareDevices)
                .collect::<Vec<_>>()
        );
        assert_eq!(
            plan(&[], true, Builtin),
            [Stop, PrepareDevices, SeedKv, Start, Health, Commit]
        );
        assert_eq!(
            plan(&[], false, External),
            [
                Verify,
                Stop,
                SwapFiles,
                PrepareDevices,
                SeedKv,
                Start,
                Health,
                Commit
            ]
        );
        assert_eq!(
            plan(&[], true, External),
            [Stop, PrepareDevices, SeedKv, Start, Health, Commit]
        );
        assert_eq!(
            plan(&[Component::Db], false, Builtin),
            [
                Verify,
                Load,
                PrepareLoaded,
                Stop,
                SwapDb,
                SeedKv,
                Start,
                Health,
                Commit
            ]
        );
        assert_eq!(
            chosen(&[Component::Volumes, Component::Pki]),
            [Component::Pki, Component::Volumes]
        );
    }

    #[test]
    fn keys_the_restored_database_needs_must_be_there() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (dump, archive, host) = (ids(&["a1"]), ids(&["a1"]), ids(&["b1"]));
        assert_eq!(
            missing_keys(&dump, &archive, &host, &[Component::Db]),
            ["a1"]
        );
        assert!(missing_keys(&dump, &archive, &host, &[]).is_empty());
        assert!(missing_keys(&dump, &archive, &host, &[Component::Pki]).is_empty());
        // Key files without the config that declares them are not used.
        assert_eq!(
            missing_keys(
                &dump,
                &archive,
                &host,
                &[Component::Db, Component::Encryption]
            ),
            ["a1"]
        );
        assert!(
            missing_keys(
                &dump,
                &archive,
                &host,
                &[Component::Db, Component::Encryption, Component::Config]
            )
            .is_empty()
        );
        let problem = missing_keys_problem(
            &["a1".into()],
            &archive,
            &host,
            &[Component::Db, Component::Encryption],
        );
        assert!(
            problem.contains("declares only b1 (config is not restored)")
                && problem.contains("add config to --only"),
            "{problem}"
        );
    }

    #[test]
    fn names_round_trip() {
        for c in COMPONENTS {
            assert_eq!(Component::from_name(c.name()), Some(c));
        }
        assert_eq!(Component::from_name("pkI"), None);
        assert_eq!(Step::SwapDb.name(), "swap-db");
        assert_eq!(Step::of(99), Step::Unspecified);
    }

    #[test]
    fn incompatible_archives_are_named() {
        let archive = ArchiveSide {
            version: "v1.2.0",
            deployment_type: "podman",
            database_included: true,
        };
        let host = HostSide {
            version: Some("v1.2.0"),
            podman: true,
            database: DatabaseAccess::Builtin,
        };
        assert!(incompatibilities(archive, host, &[]).is_empty());
        let newer = HostSide {
            version: Some("v1.3.0"),
            ..host
        };
        assert!(incompatibilities(archive, newer, &[])[0].contains("same version"));
        let external = HostSide {
            database: DatabaseAccess::External,
            ..host
        };
        assert_eq!(incompatibilities(archive, external, &[]).len(), 1);
        assert!(incompatibilities(archive, external, &[Component::Pki]).is_empty());
    }
}
