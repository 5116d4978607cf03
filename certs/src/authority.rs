use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::{CertError, Role, write_file};

/// The fleet certificate authority: its certificate and signing key.
pub struct Authority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// What to put in a leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub name: String,
    pub role: Role,
    /// DNS names or IP addresses (agent certificates); IP strings become IP SANs.
    pub sans: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A certificate valid from now for `days` days.
    pub fn new(name: &str, role: Role, sans: Vec<String>, days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            name: name.to_string(),
            role,
            sans,
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::days(days),
        }
    }
}

/// A freshly issued certificate and its private key, both PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl IssuedCert {
    /// Writes `<dir>/<stem>.crt` (0644) and `<dir>/<stem>.key` (0600).
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), CertError> {
        write_file(&dir.join(format!("{stem}.crt")), &self.cert_pem, false)?;
        write_file(&dir.join(format!("{stem}.key")), &self.key_pem, true)
    }
}

impl Authority {
    /// Creates a new fleet CA valid for `days` days.
    pub fn generate(common_name: &str, days: i64) -> Result<Self, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(common_name, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(days);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads the CA from `ca.crt` and `ca.key` in `dir`.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let cert_pem =
            std::fs::read_to_string(&cert_path).map_err(|e| CertError::io(&cert_path, e))?;
        let key_pem =
            std::fs::read_to_string(&key_path).map_err(|e| CertError::io(&key_path, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|_| CertError::BadPem {
            path: key_path.clone(),
            what: "private key",
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|_| CertError::BadPem {
            path: cert_path.clone(),
            what: "CA certificate",
        })?;
        Ok(Authority { cert_pem, issuer })
    }

    /// Writes `ca.crt` (0644) and `ca.key` (0600) into `dir`; refuses to replace an existing CA.
    pub fn save(&self, dir: &Path) -> Result<(), CertError> {
        let key_path = dir.join("ca.key");
        if key_path.exists() {
            return Err(CertError::CaExists(key_path));
        }
        write_file(&dir.join("ca.crt"), &self.cert_pem, false)?;
        write_file(&key_path, &self.issuer.key().serialize_pem(), true)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a leaf certificate for `spec`, with a fresh key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedCert, CertError> {
        if spec.name.trim().is_empty() {
            return Err(CertError::Invalid("the certificate name is empty".into()));
        }
        if spec.role == Role::Agent && spec.sans.is_empty() {
            return Err(CertError::Invalid(format!(
                "agent certificate {:?} needs at least one --san (the name or address the controller dials)",
                spec.name
            )));
        }
        let mut params = CertificateParams::new(spec.sans.clone())?;
        params.distinguished_name = dn(&spec.name, Some(spec.role));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![match spec.role {
            Role::Agent => ExtendedKeyUsagePurpose::ServerAuth,
            Role::Controller => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn dn(common_name: &str, role: Option<Role>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ferry");
    if let Some(role) = role {
        dn.push(DnType::OrganizationalUnitName, role.as_ou());
    }
    dn.push(DnType::CommonName, common_name);
    dn
}
