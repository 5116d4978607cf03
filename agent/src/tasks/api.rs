//! The host's Flight Control API over HTTPS, trusting only the host's own Flight Control CA:
//! `/api/version` (unauthenticated since v1.1) and `/readyz`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

/// Why the API could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad API URL {0:?}")]
    BadUrl(String),
    #[error("Flight Control CA {path}: {source}")]
    Ca {
        path: String,
        source: ferry_certs::CertError,
    },
    #[error("{url}: {cause}")]
    Request { url: String, cause: String },
    #[error("{url}: timed out after {secs}s")]
    Timeout { url: String, secs: u64 },
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// Where the host's Flight Control API is, and the name its certificate must carry (default: the
/// URL's host), for when the certificate names the service rather than the address dialled.
#[derive(Debug, Clone)]
pub struct Api {
    pub url: String,
    pub server_name: Option<String>,
}

/// GETs `<api_url>/api/version` and returns its `version`.
pub async fn read_version(api: &Api, ca: &Path) -> Result<String, ApiError> {
    let (status, body, url) = get(api, "/api/version", ca).await?;
    if !(200..300).contains(&status) {
        return Err(refused(status, &body, url));
    }
    #[derive(serde::Deserialize)]
    struct Version {
        version: String,
    }
    let parsed: Version = serde_json::from_slice(&body).map_err(|e| ApiError::Request {
        url,
        cause: format!("unexpected body: {e}"),
    })?;
    Ok(parsed.version)
}

/// Whether `<api_url>/readyz` answers 200; Err carries the status or the transport failure.
pub async fn ready(api: &Api, ca: &Path) -> Result<(), ApiError> {
    let (status, body, url) = get(api, "/readyz", ca).await?;
    if status == 200 {
        Ok(())
    } else {
        Err(refused(status, &body, url))
    }
}

/// A non-success answer, with what the API said (its first 300 characters).
fn refused(status: u16, body: &[u8], url: String) -> ApiError {
    let body = String::from_utf8_lossy(body);
    let body = body.trim();
    ApiError::Request {
        url,
        cause: if body.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {body:.300}")
        },
    }
}

/// One GET under a timeout: (status, body, full URL).
async fn get(api: &Api, path: &str, ca: &Path) -> Result<(u16, Bytes, String), ApiError> {
    let url = format!("{}{path}", api.url.trim_end_matches('/'));
    match tokio::time::timeout(TIMEOUT, fetch(&url, api.server_name.as_deref(), ca)).await {
        Ok(Ok((status, body))) => Ok((status, body, url)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::Timeout {
            url,
            secs: TIMEOUT.as_secs(),
        }),
    }
}

async fn fetch(url: &str, server_name: Option<&str>, ca: &Path) -> Result<(u16, Bytes), ApiError> {
    let request_error = |cause: String| ApiError::Request {
        url: url.to_string(),
        cause,
    };
    let uri: hyper::Uri = url.parse().map_err(|_| ApiError::BadUrl(url.into()))?;
    let host = uri.host().ok_or_else(|| ApiError::BadUrl(url.into()))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);

    let mut roots = rustls::RootCertStore::empty();
    let certs = ferry_certs::tls::read_certs(ca).map_err(|source| ApiError::Ca {
        path: ca.display().to_string(),
        source,
    })?;
    for cert in certs {
        roots.add(cert).map_err(|e| request_error(e.to_string()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(ferry_certs::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| request_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.unwrap_or(&host).to_string())
        .map_err(|_| ApiError::BadUrl(url.into()))?;

    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| request_error(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| request_error(format!("TLS: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| request_error(e.to_string()))?;
    tokio::spawn(conn);
    let request = hyper::Request::get(uri.path())
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| request_error(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| request_error(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| request_error(e.to_string()))?
        .to_bytes();
    Ok((status, body))
}
