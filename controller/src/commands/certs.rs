//! `ferry certs init|issue-agent|issue-operator|show`

use ferry_certs::{Authority, LeafSpec, Role};

use crate::cli::CertsCommand;
use crate::config::Config;
use crate::report::exit;

pub fn run(config: &Config, command: CertsCommand) -> i32 {
    match execute(config, command) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("ferry certs: {e}");
            exit::ERROR
        }
    }
}

fn execute(config: &Config, command: CertsCommand) -> Result<(), ferry_certs::CertError> {
    let pki = config.pki_dir();
    match command {
        CertsCommand::Init { days } => {
            let ca = Authority::generate("ferry fleet CA", days)?;
            ca.save(&pki)?;
            println!("created fleet CA {}", pki.join("ca.crt").display());
            println!("private key {} (mode 0600)", pki.join("ca.key").display());
        }
        CertsCommand::IssueAgent {
            name,
            sans,
            out,
            days,
        } => {
            let ca = Authority::load(&pki)?;
            let issued = ca.issue(&LeafSpec::new(&name, Role::Agent, sans, days))?;
            let dir = out.unwrap_or_else(|| pki.join("agents").join(&name));
            issued.write(&dir, "agent")?;
            ferry_certs::write_file(&dir.join("ca.crt"), ca.cert_pem(), false)?;
            println!(
                "issued agent certificate for {name}: {} (hand agent.crt, agent.key and ca.crt to the host)",
                dir.display()
            );
        }
        CertsCommand::IssueOperator { name, out, days } => {
            let ca = Authority::load(&pki)?;
            let issued = ca.issue(&LeafSpec::new(&name, Role::Controller, Vec::new(), days))?;
            let dir = out.unwrap_or_else(|| pki.join("operators"));
            issued.write(&dir, &name)?;
            println!(
                "issued operator certificate {}",
                dir.join(format!("{name}.crt")).display()
            );
        }
        CertsCommand::Show { file } => {
            let info = ferry_certs::inspect_pem(&file)?;
            println!("subject:     {}", info.subject);
            println!(
                "role:        {}",
                info.role
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "none".into())
            );
            println!("SANs:        {}", info.sans.join(", "));
            println!("valid from:  {}", info.not_before);
            println!("valid until: {}", info.not_after);
            println!("issuer:      {}", info.issuer);
            println!("sha256:      {}", info.fingerprint);
        }
    }
    Ok(())
}
