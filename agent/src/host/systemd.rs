//! systemd through `systemctl`.

use std::path::Path;

use super::command::{CommandError, run, run_ok};

/// A unit's load and active state, as `systemctl show` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnitState {
    pub name: String,
    pub load_state: String,
    pub active_state: String,
}

impl UnitState {
    /// False for units the host does not have (`LoadState=not-found`).
    pub fn is_present(&self) -> bool {
        self.load_state != "not-found"
    }
}

pub struct Systemd<'a> {
    systemctl: &'a Path,
}

impl<'a> Systemd<'a> {
    pub(super) fn new(systemctl: &'a Path) -> Self {
        Systemd { systemctl }
    }

    /// `systemctl is-active UNIT`: true only when the unit is active.
    pub async fn is_active(&self, unit: &str) -> Result<bool, CommandError> {
        Ok(run(self.systemctl, &["is-active", unit])
            .await?
            .status
            .success())
    }

    /// `systemctl VERB UNITS…` for start, stop and restart.
    pub async fn control(&self, verb: &str, units: &[&str]) -> Result<(), CommandError> {
        if units.is_empty() {
            return Ok(());
        }
        let mut args = vec![verb];
        args.extend_from_slice(units);
        run_ok(self.systemctl, &args).await.map(|_| ())
    }

    pub async fn daemon_reload(&self) -> Result<(), CommandError> {
        run_ok(self.systemctl, &["daemon-reload"]).await.map(|_| ())
    }

    /// The quadlet a unit is generated from (`SourcePath`), empty for native units.
    pub async fn source_path(&self, unit: &str) -> Result<String, CommandError> {
        let out = run_ok(
            self.systemctl,
            &["show", "-p", "SourcePath", "--value", unit],
        )
        .await?;
        Ok(out.trim().to_string())
    }

    /// The states of `units` in one `systemctl show` call; units the host lacks come back not-found.
    pub async fn states(&self, units: &[&str]) -> Result<Vec<UnitState>, CommandError> {
        let mut args = vec!["show", "--property=Id,LoadState,ActiveState"];
        args.extend_from_slice(units);
        let stdout = run_ok(self.systemctl, &args).await?;
        Ok(parse_show(&stdout, units))
    }
}

/// Parses `systemctl show` output: one blank-line-separated block per unit, in the order asked.
fn parse_show(stdout: &str, units: &[&str]) -> Vec<UnitState> {
    let blocks = stdout.split("\n\n").filter(|b| !b.trim().is_empty());
    units
        .iter()
        .zip(blocks)
        .map(|(unit, block)| {
            let field = |key: &str| {
                block
                    .lines()
                    .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                    .unwrap_or("unknown")
                    .to_string()
            };
            UnitState {
                name: unit.to_string(),
                load_state: field("LoadState"),
                active_state: field("ActiveState"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_output_is_split_per_unit_in_order() {
        let out = "Id=flightctl-db.service\nLoadState=loaded\nActiveState=active\n\n\
                   Id=flightctl-x.service\nLoadState=not-found\nActiveState=inactive\n";
        let states = parse_show(out, &["flightctl-db.service", "flightctl-x.service"]);
        assert_eq!(states.len(), 2);
        assert!(states[0].is_present());
        assert_eq!(states[0].active_state, "active");
        assert!(!states[1].is_present());
        assert_eq!(states[1].active_state, "inactive");
    }
}
