//! Command-line definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::report::Format;

/// ferry: backs up and restores Flight Control control planes across a fleet.
#[derive(Parser, Debug)]
#[command(name = "ferry", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct GlobalArgs {
    /// Controller configuration.
    #[arg(long, global = true, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// The catalog: `postgres://…` (or `host=… dbname=…`) of a shared PostgreSQL, instead of
    /// `catalog:` in the config; several `ferry serve` replicas share work through one.
    #[arg(long, global = true, env = "FERRY_CATALOG")]
    pub catalog: Option<String>,
    /// Inventory source: an Ansible INI or YAML file, or a directory of them, with its group_vars/
    /// and host_vars/. Repeat for several; default: `inventory:` in the config.
    #[arg(short = 'i', long, global = true, env = "FERRY_INVENTORY")]
    pub inventory: Vec<PathBuf>,
    /// Rolling batches, as Ansible's serial: N hosts, P% of them, or a list (1,5,20%) whose last
    /// size repeats. Each batch ends before the next begins.
    #[arg(long, global = true, value_name = "N|P%|LIST")]
    pub serial: Option<crate::fanout::Serial>,
    /// Stop before the next batch when more than P% of a batch failed (0: any failure stops).
    /// Without it, only a batch where every host failed stops the play.
    #[arg(long, global = true, value_name = "P", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_fail_percentage: Option<u8>,
    /// Print the hosts the pattern selects and contact none.
    #[arg(long, global = true)]
    pub list_hosts: bool,
    /// How many hosts to work on at once.
    #[arg(short = 'f', long, global = true, value_parser = clap::value_parser!(u64).range(1..10000))]
    pub forks: Option<u64>,
    /// Seconds each host may take.
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// Further limit the selected hosts with another pattern.
    #[arg(short = 'l', long, global = true)]
    pub limit: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "text")]
    pub output: Format,
    /// Log format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check that each selected agent answers over mTLS.
    Ping { pattern: String },
    /// Gather facts from each selected host.
    Facts { pattern: String },
    /// Back up every selected host into the store and record each archive in the catalog.
    Backup {
        pattern: String,
        /// gzip is what upstream's flightctl-restore reads; zstd is faster, for archives only ferry reads.
        #[arg(long, value_enum, default_value = "gzip")]
        compression: Compression,
    },
    /// Restore one host from an archive: the documented runbook, step by step, refusing anything
    /// unsafe before the host is touched.
    Restore {
        host: String,
        #[command(flatten)]
        args: RestoreArgs,
    },
    /// Device preparation alone, on the host's current database (after a DBA-led restore); on an
    /// external database, at the address the host's service-config.yaml names.
    PrepareDevices {
        host: String,
        #[command(flatten)]
        args: PrepareDevicesArgs,
    },
    /// Return a host with an unfinished restore to exactly its pre-restore state.
    Rollback { host: String },
    /// Publish a host's database and KV on its loopback address for a person (the DBA-led
    /// paths), under a lease this command keeps alive.
    #[command(subcommand)]
    Ports(PortsCommand),
    /// Prove that each selected host's archive restores, without touching its live control plane:
    /// loaded into a scratch database inside the DB container, prepared, counted against the
    /// manifest, its PKI, config and keys parsed, then dropped.
    Drill {
        pattern: String,
        #[command(flatten)]
        args: DrillArgs,
    },
    /// Who did what to which host, when, from which archive, with what outcome.
    History(HistoryArgs),
    /// The audit ledger's hash chain.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// List, inspect, verify and export archives.
    #[command(subcommand)]
    Archives(ArchivesCommand),
    /// Maintain the catalog.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// The encryption keys of archives at rest.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage the fleet PKI.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// The inventory as ferry reads it, printed as `ansible-inventory` prints it; contacts nothing.
    Inventory(InventoryArgs),
    /// Each scheduled host against its RPO: last good backup, age, state, next run, last failure.
    /// Exits 2 when a selected host is breached.
    Status { pattern: Option<String> },
    /// Run the schedules of the config: backups, retention, RPO watch, metrics and alerts.
    Serve(ServeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// This replica's name among those sharing the catalog (default: the host name, so a restarted replica keeps its name and metric series).
    #[arg(long)]
    pub replica: Option<String>,
    /// On SIGTERM, seconds to let running backups finish before recording them interrupted.
    #[arg(long, default_value_t = 60)]
    pub grace: u64,
}

