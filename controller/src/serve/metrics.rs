//! `/metrics` in Prometheus' text format, computed at each scrape from the catalog (so every
//! replica shows the same fleet), and `/healthz`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use time::OffsetDateTime;

use super::Service;
use crate::schedule::rpo::RpoState;

pub(super) async fn serve(service: Arc<Service>, listener: tokio::net::TcpListener) {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/healthz", axum::routing::get(healthz))
        .with_state(service);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("metrics endpoint: {e}");
    }
}

async fn healthz(State(service): State<Arc<Service>>) -> impl IntoResponse {
    if service.catalog().client().is_closed() {
        (StatusCode::SERVICE_UNAVAILABLE, "catalog unreachable\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn metrics(State(service): State<Arc<Service>>) -> impl IntoResponse {
    match render(&service).await {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("ferry: {e}\n"),
        ),
    }
}

/// A metric vector built by `new` (`GaugeVec::new`, `IntCounterVec::new`, …) and registered.
fn register<M>(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    new: fn(Opts, &[&str]) -> prometheus::Result<M>,
) -> Result<M, String>
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = new(Opts::new(name, help), labels).map_err(|e| e.to_string())?;
    registry
        .register(Box::new(metric.clone()))
        .map_err(|e| e.to_string())?;
    Ok(metric)
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec, String> {
    register(registry, name, help, labels, GaugeVec::new)
}

fn int_gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, String> {
    register(registry, name, help, labels, IntGaugeVec::new)
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, String> {
    register(registry, name, help, labels, IntCounterVec::new)
}

async fn render(service: &Service) -> Result<String, String> {
    let settings = service.settings();
    let catalog = service.catalog();
    let now = OffsetDateTime::now_utc();
    let registry = Registry::new();
    let up = int_gauge(
        &registry,
        "ferry_catalog_up",
        "Whether this replica reaches the catalog.",
        &[],
    )?;
    let leader = int_gauge(
        &registry,
        "ferry_serve_leader",
        "1 when this replica leads (watches RPOs, probes agents).",
        &["replica"],
    )?;
    let running = int_gauge(
        &registry,
        "ferry_serve_running",
        "Scheduled backups this replica is running.",
        &["replica"],
    )?;
    let own = counter(
        &registry,
        "ferry_serve_backups_total",
        "Scheduled backups this replica ran to an end since it started, by outcome.",
        &["replica", "outcome"],
    )?;
    let started = counter(
        &registry,
        "ferry_serve_backups_started_total",
        "Scheduled backups this replica started since it started.",
        &["replica"],
    )?;
    let replica = service.replica.as_str();
    leader
        .with_label_values(&[replica])
        .set(i64::from(service.is_leader()));
    running
        .with_label_values(&[replica])
        .set(super::lock(&service.running).len() as i64);
    started
        .with_label_values(&[replica])
        .inc_by(service.counters.started.load(Ordering::Relaxed));
    // Ended outcomes only: summed, they count backups once.
    for (outcome, counter) in [
        ("succeeded", &service.counters.succeeded),
        ("failed", &service.counters.failed),
        ("busy", &service.counters.busy),
    ] {
        own.with_label_values(&[replica, outcome])
            .inc_by(counter.load(Ordering::Relaxed));
    }
    let pruned = counter(
        &registry,
        "ferry_serve_archives_pruned_total",
        "Archives this replica deleted by retention since it started.",
        &["replica"],
    )?;
    pruned
        .with_label_values(&[replica])
        .inc_by(service.counters.deleted.load(Ordering::Relaxed));

    let fleet = async {
        Ok::<_, crate::catalog::CatalogError>((
            crate::status::gather(&catalog, &settings.store.id(), &settings.plans, now).await?,
            catalog.backup_failures_by_phase().await?,
            catalog.store_totals().await?,
            catalog.scheduled_counts().await?,
            catalog.queue_length().await?,
            catalog.replicas().await?,
            catalog.undelivered_alerts().await?,
            catalog.last_drills().await?,
            catalog.archive_problems().await?,
        ))
    }
    .await;
    let (
        hosts,
        failures,
        (archives, bytes),
        scheduled,
        queue,
        replicas,
        undelivered,
        drills,
        problems,
    ) = match fleet {
        Ok(all) => all,
        Err(e) => {
            tracing::warn!("metrics: the catalog did not answer: {e}");
            up.with_label_values::<&str>(&[]).set(0);
            return encode(&registry);
        }
    };
    up.with_label_values::<&str>(&[]).set(1);

    let last_success = gauge(
        &registry,
        "ferry_backup_last_success_timestamp_seconds",
        "Creation time of the host's newest good archive (Unix seconds).",
        &["host"],
    )?;
    let age = gauge(
        &registry,
        "ferry_backup_age_seconds",
        "Age of the host's newest good archive.",
        &["host"],
    )?;
    let rpo = gauge(&registry, "ferry_rpo_seconds", "The host's RPO.", &["host"])?;
    let rpo_state = int_gauge(
        &registry,
        "ferry_rpo_state",
        "1 for the host's current RPO state (ok, at-risk, breached).",
        &["host", "state"],
    )?;
    let breached = int_gauge(
        &registry,
        "ferry_rpo_breached",
        "1 when the host's newest good archive is older than its RPO.",
        &["host"],
    )?;
    let duration = gauge(
        &registry,
        "ferry_backup_last_duration_seconds",
        "How long the host's newest good backup took.",
        &["host"],
    )?;
    let size = gauge(
        &registry,
        "ferry_backup_last_size_bytes",
        "Size of the host's newest good archive.",
        &["host"],
    )?;
    let reachable = int_gauge(
        &registry,
        "ferry_agent_reachable",
        "1 when the host's agent answered the last probe or backup.",
        &["host"],
    )?;
    let drilled = gauge(
        &registry,
        "ferry_drill_last_timestamp_seconds",
        "When the host's most recent drill ended (Unix seconds).",
        &["host"],
    )?;
    let drill_passed = int_gauge(
        &registry,
        "ferry_drill_last_passed",
        "1 when the host's most recent drill restored its archive, 0 when it failed.",
        &["host"],
    )?;
    for (host, at, passed) in &drills {
        drilled
            .with_label_values(&[host.as_str()])
            .set(at.unix_timestamp() as f64);
        drill_passed
            .with_label_values(&[host.as_str()])
            .set(i64::from(*passed));
    }
    for h in &hosts {
        let host = h.host.as_str();
        rpo.with_label_values(&[host]).set(h.rpo_seconds as f64);
        for s in [RpoState::Ok, RpoState::AtRisk, RpoState::Breached] {
            rpo_state
                .with_label_values(&[host, s.name()])
                .set(i64::from(h.state == s));
        }
        breached
            .with_label_values(&[host])
            .set(i64::from(h.state == RpoState::Breached));
        if let Some(a) = &h.last_success {
            last_success
                .with_label_values(&[host])
                .set(a.created_at.unix_timestamp() as f64);
            age.with_label_values(&[host])
                .set(h.age_seconds.unwrap_or_default() as f64);
            size.with_label_values(&[host]).set(a.size as f64);
            if let Some(ms) = a.duration_ms {
                duration.with_label_values(&[host]).set(ms as f64 / 1000.0);
            }
        }
        if let Some(r) = h.reachable {
            reachable.with_label_values(&[host]).set(i64::from(r));
        }
    }
    let archive_problems = int_gauge(
        &registry,
        "ferry_archive_problems",
        "Archive copies last found missing or suspect in a store (archives not deleted), by host.",
        &["host", "state"],
    )?;
    for h in &hosts {
        for state in ["missing", "suspect"] {
            archive_problems
                .with_label_values(&[h.host.as_str(), state])
                .set(0);
        }
    }
    for (host, state, n) in &problems {
        archive_problems
            .with_label_values(&[host.as_str(), state.as_str()])
            .set(*n);
    }
    let failed = counter(
        &registry,
        "ferry_backup_failures_total",
        "Backups of the host that did not succeed, by the phase they stopped in.",
        &["host", "phase"],
    )?;
    // Every scheduled host's series exist from the start (at zero), so a rule over their
    // increase fires on the first failure too.
    for plan in &settings.plans {
        for phase in crate::ops::backup::PHASES {
            failed.with_label_values(&[plan.host.as_str(), phase]);
        }
    }
    for (host, phase, n) in &failures {
        failed
            .with_label_values(&[host.as_str(), phase.as_str()])
            .inc_by(*n as u64);
    }
    let store = settings.config.store.describe();
    int_gauge(
        &registry,
        "ferry_store_archives",
        "Archives in the store.",
        &["store"],
    )?
    .with_label_values(&[store.as_str()])
    .set(archives);
    int_gauge(
        &registry,
        "ferry_store_bytes",
        "Bytes of the archives in the store.",
        &["store"],
    )?
    .with_label_values(&[store.as_str()])
    .set(bytes);
    let slots = int_gauge(
        &registry,
        "ferry_serve_scheduled_runs",
        "Scheduled host runs in the catalog, by state.",
        &["state"],
    )?;
    for state in [
        "pending",
        "running",
        "retrying",
        "succeeded",
        "failed",
        "skipped",
        "superseded",
        "satisfied",
    ] {
        slots
            .with_label_values(&[state])
            .set(scheduled.get(state).copied().unwrap_or(0));
    }
    int_gauge(
        &registry,
        "ferry_serve_queue_length",
        "Scheduled host runs due and not started.",
        &[],
    )?
    .with_label_values::<&str>(&[])
    .set(queue);
    int_gauge(
        &registry,
        "ferry_serve_replicas",
        "Live ferry serve replicas sharing the catalog.",
        &[],
    )?
    .with_label_values::<&str>(&[])
    .set(replicas.iter().filter(|r| r.live).count() as i64);
    let alerts = int_gauge(
        &registry,
        "ferry_alerts_undelivered",
        "Alerts not delivered: still retrying, or given up.",
        &["state"],
    )?;
    for state in ["pending", "undeliverable"] {
        alerts
            .with_label_values(&[state])
            .set(undelivered.iter().filter(|a| a.state == state).count() as i64);
    }
    encode(&registry)
}

fn encode(registry: &Registry) -> Result<String, String> {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}
