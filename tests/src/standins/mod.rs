//! The `systemctl` and `podman` stand-ins, the processes behind the simulated units, and the stand-in
//! Flight Control API.

pub mod api;
pub mod podman;
pub mod services;
pub mod systemctl;

/// A stand-in's answer: what to print and the exit status, as the real tool would give them.
#[derive(Debug, Default)]
pub struct Reply {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Reply {
    pub fn ok(stdout: impl Into<String>) -> Self {
        Reply {
            stdout: stdout.into(),
            ..Default::default()
        }
    }
    pub fn fail(code: i32, stderr: impl Into<String>) -> Self {
        Reply {
            stderr: stderr.into(),
            code,
            ..Default::default()
        }
    }
}
