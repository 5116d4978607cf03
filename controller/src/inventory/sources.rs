//! Inventory sources as Ansible reads them: a file (YAML by extension, else INI), or a directory of
//! them (sorted by name, recursively, hidden files, `group_vars`, `host_vars` and ignored extensions
//! skipped); then the `group_vars/` and `host_vars/` next to each source.

use std::path::{Path, PathBuf};

use super::{Inventory, InventoryError, Vars, ini, yaml};

/// Extensions Ansible skips in an inventory directory (`INVENTORY_IGNORE_EXTS`' default).
const IGNORED_EXTENSIONS: [&str; 12] = [
    ".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst", ".orig", ".cfg", ".retry",
];

/// Names always skipped in an inventory directory.
fn ignored(name: &str) -> bool {
    name.starts_with('.')
        || matches!(name, "host_vars" | "group_vars" | "vars_plugins")
        || IGNORED_EXTENSIONS.iter().any(|e| name.ends_with(e))
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yml" | "yaml" | "json")
    )
}

/// Reads `path` (a file or a directory) into `inventory`.
pub(super) fn read(inventory: &mut Inventory, path: &Path) -> Result<(), InventoryError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| InventoryError::new(path, format!("cannot read inventory: {e}")))?;
    if meta.is_dir() {
        for entry in sorted_entries(path)? {
            let name = entry
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !ignored(&name) {
                read(inventory, &entry)?;
            }
        }
        return Ok(());
    }
    let bytes = std::fs::read(path)
        .map_err(|e| InventoryError::new(path, format!("cannot read inventory: {e}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| InventoryError::new(path, "not a text file (UTF-8 expected)"))?;
    if text.starts_with("#!") && executable(&meta) {
        return Err(InventoryError::new(
            path,
            "an executable inventory script: ferry does not run scripts; write its output to a file with `ansible-inventory -i SCRIPT --list -y > inventory.yml` and use that",
        ));
    }
    let file = path.display().to_string();
    if is_yaml(path) {
        yaml::parse(inventory, &file, &text)
    } else {
        ini::parse(inventory, &file, &text)
    }
}

fn executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, InventoryError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| InventoryError::new(dir, format!("cannot read inventory directory: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

/// Reads `group_vars/` and `host_vars/` next to source `path` (in it, for a directory).
pub(super) fn read_vars_dirs(inventory: &mut Inventory, path: &Path) -> Result<(), InventoryError> {
    let base = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    };
    let groups: Vec<String> = inventory.groups.keys().cloned().collect();
    for group in groups {
        let vars = vars_for(&base.join("group_vars"), &group)?;
        inventory.group_mut(&group).file_vars.extend(vars);
    }
    let hosts: Vec<String> = inventory.hosts.keys().cloned().collect();
    for host in hosts {
        let vars = vars_for(&base.join("host_vars"), &host)?;
        if let Some(h) = inventory.hosts.get_mut(&host) {
            h.file_vars.extend(vars);
        }
    }
    Ok(())
}

/// The vars `dir/NAME` holds: the first of `NAME` (a file, or a directory of files), `NAME.yml`,
/// `NAME.yaml`, `NAME.json`, as Ansible finds them; later files override earlier ones.
fn vars_for(dir: &Path, name: &str) -> Result<Vars, InventoryError> {
    let mut vars = Vars::new();
    if !dir.is_dir() {
        return Ok(vars);
    }
    let found = ["", ".yml", ".yaml", ".json"]
        .iter()
        .map(|ext| dir.join(format!("{name}{ext}")))
        .find(|p| p.exists());
    let Some(found) = found else {
        return Ok(vars);
    };
    let files = if found.is_dir() {
        files_in(&found)?
    } else {
        vec![found]
    };
    for file in files {
        vars.extend(vars_file(&file)?);
    }
    Ok(vars)
}

/// Files under a vars directory, sorted, recursively; hidden files, backups and files with other
/// extensions than YAML's or none are skipped.
fn files_in(dir: &Path) -> Result<Vec<PathBuf>, InventoryError> {
    let mut found = Vec::new();
    for entry in sorted_entries(dir)? {
        let name = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || name.ends_with('~') {
            continue;
        }
        let ext = entry.extension().and_then(|e| e.to_str());
        if entry.is_dir() && ext.is_none() {
            found.extend(files_in(&entry)?);
        } else if entry.is_file() && matches!(ext, None | Some("yml" | "yaml" | "json")) {
            found.push(entry);
        }
    }
    Ok(found)
}

fn vars_file(path: &Path) -> Result<Vars, InventoryError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| InventoryError::new(path, format!("cannot read vars file: {e}")))?;
    let vars: Option<Vars> = serde_norway::from_str(&text).map_err(|e| InventoryError {
        file: path.display().to_string(),
        line: e.location().map(|l| l.line()),
        message: format!("a vars file must be a YAML mapping: {e}"),
    })?;
    Ok(vars.unwrap_or_default())
}
