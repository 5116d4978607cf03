//! Building, starting and inspecting one simulated control-plane host.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::layout::Layout;
use crate::standins::services;
use crate::state::{Spec, Units};

/// What to build.
#[derive(Debug, Clone)]
pub struct SimHostSpec {
    pub name: String,
    pub address: String,
    pub version: String,
    pub external_db: bool,
    pub devices: usize,
    /// Extra bytes of rendered config per device, to grow the database for benchmarks.
    pub payload_bytes: usize,
    /// Units without processes (see [`crate::state::Spec::light`]).
    pub light: bool,
}

/// The podman secrets a quadlet host has (docs/upstream-contract.md §4.6).
pub const SECRETS: [&str; 5] = [
    "flightctl-postgresql-password",
    "flightctl-postgresql-master-password",
    "flightctl-postgresql-user-password",
    "flightctl-postgresql-migrator-password",
    "flightctl-kv-password",
];

/// Units of a v1.2 quadlet host, in start order.
pub const UNITS: [&str; 21] = [
    "flightctl-db.service",
    "flightctl-kv.service",
    "flightctl-certs-init.service",
    "flightctl-db-wait.service",
    "flightctl-db-users-init.service",
    "flightctl-db-migrate.service",
    "flightctl-api-init.service",
    "flightctl-api.service",
    "flightctl-worker.service",
    "flightctl-periodic.service",
    "flightctl-alert-exporter.service",
    "flightctl-alertmanager.service",
    "flightctl-alertmanager-proxy.service",
    "flightctl-ui-init.service",
    "flightctl-ui.service",
    "flightctl-cli-artifacts.service",
    "flightctl-pam-issuer.service",
    "flightctl-imagebuilder-api.service",
    "flightctl-imagebuilder-worker.service",
    "flightctl-telemetry-gateway.service",
    "flightctl-gateway.service",
];

/// A simulated host on disk.
#[derive(Debug, Clone)]
pub struct SimHost {
    pub layout: Layout,
    pub spec: Spec,
}

impl SimHost {
    /// Builds the host under `dir` (root, PKI, quadlets, secrets, database with seed rows) and leaves
    /// every unit stopped.
    pub async fn create(dir: &Path, want: &SimHostSpec) -> anyhow::Result<SimHost> {
        let layout = Layout::new(dir);
        for d in [
            layout.root(),
            layout.bin(),
            layout.sim(),
            layout.secrets(),
            layout.volumes(),
            layout.kv_dir(),
            layout.agent_dir(),
        ] {
            std::fs::create_dir_all(&d).with_context(|| d.display().to_string())?;
        }
        for d in [&layout.dir, &layout.sim()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        }
        let (pg_uid, pg_gid) =
            ferry::catalog::embedded::server_user().map_err(anyhow::Error::msg)?;
        let units: Vec<String> = UNITS
            .iter()
            .filter(|u| {
                !(want.external_db
                    && matches!(
                        **u,
                        "flightctl-db.service" | "flightctl-db-users-init.service"
                    ))
            })
            .map(|u| u.to_string())
            .collect();
        let spec = Spec {
            name: want.name.clone(),
            address: want.address.clone(),
            version: want.version.clone(),
            external_db: want.external_db,
            db_address: if want.external_db {
                external_db_address(&want.address)?
            } else {
                String::new()
            },
            units,
            pg_bin: pg_bin(),
            pg_uid,
            pg_gid,
            light: want.light,
        };
        crate::state::write_json(&layout.spec_file(), &spec)?;
        Units::default().save(&layout)?;
        let host = SimHost { layout, spec };
        host.write_root(want)?;
        host.write_secrets()?;
        host.write_wrappers()?;
        host.write_volumes()?;
        if !want.light {
            host.init_database(want).await?;
        }
        Ok(host)
    }

