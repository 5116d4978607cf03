//! The store in a bucket (a real S3 server process) and archives encrypted at rest: backup, restore,
//! verify, export, catalog rebuild, copies, key rotation, break glass, and the faults and bad input
//! around them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};
use simhost::SimFleetOptions;
use simhost::s3::S3Server;
use simhost::testing::{TempFleet, temp_dir, text};

fn append_config(fleet: &TempFleet, extra: &str) {
    let path = fleet.config_path();
    let mut config = std::fs::read_to_string(&path).unwrap();
    config.push_str(extra);
    std::fs::write(&path, config).unwrap();
}

/// A config beside the fleet's: the fleet's text with `extra` appended, under `name`.
fn variant(fleet: &TempFleet, name: &str, extra: &str) -> PathBuf {
    let path = fleet.dir.join(name);
    let base = std::fs::read_to_string(fleet.config_path()).unwrap();
    std::fs::write(&path, format!("{base}{extra}")).unwrap();
    path
}

fn ferry_with(fleet: &TempFleet, config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(simhost::bins::path("ferry"))
        .arg("--config")
        .arg(config)
        .arg("-i")
        .arg(fleet.inventory_path())
        .args(args)
        .output()
        .unwrap()
}

fn archives(fleet: &TempFleet) -> Vec<Value> {
    let out = fleet
        .ferry(&["archives", "list", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["archives"]
        .as_array()
        .or_else(|| doc.as_array())
        .cloned()
        .unwrap_or_default()
}

fn archive_of<'a>(list: &'a [Value], host: &str) -> &'a Value {
    list.iter()
        .find(|a| a["host"] == host)
        .unwrap_or_else(|| panic!("no archive of {host}: {list:?}"))
}

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
    out
}

/// `sha256sum -c` and GNU `tar -tzf` on an exported archive pair.
fn upstream_tools_accept(dir: &Path, name: &str) {
    run(Command::new("sha256sum")
        .arg("-c")
        .arg(format!("{name}.sha256"))
        .current_dir(dir));
    let listing = run(Command::new("tar").arg("-tzf").arg(name).current_dir(dir));
    assert!(String::from_utf8_lossy(&listing.stdout).contains("metadata.json"));
}

