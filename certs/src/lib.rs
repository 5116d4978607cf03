//! Fleet PKI for ferry.
//!
//! One fleet CA signs two kinds of leaf certificate: agent server certificates (role `agent`, SANs = the
//! names and addresses a controller dials) and controller/operator client certificates (role
//! `controller`). The role is carried in the subject's OU and backed by the extended key usage, so a
//! certificate of one role can never stand in for the other. There is no switch that turns verification
//! off: [`tls`] builds the only rustls configurations ferry uses.

mod authority;
mod error;
mod identity;
mod role;
pub mod tls;
pub mod tree;

pub use authority::{Authority, IssuedCert, LeafSpec};
pub use error::CertError;
pub use identity::{CertInfo, certificates_in_pem, inspect_pem};
pub use role::Role;

/// Writes `contents` to `path`, readable by the owner only when `secret`.
pub fn write_file(path: &std::path::Path, contents: &str, secret: bool) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CertError::io(dir, e))?;
    }
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| CertError::io(path, e))?;
    // The mode given to open() only applies on creation; make an existing file match too.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(|e| CertError::io(path, e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| CertError::io(path, e))
}
