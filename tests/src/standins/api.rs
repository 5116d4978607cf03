//! The stand-in Flight Control API (unit `flightctl-api`): HTTPS with the host's own PKI, answering
//! `/api/version`, `/healthz` and `/readyz`. It is ready only while it can reach the database, which it
//! does over the container network (the DB socket), not through a published port.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::layout::Layout;
use crate::state::{Spec, Units};

/// Serves until killed.
pub async fn serve(layout: Layout) -> anyhow::Result<()> {
    let spec = Spec::load(&layout)?;
    let pki = layout.host_path("/etc/flightctl/pki/flightctl-api");
    let tls = server_tls(&pki.join("server.crt"), &pki.join("server.key"))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener =
        tokio::net::TcpListener::bind((spec.address.as_str(), super::services::API_PORT)).await?;
    let layout = Arc::new(layout);
    loop {
        let (tcp, _) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let layout = Arc::clone(&layout);
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let layout = Arc::clone(&layout);
                async move { Ok::<_, Infallible>(route(&layout, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn route(layout: &Layout, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    // v1.3: a service whose canary does not decrypt refuses to run, so nothing answers but why.
    if let Err(why) = canaries_decrypt(layout).await {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "not running", "encryption": why}),
        );
    }
    match req.uri().path() {
        "/api/version" => match Spec::load(layout) {
            Ok(spec) => json(StatusCode::OK, serde_json::json!({"version": spec.version})),
            Err(e) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"message": e.to_string()}),
            ),
        },
        "/healthz" => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        "/readyz" => match db_reachable(layout).await {
            Ok(()) => json(StatusCode::OK, serde_json::json!({"status": "ready"})),
            Err(e) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "not ready", "database": e}),
            ),
        },
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"message": "not found"}),
        ),
    }
}

/// The Flight Control database over the container network (its socket), as the services reach it.
async fn connect(layout: &Layout) -> Result<tokio_postgres::Client, String> {
    let spec = Spec::load(layout).map_err(|e| e.to_string())?;
    let units = Units::load(layout).map_err(|e| e.to_string())?;
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(layout.pg_socket_dir())
        .port(super::services::db_port(&units, &spec))
        .user("postgres")
        .dbname("flightctl")
        .connect_timeout(std::time::Duration::from_secs(2));
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(client)
}

async fn db_reachable(layout: &Layout) -> Result<(), String> {
    connect(layout)
        .await?
        .simple_query("SELECT 1")
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// v1.3: every key's canary decrypts with the keys on the host (no canaries before v1.3, or while
/// the database cannot be read: readiness says so).
async fn canaries_decrypt(layout: &Layout) -> Result<(), String> {
    let Ok(client) = connect(layout).await else {
        return Ok(());
    };
    let Ok(rows) = client
        .query("SELECT key_id, value FROM encryption_canaries", &[])
        .await
    else {
        return Ok(()); // no canary table: before v1.3
    };
    let canaries: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    match crate::encryption::canary_failure(layout, &canaries) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let certs = ferry_certs::tls::read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let config = rustls::ServerConfig::builder_with_provider(ferry_certs::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}
