//! The simulated host behaves like a quadlet host where it matters to ferry.

use std::time::Duration;

use simhost::testing::TempHost;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn tcp_db(host: &TempHost) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let password = host.secret("flightctl-postgresql-user-password").unwrap();
    let (client, conn) = tokio_postgres::Config::new()
        .host(&host.spec.address)
        .port(5432)
        .user("flightctl_app")
        .password(password.trim())
        .dbname("flightctl")
        .connect_timeout(Duration::from_secs(2))
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test]
async fn database_is_reachable_from_the_host_only_through_a_published_port() {
    let host = TempHost::up("pub", "127.9.1.1", false).await;
    assert!(
        tcp_db(&host).await.is_err(),
        "DB must not be reachable before publishing"
    );

    let dropin_dir = host
        .layout
        .quadlet("flightctl-db.service")
        .with_extension("container.d");
    std::fs::create_dir_all(&dropin_dir).unwrap();
    std::fs::write(
        dropin_dir.join("10-publish-port.conf"),
        format!("[Container]\nPublishPort={}:5432:5432\n", host.spec.address),
    )
    .unwrap();
    // A restart without daemon-reload still runs the old unit.
    assert!(
        host.systemctl(&["restart", "flightctl-db"])
            .status
            .success()
    );
    assert!(
        tcp_db(&host).await.is_err(),
        "drop-in must not apply before daemon-reload"
    );

    assert!(host.systemctl(&["daemon-reload"]).status.success());
    assert!(
        host.systemctl(&["restart", "flightctl-db"])
            .status
            .success()
    );
    let db = tcp_db(&host)
        .await
        .expect("published DB reachable with the app password");
    let row = db
        .query_one("SELECT count(*) FROM devices", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 30);
    assert_eq!(
        stdout(&host.podman(&["port", "flightctl-db", "5432/tcp"])).trim(),
        format!("{}:5432", host.spec.address)
    );

    std::fs::remove_dir_all(&dropin_dir).unwrap();
    assert!(host.systemctl(&["daemon-reload"]).status.success());
    assert!(
        host.systemctl(&["restart", "flightctl-db.service"])
            .status
            .success()
    );
    assert!(
        tcp_db(&host).await.is_err(),
        "DB unreachable again once the drop-in is gone"
    );
    let port = host.podman(&["port", "flightctl-db", "5432/tcp"]);
    assert_eq!(port.status.code(), Some(125));
    assert!(stderr(&port).contains("failed to find published port"));
}

#[tokio::test]
async fn kv_restart_loses_every_key_and_requires_the_password() {
    let host = TempHost::up("kv", "127.9.2.1", false).await;
    let mut kv = host.kv().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("v1/x/device/d1/awaiting-reconnect")
        .arg("true")
        .query_async(&mut kv)
        .await
        .unwrap();
    let n: i64 = redis::cmd("DBSIZE").query_async(&mut kv).await.unwrap();
    assert_eq!(n, 1);

    assert!(
        host.systemctl(&["restart", "flightctl-kv"])
            .status
            .success()
    );
    let mut kv = host.kv().await.unwrap();
    let n: i64 = redis::cmd("DBSIZE").query_async(&mut kv).await.unwrap();
    assert_eq!(n, 0, "a KV restart keeps nothing");

    let unauthenticated = host.podman(&["exec", "flightctl-kv", "redis-cli", "DBSIZE"]);
    assert!(
        stdout(&unauthenticated).contains("NOAUTH"),
        "{}",
        stdout(&unauthenticated)
    );
    let password = host.secret("flightctl-kv-password").unwrap();
    let authed = host.podman(&[
        "exec",
        "flightctl-kv",
        "redis-cli",
        "--no-auth-warning",
        "-a",
        password.trim(),
        "DBSIZE",
    ]);
    assert_eq!(stdout(&authed).trim(), "0");
}

#[tokio::test]
async fn systemctl_fails_for_unknown_units_like_systemd() {
    let host = TempHost::up("units", "127.9.3.1", false).await;
    let stop = host.systemctl(&["stop", "flightctl-nonexistent.service"]);
    assert_eq!(stop.status.code(), Some(5));
    assert_eq!(
        stderr(&stop).trim(),
        "Failed to stop flightctl-nonexistent.service: Unit flightctl-nonexistent.service not loaded."
    );
    let start = host.systemctl(&["start", "flightctl-nonexistent"]);
    assert_eq!(start.status.code(), Some(5));
    assert!(stderr(&start).contains("Unit flightctl-nonexistent.service not found."));
    let status = host.systemctl(&["status", "flightctl-nonexistent"]);
    assert_eq!(status.status.code(), Some(4));
    let show = host.systemctl(&[
        "show",
        "-p",
        "LoadState,ActiveState",
        "flightctl-nonexistent.service",
        "flightctl-worker.service",
    ]);
    assert_eq!(
        stdout(&show),
        "LoadState=not-found\nActiveState=inactive\n\nLoadState=loaded\nActiveState=active\n"
    );
    let source = host.systemctl(&["show", "-p", "SourcePath", "--value", "flightctl-db"]);
    assert_eq!(
        stdout(&source).trim(),
        "/usr/share/containers/systemd/flightctl-db.container"
    );

    assert!(
        host.systemctl(&["stop", "flightctl-worker"])
            .status
            .success()
    );
    let active = host.systemctl(&["is-active", "flightctl-worker", "flightctl-kv"]);
    assert_eq!(active.status.code(), Some(3));
    assert_eq!(stdout(&active), "inactive\nactive\n");
    assert!(
        host.calls()
            .iter()
            .any(|c| c == "systemctl stop flightctl-worker")
    );
}

