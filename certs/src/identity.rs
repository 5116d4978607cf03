use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{CertError, Role};

/// What an operator (or the audit ledger) needs to know about a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub subject: String,
    pub common_name: String,
    pub issuer: String,
    pub role: Option<Role>,
    pub sans: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    /// Unix seconds, for validity checks.
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint: String,
}

impl CertInfo {
    /// Parses one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| CertError::Parse(e.to_string()))?;
        let subject = cert.subject();
        let common_name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let role = subject
            .iter_organizational_unit()
            .filter_map(|ou| ou.as_str().ok())
            .find_map(Role::from_ou);
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => sans.push(dns.to_string()),
                    GeneralName::IPAddress(ip) => sans.push(ip_to_string(ip)),
                    other => sans.push(other.to_string()),
                }
            }
        }
        let validity = cert.validity();
        Ok(CertInfo {
            subject: subject.to_string(),
            common_name,
            issuer: cert.issuer().to_string(),
            role,
            sans,
            not_before: validity.not_before.to_string(),
            not_after: validity.not_after.to_string(),
            not_before_unix: validity.not_before.timestamp(),
            not_after_unix: validity.not_after.timestamp(),
            fingerprint: hex(&Sha256::digest(der)),
        })
    }
}

/// Every certificate in PEM text (unparsable blocks are left out).
pub fn certificates_in_pem(pem: &[u8]) -> Vec<CertInfo> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .filter_map(|der| CertInfo::from_der(&der).ok())
        .collect()
}

/// Parses the first certificate of a PEM file.
pub fn inspect_pem(path: &std::path::Path) -> Result<CertInfo, CertError> {
    let certs = crate::tls::read_certs(path)?;
    let first = certs.first().ok_or_else(|| CertError::BadPem {
        path: path.to_path_buf(),
        what: "certificate",
    })?;
    CertInfo::from_der(first)
}

fn ip_to_string(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
        16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(bytes);
            std::net::Ipv6Addr::from(octets).to_string()
        }
        _ => format!("{bytes:02x?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