#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct InventoryArgs {
    /// Every group and host, with each host's effective vars, as JSON.
    #[arg(long)]
    pub list: bool,
    /// The group tree from GROUP (default all).
    #[arg(long, value_name = "GROUP", num_args = 0..=1, default_missing_value = "all")]
    pub graph: Option<String>,
    /// One host's effective vars, as JSON.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
}

impl Command {
    /// The command's name, for JSON documents.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ping { .. } => "ping",
            Command::Facts { .. } => "facts",
            Command::Backup { .. } => "backup",
            Command::Restore { .. } => "restore",
            Command::PrepareDevices { .. } => "prepare-devices",
            Command::Rollback { .. } => "rollback",
            Command::Drill { .. } => "drill",
            Command::Ports(_) => "ports",
            Command::History(_) => "history",
            Command::Audit(_) => "audit",
            Command::Archives(_) => "archives",
            Command::Catalog(_) => "catalog",
            Command::Keys(_) => "keys",
            Command::Certs(_) => "certs",
            Command::Inventory(_) => "inventory",
            Command::Status { .. } => "status",
            Command::Serve(_) => "serve",
        }
    }
}

#[derive(Subcommand, Debug, Clone)]
pub enum PortsCommand {
    /// Publish flightctl-db (5432) and flightctl-kv (6379) on HOST's loopback address while this
    /// command runs, at most --for. Ctrl-C, the time running out, or this command dying ends it:
    /// the agent removes the drop-ins and restarts both data services.
    Publish {
        host: String,
        /// How long at most: 90s, 15m, 2h (at most 12h).
        #[arg(long = "for", value_name = "DURATION", default_value = "15m")]
        duration: String,
    },
    /// End HOST's publication now (from any terminal).
    Unpublish { host: String },
}