fn age_keygen(path: &Path) -> String {
    run(Command::new("age-keygen").arg("-o").arg(path));
    let out = run(Command::new("age-keygen").arg("-y").arg(path));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn age_decrypts(identity: &Path, data: &[u8]) -> bool {
    let dir = temp_dir("ferry-age-");
    let input = dir.path().join("in.age");
    std::fs::write(&input, data).unwrap();
    Command::new("age")
        .args(["--decrypt", "--identity"])
        .arg(identity)
        .arg(&input)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// `ferry archives copy --all --to DIR` with one archive there and one not.
fn copy_all_copies_one_and_skips_one(fleet: &TempFleet, dir: &Path) {
    let out = fleet
        .ferry(&["archives", "copy", "--all", "--to", &dir.to_string_lossy()])
        .output()
        .unwrap();
    assert!(
        text(&out).contains("1 copied to") && text(&out).contains("1 already there"),
        "{}",
        text(&out)
    );
}

/// Holds the devices table locked: the dump waits, so a backup's upload stays open mid-archive.
async fn hold_devices_lock(host: &simhost::SimHost) -> tokio_postgres::Client {
    let db = host.db().await.unwrap();
    db.batch_execute("BEGIN; LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    db
}

async fn wait_for_an_open_upload(s3: &S3Server) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while s3.open_uploads().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no upload started");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// cp01 with the built-in database, cp02 with an external one.
async fn two_hosts() -> TempFleet {
    TempFleet::up(SimFleetOptions {
        hosts: 2,
        external_db: vec![1],
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_store_backs_up_restores_verifies_exports_copies_and_rebuilds() {
    let s3 = S3Server::start("ferry-archives");
    let fleet = two_hosts().await;

    // Typos and wrong settings are refused before anything is contacted, naming the cause.
    let typo = variant(
        &fleet,
        "typo.yaml",
        &format!("store: {}&regoin=eu\n", s3.store_url("prod")),
    );
    let out = ferry_with(&fleet, &typo, &["backup", "all"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("typo.yaml:") && text(&out).contains("unknown store option \"regoin\""),
        "{}",
        text(&out)
    );
    let wrong_key = variant(
        &fleet,
        "wrong-key.yaml",
        &s3.config("prod")
            .replace(&s3.secret_access_key, "not-the-secret"),
    );
    let out = ferry_with(&fleet, &wrong_key, &["backup", "all"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("the bucket refused ferry's credentials")
            && !text(&out).contains("not-the-secret"),
        "{}",
        text(&out)
    );
    let no_bucket = variant(
        &fleet,
        "no-bucket.yaml",
        &s3.config("prod")
            .replace("s3://ferry-archives/", "s3://ferry-archivs/"),
    );
    let out = ferry_with(&fleet, &no_bucket, &["backup", "all"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("bucket \"ferry-archivs\" does not exist"),
        "{}",
        text(&out)
    );
    assert!(s3.ls("").is_empty(), "nothing written: {:?}", s3.ls(""));

    // Backup: objects in place, each with its sidecar, no upload left open.
    append_config(&fleet, &s3.config("prod"));
    fleet.ferry_ok(&["backup", "all"]).unwrap();
    let list = archives(&fleet);
    let objects = s3.ls("prod/");
    for host in ["cp01", "cp02"] {
        let a = archive_of(&list, host);
        let name = a["name"].as_str().unwrap();
        let body = format!("prod/{host}/{name}");
        assert_eq!(
            objects.get(&body).copied(),
            a["size"].as_u64(),
            "{objects:?}"
        );
        let sidecar = String::from_utf8(s3.get(&format!("{body}.sha256"))).unwrap();
        assert_eq!(
            sidecar,
            format!("{}  {name}\n", a["sha256"].as_str().unwrap())
        );
        assert_eq!(sha256_hex(&s3.get(&body)), a["sha256"].as_str().unwrap());
    }
    assert_eq!(objects.len(), 4, "{objects:?}");
    assert!(s3.open_uploads().is_empty());

    // Verify and export stream from the bucket.
    let out = fleet
        .ferry(&["archives", "verify", "--all"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("2 archive(s) verified, 0 with problems"));
    let cp01 = archive_of(&list, "cp01").clone();
    let id = cp01["id"].as_str().unwrap();
    let name = cp01["name"].as_str().unwrap();
    let export = temp_dir("ferry-export-");
    fleet
        .ferry_ok(&["archives", "export", id, &export.path().to_string_lossy()])
        .unwrap();
    upstream_tools_accept(&export.path().join("cp01"), name);

    // A damaged database comes back from the bucket; the external-DB host restores one component.
    let db = fleet.host("cp01").db().await.unwrap();
    db.batch_execute("DELETE FROM devices WHERE name = 'device-000007'")
        .await
        .unwrap();
    let out = fleet.ferry(&["restore", "cp01"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    drop(db);
    let back = fleet
        .host("cp01")
        .db()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM devices WHERE name = 'device-000007'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(back.get::<_, i64>(0), 1);
    let out = fleet
        .ferry(&["restore", "cp02", "--only", "pki"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // An off-site copy into a directory, checked on arrival; `--all` then skips it.
    let offsite = temp_dir("ferry-offsite-");
    let out = fleet
        .ferry(&[
            "archives",
            "copy",
            id,
            "--to",
            &offsite.path().to_string_lossy(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let copied = std::fs::read(offsite.path().join("cp01").join(name)).unwrap();
    assert_eq!(sha256_hex(&copied), cp01["sha256"].as_str().unwrap());
    copy_all_copies_one_and_skips_one(&fleet, offsite.path());
    // A copy that vanished from the destination is copied again, not reported as there.
    std::fs::remove_file(offsite.path().join("cp01").join(name)).unwrap();
    copy_all_copies_one_and_skips_one(&fleet, offsite.path());
    assert!(offsite.path().join("cp01").join(name).exists());
    let out = fleet
        .ferry(&["archives", "copy", id, "--to", &s3.store_url("prod")])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out).contains("is the store itself"), "{}", text(&out));

    // The catalog rebuilt from the bucket alone knows the same archives by the same ids.
    let fresh = fleet.dir.join("fresh.yaml");
    std::fs::write(
        &fresh,
        format!(
            "state_dir: {}\n{}",
            fleet.dir.join("fresh").display(),
            s3.config("prod")
        ),
    )
    .unwrap();
    let out = ferry_with(&fleet, &fresh, &["catalog", "rebuild"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("2 added, 0 already catalogued, 0 unreadable"),
        "{}",
        text(&out)
    );
    // cp01's archive slipped under cp02's folder (a later name) is not catalogued as cp02's.
    let moved = "flightctl-backup-29990101T000000Z.tar.gz";
    let body = s3.get(&format!("prod/cp01/{name}"));
    s3.put(&format!("prod/cp02/{moved}"), &body);
    s3.put(
        &format!("prod/cp02/{moved}.sha256"),
        format!("{}  {moved}\n", sha256_hex(&body)).as_bytes(),
    );
    let out = ferry_with(&fleet, &fresh, &["catalog", "rebuild"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("FAILED: [cp02] {moved}: made by the agent whose certificate names cp01, but filed under cp02/"))
            && text(&out).contains("0 added, 2 already catalogued, 1 unreadable"),
        "{}",
        text(&out)
    );
    let out = ferry_with(&fleet, &fresh, &["archives", "show", id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let _ = ferry::catalog::embedded::PrivateCluster::new(&fleet.dir.join("fresh")).stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_archives_restore_verify_export_rotate_and_break_glass() {
    let s3 = S3Server::start("ferry-sealed");
    let fleet = two_hosts().await;
    let keys = fleet.dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (online, escrow, next) = (
        keys.join("online.age"),
        keys.join("escrow.age"),
        keys.join("next.age"),
    );
    let online_pub = age_keygen(&online);
    let escrow_pub = age_keygen(&escrow);
    let next_pub = age_keygen(&next);
    let encryption = |identity: Option<&Path>| {
        format!(
            "{}encryption:\n  recipients: [\"{online_pub}\", \"{escrow_pub}\"]\n{}",
            s3.config("site1"),
            identity
                .map(|p| format!("  identity: {}\n", p.display()))
                .unwrap_or_default()
        )
    };
    // A mistyped public key is refused with its line.
    let typo = variant(
        &fleet,
        "typo.yaml",
        &encryption(Some(&online)).replace(&escrow_pub, "age1notakey"),
    );
    let out = ferry_with(&fleet, &typo, &["backup", "all"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("typo.yaml:")
            && text(&out).contains("\"age1notakey\" is not an age X25519 public key"),
        "{}",
        text(&out)
    );
    append_config(&fleet, &encryption(Some(&online)));
    fleet.ferry_ok(&["backup", "all"]).unwrap();
    let list = archives(&fleet);
    let cp01 = archive_of(&list, "cp01").clone();
    let (id, name) = (cp01["id"].as_str().unwrap(), cp01["name"].as_str().unwrap());
    let sealed = &cp01["sealed"];
    assert_eq!(
        sealed["key_ids"],
        serde_json::json!([online_pub, escrow_pub]),
        "{cp01}"
    );
    let plain_sha = sealed["plain_sha256"].as_str().unwrap().to_string();
    assert_ne!(plain_sha, cp01["sha256"].as_str().unwrap());

    // Nothing in the bucket is plaintext: no PKI file, no stretch of the upstream archive.
    let export = temp_dir("ferry-export-");
    fleet
        .ferry_ok(&[
            "archives",
            "export",
            id,
            &export.path().to_string_lossy(),
            "--decrypt",
        ])
        .unwrap();
    let exported = export.path().join("cp01");
    upstream_tools_accept(&exported, name);
    let plain = std::fs::read(exported.join(name)).unwrap();
    assert_eq!(sha256_hex(&plain), plain_sha);
    let pki_file = fleet
        .host("cp01")
        .layout
        .host_path("/etc/flightctl/pki/ca.key");
    let secret = std::fs::read(&pki_file).unwrap();
    let unpacked = temp_dir("ferry-unpacked-");
    run(Command::new("tar")
        .arg("-xzf")
        .arg(exported.join(name))
        .arg("-C")
        .arg(unpacked.path()));
    assert_eq!(
        std::fs::read(unpacked.path().join("pki/ca.key")).unwrap(),
        secret,
        "the control: the archive holds the key"
    );
    let window = &plain[plain.len() / 2..plain.len() / 2 + 64];
    let objects = s3.ls("site1/");
    assert_eq!(objects.len(), 6, "{objects:?}");
    for key in objects.keys() {
        let bytes = s3.get(key);
        assert!(
            !bytes
                .windows(secret.len().min(64))
                .any(|w| w == &secret[..secret.len().min(64)]),
            "{key} holds ca.key"
        );
        assert!(
            !bytes.windows(64).any(|w| w == window),
            "{key} holds plaintext archive bytes"
        );
    }

    // Verify decrypts and reads through; restore decrypts as a stream.
    let out = fleet
        .ferry(&["archives", "verify", "--all"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("[encrypted]"), "{}", text(&out));
    let out = fleet.ferry(&["restore", "cp01"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = fleet
        .ferry(&["restore", "cp02", "--only", "config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Break glass: the guide's block, run as written, on the objects fetched from the bucket.
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operator-guide.md"
    ))
    .unwrap();
    let block = guide
        .split("<!-- break-glass:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- break-glass:end -->").next())
        .and_then(|b| b.split("```sh\n").nth(1))
        .and_then(|b| b.split("```").next())
        .expect("the break-glass block in docs/operator-guide.md");
    let glass = temp_dir("ferry-glass-");
    for suffix in [".age", ".key.age"] {
        std::fs::write(
            glass.path().join(format!("{name}{suffix}")),
            s3.get(&format!("site1/cp01/{name}{suffix}")),
        )
        .unwrap();
    }
    run(Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .env("ARCHIVE", name)
        .env("IDENTITY", &escrow)
        .current_dir(glass.path()));
    assert_eq!(
        sha256_hex(&std::fs::read(glass.path().join(name)).unwrap()),
        plain_sha
    );
    assert!(
        !glass.path().join(format!("{name}.key")).exists(),
        "the archive key is removed"
    );
    upstream_tools_accept(glass.path(), name);
    // Step 2 failing (a damaged body) leaves no decrypted key behind either.
    let broken = temp_dir("ferry-glass-broken-");
    std::fs::write(
        broken.path().join(format!("{name}.key.age")),
        s3.get(&format!("site1/cp01/{name}.key.age")),
    )
    .unwrap();
    std::fs::write(
        broken.path().join(format!("{name}.age")),
        b"not an age file",
    )
    .unwrap();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .env("ARCHIVE", name)
        .env("IDENTITY", &escrow)
        .current_dir(broken.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        !broken.path().join(format!("{name}.key")).exists(),
        "the decrypted key is removed when step 2 fails"
    );

    // Rotation: the online key retired, a new one added; bodies untouched.
    let bodies: BTreeMap<String, String> = objects
        .keys()
        .filter(|k| k.ends_with(".tar.gz.age"))
        .map(|k| (k.clone(), sha256_hex(&s3.get(k))))
        .collect();
    assert_eq!(bodies.len(), 2);
    let out = fleet
        .ferry(&[
            "keys",
            "rotate",
            "--add",
            &next_pub,
            "--retire",
            &online_pub,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("2 of 2 encrypted archive(s) re-wrapped"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("still names the retired key"),
        "{}",
        text(&out)
    );
    for (key, digest) in &bodies {
        assert_eq!(&sha256_hex(&s3.get(key)), digest, "{key} was rewritten");
        let wrapped = s3.get(&key.replace(".tar.gz.age", ".tar.gz.key.age"));
        assert!(
            !age_decrypts(&online, &wrapped),
            "the retired key still opens {key}"
        );
        assert!(
            age_decrypts(&next, &wrapped),
            "the new key does not open {key}"
        );
        assert!(
            age_decrypts(&escrow, &wrapped),
            "the escrow key does not open {key}"
        );
    }
    let audit = fleet.ferry(&["audit", "export"]).output().unwrap();
    let rotations: Vec<Value> = String::from_utf8_lossy(&audit.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| serde_json::from_str::<Value>(e["content"].as_str()?).ok())
        .filter(|e| e["kind"] == "keys-rotate")
        .collect();
    assert_eq!(rotations.len(), 1, "{}", text(&audit));
    assert_eq!(rotations[0]["outcome"], "succeeded");
    let list = archives(&fleet);
    assert_eq!(
        archive_of(&list, "cp01")["sealed"]["key_ids"],
        serde_json::json!([escrow_pub, next_pub])
    );
    assert_eq!(
        archive_of(&list, "cp01")["id"],
        cp01["id"],
        "ids survive a rotation"
    );

    // Bad input, each refused with its cause and the host untouched.
    let host = fleet.host("cp01");
    host.clear_calls();
    let base = std::fs::read_to_string(fleet.config_path()).unwrap();
    let with_identity = |identity: &str| {
        let path = fleet.dir.join("bad-identity.yaml");
        std::fs::write(
            &path,
            base.replace(&format!("  identity: {}\n", online.display()), identity),
        )
        .unwrap();
        path
    };
    let out = ferry_with(&fleet, &with_identity(""), &["restore", "cp01"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("is encrypted and no private key is configured"),
        "{}",
        text(&out)
    );
    let out = ferry_with(
        &fleet,
        &with_identity(&format!("  identity: {}\n", online.display())),
        &["restore", "cp01"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "the configured private key ({online_pub}) is not a recipient"
        )),
        "{}",
        text(&out)
    );
    let good = with_identity(&format!("  identity: {}\n", next.display()));
    // A key file swapped in from another archive is named as such, not taken for a damaged archive.
    let cp02_name = archive_of(&list, "cp02")["name"]
        .as_str()
        .unwrap()
        .to_string();
    let own_key = s3.get(&format!("site1/cp01/{name}.key.age"));
    s3.put(
        &format!("site1/cp01/{name}.key.age"),
        &s3.get(&format!("site1/cp02/{cp02_name}.key.age")),
    );
    let out = ferry_with(&fleet, &good, &["archives", "verify", id]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "is the key of cp02/{cp02_name}, not of cp01/{name}"
        )) && !text(&out).contains("differs from the catalog"),
        "{}",
        text(&out)
    );
    s3.put(&format!("site1/cp01/{name}.key.age"), &own_key);
    // Its own key back, a verify proves it good again (the swap had marked it suspect).
    let out = ferry_with(&fleet, &good, &["archives", "verify", id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("the suspect mark is lifted"),
        "{}",
        text(&out)
    );
    let body_key = format!("site1/cp01/{name}.age");
    let mut tampered = s3.get(&body_key);
    let at = tampered.len() - 300;
    tampered[at] ^= 0x01;
    s3.put(&body_key, &tampered);
    let out = ferry_with(&fleet, &good, &["restore", "cp01"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("failed authentication"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("task preflight"), "{}", text(&out));
    // Facts only: nothing but reads reached the host.
    // facts' reads: units, containers, and the devices awaiting reconnect against the KV's keys.
    let reads = [
        "systemctl show ",
        "systemctl is-active ",
        "podman inspect ",
        "podman secret inspect ",
        "podman exec -i flightctl-kv redis-cli --no-auth-warning",
        "podman exec -i flightctl-db psql -U postgres -d flightctl -v ON_ERROR_STOP=1 -tAc SELECT COALESCE(string_agg('v1/'",
        "podman exec -i flightctl-db psql -U postgres -d postgres -v ON_ERROR_STOP=1 -tAc SELECT 1",
    ];
    let changes: Vec<String> = host
        .calls()
        .into_iter()
        .filter(|c| !reads.iter().any(|r| c.starts_with(r)))
        .collect();
    assert!(changes.is_empty(), "the host was touched: {changes:?}");
    let staging = host.layout.agent_dir().join("staging");
    let staged: Vec<_> = std::fs::read_dir(&staging)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(staged.is_empty(), "staged: {staged:?}");
    let out = ferry_with(&fleet, &good, &["archives", "verify", id]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_or_interrupted_upload_leaves_nothing_and_the_rerun_succeeds() {
    let s3 = S3Server::start("ferry-faults");
    let fleet = TempFleet::up(SimFleetOptions {
        hosts: 1,
        ..Default::default()
    })
    .await;
    append_config(&fleet, &s3.config(""));
    let host = fleet.host("cp01");
    for signal in [rustix::process::Signal::KILL, rustix::process::Signal::INT] {
        // The dump waits on a lock: the upload is open, mid-archive, when the controller goes.
        let db = hold_devices_lock(host).await;
        let mut backup = fleet
            .ferry(&["backup", "cp01"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for_an_open_upload(&s3).await;
        let pid = rustix::process::Pid::from_raw(backup.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
        let status = backup.wait().unwrap();
        drop(db);
        let visible: Vec<_> = s3
            .ls("")
            .into_keys()
            .filter(|k| !k.contains(".incoming"))
            .collect();
        let committed: Vec<_> = visible.iter().filter(|k| k.ends_with(".sha256")).collect();
        if signal == rustix::process::Signal::INT {
            assert_eq!(status.code(), Some(130));
            assert!(s3.open_uploads().is_empty(), "Ctrl-C left an upload open");
            assert_eq!(
                committed.len(),
                1,
                "only the first run's archive: {visible:?}"
            );
        } else {
            assert!(committed.is_empty(), "{visible:?}");
            assert!(visible.is_empty(), "a killed upload left {visible:?}");
            assert_eq!(
                s3.open_uploads().len(),
                1,
                "the killed upload is still open"
            );
            // The rerun aborts the dead upload and succeeds.
            let out = fleet.ferry(&["backup", "cp01"]).output().unwrap();
            assert_eq!(out.status.code(), Some(0), "{}", text(&out));
            assert!(s3.open_uploads().is_empty(), "{:?}", s3.open_uploads());
            let objects = s3.ls("");
            assert_eq!(objects.len(), 2, "one archive and its sidecar: {objects:?}");
            assert_eq!(archives(&fleet).len(), 1);
        }
    }
    // A cut link to the bucket mid-upload: the backup fails naming the store, and the upload its
    // abort could not reach is aborted by the next ferry.
    let proxy = simhost::testing::Proxy::start(
        "127.0.0.1:0",
        format!("127.0.0.1:{}", s3.port).parse().unwrap(),
        1 << 30,
    )
    .await;
    let proxied = fleet.dir.join("proxied.yaml");
    std::fs::write(
        &proxied,
        std::fs::read_to_string(fleet.config_path())
            .unwrap()
            .replace(&s3.endpoint(), &format!("http://{}", proxy.addr)),
    )
    .unwrap();
    let db = hold_devices_lock(host).await;
    let backup = Command::new(simhost::bins::path("ferry"))
        .arg("--config")
        .arg(&proxied)
        .arg("-i")
        .arg(fleet.inventory_path())
        .args(["backup", "cp01"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_an_open_upload(&s3).await;
    proxy.cut();
    drop(db);
    let out = backup.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("FAILED: [cp01] task backup/store")
            && text(&out).contains("cannot reach"),
        "{}",
        text(&out)
    );
    let before = s3.ls("");
    assert_eq!(
        before.len(),
        2,
        "one archive and its sidecar only: {before:?}"
    );
    assert_eq!(s3.open_uploads().len(), 1, "{}", text(&out));
    let out = fleet.ferry(&["archives", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(s3.open_uploads().is_empty(), "{:?}", s3.open_uploads());
    assert_eq!(s3.ls(""), before);
}
