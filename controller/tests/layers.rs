//! The controller's layering (docs/ARCHITECTURE.md, invariants 20 and 21), read from its source:
//! `serve/` never imports `commands/`, no command module imports another, the import map between
//! the controller's modules has no circle, and the wire contract does not pull in the archive
//! format's dependencies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, outside `#[cfg(test)]` parts and `tests.rs` modules.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                && path.file_stem().is_some_and(|s| s != "tests")
            {
                let text = std::fs::read_to_string(&path).expect("read source");
                let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
                found.push((path, code));
            }
        }
    }
    found
}

/// A file's module path below `src/` (`commands::restore::play`); `mod.rs` names its directory.
fn module(src: &Path, file: &Path) -> Vec<String> {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The modules `code` (in module `at`) names through `crate::…` and `super::…` paths.
fn references(at: &[String], code: &str) -> BTreeSet<Vec<String>> {
    let mut found = BTreeSet::new();
    let path = |s: &str| -> Vec<String> {
        s.split("::")
            .take_while(|p| p.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
            .map(str::to_string)
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        found.insert(path(&code[i + 7..]));
    }
    for (i, _) in code.match_indices("super::") {
        if code[..i].ends_with("super::") {
            continue;
        }
        let mut base: Vec<String> = at.to_vec();
        let mut rest = &code[i..];
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        base.extend(path(rest));
        found.insert(base);
    }
    found
}

fn controller_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn serve_never_imports_commands_and_no_command_imports_another() {
    let src = controller_src();
    let mut wrong = Vec::new();
    for (file, code) in sources(&src) {
        let at = module(&src, &file);
        for target in references(&at, &code) {
            let (Some(from), Some(to)) = (at.first(), target.first()) else {
                continue;
            };
            if from == "serve" && to == "commands" {
                wrong.push(format!("{} imports {}", file.display(), target.join("::")));
            }
            if from == "commands"
                && to == "commands"
                && at.len() > 1
                && target.len() > 1
                && at[1] != target[1]
            {
                wrong.push(format!("{} imports {}", file.display(), target.join("::")));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_controllers_modules_import_each_other_in_no_circle() {
    let src = controller_src();
    let files = sources(&src);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(f, _)| module(&src, f)).collect();
    // Each file's edges to the other top-level modules (a module's own files may share freely).
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, code) in &files {
        let at = module(&src, file);
        let Some(from) = at.first() else { continue };
        for target in references(&at, code) {
            if let Some(to) = target.first()
                && to != from
                && modules.iter().any(|m| m.first() == Some(to))
            {
                edges.entry(from.clone()).or_default().insert(to.clone());
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|p| p == node) {
            let mut circle = path[start..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        let circle = visit(node, &edges, &mut Vec::new(), &mut done);
        assert!(
            circle.is_none(),
            "import circle: {}",
            circle.unwrap_or_default().join(" → ")
        );
    }
    // The check sees the imports it must: commands use ops, ops use the catalog.
    assert!(edges["commands"].contains("ops") && edges["ops"].contains("catalog"));
}

#[test]
fn the_wire_contract_does_not_depend_on_the_archive_format() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/Cargo.toml");
    let text = std::fs::read_to_string(manifest).expect("proto/Cargo.toml");
    let deps = text
        .split("[dependencies]")
        .nth(1)
        .and_then(|d| d.split("\n[").next())
        .expect("a [dependencies] table");
    for crate_name in [
        "age",
        "zstd",
        "tar",
        "serde_norway",
        "flate2",
        "ferry-archive",
    ] {
        assert!(
            !deps
                .lines()
                .any(|l| l.trim_start().split(['.', ' ', '=']).next() == Some(crate_name)),
            "ferry-proto depends on {crate_name}"
        );
    }
    assert!(
        !Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../proto/src/archive")
            .exists(),
        "ferry-proto has an archive module"
    );
}
