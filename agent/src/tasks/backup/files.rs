//! Host files into the archive: trees copied entry by entry, refusing links and special files.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ferry_archive::ArchiveWriter;

/// Adds `dir` as `prefix/` and everything under it, in lexical order.
pub fn add_tree<W: Write>(
    writer: &mut ArchiveWriter<W>,
    dir: &Path,
    prefix: &str,
) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    writer
        .dir(prefix, meta.permissions().mode() & 0o7777)
        .map_err(|e| format!("{prefix}/: {e}"))?;
    let mut children: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    children.sort();
    for child in children {
        let name = child
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let archived = format!("{prefix}/{name}");
        let meta =
            std::fs::symlink_metadata(&child).map_err(|e| format!("{}: {e}", child.display()))?;
        if meta.file_type().is_symlink() {
            return Err(format!(
                "{} is a symbolic link; ferry archives only regular files",
                child.display()
            ));
        }
        if meta.is_dir() {
            add_tree(writer, &child, &archived)?;
        } else if meta.is_file() {
            add_file(writer, &child, &archived)?;
        } else {
            return Err(format!("{} is not a regular file", child.display()));
        }
    }
    Ok(())
}

/// Adds one regular file.
pub fn add_file<W: Write>(
    writer: &mut ArchiveWriter<W>,
    path: &Path,
    archived: &str,
) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writer
        .file(
            archived,
            meta.permissions().mode() & 0o7777,
            meta.len(),
            file,
        )
        .map_err(|e| format!("{archived}: {e}"))
}
