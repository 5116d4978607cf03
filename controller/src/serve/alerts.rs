//! Webhook delivery: every replica takes pending alerts from the catalog one at a time and POSTs
//! their JSON; a failure is retried with backoff, and one that never goes through is marked
//! undeliverable, logged, and shown by `ferry status`.

use std::sync::Arc;
use std::time::Duration;

use super::Service;

/// How long a replica holds an alert it is sending before another may take it.
const LEASE: Duration = Duration::from_secs(60);
const POST_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_ATTEMPTS: u32 = 8;

pub(super) async fn deliver(service: Arc<Service>) {
    let client = match reqwest::Client::builder()
        .timeout(POST_TIMEOUT)
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("alerts cannot be sent: {e}");
            return;
        }
    };
    loop {
        let catalog = service.catalog();
        match catalog.next_alert(LEASE).await {
            Ok(Some(alert)) => {
                let result = post(&client, &alert.url, &alert.payload).await;
                let attempts = service
                    .settings()
                    .config
                    .alerts
                    .iter()
                    .find(|a| a.webhook == alert.url)
                    .and_then(|a| a.attempts)
                    .unwrap_or(DEFAULT_ATTEMPTS);
                let update = match &result {
                    Ok(()) => {
                        tracing::info!(alert = alert.id, kind = %alert.kind, host = %alert.host, url = %alert.url, "alert delivered");
                        catalog
                            .alert_attempted(alert.id, None, None, attempts as i32)
                            .await
                    }
                    Err(e) if (alert.attempts as u32) < attempts => {
                        let retry = Duration::from_secs(2u64.saturating_pow(alert.attempts as u32))
                            .min(Duration::from_secs(300));
                        tracing::warn!(alert = alert.id, kind = %alert.kind, host = %alert.host, url = %alert.url,
                            attempt = alert.attempts, retry_in_seconds = retry.as_secs(), "alert not delivered: {e}");
                        catalog
                            .alert_attempted(alert.id, Some(e), Some(retry), attempts as i32)
                            .await
                    }
                    Err(e) => {
                        tracing::error!(alert = alert.id, kind = %alert.kind, host = %alert.host, url = %alert.url,
                            attempts = alert.attempts, "alert undeliverable, giving up (`ferry status` lists it): {e}");
                        catalog
                            .alert_attempted(alert.id, Some(e), None, attempts as i32)
                            .await
                    }
                };
                if let Err(e) = update {
                    tracing::warn!(alert = alert.id, "recording the alert attempt: {e}");
                }
            }
            Ok(None) => tokio::time::sleep(Duration::from_secs(1)).await,
            Err(e) => {
                tracing::debug!("alerts: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    payload: &serde_json::Value,
) -> Result<(), String> {
    let body = serde_json::to_vec(payload).map_err(|e| e.to_string())?;
    let response = client
        .post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        })?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {}", response.status()))
    }
}
