//! Swapping PKI, config and encryption keys: the archive's copy is built next to the live one, the
//! live one is renamed aside (kept until commit), and the new one is renamed into place.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ferry_proto::v1::Component;
use serde_json::json;

use super::journal::{Journal, Swapped};

/// (component, entry in the archive, live path on the host), in swap order.
pub const SWAPPED: [(&str, &str, &str); 4] = [
    ("pki", "pki", "/etc/flightctl/pki"),
    ("encryption", "encryption", "/etc/flightctl/encryption"),
    ("config", "config/conf.d", "/etc/flightctl/conf.d"),
    (
        "config",
        "config/service-config.yaml",
        "/etc/flightctl/service-config.yaml",
    ),
];

fn sibling(live: &Path, tag: &str, id: &str) -> PathBuf {
    let name = live
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    live.with_file_name(format!(".{name}.ferry-{tag}-{id}"))
}

/// What `swap` did.
#[derive(Debug, Default)]
pub struct Swap {
    /// Components that had something to swap.
    pub components: Vec<&'static str>,
    /// Live paths moved aside because the archive's backup captured them absent.
    pub removed: Vec<PathBuf>,
}

/// The live paths a restore of `components` removes: each captured by the archive's backup but not
/// in it (absent on the source host), present on this host. An upstream archive captures nothing.
pub fn removals(
    components: &[String],
    captured: &[String],
    in_archive: impl Fn(&str) -> bool,
    host_path: impl Fn(&str) -> PathBuf,
) -> Vec<PathBuf> {
    SWAPPED
        .iter()
        .filter(|(component, entry, _)| {
            components.iter().any(|c| c == component)
                && captured.iter().any(|c| c == entry)
                && !in_archive(entry)
        })
        .map(|(_, _, live)| host_path(live))
        .filter(|live| live.exists())
        .collect()
}

/// The live files under a tree the archive holds that the archive lacks (the swap replaces the
/// whole tree), as absolute host paths. The host's own `pki/db` is kept by the swap, so never listed.
pub fn absent_from(
    components: &[String],
    present: &[String],
    entries: &[String],
    host_path: impl Fn(&str) -> PathBuf,
    root: &Path,
) -> Vec<String> {
    let mut out = Vec::new();
    for (component, entry, live) in SWAPPED {
        if !components.iter().any(|c| c == component) || !present.iter().any(|p| p == entry) {
            continue;
        }
        let live = host_path(live);
        if !live.is_dir() {
            continue;
        }
        for file in listed(&live, root) {
            let shown = Path::new(&file);
            let Ok(relative) =
                shown.strip_prefix(Path::new("/").join(live.strip_prefix(root).unwrap_or(&live)))
            else {
                continue;
            };
            let archived = format!(
                "{entry}/{}",
                relative.to_string_lossy().trim_end_matches('/')
            );
            let host_only = entry == "pki" && relative.starts_with(HOST_ONLY_PKI);
            if !host_only && !entries.iter().any(|e| e == &archived) {
                out.push(file);
            }
        }
    }
    out
}

/// `path` and every file under it, as absolute paths on the host (relative to its `root`).
pub fn listed(path: &Path, root: &Path) -> Vec<String> {
    let shown = |p: &Path| {
        format!(
            "/{}",
            p.strip_prefix(root)
                .unwrap_or(p)
                .to_string_lossy()
                .trim_start_matches('/')
        )
    };
    let mut out = Vec::new();
    if path.is_dir() {
        let mut children: Vec<_> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        children.sort();
        for child in children {
            out.extend(listed(&child, root));
        }
        if out.is_empty() {
            out.push(format!("{}/", shown(path)));
        }
    } else {
        out.push(shown(path));
    }
    out
}

/// Swaps every item of the journal's components present in `extract`, and moves aside the ones
/// the archive's backup captured absent; records each in the journal before it is moved.
pub fn swap(
    journal: &mut Journal,
    dir: &Path,
    extract: &Path,
    host_path: impl Fn(&str) -> PathBuf,
    modes: &BTreeMap<String, u32>,
) -> Result<Swap, String> {
    let mut done = Swap::default();
    let removals = removals(
        &journal.components,
        &journal.captured,
        |entry| extract.join(entry).exists(),
        &host_path,
    );
    for (component, entry, live) in SWAPPED {
        let source = extract.join(entry);
        if !journal.components.iter().any(|c| c == component) {
            continue;
        }
        let live = host_path(live);
        let old = sibling(&live, "old", &journal.restore_id);
        if !source.exists() {
            let recorded = journal.swapped.iter().any(|s| s.live == live);
            if !removals.contains(&live) && !recorded {
                continue;
            }
            if !recorded {
                journal.swapped.push(Swapped {
                    live: live.clone(),
                    old: old.clone(),
                    existed: Some(true),
                });
                journal.save(dir).map_err(|e| e.to_string())?;
            }
            if live.exists() && !old.exists() {
                std::fs::rename(&live, &old)
                    .map_err(|e| format!("moving {} aside: {e}", live.display()))?;
            }
            done.removed.push(live);
            continue;
        }
        let new = sibling(&live, "new", &journal.restore_id);
        if !journal.swapped.iter().any(|s| s.live == live) {
            let _ = remove(&new);
            copy(&source, &new, entry, &|entry, meta| {
                modes
                    .get(entry)
                    .copied()
                    .unwrap_or(if meta.is_dir() { 0o700 } else { 0o600 })
            })
            .map_err(|e| format!("preparing {}: {e}", live.display()))?;
            if component == "pki" {
                keep_host_only(journal, &source, &live, &new)
                    .map_err(|e| format!("preparing {}: {e}", live.display()))?;
            }
            journal.swapped.push(Swapped {
                live: live.clone(),
                old: old.clone(),
                existed: Some(live.exists()),
            });
            journal.save(dir).map_err(|e| e.to_string())?;
        }
        // From here each rename is idempotent, so a resume finishes what an interruption left.
        if new.exists() {
            if live.exists() && !old.exists() {
                std::fs::rename(&live, &old)
                    .map_err(|e| format!("moving {} aside: {e}", live.display()))?;
            }
            std::fs::rename(&new, &live)
                .map_err(|e| format!("putting {} in place: {e}", live.display()))?;
        }
        if !done.components.contains(&component) {
            done.components.push(component);
        }
    }
    Ok(done)
}

