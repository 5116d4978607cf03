use std::path::{Path, PathBuf};

/// Everything that can go wrong creating, reading or using fleet certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a PEM {what}")]
    BadPem { path: PathBuf, what: &'static str },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("certificate could not be parsed: {0}")]
    Parse(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{0} already exists; refusing to overwrite the fleet CA")]
    CaExists(PathBuf),
    #[error("invalid certificate request: {0}")]
    Invalid(String),
}

impl CertError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        CertError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
