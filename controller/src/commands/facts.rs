//! `ferry facts PATTERN`

use ferry_proto::v1::{DatabaseKind, DeploymentType, FactsReply, FactsRequest};
use serde_json::json;

use crate::cli::GlobalArgs;
use crate::config::Config;
use crate::report::Outcome;

pub async fn run(config: &Config, global: &GlobalArgs, pattern: &str) -> i32 {
    crate::selection::call_all(
        config,
        global,
        pattern,
        "facts",
        |mut client| async move { client.facts(FactsRequest {}).await },
        outcome,
    )
    .await
}

fn deployment_name(t: i32) -> &'static str {
    match DeploymentType::try_from(t) {
        Ok(DeploymentType::Podman) => "podman",
        Ok(DeploymentType::Kubernetes) => "kubernetes",
        _ => "unknown",
    }
}

fn database_name(k: i32) -> &'static str {
    match DatabaseKind::try_from(k) {
        Ok(DatabaseKind::Builtin) => "builtin",
        Ok(DatabaseKind::External) => "external",
        _ => "unknown",
    }
}

fn outcome(f: FactsReply) -> Outcome {
    let version = f.flightctl.clone().unwrap_or_default();
    let deployment = f.deployment.clone().unwrap_or_default();
    let database = f.database.clone().unwrap_or_default();
    let os = f.os.clone().unwrap_or_default();
    let staging = f.staging.clone().unwrap_or_default();
    let active = f
        .units
        .iter()
        .filter(|u| u.active_state == "active")
        .count();
    let shown_version = if version.version.is_empty() {
        format!("version unknown ({})", version.detail)
    } else {
        version.version.clone()
    };
    let mut summary = format!(
        "Flight Control {shown_version}, {} deployment, {} database, {active}/{} units active, {}",
        deployment_name(deployment.r#type),
        database_name(database.kind),
        f.units.len(),
        if os.pretty_name.is_empty() {
            "OS unknown"
        } else {
            &os.pretty_name
        },
    );
    // Text shows what needs attention; -o json has every unit.
    for unit in f.units.iter().filter(|u| u.active_state != "active") {
        summary.push_str(&format!(
            "\n    unit {:<35} {}",
            unit.name, unit.active_state
        ));
    }
    for c in &f.containers {
        summary.push_str(&format!("\n    container {:<30} {}", c.name, c.state));
    }
    if let Some(restore) = &f.restore {
        summary.push_str(&format!("\n    {}", restore.summary));
    }
    if !f.undone.is_empty() {
        summary.push_str(&format!(
            "\n    last restore ended by the agent: {}",
            f.undone
        ));
    }
    let reconnect = f.reconnect.clone().unwrap_or_default();
    let keyless = reconnect.unknown.is_empty() && reconnect.kv_keys < reconnect.awaiting_devices;
    if keyless {
        // An unfinished restore seeds them itself when it is resumed (and holds the host).
        let next = if f.restore.is_some() {
            format!(
                "ferry restore {0} --resume (it seeds them) or ferry rollback {0}",
                f.host_name
            )
        } else {
            format!("ferry prepare-devices {}", f.host_name)
        };
        summary.push_str(&format!(
            "\n    PROBLEM: {} devices await reconnect but the KV holds the keys of only {} of them: the others never clear; next: {next}",
            reconnect.awaiting_devices, reconnect.kv_keys
        ));
    } else if !reconnect.unknown.is_empty() {
        summary.push_str(&format!(
            "\n    devices awaiting reconnect: unknown ({})",
            reconnect.unknown
        ));
    } else if reconnect.awaiting_devices > 0 {
        summary.push_str(&format!(
            "\n    {} devices await reconnect (each with its key in the KV)",
            reconnect.awaiting_devices
        ));
    }
    summary.push_str(&format!(
        "\n    staging {} free {} MiB",
        staging.path,
        staging.free_bytes >> 20
    ));
    let data = json!({
        "host_name": f.host_name,
        "agent_version": f.agent_version,
        "os": {"id": os.id, "version_id": os.version_id, "pretty_name": os.pretty_name},
        "flightctl": {"version": version.version, "source": version.source, "detail": version.detail},
        "deployment": {"type": deployment_name(deployment.r#type), "reason": deployment.reason},
        "database": {"kind": database_name(database.kind), "name": database.name,
                     "external_host": database.external_host, "external_port": database.external_port,
                     "external_name": database.external_name, "sslmode": database.sslmode},
        "units": f.units.iter().map(|u| json!({"name": u.name, "load_state": u.load_state,
                                                "active_state": u.active_state})).collect::<Vec<_>>(),
        "containers": f.containers.iter().map(|c| json!({"name": c.name, "state": c.state})).collect::<Vec<_>>(),
        "restore": f.restore.as_ref().map(crate::report::restore_status_json),
        "undone": (!f.undone.is_empty()).then_some(&f.undone),
        "identity": f.identity.as_ref().map(|i| json!({
            "base_domain": i.base_domain,
            "certificates": i.certificates.iter().map(|c| json!({"path": c.path, "subject": c.subject,
                "issuer": c.issuer, "not_after": c.not_after, "sans": c.sans})).collect::<Vec<_>>(),
        })),
        "reconnect": {"awaiting_devices": reconnect.awaiting_devices, "kv_keys": reconnect.kv_keys,
                      "unknown": (!reconnect.unknown.is_empty()).then_some(&reconnect.unknown),
                      "problem": keyless},
        "staging": {"path": staging.path, "free_bytes": staging.free_bytes, "total_bytes": staging.total_bytes},
    });
    Outcome::Ok {
        changed: false,
        summary,
        data,
    }
}