#[derive(Args, Debug, Clone, Default)]
pub struct DrillArgs {
    /// Archive id from `ferry archives list`, or `latest` (the default: each host's newest).
    #[arg(long, value_name = "ID|latest")]
    pub archive: Option<String>,
    /// Run every drill on this sandbox host's DB container instead of on each host itself (one at
    /// a time); its live data is untouched too.
    #[arg(long, value_name = "HOST")]
    pub on: Option<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct RestoreArgs {
    /// Archive id from `ferry archives list` (a sha256 prefix), or `latest` (the default).
    #[arg(long)]
    pub archive: Option<String>,
    /// Restore another host's archive onto this one (disaster recovery onto a replacement host).
    #[arg(long)]
    pub from: Option<String>,
    /// Restore only these components (db, pki, config, encryption, volumes); the rest stays as it is.
    /// A restored database always gets device preparation.
    #[arg(long, value_delimiter = ',', value_parser = ["db", "pki", "config", "encryption", "volumes"])]
    pub only: Vec<String>,
    /// The documentation's database-only restore: the database and device preparation, nothing else.
    #[arg(long, conflicts_with = "only")]
    pub db_only: bool,
    /// Keep the previous database (renamed) after the restore commits.
    #[arg(long)]
    pub keep_old_db: bool,
    /// Run every preflight check and print the plan; change nothing.
    #[arg(long)]
    pub check: bool,
    /// How long the host may go without hearing from this controller, from staging to commit; when
    /// it lapses the agent makes the host safe on its own.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub lease_seconds: u32,
    /// Restore an archive whose .sha256 sidecar disagrees with it (or that `catalog rebuild` marked
    /// suspect), trusting the catalog's digest; recorded in the ledger.
    #[arg(long)]
    pub trust_archive_digest: bool,
    /// Continue the restore the host holds from its journal.
    #[arg(long, conflicts_with_all = ["archive", "from", "check", "only", "db_only", "keep_old_db"])]
    pub resume: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PrepareDevicesArgs {
    /// The external database's host, instead of db.external.hostname in service-config.yaml.
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub db_host: Option<String>,
    /// The external database's port, instead of db.external.port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub db_port: Option<u16>,
    /// The external database's name, instead of db.external.name.
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub db_name: Option<String>,
    /// How long the host may go without hearing from this controller, from staging to commit.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub lease_seconds: u32,
}

pub use crate::types::Compression;

#[derive(Subcommand, Debug)]
pub enum ArchivesCommand {
    /// Archives in the catalog, newest first; PATTERN is a host pattern over the inventory (hosts
    /// only the catalog knows count as ungrouped).
    List { pattern: Option<String> },
    /// One archive in full. ID is a prefix of its sha256 (4+ hex digits) or its catalog number.
    Show { id: String },
    /// Re-hash stored archives against the catalog and their .sha256 sidecars.
    Verify {
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// Accept an archive whose .sha256 sidecar disagrees, when it matches the catalog's digest
        /// (recorded in the ledger).
        #[arg(long)]
        trust_archive_digest: bool,
    },
    /// Copy an archive and its sidecar out of the store into DIR/HOST/ (digest checked while copying).
    /// An encrypted archive is exported as stored (with its key file) unless --decrypt is given.
    Export {
        id: String,
        dir: PathBuf,
        /// Write the upstream .tar.gz and a .sha256 `sha256sum -c` accepts (needs encryption.identity).
        #[arg(long)]
        decrypt: bool,
    },
    /// Copy archives to a second store (another bucket or a directory) for an off-site copy; each
    /// is checked against its digest on arrival and recorded in the catalog.
    Copy {
        /// An archive id; or --all.
        id: Option<String>,
        /// Every archive not yet in the destination.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// The destination: a directory or s3://bucket/prefix?endpoint=…
        #[arg(long)]
        to: String,
    },
    /// Apply the schedules' retention policies to the selected hosts' archives: show what goes and
    /// why, then delete it. Pins, min_keep, each host's newest verified archive and archives a
    /// running restore uses are never deleted.
    Prune {
        pattern: Option<String>,
        /// Show the decision for every archive; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Keep an archive whatever retention says.
    Pin { id: String },
    /// Let retention decide about an archive again.
    Unpin { id: String },
    /// Delete one archive from the store (its record and history stay).
    Delete {
        id: String,
        /// Delete it even when it is its host's newest verified archive.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HistoryArgs {
    #[command(subcommand)]
    pub command: Option<HistoryCommand>,
    /// A glob over target host names.
    pub pattern: Option<String>,
    /// Entries started at or after this date (YYYY-MM-DD) or RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    /// Only entries with this outcome.
    #[arg(long, value_parser = ["succeeded", "failed", "refused", "rolled back", "checked", "unreachable", "interrupted"])]
    pub outcome: Option<String>,
    /// Only operations of this kind.
    #[arg(long)]
    pub kind: Option<crate::types::OperationKind>,
}

#[derive(Subcommand, Debug)]
pub enum HistoryCommand {
    /// One operation with its task timeline.
    Show { id: i64 },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute the chain and report the first broken link.
    Verify,
    /// Write the ledger as JSON lines, with the chain hashes, for third-party verification.
    Export {
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Re-wrap every encrypted archive's key: add public keys, retire others. Archive bodies are not
    /// re-encrypted or re-uploaded. Uses encryption.identity to open the keys.
    Rotate {
        /// A public key (age1…) to add; repeatable.
        #[arg(long, required_unless_present = "retire")]
        add: Vec<String>,
        /// A public key (age1…) to retire: afterwards its private key opens no archive. Repeatable.
        #[arg(long)]
        retire: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CatalogCommand {
    /// Rebuild the archive catalog from the store alone.
    Rebuild,
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create the fleet CA in the state directory.
    Init {
        /// Validity of the CA in days.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(i64).range(1..=36500))]
        days: i64,
    },
    /// Issue an agent's server certificate (files to hand to the host).
    IssueAgent {
        name: String,
        /// DNS names or IP addresses the controller dials for this host (NAME is always included).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Output directory; default <state>/pki/agents/NAME.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 825, value_parser = clap::value_parser!(i64).range(1..=36500))]
        days: i64,
    },
    /// Issue an operator/controller client certificate.
    IssueOperator {
        name: String,
        /// Output directory; default <state>/pki/operators.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=36500))]
        days: i64,
    },
    /// Show a certificate's subject, SANs, role, validity and issuer.
    Show { file: PathBuf },
}
