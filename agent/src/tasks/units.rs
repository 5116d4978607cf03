//! The Flight Control units ferry knows, and which of them it may ever stop.

/// Data services: only ever restarted, never stopped.
pub const DATA_SERVICES: &[&str] = &["flightctl-db.service", "flightctl-kv.service"];

/// Application services, in upstream's stop order (docs/upstream-contract.md §5.7), which includes the
/// v1.0 documentation's list.
pub const APPLICATION_SERVICES: &[&str] = &[
    "flightctl-api.service",
    "flightctl-worker.service",
    "flightctl-periodic.service",
    "flightctl-imagebuilder-api.service",
    "flightctl-imagebuilder-worker.service",
    "flightctl-alert-exporter.service",
    "flightctl-alertmanager-proxy.service",
    "flightctl-gateway.service",
];

/// Units that are neither stopped nor restarted by ferry but are reported in facts.
pub const OTHER_UNITS: &[&str] = &[
    "flightctl.target",
    "flightctl-alertmanager.service",
    "flightctl-ui.service",
    "flightctl-cli-artifacts.service",
    "flightctl-pam-issuer.service",
    "flightctl-telemetry-gateway.service",
    "flightctl-remote-access.service",
    "flightctl-certs-init.service",
    "flightctl-db-migrate.service",
    "flightctl-db-users-init.service",
    "flightctl-db-wait.service",
    "flightctl-api-init.service",
    "flightctl-ui-init.service",
];

/// Every unit facts reports on.
pub fn all_known() -> Vec<&'static str> {
    DATA_SERVICES
        .iter()
        .chain(APPLICATION_SERVICES)
        .chain(OTHER_UNITS)
        .copied()
        .collect()
}
