//! The fleet PKI: files and modes, roles, SANs, and refusal to overwrite a CA.

use std::os::unix::fs::PermissionsExt;

use ferry_certs::{Authority, LeafSpec, Role, inspect_pem};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn ca_and_leaves_are_written_owner_only_and_carry_their_role() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    Authority::generate("ferry fleet CA", 3650)
        .unwrap()
        .save(&pki)
        .unwrap();
    assert_eq!(mode(&pki.join("ca.key")), 0o600);
    assert_eq!(mode(&pki.join("ca.crt")), 0o644);
    let err = Authority::generate("again", 1)
        .unwrap()
        .save(&pki)
        .unwrap_err();
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");

    let ca = Authority::load(&pki).unwrap();
    let agent = ca
        .issue(&LeafSpec::new(
            "cp01",
            Role::Agent,
            vec!["cp01.example.com".into(), "10.1.2.3".into()],
            30,
        ))
        .unwrap();
    agent.write(&dir.path().join("agent"), "agent").unwrap();
    assert_eq!(mode(&dir.path().join("agent/agent.key")), 0o600);
    let info = inspect_pem(&dir.path().join("agent/agent.crt")).unwrap();
    assert_eq!(info.role, Some(Role::Agent));
    assert_eq!(info.common_name, "cp01");
    assert_eq!(info.sans, ["cp01.example.com", "10.1.2.3"]);
    assert!(info.issuer.contains("ferry fleet CA"));
    assert_eq!(info.fingerprint.len(), 64);

    let op = ca
        .issue(&LeafSpec::new("alice", Role::Controller, vec![], 30))
        .unwrap();
    op.write(dir.path(), "alice").unwrap();
    let info = inspect_pem(&dir.path().join("alice.crt")).unwrap();
    assert_eq!(info.role, Some(Role::Controller));
    assert!(info.sans.is_empty());
}

#[test]
fn agent_certificates_need_a_san_and_names_must_not_be_empty() {
    let ca = Authority::generate("ca", 1).unwrap();
    assert!(
        ca.issue(&LeafSpec::new("cp01", Role::Agent, vec![], 30))
            .is_err()
    );
    assert!(
        ca.issue(&LeafSpec::new(" ", Role::Controller, vec![], 30))
            .is_err()
    );
}

#[test]
fn unreadable_files_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = Authority::load(dir.path()).err().unwrap();
    assert!(err.to_string().contains("ca.crt"), "{err}");
    std::fs::write(dir.path().join("junk.crt"), "not a certificate").unwrap();
    let err = inspect_pem(&dir.path().join("junk.crt")).unwrap_err();
    assert!(err.to_string().contains("junk.crt"), "{err}");
}
