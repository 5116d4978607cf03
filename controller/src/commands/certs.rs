//! `ferry certs init|issue-agent|issue-operator|show`

use ferry_certs::{Authority, LeafSpec, Role};

use crate::catalog::Operator;
use crate::catalog::ledger::Event;
use crate::cli::CertsCommand;
use crate::config::Config;
use crate::ops::Operation;
use crate::report::exit;
use crate::types::OperationKind;

pub async fn run(config: &Config, command: CertsCommand) -> i32 {
    let started = time::OffsetDateTime::now_utc();
    match execute(config, command) {
        Ok(Some((target, flags))) => {
            if crate::output::is_json() {
                let mut doc = flags.clone();
                doc["command"] = "certs".into();
                doc["name"] = target.clone().into();
                crate::output::json(&doc);
            }
            // Every certificate issued is on the audit record.
            let event = Event {
                archive: serde_json::Value::Null,
                flags,
                started,
                finished: time::OffsetDateTime::now_utc(),
                outcome: "succeeded".into(),
                error: None,
                tasks: Vec::new(),
                ..Operation::standalone(
                    OperationKind::CertificateIssue,
                    Operator::current(config),
                    &target,
                    started,
                )
            };
            let recorded = match crate::ops::catalog(config).await {
                Ok(catalog) => Operation::entry(&catalog, &event).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = recorded {
                errln!(
                    "ferry certs: WARNING: the certificate was issued but not recorded in the audit ledger: {e}"
                );
            }
            exit::OK
        }
        Ok(None) => exit::OK,
        Err(e) => {
            errln!("ferry certs: {e}");
            exit::ERROR
        }
    }
}

/// Runs the command; for an issued certificate returns (its name, what to record about it).
fn execute(
    config: &Config,
    command: CertsCommand,
) -> Result<Option<(String, serde_json::Value)>, ferry_certs::CertError> {
    let pki = config.pki_dir();
    match command {
        CertsCommand::Init { days } => {
            let ca = Authority::generate("ferry fleet CA", days)?;
            ca.save(&pki)?;
            outln!("created fleet CA {}", pki.join("ca.crt").display());
            outln!("private key {} (mode 0600)", pki.join("ca.key").display());
            return Ok(Some((
                "fleet CA".into(),
                serde_json::json!({"role": "ca", "days": days,
                "fingerprint": fingerprint(ca.cert_pem())}),
            )));
        }
        CertsCommand::IssueAgent {
            name,
            sans,
            out,
            days,
        } => {
            let ca = Authority::load(&pki)?;
            // The controller binds an inventory host to the agent by this name; it is always a SAN.
            let mut sans = sans;
            if !sans.contains(&name) {
                sans.insert(0, name.clone());
            }
            let issued = ca.issue(&LeafSpec::new(&name, Role::Agent, sans.clone(), days))?;
            let dir = out.unwrap_or_else(|| pki.join("agents").join(&name));
            issued.write(&dir, "agent")?;
            ferry_certs::write_file(&dir.join("ca.crt"), ca.cert_pem(), false)?;
            outln!(
                "issued agent certificate for {name}: {} (hand agent.crt, agent.key and ca.crt to the host)",
                dir.display()
            );
            return Ok(Some((
                name,
                serde_json::json!({"role": "agent", "sans": sans, "days": days,
                "fingerprint": fingerprint(&issued.cert_pem)}),
            )));
        }
        CertsCommand::IssueOperator { name, out, days } => {
            let ca = Authority::load(&pki)?;
            let issued = ca.issue(&LeafSpec::new(&name, Role::Controller, Vec::new(), days))?;
            let dir = out.unwrap_or_else(|| pki.join("operators"));
            issued.write(&dir, &name)?;
            outln!(
                "issued operator certificate {}",
                dir.join(format!("{name}.crt")).display()
            );
            return Ok(Some((
                name,
                serde_json::json!({"role": "controller", "days": days,
                "fingerprint": fingerprint(&issued.cert_pem)}),
            )));
        }
        CertsCommand::Show { file } => {
            let info = ferry_certs::inspect_pem(&file)?;
            if crate::output::is_json() {
                crate::output::json(&serde_json::json!({
                    "command": "certs show", "file": file.display().to_string(),
                    "subject": info.subject, "common_name": info.common_name,
                    "role": info.role.map(|r| r.to_string()), "sans": info.sans,
                    "not_before": info.not_before, "not_after": info.not_after,
                    "issuer": info.issuer, "sha256": info.fingerprint,
                }));
                return Ok(None);
            }
            outln!("subject:     {}", info.subject);
            outln!(
                "role:        {}",
                info.role
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "none".into())
            );
            outln!("SANs:        {}", info.sans.join(", "));
            outln!("valid from:  {}", info.not_before);
            outln!("valid until: {}", info.not_after);
            outln!("issuer:      {}", info.issuer);
            outln!("sha256:      {}", info.fingerprint);
        }
    }
    Ok(None)
}

fn fingerprint(pem: &str) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .and_then(|der| ferry_certs::CertInfo::from_der(&der).ok())
        .map(|info| info.fingerprint)
        .unwrap_or_default()
}