/// The host's own part of the PKI tree: `db/` holds the external database's CA, which pairs with
/// the host's database settings in its config.
pub const HOST_ONLY_PKI: &str = "db";

/// Carries the host's `pki/db` into the new tree when the restore keeps the host's config (the CA
/// must match the database the config names) or the archive has none, rather than deleting it.
fn keep_host_only(
    journal: &mut Journal,
    source: &Path,
    live: &Path,
    new: &Path,
) -> std::io::Result<()> {
    let host_db = live.join(HOST_ONLY_PKI);
    let restores_config = journal.components.iter().any(|c| c == "config");
    let archive_has_one = source.join(HOST_ONLY_PKI).exists();
    if !host_db.is_dir() || (restores_config && archive_has_one) {
        return Ok(());
    }
    let target = new.join(HOST_ONLY_PKI);
    if target.exists() {
        remove(&target)?;
    }
    copy(&host_db, &target, HOST_ONLY_PKI, &|_, meta| {
        meta.permissions().mode() & 0o7777
    })?;
    journal.kept_host_pki = true;
    Ok(())
}

/// Puts every pre-restore copy back (rollback).
pub fn restore_old(journal: &Journal) -> Result<(), String> {
    for s in journal.swapped.iter().rev() {
        if s.old.exists() {
            let _ = remove(&s.live);
            std::fs::rename(&s.old, &s.live).map_err(|e| format!("{}: {e}", s.live.display()))?;
        } else if s.existed == Some(false) && s.live.exists() {
            // The host had no such path before the restore.
            remove(&s.live).map_err(|e| format!("{}: {e}", s.live.display()))?;
        }
    }
    Ok(())
}

/// Removes the pre-restore copies (commit).
pub fn drop_old(journal: &Journal) {
    for s in &journal.swapped {
        let _ = remove(&s.old);
    }
}

fn remove(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Copies `source` to `dest`, each path with the mode `mode_of` gives for its entry name.
fn copy(
    source: &Path,
    dest: &Path,
    entry: &str,
    mode_of: &dyn Fn(&str, &std::fs::Metadata) -> u32,
) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(source)?;
    if meta.is_dir() {
        std::fs::create_dir_all(dest)?;
        let mut children: Vec<_> = std::fs::read_dir(source)?.filter_map(Result::ok).collect();
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let name = child.file_name().to_string_lossy().into_owned();
            copy(
                &child.path(),
                &dest.join(&name),
                &format!("{entry}/{name}"),
                mode_of,
            )?;
        }
    } else {
        std::fs::copy(source, dest)?;
    }
    let mode = mode_of(entry, &meta);
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode))
}

/// `swap-files`: the chosen components' files by rename, and the PAM issuer volume.
pub(super) async fn swap_step(
    ctx: &super::RestoreContext,
    dir: &Path,
    j: &mut Journal,
) -> Result<super::StepOutcome, String> {
    let host = &ctx.host;
    let extract = dir.join("extract");
    let modes = super::verify::manifest_modes(dir)?;
    let Swap {
        components: mut swapped,
        removed,
    } = swap(j, dir, &extract, |p| host.path(p), &modes)?;
    let mut warnings = Vec::new();
    let pam = extract.join("volumes/pam-issuer-etc.tar");
    if j.wants(Component::Volumes) && pam.is_file() {
        // Kept from the first attempt: a resumed step must not save the restored volume as the
        // pre-restore one.
        let old = dir.join("pam-issuer-etc.old.tar");
        let saved = if old.is_file() {
            Ok(())
        } else {
            host.podman()
                .volume_export("flightctl-pam-issuer-etc", &old)
                .await
        };
        // Without its pre-restore copy a rollback could not put the volume back: it is left as
        // it is.
        let imported = match saved {
            Ok(()) => host
                .podman()
                .volume_import("flightctl-pam-issuer-etc", &pam)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => {
                let _ = std::fs::remove_file(&old);
                Err(format!(
                    "its pre-restore copy could not be saved, so it was left as it was: {e}"
                ))
            }
        };
        match imported {
            Ok(()) => swapped.push(Component::Volumes.name()),
            Err(e) => warnings.push(format!(
                "PAM issuer volume not restored (as upstream, not fatal): {e}"
            )),
        }
    }
    let paths = match j.swapped.len() {
        1 => "1 path".to_string(),
        n => format!("{n} paths"),
    };
    let removed_text: Vec<String> = removed
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    Ok(super::StepOutcome {
        summary: format!(
            "{} swapped ({paths}{}{}); pre-restore copies kept until commit",
            swapped.join(", "),
            if swapped.contains(&Component::Volumes.name()) {
                " and the PAM issuer volume"
            } else {
                ""
            },
            if j.kept_host_pki {
                "; the host's own pki/db (its external database's CA) kept"
            } else {
                ""
            },
        ) + &if removed_text.is_empty() {
            String::new()
        } else {
            format!(
                "; removed (the archive's backup found none; kept aside until commit): {}",
                removed_text.join(", ")
            )
        },
        details: json!({"warnings": warnings, "components": swapped, "removed": removed}),
        skipped: false,
    })
}
