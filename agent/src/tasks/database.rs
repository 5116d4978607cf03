//! Reaching the Flight Control database as the application user, as upstream's restore does: the
//! built-in database over the port a restore publishes on the host's own loopback address; an external
//! one at `db.external.*` of service-config.yaml, over TLS when its `sslmode` asks, with the password
//! of the podman secret `flightctl-postgresql-user-password` (docs/upstream-contract.md §4.10, §5.10).

use std::time::Duration;

use ferry_certs::tls::ServerCheck;
use serde::{Deserialize, Serialize};

use crate::host::Host;
use crate::tasks::facts::{Database, DatabaseKind};

/// The application user upstream's services and restore connect as.
pub const APP_USER: &str = "flightctl_app";
const APP_PASSWORD_SECRET: &str = "flightctl-postgresql-user-password";
/// Where upstream keeps the external database's TLS material.
const DB_CA: &str = "/etc/flightctl/pki/db/ca.crt";
const DB_CLIENT_CERT: &str = "/etc/flightctl/pki/db/client.crt";
const DB_CLIENT_KEY: &str = "/etc/flightctl/pki/db/client.key";

/// The operator's overrides of the external database's address (`--db-host/--db-port/--db-name`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub name: Option<String>,
}

impl Override {
    pub fn is_empty(&self) -> bool {
        self.host.is_none() && self.port.is_none() && self.name.is_none()
    }
}

/// How the connection is protected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    /// Plain TCP: the built-in database on the host's loopback, or `sslmode: disable`.
    Plain,
    /// TLS against the CA in /etc/flightctl/pki/db; `name` also checks the host name (verify-full).
    Tls { name: bool, client_cert: bool },
}

/// Where and how to reach the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub transport: Transport,
}

impl Endpoint {
    /// The built-in database, published on the host's loopback address during a restore.
    pub fn published(local_address: &str, dbname: &str) -> Endpoint {
        Endpoint {
            host: local_address.into(),
            port: 5432,
            dbname: dbname.into(),
            transport: Transport::Plain,
        }
    }

    /// The external database the host's service-config.yaml names, with the operator's overrides.
    pub fn external(host: &Host, db: &Database, over: &Override) -> Result<Endpoint, String> {
        if db.kind != DatabaseKind::External && over.host.is_none() {
            return Err("service-config.yaml does not set db.type: external".into());
        }
        let address = over
            .host
            .clone()
            .unwrap_or_else(|| db.external_host.clone());
        if address.is_empty() {
            return Err("service-config.yaml has no db.external.hostname; pass --db-host".into());
        }
        let ca_present = host.path(DB_CA).is_file();
        let sslmode = db.sslmode.as_str();
        let transport = match sslmode {
            "disable" => Transport::Plain,
            // libpq would try TLS without checking it; ferry checks it whenever the CA is there.
            "" | "allow" | "prefer" if !ca_present => Transport::Plain,
            "" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full" => {
                if !ca_present {
                    return Err(format!(
                        "db.external.sslmode is {sslmode} but {DB_CA} is missing: ferry verifies the database server's certificate; put its CA there"
                    ));
                }
                Transport::Tls {
                    name: sslmode == "verify-full",
                    client_cert: db.client_cert_auth,
                }
            }
            other => {
                return Err(format!(
                    "db.external.sslmode {other:?} is not a libpq sslmode"
                ));
            }
        };
        Ok(Endpoint {
            host: address,
            port: over.port.unwrap_or(match db.external_port {
                0 => 5432,
                p => p,
            }),
            dbname: over
                .name
                .clone()
                .unwrap_or_else(|| db.external_name.clone()),
            transport,
        })
    }

    /// `host:port/db (TLS verify-full)`, for messages.
    pub fn describe(&self) -> String {
        let tls = match &self.transport {
            Transport::Plain => "no TLS",
            Transport::Tls { name: true, .. } => "TLS verify-full",
            Transport::Tls { name: false, .. } => "TLS verify-ca",
        };
        format!("{}:{}/{} ({tls})", self.host, self.port, self.dbname)
    }

    /// Connects as the application user.
    pub async fn connect(&self, host: &Host) -> Result<tokio_postgres::Client, String> {
        let password = host
            .podman()
            .secret(APP_PASSWORD_SECRET)
            .await
            .map_err(|e| e.to_string())?;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(APP_USER)
            .password(password.expose())
            .dbname(&self.dbname)
            .connect_timeout(Duration::from_secs(10));
        let failed = |e: tokio_postgres::Error| {
            format!(
                "connecting to {} as {APP_USER}: {}",
                self.describe(),
                error_text(&e)
            )
        };
        match &self.transport {
            Transport::Plain => {
                let (client, conn) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(failed)?;
                tokio::spawn(conn);
                Ok(client)
            }
            Transport::Tls { name, client_cert } => {
                let (cert, key) = (host.path(DB_CLIENT_CERT), host.path(DB_CLIENT_KEY));
                let tls = ferry_certs::tls::database_client_config(
                    &host.path(DB_CA),
                    client_cert.then_some((cert.as_path(), key.as_path())),
                    if *name {
                        ServerCheck::ChainAndName
                    } else {
                        ServerCheck::Chain
                    },
                )
                .map_err(|e| format!("TLS for {}: {e}", self.describe()))?;
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let (client, conn) = config
                    .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                    .await
                    .map_err(failed)?;
                tokio::spawn(conn);
                Ok(client)
            }
        }
    }
}

/// A PostgreSQL error with its cause: the server's message, or the I/O or TLS error beneath.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
