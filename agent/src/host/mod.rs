//! The host layer: the only code that touches the host. It runs `systemctl` and `podman` exactly as an
//! operator would, and reads files under the configured root. It knows nothing of gRPC.

mod command;
pub mod podman;
pub mod systemd;

use std::path::{Path, PathBuf};

pub use command::CommandError;

/// A Flight Control host as the agent sees it.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
    systemctl: PathBuf,
    podman: PathBuf,
}

impl Host {
    pub fn new(root: PathBuf, systemctl: PathBuf, podman: PathBuf) -> Self {
        Host {
            root,
            systemctl,
            podman,
        }
    }

    /// The on-disk location of an absolute host path such as `/etc/flightctl`.
    pub fn path(&self, absolute: impl AsRef<Path>) -> PathBuf {
        let relative = absolute
            .as_ref()
            .strip_prefix("/")
            .unwrap_or(absolute.as_ref());
        self.root.join(relative)
    }

    pub fn systemd(&self) -> systemd::Systemd<'_> {
        systemd::Systemd::new(&self.systemctl)
    }

    pub fn podman(&self) -> podman::Podman<'_> {
        podman::Podman::new(&self.podman)
    }
}
