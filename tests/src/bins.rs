//! Finds the workspace's binaries (`ferry`, `ferry-agent`, `simfleet`) next to the running executable.

use std::path::PathBuf;

/// The directory holding the built binaries: `FERRY_BIN_DIR`, or the target dir of this executable.
pub fn dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of a workspace binary; run `cargo build --workspace` first.
pub fn path(name: &str) -> PathBuf {
    dir().join(name)
}
