//! The restore runbook's steps, shared by the agent (which runs them) and the controller (which
//! drives and plans them).

/// Every step, in order. `stage` happens through its own call before these.
pub const STEPS: [&str; 12] = [
    "verify",
    "load",
    "stop",
    "swap-db",
    "swap-files",
    "publish",
    "prepare-devices",
    "unpublish",
    "seed-kv",
    "start",
    "health",
    "commit",
];

/// Components a partial restore may name.
pub const COMPONENTS: [&str; 5] = ["db", "pki", "config", "encryption", "volumes"];

/// The components a restore puts back: `components`, or all of them when empty.
pub fn chosen(components: &[String]) -> Vec<String> {
    if components.is_empty() {
        COMPONENTS.iter().map(|c| c.to_string()).collect()
    } else {
        COMPONENTS
            .iter()
            .filter(|c| components.iter().any(|x| x == *c))
            .map(|c| c.to_string())
            .collect()
    }
}

/// How the host's database is reached, which decides the database steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseAccess {
    /// flightctl-db in its container: loaded, swapped, and published for device preparation.
    Builtin,
    /// A server elsewhere, restored by its DBA: device preparation connects to it directly.
    External,
}

/// The steps a restore of `components` runs (all of them when empty); device preparation alone when
/// `prepare_only`. A restored database always gets device preparation; on an external-database host,
/// whose database its DBA restores, `db` means device preparation on it, as upstream's restore does.
pub fn plan(components: &[String], prepare_only: bool, database: DatabaseAccess) -> Vec<String> {
    let chosen = chosen(components);
    let has = |c: &str| chosen.iter().any(|x| x == c);
    let builtin = database == DatabaseAccess::Builtin;
    let prepare = prepare_only || has("db");
    let files = !prepare_only && COMPONENTS[1..].iter().any(|c| has(c));
    STEPS
        .iter()
        .filter(|s| match **s {
            "verify" => !prepare_only,
            "load" | "swap-db" => !prepare_only && builtin && has("db"),
            "swap-files" => files,
            "publish" | "unpublish" => prepare && builtin,
            "prepare-devices" | "seed-kv" => prepare,
            _ => true,
        })
        .map(|s| s.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn partial_plans_name_only_their_steps() {
        use DatabaseAccess::*;
        assert_eq!(
            plan(&only(&["pki"]), false, Builtin),
            only(&["verify", "stop", "swap-files", "start", "health", "commit"])
        );
        assert_eq!(plan(&[], false, Builtin), only(&STEPS));
        assert_eq!(
            plan(&[], false, External),
            only(&[
                "verify",
                "stop",
                "swap-files",
                "prepare-devices",
                "seed-kv",
                "start",
                "health",
                "commit"
            ])
        );
        assert_eq!(
            plan(&[], true, External),
            only(&[
                "stop",
                "prepare-devices",
                "seed-kv",
                "start",
                "health",
                "commit"
            ])
        );
        assert_eq!(
            plan(&only(&["db"]), false, Builtin),
            only(&[
                "verify",
                "load",
                "stop",
                "swap-db",
                "publish",
                "prepare-devices",
                "unpublish",
                "seed-kv",
                "start",
                "health",
                "commit"
            ])
        );
        assert_eq!(
            chosen(&only(&["volumes", "pki"])),
            only(&["pki", "volumes"])
        );
    }
}
