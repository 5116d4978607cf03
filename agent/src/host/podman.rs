//! Podman through the `podman` command line.

use std::path::Path;

use super::command::{CommandError, run};

pub struct Podman<'a> {
    podman: &'a Path,
}

impl<'a> Podman<'a> {
    pub(super) fn new(podman: &'a Path) -> Self {
        Podman { podman }
    }

    /// The container's `State.Status` (running, exited, ...), or None if there is no such container.
    pub async fn container_state(&self, name: &str) -> Result<Option<String>, CommandError> {
        let args = [
            "inspect",
            "--type",
            "container",
            "--format",
            "{{.State.Status}}",
            name,
        ];
        let output = run(self.podman, &args).await?;
        if output.status.success() {
            return Ok(Some(
                String::from_utf8_lossy(&output.stdout).trim().to_string(),
            ));
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("no such") {
            return Ok(None);
        }
        Err(super::command::failure(self.podman, &args, &output))
    }
}
