//! `simfleet up --hosts N --dir DIR` / `simfleet down --dir DIR`, and the stand-ins the simulated hosts'
//! `systemctl` and `podman` wrappers call.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use simhost::layout::Layout;
use simhost::{SimFleet, SimFleetOptions};

#[derive(Parser)]
#[command(
    name = "simfleet",
    about = "Simulated Flight Control control planes for ferry's tests and demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build and start N simulated hosts with their agents; writes DIR/inventory.ini and DIR/ferry.yaml.
    Up {
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        #[arg(long)]
        dir: PathBuf,
        /// 1-based numbers of hosts that use an external database.
        #[arg(long = "external-db", value_delimiter = ',')]
        external_db: Vec<usize>,
        /// Flight Control version the hosts run.
        #[arg(long, default_value = "v1.2.0")]
        version: String,
        /// Devices seeded per host.
        #[arg(long, default_value_t = 60)]
        devices: usize,
        /// Extra rendered-config bytes per device (grows the database).
        #[arg(long, default_value_t = 0)]
        payload_bytes: usize,
        /// Light hosts (lt001, …) besides the full ones: agents whose units are states only, without
        /// PostgreSQL, Redis or API, so one machine holds hundreds. They answer ping and facts and
        /// refuse backups.
        #[arg(long, default_value_t = 0)]
        light: usize,
    },
    /// Stop everything `up` started (agents restarted by hand included).
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Kill one host's agent as a crash would (SIGKILL), start it, or both, keeping agent.pid true.
    Agent {
        #[arg(long)]
        dir: PathBuf,
        host: String,
        #[arg(value_parser = ["kill", "start", "restart"])]
        action: String,
    },
    /// Benchmarks against the baselines ferry must beat, in one run.
    #[command(subcommand)]
    Bench(Bench),
    /// The `systemctl` stand-in (called by a host's wrapper script).
    #[command(hide = true, trailing_var_arg = true, allow_hyphen_values = true)]
    Systemctl {
        #[arg(long)]
        host: PathBuf,
        args: Vec<String>,
    },
    /// The `podman` stand-in (called by a host's wrapper script).
    #[command(hide = true, trailing_var_arg = true, allow_hyphen_values = true)]
    Podman {
        #[arg(long)]
        host: PathBuf,
        args: Vec<String>,
    },
    /// A webhook receiver for alert tests: appends each POSTed JSON body as a line to OUT.
    Webhook {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long)]
        out: PathBuf,
        /// Write the bound port here once listening.
        #[arg(long)]
        port_file: Option<PathBuf>,
        /// Answer the first N requests with 503.
        #[arg(long, default_value_t = 0)]
        fail_first: u64,
    },
    /// The stand-in Flight Control API (the flightctl-api unit's process).
    #[command(hide = true)]
    Api {
        #[arg(long)]
        host: PathBuf,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// psql -f dump.sql into an empty database, and ferry restore end to end (with its downtime).
    Restore {
        /// Database size to seed, in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mb: usize,
        #[arg(long, default_value = "/tmp/ferry-bench")]
        dir: PathBuf,
    },
    /// ping and facts against 100 and 300 light agents (forks 50), and backup of 20 full hosts
    /// with forks 1 and 10: wall time, controller peak RSS, open descriptors, CPU time.
    Fleet {
        #[arg(long, default_value = "/tmp/ferry-bench-fleet")]
        dir: PathBuf,
    },
    /// ferry backup of a small and a large host into the directory store, an S3 bucket and an
    /// encrypted bucket: time, throughput, controller peak RSS.
    Store {
        #[arg(long, default_value_t = 16)]
        small_mb: usize,
        #[arg(long, default_value_t = 512)]
        size_mb: usize,
        #[arg(long, default_value = "/tmp/ferry-bench-store")]
        dir: PathBuf,
    },
    /// pg_dump -f /dev/null, the upstream dump-then-gzip pipeline, and ferry backup.
    Backup {
        /// Database size to seed, in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mb: usize,
        #[arg(long, default_value = "/tmp/ferry-bench")]
        dir: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Systemctl { host, args } => reply(simhost::standins::systemctl::run(
            &Layout::new(&host),
            &args,
        )),
        Cmd::Podman { host, args } => {
            reply(simhost::standins::podman::run(&Layout::new(&host), &args))
        }
        Cmd::Api { host } => runtime(simhost::standins::api::serve(Layout::new(&host))),
        Cmd::Webhook {
            listen,
            out,
            port_file,
            fail_first,
        } => runtime(async move {
            Ok(simhost::webhook::serve(&listen, out, port_file, fail_first).await?)
        }),
        Cmd::Bench(Bench::Backup { size_mb, dir }) => {
            let _ = std::fs::remove_dir_all(&dir);
            runtime(simhost::bench::backup(&dir, size_mb))
        }
        Cmd::Bench(Bench::Store {
            small_mb,
            size_mb,
            dir,
        }) => {
            let _ = std::fs::remove_dir_all(&dir);
            runtime(simhost::bench::store(&dir, small_mb, size_mb))
        }
        Cmd::Bench(Bench::Fleet { dir }) => {
            let _ = std::fs::remove_dir_all(&dir);
            runtime(simhost::bench_fleet::fleet(&dir))
        }
        Cmd::Bench(Bench::Restore { size_mb, dir }) => {
            let _ = std::fs::remove_dir_all(&dir);
            runtime(simhost::bench::restore(&dir, size_mb))
        }
        Cmd::Up {
            hosts,
            dir,
            external_db,
            version,
            devices,
            payload_bytes,
            light,
        } => {
            let options = SimFleetOptions {
                light,
                hosts,
                external_db: external_db
                    .into_iter()
                    .filter(|n| *n >= 1)
                    .map(|n| n - 1)
                    .collect(),
                version,
                devices,
                payload_bytes,
            };
            runtime(async move {
                let fleet = SimFleet::up(&dir, &options).await?;
                for host in &fleet.hosts {
                    println!(
                        "{}  {}  (agent {}:{})",
                        host.name(),
                        host.layout.dir.display(),
                        host.spec.address,
                        simhost::fleet::AGENT_PORT
                    );
                }
                println!("inventory: {}", fleet.inventory_path().display());
                println!("config:    {}", fleet.config_path().display());
                Ok(())
            })
        }
        Cmd::Agent { dir, host, action } => match SimFleet::open(&dir) {
            Ok(fleet) => match fleet.hosts.iter().find(|h| h.name() == host) {
                Some(h) => {
                    if action != "start" {
                        simhost::fleet::kill_agent(h);
                    }
                    let started = if action == "kill" {
                        Ok(())
                    } else {
                        simhost::fleet::start_agent(h)
                    };
                    match started {
                        Ok(()) => 0,
                        Err(e) => {
                            eprintln!("simfleet agent {host} {action}: {e:#}");
                            1
                        }
                    }
                }
                None => {
                    eprintln!("simfleet agent: no host {host:?} in {}", dir.display());
                    1
                }
            },
            Err(e) => {
                eprintln!("simfleet agent: {e:#}");
                1
            }
        },
        Cmd::Down { dir } => match SimFleet::open(&dir) {
            Ok(fleet) => {
                fleet.down();
                0
            }
            Err(e) => {
                eprintln!("simfleet down: {e:#}");
                1
            }
        },
    };
    std::process::exit(code);
}

fn reply(r: simhost::standins::Reply) -> i32 {
    let _ = std::io::stdout().write_all(r.stdout.as_bytes());
    let _ = std::io::stderr().write_all(r.stderr.as_bytes());
    r.code
}

fn runtime(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> i32 {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("simfleet: {e}");
            return 1;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("simfleet: {e:#}");
            1
        }
    }
}