#[tokio::test]
async fn api_is_ready_only_while_it_reaches_the_database() {
    let host = TempHost::up("api", "127.9.4.1", false).await;
    let ca = host.layout.host_path("/etc/flightctl/pki/ca.crt");
    let url = format!("https://{}:3443", host.spec.address);
    let api = ferry_agent::tasks::api::Api {
        url,
        server_name: None,
    };
    let readyz = || ferry_agent::tasks::api::ready(&api, &ca);
    readyz().await.expect("ready while the DB runs");
    let version = ferry_agent::tasks::api::read_version(&api, &ca)
        .await
        .expect("version");
    assert_eq!(version, "v1.2.0");
    assert!(host.systemctl(&["stop", "flightctl-db"]).status.success());
    let err = readyz().await.expect_err("not ready without the DB");
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    assert!(host.systemctl(&["start", "flightctl-db"]).status.success());
    readyz().await.expect("ready again");
}

#[tokio::test]
async fn podman_secrets_exec_volumes_and_inspect() {
    let host = TempHost::up("podman", "127.9.5.1", false).await;
    let out = host.podman(&[
        "secret",
        "inspect",
        "--showsecret",
        "flightctl-postgresql-user-password",
    ]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json[0]["SecretData"].as_str().unwrap(),
        host.secret("flightctl-postgresql-user-password").unwrap()
    );
    assert_eq!(
        json[0]["Spec"]["Name"],
        "flightctl-postgresql-user-password"
    );
    let hidden = host.podman(&["secret", "inspect", "flightctl-kv-password"]);
    let json: serde_json::Value = serde_json::from_slice(&hidden.stdout).unwrap();
    assert!(json[0].get("SecretData").is_none());
    let missing = host.podman(&["secret", "inspect", "--showsecret", "nope"]);
    assert_eq!(missing.status.code(), Some(125));
    assert!(stderr(&missing).contains("no such secret"));

    let psql = host.podman(&[
        "exec",
        "flightctl-db",
        "psql",
        "-U",
        "postgres",
        "-d",
        "flightctl",
        "-tAc",
        "SELECT count(*) FROM organizations",
    ]);
    assert_eq!(stdout(&psql).trim(), "3", "{}", stderr(&psql));

    let state = host.podman(&["inspect", "--format", "{{.State.Status}}", "flightctl-db"]);
    assert_eq!(stdout(&state).trim(), "running");
    assert!(host.systemctl(&["stop", "flightctl-db"]).status.success());
    let state = host.podman(&["inspect", "--format", "{{.State.Status}}", "flightctl-db"]);
    assert_eq!(stdout(&state).trim(), "exited");
    let exec = host.podman(&["exec", "flightctl-db", "psql", "-c", "SELECT 1"]);
    assert_eq!(exec.status.code(), Some(125));
    assert!(stderr(&exec).contains("container state improper"));
    let missing = host.podman(&["inspect", "flightctl-nothing"]);
    assert_eq!(missing.status.code(), Some(125));

    let tmp = tempfile::tempdir().unwrap();
    let tar = tmp.path().join("pam.tar");
    let export = host.podman(&[
        "volume",
        "export",
        "flightctl-pam-issuer-etc",
        "-o",
        tar.to_str().unwrap(),
    ]);
    assert!(export.status.success(), "{}", stderr(&export));
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&tar)
        .output()
        .unwrap();
    assert!(stdout(&listing).contains("./userdb/passwd"));
    // In use while the PAM issuer runs, as on a real host.
    let rm = host.podman(&["volume", "rm", "flightctl-pam-issuer-etc"]);
    assert_eq!(rm.status.code(), Some(2));
    assert!(
        host.systemctl(&["stop", "flightctl-pam-issuer"])
            .status
            .success()
    );
    assert!(
        host.podman(&["volume", "rm", "flightctl-pam-issuer-etc"])
            .status
            .success()
    );
    assert!(
        host.podman(&["volume", "create", "flightctl-pam-issuer-etc"])
            .status
            .success()
    );
    assert!(
        host.podman(&[
            "volume",
            "import",
            "flightctl-pam-issuer-etc",
            tar.to_str().unwrap()
        ])
        .status
        .success()
    );
    let restored = std::fs::read_to_string(
        host.layout
            .volumes()
            .join("flightctl-pam-issuer-etc/userdb/passwd"),
    )
    .unwrap();
    assert!(restored.starts_with("admin:"));
}
