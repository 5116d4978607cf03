//! Checking a Flight Control PKI tree (not ferry's): every certificate and key loads, and every
//! certificate an issuer in the tree issued is signed by it. A drill runs it on an archive's `pki/`.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

/// What the check found: how many files it read and what failed, each naming its file.
#[derive(Debug, Default, Clone)]
pub struct TreeReport {
    pub checked: usize,
    pub failures: Vec<String>,
}

/// Checks `files` (path, contents): `.crt` files must hold certificates, `.key` files a private key
/// aws-lc-rs loads; a certificate whose issuer is in the tree must verify against its key, and a
/// `server.crt` must have its issuer there.
pub fn check(files: &[(String, Vec<u8>)]) -> TreeReport {
    let mut report = TreeReport::default();
    let mut certs: Vec<(&str, CertificateDer<'static>)> = Vec::new();
    for (path, contents) in files {
        if path.ends_with(".crt") || path.ends_with(".pem") && !path.ends_with("key.pem") {
            report.checked += 1;
            let parsed: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(contents).collect();
            match parsed {
                Ok(ders) if !ders.is_empty() => {
                    for der in ders {
                        if let Err(e) = X509Certificate::from_der(&der) {
                            report
                                .failures
                                .push(format!("{path}: a certificate does not parse: {e}"));
                        } else {
                            certs.push((path, der));
                        }
                    }
                }
                Ok(_) => report
                    .failures
                    .push(format!("{path}: holds no PEM certificate")),
                Err(e) => report
                    .failures
                    .push(format!("{path}: not a PEM certificate: {e:?}")),
            }
        } else if path.ends_with(".key") || path.ends_with("key.pem") {
            report.checked += 1;
            let loaded = PrivateKeyDer::from_pem_slice(contents)
                .map_err(|e| format!("not a PEM private key: {e:?}"))
                .and_then(|key| {
                    rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
                        .map(|_| ())
                        .map_err(|e| format!("the private key does not load: {e}"))
                });
            if let Err(e) = loaded {
                report.failures.push(format!("{path}: {e}"));
            }
        }
    }
    for (path, der) in &certs {
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            continue;
        };
        if cert.subject() == cert.issuer() {
            continue;
        }
        let issuers: Vec<_> = certs
            .iter()
            .filter_map(|(_, d)| X509Certificate::from_der(d).ok().map(|(_, c)| c))
            .filter(|c| c.subject() == cert.issuer())
            .collect();
        if issuers.is_empty() {
            if path.ends_with("server.crt") {
                report.failures.push(format!(
                    "{path}: its issuer ({}) is not in the PKI",
                    cert.issuer()
                ));
            }
            continue;
        }
        let signed = issuers
            .iter()
            .any(|ca| cert.verify_signature(Some(ca.public_key())).is_ok());
        if !signed {
            report.failures.push(format!(
                "{path}: not signed by its issuer ({}) in the PKI",
                cert.issuer()
            ));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), Issuer::new(p, key))
    }

    #[test]
    fn finds_a_server_certificate_its_ca_did_not_sign() {
        let (ca_pem, issuer) = ca("flightctl-ca");
        let (_, impostor) = ca("flightctl-ca");
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["api.example.com".to_string()]).unwrap();
        let good = params.signed_by(&key, &issuer).unwrap().pem();
        let bad = params.signed_by(&key, &impostor).unwrap().pem();
        let files = |server: &str| {
            vec![
                ("pki/ca.crt".to_string(), ca_pem.clone().into_bytes()),
                ("pki/api/server.crt".to_string(), server.as_bytes().to_vec()),
                (
                    "pki/api/server.key".to_string(),
                    key.serialize_pem().into_bytes(),
                ),
            ]
        };
        let ok = super::check(&files(&good));
        assert_eq!(ok.checked, 3);
        assert!(ok.failures.is_empty(), "{:?}", ok.failures);
        let wrong = super::check(&files(&bad));
        assert_eq!(wrong.failures.len(), 1, "{:?}", wrong.failures);
        assert!(wrong.failures[0].starts_with("pki/api/server.crt: not signed"));
        let mut garbled = files(&good);
        garbled[2].1 = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec();
        let broken = super::check(&garbled);
        assert!(
            broken.failures[0].starts_with("pki/api/server.key: "),
            "{:?}",
            broken.failures
        );
    }
}
