//! `stop` and `start`: the application units, confirmed in the state asked for. The data
//! services and flightctl.target are never among them.

use std::path::Path;

use super::journal::Journal;
use super::{StepOutcome, summary};
use crate::host::Host;
use crate::tasks::units::APPLICATION_SERVICES;

/// `stop`: the running application units are on record, then stopped.
pub(super) async fn stop_step(
    host: &Host,
    dir: &Path,
    j: &mut Journal,
) -> Result<StepOutcome, String> {
    let states = host
        .systemd()
        .states(APPLICATION_SERVICES)
        .await
        .map_err(|e| e.to_string())?;
    let present = present(&states);
    if j.stopped_units.is_empty() {
        j.stopped_units = states
            .iter()
            .filter(|s| s.active_state == "active")
            .map(|s| s.name.clone())
            .collect();
    }
    // The units to start again are on record before any stops.
    j.save(dir).map_err(|e| e.to_string())?;
    control_units(host, "stop", &present).await?;
    Ok(summary(&format!(
        "stopped {} application units ({} keep running)",
        present.len(),
        if j.external_database {
            "flightctl-kv and the external database"
        } else {
            "flightctl-db and flightctl-kv"
        }
    )))
}

/// `start`: the units `stop` found running, started again.
pub(super) async fn start_step(host: &Host, j: &Journal) -> Result<StepOutcome, String> {
    let names: Vec<&str> = j.stopped_units.iter().map(String::as_str).collect();
    control_units(host, "start", &names).await?;
    Ok(summary(&format!(
        "started {} application units",
        names.len()
    )))
}

/// The application units the host has, of `states`.
fn present(states: &[crate::host::systemd::UnitState]) -> Vec<&str> {
    states
        .iter()
        .filter(|s| s.is_present())
        .map(|s| s.name.as_str())
        .collect()
}

/// Stops every application unit the host has (whatever `start` or a resume brought up).
pub(super) async fn stop_application_units(host: &Host) -> Result<(), String> {
    let states = host
        .systemd()
        .states(APPLICATION_SERVICES)
        .await
        .map_err(|e| e.to_string())?;
    host.systemd()
        .control("stop", &present(&states))
        .await
        .map_err(|e| e.to_string())
}

/// `systemctl start|stop UNITS`, then confirms every unit is active (start) or not (stop).
async fn control_units(host: &Host, verb: &str, names: &[&str]) -> Result<(), String> {
    host.systemd()
        .control(verb, names)
        .await
        .map_err(|e| e.to_string())?;
    let after = host
        .systemd()
        .states(names)
        .await
        .map_err(|e| e.to_string())?;
    let wrong = after
        .iter()
        .find(|s| (s.active_state == "active") != (verb == "start"));
    match wrong {
        Some(unit) => Err(format!(
            "{} is {} after {verb}",
            unit.name, unit.active_state
        )),
        None => Ok(()),
    }
}
