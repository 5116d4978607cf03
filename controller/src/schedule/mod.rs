//! Schedules as `ferry.yaml` declares them, and what one means for one host: its cron, RPO and
//! retention after the inventory's `ferry_schedule`, `ferry_rpo` and `ferry_retention_*` vars
//! (Ansible's precedence, as [`Inventory::vars`] gives it). Pure: no clock, no I/O.

pub mod retention;
pub mod rpo;

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;

use crate::fanout::Serial;
use crate::inventory::Inventory;
use crate::types::Compression;
pub use retention::Retention;

/// A five-field cron expression (minute hour day-of-month month day-of-week), evaluated in UTC.
#[derive(Debug, Clone)]
pub struct CronExpr {
    text: String,
    cron: croner::Cron,
}

impl CronExpr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let parser = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build();
        let cron = parser.parse(text).map_err(|e| {
            format!("{text:?} is not a cron expression (minute hour day-of-month month day-of-week): {e}")
        })?;
        let expr = CronExpr {
            text: text.trim().to_string(),
            cron,
        };
        // A pattern that never fires (30 February) is as wrong as one that does not parse.
        if expr.next_after(OffsetDateTime::now_utc()).is_none() {
            return Err(format!("{text:?} never fires"));
        }
        Ok(expr)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The latest fire time at or before `t`.
    pub fn latest_at_or_before(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        let at = to_chrono(t)?;
        self.cron
            .find_previous_occurrence(&at, true)
            .ok()
            .and_then(from_chrono)
    }

    /// The first fire time after `t`.
    pub fn next_after(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        let at = to_chrono(t)?;
        self.cron
            .find_next_occurrence(&at, false)
            .ok()
            .and_then(from_chrono)
    }

    /// The longest gap between two fires over the next year (or its next 400 fires): the worst
    /// case a host waits for its next backup.
    pub fn period(&self, from: OffsetDateTime) -> Duration {
        let mut longest = Duration::ZERO;
        let mut at = from;
        let horizon = from + time::Duration::days(366);
        for _ in 0..400 {
            let Some(next) = self.next_after(at) else {
                break;
            };
            if at != from {
                longest = longest.max((next - at).unsigned_abs());
            }
            if next > horizon {
                break;
            }
            at = next;
        }
        longest
    }
}

fn to_chrono(t: OffsetDateTime) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond())
}

fn from_chrono(t: chrono::DateTime<chrono::Utc>) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(t.timestamp()).ok()
}

/// A length of time as people write it: `90s`, `15m`, `24h`, `7d`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl Span {
    pub fn parse(text: &str) -> Result<Self, String> {
        let d = humantime::parse_duration(text.trim())
            .map_err(|e| format!("{text:?} is not a duration such as 15m, 24h or 7d: {e}"))?;
        if d < Duration::from_secs(1) {
            return Err(format!("{text:?} is shorter than a second"));
        }
        Ok(Span(d))
    }
}