    /// Opens a host built earlier.
    pub fn open(dir: &Path) -> anyhow::Result<SimHost> {
        let layout = Layout::new(dir);
        let spec =
            Spec::load(&layout).with_context(|| format!("simulated host at {}", dir.display()))?;
        Ok(SimHost { layout, spec })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Runs the host's `systemctl` stand-in, as the agent would.
    pub fn systemctl(&self, args: &[&str]) -> Output {
        run_wrapper(&self.layout.bin().join("systemctl"), args)
    }

    /// Runs the host's `podman` stand-in, as the agent would.
    pub fn podman(&self, args: &[&str]) -> Output {
        run_wrapper(&self.layout.bin().join("podman"), args)
    }

    /// Starts the control plane (`systemctl start flightctl.target`), and the external database if any.
    pub fn start(&self) -> anyhow::Result<()> {
        if self.spec.external_db {
            services::start_database(&self.layout, &self.spec, &Units::default())
                .map_err(anyhow::Error::msg)?;
        }
        let out = self.systemctl(&["start", "flightctl.target"]);
        if !out.status.success() {
            bail!(
                "{}: starting flightctl.target: {}",
                self.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Stops every process of the host (units and external database).
    pub fn stop(&self) {
        let _ = self.systemctl(&["stop", "flightctl.target"]);
        if self.spec.external_db {
            let _ = services::stop_database(&self.layout, &self.spec);
        }
    }

    /// ActiveState of a unit, read through the stand-in.
    pub fn unit_state(&self, unit: &str) -> String {
        let out = self.systemctl(&["show", "-p", "ActiveState", "--value", unit]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Every systemctl/podman call made on this host so far.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.layout.calls_log())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Makes every later `tool` call whose arguments contain `needle` fail with `message`.
    pub fn inject_fault(&self, tool: &str, needle: &str, message: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.layout.faults())
            .expect("faults file");
        let _ = writeln!(f, "{tool}|{needle}|{message}");
    }

    pub fn clear_faults(&self) {
        let _ = std::fs::remove_file(self.layout.faults());
    }

    pub fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.layout.calls_log());
    }

    pub fn secret(&self, name: &str) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.layout.secrets().join(name))?)
    }

    /// A superuser connection to the `flightctl` database "inside the container" (its socket).
    pub async fn db(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.db_named("flightctl").await
    }

    pub async fn db_named(&self, name: &str) -> anyhow::Result<tokio_postgres::Client> {
        let units = Units::load(&self.layout)?;
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(self.layout.pg_socket_dir())
            .port(services::db_port(&units, &self.spec))
            .user("postgres")
            .dbname(name)
            .connect(tokio_postgres::NoTls)
            .await
            .with_context(|| format!("{}: connecting to the database socket", self.name()))?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// An authenticated connection to the KV "inside the container" (its socket).
    pub async fn kv(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let password = self.secret("flightctl-kv-password")?;
        // Secrets are alphanumerics and dashes, safe in a URL.
        let url = format!(
            "redis+unix://{}?pass={}",
            self.layout.kv_socket().display(),
            password.trim()
        );
        let client = redis::Client::open(url)?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    fn write_root(&self, want: &SimHostSpec) -> anyhow::Result<()> {
        let l = &self.layout;
        write(&l.host_path("/etc/os-release"), OS_RELEASE, 0o644)?;
        write(
            &l.host_path("/etc/hostname"),
            &format!("{}\n", want.name),
            0o644,
        )?;
        let db = if want.external_db {
            format!(
                "db:\n  type: external\n  name: flightctl\n  external:\n    hostname: {}\n    port: 5432\n    name: flightctl\n    sslmode: verify-full\n    useClientCertAuth: false\n",
                self.spec.db_address
            )
        } else {
            "db:\n  type: builtin\n  name: flightctl\n".to_string()
        };
        let mut config = format!(
            "global:\n  baseDomain: {name}.example.com\n  generateCertificates: builtin\n  auth:\n    type: none\n    insecureSkipTlsVerify: false\n{db}service:\n  rateLimit:\n    enabled: false\n",
            name = want.name
        );
        if let Some((id, key)) = crate::encryption::new_key(want) {
            let dir = l.host_path("/etc/flightctl/encryption");
            write(&dir.join(format!("{id}.key")), &key, 0o600)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            config.push_str(&format!(
                "encryption:\n  activeKeyID: {id}\n  keys:\n    - id: {id}\n      path: /root/.flightctl/encryption/{id}.key\n"
            ));
        }
        write(
            &l.host_path("/etc/flightctl/service-config.yaml"),
            &config,
            0o644,
        )?;
        self.write_pki(want)?;
        for unit in &self.spec.units {
            let base = unit.trim_end_matches(".service");
            let quadlet = format!(
                "[Unit]\nDescription={base}\nPartOf=flightctl.target\n\n[Container]\nContainerName={base}\nImage=quay.io/flightctl/{base}:{version}\nNetwork=flightctl.network\n\n[Service]\nRestart=always\n\n[Install]\nWantedBy=flightctl.target\n",
                version = want.version
            );
            write(&l.quadlet(unit), &quadlet, 0o644)?;
        }
        Ok(())
    }

    /// Flight Control's own PKI under /etc/flightctl/pki (not ferry's).
    fn write_pki(&self, want: &SimHostSpec) -> anyhow::Result<()> {
        let pki = self.layout.host_path("/etc/flightctl/pki");
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "flightctl-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        write(&pki.join("ca.crt"), &ca_cert.pem(), 0o644)?;
        write(&pki.join("ca.key"), &ca_key.serialize_pem(), 0o600)?;
        write(&pki.join("ca-bundle.crt"), &ca_cert.pem(), 0o644)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |cn: &str, sans: Vec<String>, ca: bool| -> anyhow::Result<(String, String)> {
            let mut p = CertificateParams::new(sans)?;
            p.distinguished_name.push(DnType::CommonName, cn);
            if ca {
                p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                p.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
            }
            let key = KeyPair::generate()?;
            let cert = p.signed_by(&key, &issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let sans = vec![
            want.address.clone(),
            "localhost".into(),
            format!("api.{}.example.com", want.name),
        ];
        let files: [(&str, &str, Vec<String>, bool); 5] = [
            ("flightctl-api", "server", sans, false),
            ("flightctl-api", "client-signer", vec![], true),
            ("flightctl-pam-issuer", "token-signer", vec![], true),
            (
                "flightctl-ui",
                "server",
                vec![format!("ui.{}.example.com", want.name)],
                false,
            ),
            (
                "flightctl-alertmanager-proxy",
                "server",
                vec![format!("am.{}.example.com", want.name)],
                false,
            ),
        ];
        for (dir, stem, sans, ca) in files {
            let (cert, key) = leaf(&format!("{dir}-{stem}"), sans, ca)?;
            write(&pki.join(dir).join(format!("{stem}.crt")), &cert, 0o644)?;
            write(&pki.join(dir).join(format!("{stem}.key")), &key, 0o600)?;
        }
        if want.external_db {
            self.write_external_db_tls(&pki)?;
        }
        chmod_dirs(&pki, 0o700)
    }

    /// The external database's own CA: its certificate goes to /etc/flightctl/pki/db/ca.crt (as
    /// upstream documents), the server's certificate and key to the database.
    fn write_external_db_tls(&self, pki: &Path) -> anyhow::Result<()> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "external-db-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        write(&pki.join("db/ca.crt"), &ca_cert.pem(), 0o644)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params = CertificateParams::new(vec![self.spec.db_address.clone()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "external-db");
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let tls = self.layout.pg_tls_dir();
        write(&tls.join("server.crt"), &cert.pem(), 0o644)?;
        write(&tls.join("server.key"), &key.serialize_pem(), 0o600)?;
        for path in [tls.clone(), tls.join("server.crt"), tls.join("server.key")] {
            rustix::fs::chown(
                &path,
                Some(uid(self.spec.pg_uid)),
                Some(gid(self.spec.pg_gid)),
            )
            .ok();
        }
        Ok(())
    }

    fn write_secrets(&self) -> anyhow::Result<()> {
        for name in SECRETS {
            write(
                &self.layout.secrets().join(name),
                &random_password()?,
                0o600,
            )?;
        }
        Ok(())
    }

    fn write_wrappers(&self) -> anyhow::Result<()> {
        let simfleet = crate::bins::path("simfleet");
        for tool in ["systemctl", "podman"] {
            let script = format!(
                "#!/bin/sh\n# {tool} stand-in for simulated host {name}\nexec '{simfleet}' {tool} --host '{dir}' \"$@\"\n",
                name = self.spec.name,
                simfleet = simfleet.display(),
                dir = self.layout.dir.display(),
            );
            write(&self.layout.bin().join(tool), &script, 0o755)?;
        }
        Ok(())
    }

    fn write_volumes(&self) -> anyhow::Result<()> {
        let pam = self.layout.volumes().join("flightctl-pam-issuer-etc");
        write(
            &pam.join("userdb/passwd"),
            "admin:x:1000:1000::/home/admin:/sbin/nologin\n",
            0o644,
        )?;
        write(
            &pam.join("userdb/shadow"),
            "admin:$6$saltsalt$hashhashhash:19000::::::\n",
            0o600,
        )?;
        Ok(())
    }

    async fn init_database(&self, want: &SimHostSpec) -> anyhow::Result<()> {
        let l = &self.layout;
        for d in [
            l.pg_data().parent().map(PathBuf::from).unwrap_or_default(),
            l.pg_socket_dir(),
            l.logs(),
        ] {
            std::fs::create_dir_all(&d)?;
            rustix::fs::chown(&d, Some(uid(self.spec.pg_uid)), Some(gid(self.spec.pg_gid))).ok();
        }
        std::fs::set_permissions(l.logs(), std::fs::Permissions::from_mode(0o777))?;
        let mut initdb = Command::new(Path::new(&self.spec.pg_bin).join("initdb"));
        initdb.arg("-D").arg(l.pg_data()).args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        services::as_pg_user(&mut initdb, &self.spec);
        let out = initdb.output().context("running initdb")?;
        if !out.status.success() {
            bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
        }
        if self.spec.external_db {
            // A server elsewhere: TLS connections only, plus the admin's local socket.
            std::fs::write(
                l.pg_data().join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.0/8 scram-sha-256\n",
            )?;
        }
        // Passwords come from the podman secrets, as db-users-init does on a real host.
        let app = self.secret("flightctl-postgresql-user-password")?;
        let admin = self.secret("flightctl-postgresql-master-password")?;
        let migrator = self.secret("flightctl-postgresql-migrator-password")?;
        let units = Units::default();
        services::start_database(l, &self.spec, &units).map_err(anyhow::Error::msg)?;
        let result = async {
            let postgres = self.db_named("postgres").await?;
            let roles = crate::pg::ROLES
                .replace("{app}", app.trim())
                .replace("{admin}", admin.trim())
                .replace("{migrator}", migrator.trim());
            // One statement at a time: CREATE DATABASE cannot run inside a transaction block.
            for statement in roles.split(";\n").filter(|s| !s.trim().is_empty()) {
                postgres.batch_execute(statement).await?;
            }
            let db = self.db().await?;
            db.batch_execute(crate::pg::SCHEMA).await?;
            db.batch_execute(&crate::pg::seed_sql(want.devices, want.payload_bytes))
                .await?;
            if let Some(sql) = crate::encryption::seed_sql(&self.layout)? {
                db.batch_execute(&sql).await?;
            }
            anyhow::Ok(())
        }
        .await;
        services::stop_database(l, &self.spec).map_err(anyhow::Error::msg)?;
        result.with_context(|| format!("{}: creating the Flight Control database", want.name))
    }
}

const OS_RELEASE: &str = "NAME=\"Red Hat Enterprise Linux\"\nVERSION=\"9.4 (Plow)\"\nID=\"rhel\"\nID_LIKE=\"fedora\"\nVERSION_ID=\"9.4\"\nPLATFORM_ID=\"platform:el9\"\nPRETTY_NAME=\"Red Hat Enterprise Linux 9.4 (Plow)\"\n";

fn run_wrapper(path: &Path, args: &[&str]) -> Output {
    Command::new(path)
        .args(args)
        .output()
        .unwrap_or_else(|e| Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
            stdout: Vec::new(),
            stderr: e.to_string().into_bytes(),
        })
}

/// Writes a file with `mode`, creating parent directories.
pub fn write(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, contents).with_context(|| path.display().to_string())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn chmod_dirs(dir: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            chmod_dirs(&path, mode)?;
        }
    }
    Ok(())
}

/// `xxxxx-xxxxx-xxxxx-xxxxx`, as upstream's secrets.sh makes them.
fn random_password() -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut bytes = [0u8; 20];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    Ok(chars
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-"))
}

/// An external database's address: the host's own, plus 100 in the last octet.
fn external_db_address(address: &str) -> anyhow::Result<String> {
    let ip: std::net::Ipv4Addr = address
        .parse()
        .with_context(|| format!("{address} is not an IPv4 address"))?;
    let [a, b, c, d] = ip.octets();
    match d.checked_add(100).filter(|d| *d < 255) {
        Some(d) => Ok(format!("{a}.{b}.{c}.{d}")),
        None => bail!("no room for an external database next to {address}"),
    }
}

fn pg_bin() -> String {
    ferry::catalog::embedded::pg_bin().display().to_string()
}

fn uid(raw: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(raw)
}
fn gid(raw: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(raw)
}
