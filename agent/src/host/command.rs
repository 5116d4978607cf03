use std::path::{Path, PathBuf};
use std::process::Output;

/// A host tool that could not be run, or said no.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("could not run {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` exited with {code}: {stderr}")]
    Failed {
        command: String,
        code: i32,
        stderr: String,
    },
}

/// Runs `program args…` to completion. Arguments never pass through a shell.
pub(crate) async fn run(program: &Path, args: &[&str]) -> Result<Output, CommandError> {
    tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| CommandError::Spawn {
            program: program.to_path_buf(),
            source,
        })
}

/// Runs and requires exit status 0; returns stdout.
pub(crate) async fn run_ok(program: &Path, args: &[&str]) -> Result<String, CommandError> {
    let output = run(program, args).await?;
    if !output.status.success() {
        return Err(failure(program, args, &output));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub(crate) fn failure(program: &Path, args: &[&str], output: &Output) -> CommandError {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    CommandError::Failed {
        command: format!("{name} {}", args.join(" ")),
        code: output.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    }
}
