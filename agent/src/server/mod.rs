//! The gRPC server: mTLS accept loop and the `ferry.v1.Agent` service.

mod service;
mod wire;

use std::time::Instant;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::AgentConfig;
use crate::host::Host;
use crate::operation::OperationSlot;

pub use service::AgentService;

/// Why the agent could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS setup: {0}")]
    Tls(#[from] ferry_certs::CertError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("staging directory {path}: {source}")]
    Staging {
        path: String,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Builds the service for `config`.
pub fn service(config: &AgentConfig) -> AgentService {
    let host = Host::new(
        config.root.clone(),
        config.systemctl.clone(),
        config.podman.clone(),
    );
    let host_name = config.host_name.clone().unwrap_or_else(|| {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    });
    let operations = OperationSlot::default();
    let restores = crate::tasks::restore::Restores::new(
        crate::tasks::restore::RestoreContext {
            host: host.clone(),
            host_name: host_name.clone(),
            staging_dir: config.staging_dir.clone(),
            local_address: config.local_address.clone(),
            api: config.api(),
            keep_free: config.keep_free_bytes,
        },
        operations.clone(),
    );
    let (host_for_ports, operations_for_ports) = (host.clone(), operations.clone());
    let identity = ferry_certs::inspect_pem(&config.tls.cert)
        .map(|c| c.common_name)
        .unwrap_or_else(|_| host_name.clone());
    AgentService {
        host,
        host_name,
        identity,
        api: config.api(),
        staging_dir: config.staging_dir.clone(),
        operations,
        started: Instant::now(),
        restores,
        keep_free: config.keep_free_bytes,
        ports: crate::tasks::ports::Ports::new(
            host_for_ports,
            config.local_address.clone(),
            &config.staging_dir,
            operations_for_ports,
        ),
    }
}

/// Serves until `shutdown` resolves. Connections whose certificate is refused never reach the service.
pub async fn serve(
    config: &AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    create_staging_dir(&config.staging_dir)?;
    let acceptor = TlsAcceptor::from(ferry_certs::tls::server_config(&config.tls_files())?);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let service = service(config);
    // Before accepting (callers wait in the backlog): a new drill's scratch database is never taken
    // for a stale one, and a publication the previous agent left is down before anyone can ask.
    let started = Instant::now();
    if tokio::time::timeout(
        std::time::Duration::from_secs(15),
        crate::tasks::drill::drop_scratch_databases(&service.host),
    )
    .await
    .is_err()
    {
        tracing::warn!(
            "start-up: looking for drills' scratch databases took over 15 s; left for the next start"
        );
    }
    service.ports.recover().await;
    tracing::info!(listen = %config.listen, startup_ms = started.elapsed().as_millis() as u64, "ferry-agent serving over mTLS");
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let accept = tokio::spawn(accept_loop(listener, acceptor, tx));
    let restores = service.restores.clone();
    let ports = service.ports.clone();
    let watchdog = tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            restores.watch().await;
            ports.watch().await;
        }
    });
    // Large HTTP/2 windows: archives stream in both directions. With 8 MiB windows and 1 MiB frames,
    // gRPC over mTLS on loopback moved 1.5–1.9 GB/s, against 1.0–1.3 GB/s with tonic's defaults.
    let result = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .max_frame_size(Some(1 << 20))
        .add_service(ferry_proto::v1::agent_server::AgentServer::new(service))
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown)
        .await;
    accept.abort();
    watchdog.abort();
    tracing::info!("ferry-agent stopped");
    Ok(result?)
}

type TlsConn = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: tokio::sync::mpsc::Sender<Result<TlsConn, std::io::Error>>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        // Each handshake on its own task, so one slow peer cannot hold up the others.
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp).into_fallible(),
            )
            .await;
            match handshake {
                Ok(Ok(tls)) => {
                    let _ = tx.send(Ok(tls)).await;
                }
                Ok(Err((e, tcp))) => {
                    tracing::warn!(%peer, error = %e, "refused TLS connection");
                    linger(tcp).await;
                }
                Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// After refusing a client, reads what it already sent before closing. Closing a socket with unread
/// data resets the connection, and a reset can destroy the TLS alert that tells the client why.
async fn linger(mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
}

/// Creates the staging directory and removes what an agent that died mid-operation left in it: at
/// start no operation is running, so everything there is stale scratch.
fn create_staging_dir(path: &std::path::Path) -> Result<(), ServeError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| ServeError::Staging {
        path: path.display().to_string(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(err)?;
    for entry in std::fs::read_dir(path).map_err(err)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // A restore directory without a journal never got past staging: nothing changed.
        let unstaged = name.starts_with("restore-") && !entry.path().join("journal.json").is_file();
        if name.starts_with("backup-") || name.starts_with("drill-") || unstaged {
            tracing::warn!(dir = %entry.path().display(), "removing scratch left by an interrupted operation");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}
