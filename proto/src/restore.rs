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

/// The steps a restore of `components` runs (all of them when empty); device preparation alone when
/// `prepare_only`.
pub fn plan(components: &[String], prepare_only: bool) -> Vec<String> {
    let has = |c: &str| components.is_empty() || components.iter().any(|x| x == c);
    let db = has("db") || prepare_only;
    let files = !prepare_only && COMPONENTS[1..].iter().any(|c| has(c));
    STEPS
        .iter()
        .filter(|s| match **s {
            "verify" => !prepare_only,
            "load" | "swap-db" => !prepare_only && has("db"),
            "swap-files" => files,
            "publish" | "prepare-devices" | "unpublish" | "seed-kv" => db,
            _ => true,
        })
        .map(|s| s.to_string())
        .collect()
}