/// Human form of a duration: `2m`, `1h 30m`, `14d`.
pub fn format_span(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut left = secs;
    let mut parts = Vec::new();
    for (size, unit) in units {
        if left >= size {
            parts.push(format!("{}{unit}", left / size));
            left %= size;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

/// One `schedules:` entry as written; [`Schedule::from_raw`] checks its values, so that an error
/// can point at the line of the key that is wrong.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    pub name: String,
    pub hosts: String,
    pub cron: String,
    pub rpo: String,
    #[serde(default)]
    pub retention: Retention,
    pub forks: Option<usize>,
    #[serde(default)]
    pub serial: Option<Value>,
    pub max_fail_percentage: Option<u8>,
    #[serde(default)]
    pub compression: Option<Compression>,
    /// A cron for drills of each host's newest archive (`ferry drill`), besides the backups.
    #[serde(default)]
    pub drill: Option<String>,
}

/// One `schedules:` entry.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    /// An inventory host pattern.
    pub hosts: String,
    pub cron: CronExpr,
    pub rpo: Span,
    pub retention: Retention,
    /// Hosts of this schedule one replica backs up at once (default: `forks` of the config).
    pub forks: Option<usize>,
    /// Hosts of one scheduled run in flight at once, across replicas (Ansible's serial).
    pub serial: Option<Serial>,
    /// Once more than this share of a scheduled run's hosts failed, its hosts not yet started are
    /// skipped.
    pub max_fail_percentage: Option<u8>,
    pub compression: Option<Compression>,
    /// When each host's newest archive is drilled.
    pub drill: Option<CronExpr>,
}

/// A drill's slots are recorded under its schedule's name with this suffix.
const DRILL_SLOT: &str = "/drill";

/// The name the slots of `schedule`'s drills are recorded under.
pub fn drill_slots(schedule: &str) -> String {
    format!("{schedule}{DRILL_SLOT}")
}

/// The schedule a recorded slot belongs to, and whether it is a drill.
pub fn slot_owner(recorded: &str) -> (&str, bool) {
    match recorded.strip_suffix(DRILL_SLOT) {
        Some(schedule) => (schedule, true),
        None => (recorded, false),
    }
}

impl Schedule {
    /// The schedule, or the key that is wrong and why.
    pub fn from_raw(raw: RawSchedule) -> Result<Schedule, (&'static str, String)> {
        let named =
            |key: &'static str, e: String| (key, format!("schedule {:?}: {key}: {e}", raw.name));
        if raw.name.trim().is_empty() {
            return Err(("name", "a schedule's name is empty".into()));
        }
        if raw.name.contains('/') {
            return Err((
                "name",
                format!("schedule {:?}: name: '/' is reserved", raw.name),
            ));
        }
        let cron = CronExpr::parse(&raw.cron).map_err(|e| named("cron", e))?;
        let rpo = Span::parse(&raw.rpo).map_err(|e| named("rpo", e))?;
        let drill = raw
            .drill
            .as_deref()
            .map(CronExpr::parse)
            .transpose()
            .map_err(|e| named("drill", e))?;
        let serial = match &raw.serial {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(n.to_string().parse().map_err(|e| named("serial", e))?),
            Some(Value::String(s)) => Some(s.parse().map_err(|e| named("serial", e))?),
            Some(other) => return Err(named("serial", format!("{other} is not a batch size"))),
        };
        if raw.forks == Some(0) {
            return Err(named("forks", "must be at least 1".into()));
        }
        if raw.max_fail_percentage.is_some_and(|p| p > 100) {
            return Err(named(
                "max_fail_percentage",
                "is a percentage (0 to 100)".into(),
            ));
        }
        Ok(Schedule {
            cron,
            rpo,
            serial,
            name: raw.name,
            hosts: raw.hosts,
            retention: raw.retention,
            forks: raw.forks,
            max_fail_percentage: raw.max_fail_percentage,
            compression: raw.compression,
            drill,
        })
    }
}

/// What one schedule means for one host, after its inventory vars.
#[derive(Debug, Clone)]
pub struct HostPlan {
    pub schedule: String,
    pub host: String,
    /// The name the host's archives are filed under (its agent's certificate name).
    pub agent_name: String,
    pub cron: CronExpr,
    /// The longest gap between two fires of `cron` (computed once: it walks a year of fires).
    pub period: Duration,
    pub rpo: Duration,
    pub retention: Retention,
    /// When the host's newest archive is drilled, if its schedule drills, and that cron's period.
    pub drill: Option<(CronExpr, Duration)>,
}

/// A schedule's hosts and the per-host plans, or why a host's vars are wrong.
pub fn plans(
    schedule: &Schedule,
    inventory: &Inventory,
    hosts: &[String],
) -> Result<Vec<HostPlan>, Vec<String>> {
    let mut plans = Vec::with_capacity(hosts.len());
    let mut errors = Vec::new();
    for host in hosts {
        match plan(schedule, inventory, host) {
            Ok(plan) => plans.push(plan),
            Err(e) => errors.push(format!("host {host}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(plans)
    } else {
        Err(errors)
    }
}

fn plan(schedule: &Schedule, inventory: &Inventory, host: &str) -> Result<HostPlan, String> {
    let vars = inventory.vars(host);
    let text = |key: &str| -> Option<String> {
        match vars.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        }
    };
    let cron = match text("ferry_schedule") {
        Some(t) => CronExpr::parse(&t).map_err(|e| format!("ferry_schedule: {e}"))?,
        None => schedule.cron.clone(),
    };
    let rpo = match text("ferry_rpo") {
        Some(t) => Span::parse(&t).map_err(|e| format!("ferry_rpo: {e}"))?.0,
        None => schedule.rpo.0,
    };
    let mut retention = schedule.retention.clone();
    for (key, value) in &vars {
        if let Some(field) = key.strip_prefix("ferry_retention_") {
            retention
                .set(field, value)
                .map_err(|e| format!("{key}: {e}"))?;
        }
    }
    let agent_name = inventory
        .target(host)
        .map(|t| t.agent_name)
        .unwrap_or_else(|_| host.to_string());
    Ok(HostPlan {
        schedule: schedule.name.clone(),
        host: host.to_string(),
        agent_name,
        period: cron.period(OffsetDateTime::now_utc()),
        cron,
        rpo,
        retention,
        drill: schedule
            .drill
            .clone()
            .map(|d| (d.clone(), d.period(OffsetDateTime::now_utc()))),
    })
}

/// How long after its slot a host's run starts: a stable share of a tenth of the period (at most
/// five minutes), so a fleet does not start in one second and each host keeps its place.
pub fn jitter(schedule: &str, host: &str, period: Duration) -> Duration {
    use sha2::Digest;
    let max = (period / 10).min(Duration::from_secs(300)).as_millis() as u64;
    if max == 0 {
        return Duration::ZERO;
    }
    let digest = sha2::Sha256::digest(format!("{schedule}\0{host}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Duration::from_millis(u64::from_le_bytes(first) % max)
}

/// Every schedule's plans over the inventory, or every reason the configuration cannot run, each
/// as `FILE:LINE: message`. Warnings (an RPO shorter than the schedule's period) do not stop it.
pub struct FleetPlan {
    pub plans: Vec<HostPlan>,
    pub warnings: Vec<String>,
}

/// `at(schedule, key)` names where a schedule's key was written (`FILE:LINE`).
pub fn fleet_plan(
    schedules: &[Schedule],
    at: impl Fn(&str, &str) -> String,
    inventory: &Inventory,
    now: OffsetDateTime,
) -> Result<FleetPlan, Vec<String>> {
    let mut plans = Vec::new();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for schedule in schedules {
        let at = |key: &str| at(&schedule.name, key);
        let hosts = match crate::pattern::select(inventory, &schedule.hosts, None) {
            Ok(selection) if selection.hosts.is_empty() => {
                errors.push(format!(
                    "{}: schedule {:?}: hosts {:?} matches no host in the inventory (`ferry ping {:?} --list-hosts` shows what it selects)",
                    at("hosts"),
                    schedule.name,
                    schedule.hosts,
                    schedule.hosts
                ));
                continue;
            }
            Ok(selection) => {
                for w in selection.warnings {
                    warnings.push(format!(
                        "{}: schedule {:?}: {w}",
                        at("hosts"),
                        schedule.name
                    ));
                }
                selection.hosts
            }
            Err(e) => {
                errors.push(format!(
                    "{}: schedule {:?}: hosts: {e}",
                    at("hosts"),
                    schedule.name
                ));
                continue;
            }
        };
        match self::plans(schedule, inventory, &hosts) {
            Ok(mut p) => {
                let period = schedule.cron.period(now);
                if schedule.rpo.0 < period {
                    warnings.push(format!(
                        "{}: schedule {:?}: rpo {} is shorter than the time between its runs ({} for {:?}); its hosts will be breached between runs",
                        at("rpo"),
                        schedule.name,
                        format_span(schedule.rpo.0),
                        format_span(period),
                        schedule.cron.as_str()
                    ));
                }
                for plan in &p {
                    let host_period = plan.period;
                    if plan.rpo < host_period
                        && (plan.rpo != schedule.rpo.0 || host_period != period)
                    {
                        warnings.push(format!(
                            "schedule {:?}: host {}: rpo {} (inventory) is shorter than the time between its runs ({})",
                            schedule.name,
                            plan.host,
                            format_span(plan.rpo),
                            format_span(host_period)
                        ));
                    }
                }
                plans.append(&mut p);
            }
            Err(host_errors) => {
                for e in host_errors {
                    errors.push(format!(
                        "{}: schedule {:?}: inventory var of {e}",
                        at("name"),
                        schedule.name
                    ));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(FleetPlan { plans, warnings })
    } else {
        Err(errors)
    }
}

/// The retention policies that apply to each host's archives, by the name they are filed under.
pub fn policies(plans: &[HostPlan]) -> std::collections::BTreeMap<String, Vec<Retention>> {
    let mut map: std::collections::BTreeMap<String, Vec<Retention>> = Default::default();
    for p in plans {
        let list = map.entry(p.agent_name.clone()).or_default();
        if !list.contains(&p.retention) {
            list.push(p.retention.clone());
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn cron_fires_in_utc_and_knows_its_period() {
        let nightly = CronExpr::parse("0 2 * * *").unwrap();
        assert_eq!(
            nightly.latest_at_or_before(at("2026-12-01T05:00:00Z")),
            Some(at("2026-12-01T02:00:00Z"))
        );
        assert_eq!(
            nightly.latest_at_or_before(at("2026-12-01T02:00:00Z")),
            Some(at("2026-12-01T02:00:00Z"))
        );
        assert_eq!(
            nightly.next_after(at("2026-12-01T02:00:00Z")),
            Some(at("2026-12-02T02:00:00Z"))
        );
        assert_eq!(
            nightly.period(at("2026-12-01T05:00:00Z")),
            Duration::from_secs(86_400)
        );
        let weekdays = CronExpr::parse("*/15 9-17 * * 1-5").unwrap();
        // Friday 17:45 to Monday 09:00.
        assert_eq!(
            weekdays.period(at("2026-12-01T05:00:00Z")),
            Duration::from_secs(2 * 86_400 + 15 * 3_600 + 15 * 60)
        );
    }

    #[test]
    fn bad_cron_is_refused_with_the_expression() {
        for bad in [
            "",
            "* * * *",
            "61 * * * *",
            "0 2 * * * *",
            "0 0 30 2 *",
            "daily",
        ] {
            let e = CronExpr::parse(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn spans_read_as_people_write_them() {
        assert_eq!(Span::parse("24h").unwrap().0, Duration::from_secs(86_400));
        assert_eq!(Span::parse("15m").unwrap().0, Duration::from_secs(900));
        assert_eq!(Span::parse("1h 30m").unwrap().0, Duration::from_secs(5_400));
        assert!(Span::parse("soon").is_err());
        assert!(Span::parse("0s").is_err());
        assert_eq!(format_span(Duration::from_secs(5_400)), "1h 30m");
        assert_eq!(format_span(Duration::from_secs(120)), "2m");
    }
}
