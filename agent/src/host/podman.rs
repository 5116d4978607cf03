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

/// A secret's value. Never printed: Debug and Display show a placeholder.
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'a> Podman<'a> {
    /// `podman secret inspect --showsecret NAME`, field `[0].SecretData`, trimmed.
    pub async fn secret(&self, name: &str) -> Result<Secret, CommandError> {
        let stdout =
            super::command::run_ok(self.podman, &["secret", "inspect", "--showsecret", name])
                .await?;
        let parsed: serde_json::Value =
            serde_json::from_str(&stdout).map_err(|e| CommandError::Failed {
                command: format!("podman secret inspect {name}"),
                code: 0,
                stderr: format!("unexpected output: {e}"),
            })?;
        match parsed[0]["SecretData"].as_str() {
            Some(data) => Ok(Secret(data.trim().to_string())),
            None => Err(CommandError::Failed {
                command: format!("podman secret inspect {name}"),
                code: 0,
                stderr: "no SecretData in the output".into(),
            }),
        }
    }

    /// A `podman exec -i CONTAINER ARGS…` command to spawn with piped I/O (for streams such as a
    /// dump). It dies with the agent (see [`super::command::tool`]) but only with the thread that
    /// spawns it too: spawn it from a thread that waits for it.
    pub fn exec_command(&self, container: &str, args: &[&str]) -> std::process::Command {
        let mut cmd = super::command::tool(self.podman).into_std();
        cmd.args(["exec", "-i", container]).args(args);
        cmd
    }

    /// `podman exec -i CONTAINER ARGS…` with `stdin`; returns stdout, or the command's error.
    pub async fn exec(
        &self,
        container: &str,
        args: &[&str],
        stdin: &[u8],
    ) -> Result<String, CommandError> {
        use tokio::io::AsyncWriteExt;
        let mut full = vec!["exec", "-i", container];
        full.extend_from_slice(args);
        let mut child = super::command::tool(self.podman)
            .args(&full)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| CommandError::Spawn {
                program: self.podman.to_path_buf(),
                source,
            })?;
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin).await;
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|source| CommandError::Spawn {
                program: self.podman.to_path_buf(),
                source,
            })?;
        if !output.status.success() {
            return Err(super::command::failure(
                self.podman,
                &full[..4.min(full.len())],
                &output,
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `podman volume import NAME FILE`.
    pub async fn volume_import(&self, name: &str, file: &Path) -> Result<(), CommandError> {
        let file = file.to_string_lossy();
        super::command::run_ok(self.podman, &["volume", "import", name, &file]).await?;
        Ok(())
    }

    /// `podman volume export NAME --output FILE`.
    pub async fn volume_export(&self, name: &str, file: &Path) -> Result<(), CommandError> {
        let file = file.to_string_lossy();
        super::command::run_ok(self.podman, &["volume", "export", name, "--output", &file]).await?;
        Ok(())
    }
}
