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

/// A host tool that dies with the agent, as systemd's control-group kill makes it under the real
/// unit. A step cut short by the agent's death must not finish later behind the back of the agent
/// that restarted and recovered the restore from its journal (an orphaned `ALTER DATABASE … RENAME`
/// would undo a rollback).
pub(crate) fn tool(program: &Path) -> tokio::process::Command {
    let mut command = std::process::Command::new(program);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    tokio::process::Command::from(command)
}

/// Runs `program args…` to completion. Arguments never pass through a shell.
pub(crate) async fn run(program: &Path, args: &[&str]) -> Result<Output, CommandError> {
    tool(program)
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
