//! The agent refuses every client that is not a controller of this fleet, on the first call; the
//! controller refuses an agent whose certificate does not name the address it dialled.

use std::sync::Arc;
use std::time::Duration;

use ferry::dial::{DialError, Dialer};
use ferry::inventory::Target;
use ferry_certs::tls::{TlsFiles, provider};
use ferry_certs::{Authority, IssuedCert, LeafSpec, Role};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use simhost::SimFleetOptions;
use simhost::testing::TempFleet;

fn roots(fleet: &TempFleet) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in ferry_certs::tls::read_certs(&fleet.dir.join("controller/pki/ca.crt")).unwrap() {
        roots.add(cert).unwrap();
    }
    Arc::new(roots)
}

fn client(roots: Arc<RootCertStore>, identity: Option<&IssuedCert>) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

fn target(fleet: &TempFleet) -> Target {
    let host = fleet.host("cp01");
    Target {
        name: "cp01".into(),
        address: host.spec.address.clone(),
        port: simhost::fleet::AGENT_PORT,
        agent_name: "cp01".into(),
    }
}

/// Connects and makes the first call; returns how it failed.
async fn first_call(config: Arc<rustls::ClientConfig>, target: &Target) -> Result<(), DialError> {
    let dialer = Dialer::new(config, Duration::from_secs(5));
    let conn = dialer.connect(target).await?;
    match conn
        .client
        .clone()
        .ping(ferry_proto::v1::PingRequest {})
        .await
    {
        Ok(_) => Ok(()),
        Err(status) => Err(conn
            .transport_error(&status)
            .unwrap_or_else(|| panic!("not a transport error: {status:?}"))),
    }
}

fn assert_refused(result: Result<(), DialError>, what: &str) {
    match result {
        Err(DialError::RefusedByAgent { cause, .. }) => eprintln!("{what}: refused ({cause})"),
        other => panic!("{what}: expected the agent to refuse our certificate, got {other:?}"),
    }
}

#[tokio::test]
async fn agent_refuses_foreign_expired_missing_and_agent_role_client_certificates() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        ..Default::default()
    })
    .await;
    let target = target(&fleet);
    let fleet_ca = Authority::load(&fleet.dir.join("controller/pki")).unwrap();

    // The real operator certificate works: the refusals below are about the certificate alone.
    let operator = ferry_certs::tls::client_config(&TlsFiles {
        ca: fleet.dir.join("controller/pki/ca.crt"),
        cert: fleet.dir.join("controller/pki/operators/controller.crt"),
        key: fleet.dir.join("controller/pki/operators/controller.key"),
    })
    .unwrap();
    first_call(operator, &target)
        .await
        .expect("operator certificate accepted");

    assert_refused(
        first_call(client(roots(&fleet), None), &target).await,
        "no client certificate",
    );

    let other_ca = Authority::generate("another fleet", 30).unwrap();
    let foreign = other_ca
        .issue(&LeafSpec::new("intruder", Role::Controller, vec![], 30))
        .unwrap();
    assert_refused(
        first_call(client(roots(&fleet), Some(&foreign)), &target).await,
        "foreign CA",
    );

    let agent_role = fleet_ca
        .issue(&LeafSpec::new("cp09", Role::Agent, vec!["cp09".into()], 30))
        .unwrap();
    assert_refused(
        first_call(client(roots(&fleet), Some(&agent_role)), &target).await,
        "agent role as client",
    );

    let mut expired_spec = LeafSpec::new("old-operator", Role::Controller, vec![], 30);
    expired_spec.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(60);
    expired_spec.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired = fleet_ca.issue(&expired_spec).unwrap();
    assert_refused(
        first_call(client(roots(&fleet), Some(&expired)), &target).await,
        "expired certificate",
    );

    // The agent is still serving good clients after all that.
    let ping = fleet.ferry(&["ping", "all"]).output().unwrap();
    assert_eq!(ping.status.code(), Some(0));
}

#[tokio::test]
async fn controller_refuses_an_agent_certificate_without_the_dialled_name() {
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        ..Default::default()
    })
    .await;
    let host = fleet.host("cp01");
    let agent_dir = host.layout.agent_dir();
    let reissue = fleet
        .ferry(&[
            "certs",
            "issue-agent",
            "cp01",
            "--san",
            "cp01.elsewhere.example.com",
            "--out",
        ])
        .arg(&agent_dir)
        .output()
        .unwrap();
    assert!(reissue.status.success());
    simhost::fleet::stop_agent(host);
    simhost::fleet::start_agent(host).unwrap();

    let out = fleet.ferry(&["ping", "all"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains(&format!(
            "not valid for the dialled name \"{}\"",
            host.spec.address
        )),
        "{text}"
    );
    assert!(
        text.contains("cp01.elsewhere.example.com"),
        "names what the certificate holds: {text}"
    );

    let json = fleet
        .ferry(&["ping", "all", "-o", "json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["hosts"]["cp01"]["reason"], "agent_certificate_rejected");
}
