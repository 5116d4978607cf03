//! `simfleet webhook`: a webhook receiver process for alert tests. It appends each POSTed body, as
//! one JSON line, to a file, and can refuse the first N requests (503) to exercise retries.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

/// Serves until killed. Writes the bound port to `port_file` once listening.
pub async fn serve(
    listen: &str,
    out: PathBuf,
    port_file: Option<PathBuf>,
    fail_first: u64,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    if let Some(port_file) = port_file {
        let tmp = port_file.with_extension("tmp");
        std::fs::write(&tmp, listener.local_addr()?.port().to_string())?;
        std::fs::rename(tmp, port_file)?;
    }
    let seen = Arc::new(AtomicU64::new(0));
    let out = Arc::new(out);
    loop {
        let (stream, _) = listener.accept().await?;
        let (seen, out) = (Arc::clone(&seen), Arc::clone(&out));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (seen, out) = (Arc::clone(&seen), Arc::clone(&out));
                async move {
                    Ok::<_, std::convert::Infallible>(receive(req, &out, &seen, fail_first).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn receive(
    req: Request<hyper::body::Incoming>,
    out: &Path,
    seen: &AtomicU64,
    fail_first: u64,
) -> Response<Full<Bytes>> {
    let n = seen.fetch_add(1, Ordering::SeqCst);
    let is_json = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let method = req.method().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(StatusCode::BAD_REQUEST),
    };
    if n < fail_first {
        return status(StatusCode::SERVICE_UNAVAILABLE);
    }
    if method != hyper::Method::POST
        || !is_json
        || serde_json::from_slice::<serde_json::Value>(&body).is_err()
    {
        return status(StatusCode::BAD_REQUEST);
    }
    let mut line = body.to_vec();
    line.retain(|b| *b != b'\n');
    line.push(b'\n');
    let written = async {
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .await?;
        f.write_all(&line).await?;
        f.flush().await
    }
    .await;
    match written {
        Ok(()) => status(StatusCode::OK),
        Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}
